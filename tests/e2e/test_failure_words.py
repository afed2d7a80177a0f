"""A failed deploy is told in plain words with a stable code; the detail is only in the log."""

from __future__ import annotations

import logging
import re

import pytest

from tests.e2e.conftest import Manager, fill_wizard
from tests.fakes.kubernetes_api import FakeKubernetes
from tests.fakes.telegram_api import FakeTelegram

INTERNAL_WORDS = ("403", "Forbidden", "PATCH", "Kubernetes", "unreachable", "500")


async def deploy_and_fail(manager: Manager, telegram: FakeTelegram, username: str) -> str:
    user = telegram.user(manager.fake)
    await fill_wizard(user, telegram, username)
    await user.press("Deploy")
    failed = await user.wait_for(text_contains="Deploy failed", timeout=40)
    text: str = failed["text"]
    for word in INTERNAL_WORDS:
        assert word not in text, (word, text)
    return text


def reference_in(text: str) -> str:
    found = re.search(r"reference (\S+)\)", text)
    assert found, text
    return found.group(1)


async def test_a_cluster_that_refuses_is_told_plainly_and_logged_under_the_reference(
    kube_manager: Manager, telegram: FakeTelegram, kube: FakeKubernetes,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    kube.deny(verb="patch", resource="deployments", group="apps")
    with caplog.at_level(logging.WARNING):
        text = await deploy_and_fail(kube_manager, telegram, "denied_bot")
    assert "error cluster-denied" in text and "tell an admin" in text
    reference = reference_in(text)
    (logged,) = [r.getMessage() for r in caplog.records if f"ref={reference}" in r.getMessage()]
    assert "cluster-denied" in logged and "403" in logged


async def test_telegram_failing_at_the_webhook_is_told_plainly(
    kube_manager: Manager, telegram: FakeTelegram
) -> None:
    telegram.inject_fault("setWebhook", status=500, times=50)
    text = await deploy_and_fail(kube_manager, telegram, "hookless_bot")
    assert "error telegram-unavailable" in text and "try again in a minute" in text
    reference_in(text)
