"""The manager process runs on uvloop unless EVENT_LOOP=asyncio, and serves users on both."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import answer_start_once
from tests.fakes.telegram_api import FakeTelegram


@pytest.mark.parametrize(("setting", "expected"), [(None, "uvloop"), ("asyncio", "asyncio")])
async def test_the_manager_runs_and_answers_on_the_event_loop_asked_for(
    telegram: FakeTelegram, tmp_path: Path, setting: str | None, expected: str
) -> None:
    env = {"METRICS_PORT": "0"} | ({"EVENT_LOOP": setting} if setting else {})
    output = await answer_start_once(telegram, tmp_path, **env)
    assert f"manager starting on the {expected} event loop" in output
