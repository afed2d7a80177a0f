"""Webhook mode's settings: what it requires, and Telegram's rule for the secret."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from manager_bot.config import ManagerSettings
from manager_bot.intake.listener import webhook_path, webhook_url
from runtime.settings_loading import ConfigError, load_settings

TOKEN = "123456789:AAH-fake-token-for-tests-only-xxxxxxxx"
WEBHOOK = {
    "MANAGER_BOT_TOKEN": TOKEN,
    "MANAGER_WEBHOOK": "true",
    "MANAGER_WEBHOOK_SECRET": "s3cret_-token",
    "PUBLIC_URL": "https://bots.example.com",
    "REDIS_URL": "redis://127.0.0.1:6379/0",
}


def test_polling_stays_the_default() -> None:
    settings = load_settings(ManagerSettings, {"MANAGER_BOT_TOKEN": TOKEN})
    assert settings.manager_webhook is False
    assert settings.manager_webhook_port == 8081
    assert settings.manager_replicas is None


def test_webhook_mode_with_redis() -> None:
    settings = load_settings(ManagerSettings, WEBHOOK)
    assert settings.manager_webhook is True
    assert settings.manager_webhook_secret is not None


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        ({"PUBLIC_URL": ""}, "PUBLIC_URL is required when MANAGER_WEBHOOK=true"),
        ({"MANAGER_WEBHOOK_SECRET": ""}, "MANAGER_WEBHOOK_SECRET"),
        ({"MANAGER_WEBHOOK_SECRET": "has space"}, "A-Z, a-z, 0-9, _ and -"),
        ({"MANAGER_WEBHOOK_SECRET": "x" * 257}, "A-Z, a-z, 0-9, _ and -"),
        ({"REDIS_URL": ""}, "REDIS_URL is required when MANAGER_WEBHOOK=true"),
        ({"REDIS_URL": "", "MANAGER_REPLICAS": "2"}, "REDIS_URL is required"),
        ({"MANAGER_WEBHOOK": "false", "MANAGER_REPLICAS": "2"}, "needs MANAGER_WEBHOOK=true"),
    ],
)
def test_what_webhook_mode_refuses(change: dict[str, str], complaint: str) -> None:
    env = {key: value for key, value in {**WEBHOOK, **change}.items() if value}
    with pytest.raises(ConfigError) as raised:
        load_settings(ManagerSettings, env)
    assert complaint in str(raised.value)
    assert "has space" not in str(raised.value)  # the secret is never echoed


def test_one_replica_needs_no_redis() -> None:
    env = {key: value for key, value in WEBHOOK.items() if key != "REDIS_URL"}
    settings = load_settings(ManagerSettings, {**env, "MANAGER_REPLICAS": "1"})
    assert settings.redis_url is None


def test_the_path_is_derived_from_the_secret() -> None:
    # What the README tells operators: sha256 of the secret, first 32 hex digits.
    secret = SecretStr("s3cret_-token")
    path = webhook_path(secret)
    # echo -n 's3cret_-token' | sha256sum | cut -c1-32
    assert path == "699cdb6cf1d62a695a53617271803c3f"
    assert webhook_url("https://bots.example.com/", secret) == (
        f"https://bots.example.com/telegram/{path}"
    )
    assert "s3cret" not in path
