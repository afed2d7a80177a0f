"""Which processes elect a leader: only webhook-mode replicas on Kubernetes."""

from __future__ import annotations

import pytest

from manager_bot.config import ManagerSettings
from manager_bot.leader import LeaseTiming, leader_elected, micro_time, new_identity
from runtime.settings_loading import load_settings

BASE = {"MANAGER_BOT_TOKEN": "1:abc", "PUBLIC_URL": "https://bots.example.com"}
WEBHOOK = {
    "MANAGER_WEBHOOK": "true",
    "MANAGER_WEBHOOK_SECRET": "a-secret",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
}


@pytest.mark.parametrize(
    ("env", "elected"),
    [
        ({}, False),  # local backend, polling: one process, as ever
        ({"BACKEND": "kubernetes"}, False),  # polling on Kubernetes: one replica
        ({**WEBHOOK}, False),  # webhook mode on one machine: no cluster, no Lease
        ({"BACKEND": "kubernetes", **WEBHOOK}, True),
        ({"BACKEND": "kubernetes", **WEBHOOK, "MANAGER_REPLICAS": "1"}, False),
    ],
)
def test_only_replicas_in_webhook_mode_on_kubernetes_elect_a_leader(
    env: dict[str, str], elected: bool
) -> None:
    settings = load_settings(ManagerSettings, {**BASE, **env})
    assert leader_elected(settings) is elected


def test_timings_keep_client_gos_order() -> None:
    assert LeaseTiming() == LeaseTiming(duration=15.0, renew_deadline=10.0, retry_period=2.0)
    with pytest.raises(ValueError, match="renew_deadline < duration"):
        LeaseTiming(duration=10.0, renew_deadline=10.0)


def test_identities_and_times_are_what_kubernetes_expects() -> None:
    first, second = new_identity(), new_identity()
    assert first != second and first.rsplit("_", 1)[0] == second.rsplit("_", 1)[0]
    stamp = micro_time()
    assert stamp.endswith("Z") and len(stamp.split(".")[1]) == 7  # six digits and the Z
