"""Settings: exact env contract, one clear line on bad input, secrets never printed."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from manager_bot.config import ManagerSettings
from runtime.config import RuntimeSettings
from runtime.settings_loading import ConfigError, load_settings

SECRET = "123456789:AAH-fake-token-for-tests-only-xxxxxxxx"


def run_cli(module: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.isupper() or k in ("PATH", "HOME")}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_manager_defaults_are_the_embedded_ones() -> None:
    settings = load_settings(ManagerSettings, {"MANAGER_BOT_TOKEN": SECRET})
    assert settings.backend == "local"
    assert settings.database_url.get_secret_value() == "sqlite+aiosqlite:///data/hatchbot.db"
    assert settings.k8s_namespace == "agents"
    assert settings.k8s_router == "istio"
    assert settings.health_interval == 30
    assert settings.max_agents_per_user == 3
    assert settings.admin_ids == []
    assert settings.event_loop == "uvloop"


def test_comma_separated_lists() -> None:
    settings = load_settings(
        ManagerSettings,
        {"MANAGER_BOT_TOKEN": SECRET, "ADMIN_IDS": "1, 2,3", "ENCRYPTION_KEYS": "a,b"},
    )
    assert settings.admin_ids == [1, 2, 3]
    assert [key.get_secret_value() for key in settings.encryption_keys] == ["a", "b"]


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({}, "MANAGER_BOT_TOKEN"),
        ({"MANAGER_BOT_TOKEN": SECRET, "HEALTH_INTERVAL": "soon"}, "HEALTH_INTERVAL"),
        ({"MANAGER_BOT_TOKEN": SECRET, "BACKEND": "docker"}, "BACKEND"),
        ({"MANAGER_BOT_TOKEN": SECRET, "EVENT_LOOP": "trio"}, "EVENT_LOOP"),
        ({"MANAGER_BOT_TOKEN": SECRET, "BACKEND": "kubernetes"}, "PUBLIC_URL"),
        ({"MANAGER_BOT_TOKEN": SECRET, "ADMIN_IDS": "1,me"}, "ADMIN_IDS"),
        ({"MANAGER_BOT_TOKEN": SECRET, "DATABASE_URL": "postgresql://u:pw@h/db"}, "DATABASE_URL"),
    ],
)
def test_manager_bad_setting_names_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(ManagerSettings, env)
    assert variable in str(caught.value)


def test_manager_cli_exits_2_with_one_line_and_no_secret() -> None:
    result = run_cli(
        "manager_bot",
        {"MANAGER_BOT_TOKEN": SECRET, "DATABASE_URL": f"postgresql://u:{SECRET}@h/db"},
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "DATABASE_URL" in result.stderr
    assert SECRET not in result.stderr + result.stdout


def test_runtime_cli_missing_settings() -> None:
    result = run_cli("runtime", {})
    assert result.returncode == 2
    assert "BOT_TOKEN" in result.stderr and "AGENT_ID" in result.stderr
    assert "Traceback" not in result.stderr


def test_runtime_needs_a_webhook_secret_in_webhook_mode() -> None:
    env = {"BOT_TOKEN": SECRET, "AGENT_ID": "a1", "LLM_MODEL": "gpt-4o-mini"}
    with pytest.raises(ConfigError, match="WEBHOOK_SECRET"):
        load_settings(RuntimeSettings, env)
    settings = load_settings(RuntimeSettings, {**env, "MODE": "polling"})
    assert settings.port == 8080


@pytest.mark.parametrize("module", ["manager_bot", "runtime"])
def test_help_lists_settings_without_secret_values(module: str) -> None:
    result = run_cli(module, {"MANAGER_BOT_TOKEN": SECRET, "BOT_TOKEN": SECRET}, "--help")
    assert result.returncode == 0
    assert "TELEGRAM_API_URL" in result.stdout
    assert SECRET not in result.stdout
    names = (
        ManagerSettings.model_fields if module == "manager_bot" else RuntimeSettings.model_fields
    )
    for name in names:
        assert name.upper() in result.stdout
