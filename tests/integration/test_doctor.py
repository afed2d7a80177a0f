"""`python -m manager_bot doctor`, run as an operator runs it, against the fakes."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from manager_bot.crypto import Vault, generate_key
from manager_bot.db.migrate import upgrade
from manager_bot.db.models import Agent
from manager_bot.db.repositories import Repositories
from manager_bot.db.session import Database
from tests.fakes.kubernetes_api import FakeKubernetes
from tests.fakes.loopback import free_port
from tests.fakes.telegram_api import FakeBot, FakeTelegram

REPO = Path(__file__).resolve().parents[2]
AGENT_TOKEN = "7000000009:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"


async def doctor(cwd: Path, env: dict[str, str]) -> tuple[int, dict[str, str], str]:
    """Exit code, {check name: 'PASS detail'} and the whole output."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "manager_bot", "doctor", cwd=cwd,
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO), **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output = (await asyncio.wait_for(process.communicate(), timeout=90))[0].decode()
    lines = {}
    for line in output.splitlines():
        verdict, _, rest = line.partition("  ")
        if verdict in ("PASS", "FAIL", "SKIP", "WARN"):
            name, _, detail = rest.strip().partition("  ")
            lines[name.strip()] = f"{verdict} {detail.strip()}"
    assert process.returncode is not None
    return process.returncode, lines, output


@pytest.fixture
async def public_endpoint() -> AsyncIterator[int]:
    """Something listening where PUBLIC_URL points (the gateway, in production)."""
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()


@pytest.fixture
async def stored(tmp_path: Path) -> tuple[str, str]:
    """A migrated SQLite database holding one agent's secrets; (url, the key)."""
    key = generate_key()
    url = f"sqlite+aiosqlite:///{tmp_path / 'data' / 'hatchbot.db'}"
    await upgrade(url)
    database = Database(url)
    vault = Vault([key])
    async with database.session() as session:
        repos = Repositories(session)
        await repos.users.upsert(user_id=1, username=None, first_name="Owner")
        await repos.agents.add(
            Agent(
                owner_id=1, name="Helper", bot_id=7000000009, bot_username="helper_bot",
                token_encrypted=vault.encrypt(AGENT_TOKEN),
                webhook_secret_encrypted=vault.encrypt("hook-secret-hook-secret"),
                provider="openai", model="gpt-4o-mini", system_prompt="Hi", revision=1,
            )
        )  # fmt: skip
    await database.close()
    return url, key


def base_env(
    manager: FakeBot, telegram: FakeTelegram, kubeconfig: Path, url: str, key: str, port: int
) -> dict[str, str]:
    return {
        "MANAGER_BOT_TOKEN": manager.token,
        "TELEGRAM_API_URL": telegram.url,
        "DATABASE_URL": url,
        "ENCRYPTION_KEYS": key,
        "BACKEND": "kubernetes",
        "KUBECONFIG": str(kubeconfig),
        "PUBLIC_URL": f"https://127.0.0.1:{port}",
    }


async def test_a_ready_installation_passes_every_check(
    telegram: FakeTelegram, kube: FakeKubernetes, kubeconfig: Path, stored: tuple[str, str],
    public_endpoint: int, tmp_path: Path,
) -> None:  # fmt: skip
    manager = telegram.add_bot(username="hatchbot_bot", can_manage_bots=True)
    env = base_env(manager, telegram, kubeconfig, *stored, public_endpoint)
    code, checks, output = await doctor(tmp_path, env)
    assert code == 0, output
    assert set(checks) == {
        "configuration", "database", "migrations", "encryption", "manager token",
        "managed bots", "cluster", "namespace", "permissions", "public URL",
    }  # fmt: skip
    assert all(line.startswith("PASS") for line in checks.values()), output
    assert checks["manager token"] == "PASS getMe: @hatchbot_bot"
    assert checks["managed bots"].startswith("PASS Bot Management Mode is on")
    assert "decrypt all 2 stored secrets" in checks["encryption"]
    assert "all 20 granted in agents" in checks["permissions"]
    assert kube.objects("secrets", "agents") == []  # the namespace probe was a dry run
    for secret in (manager.token, stored[1], AGENT_TOKEN):
        assert secret not in output


async def test_each_problem_is_named_and_fails_the_run(
    telegram: FakeTelegram, kube: FakeKubernetes, kubeconfig: Path, stored: tuple[str, str],
    tmp_path: Path,
) -> None:  # fmt: skip
    manager = telegram.add_bot(username="hatchbot_bot")
    revoked = telegram.add_bot(username="old_bot")
    telegram.revoke(revoked.token)
    url, _ = stored
    env = base_env(manager, telegram, kubeconfig, url, generate_key(), free_port())
    env["MANAGER_BOT_TOKEN"] = revoked.token
    kube.delete_object("namespaces", None, "agents")
    code, checks, output = await doctor(tmp_path, env)
    assert code == 1
    assert checks["encryption"].startswith("FAIL 2 of 2 stored secrets cannot be decrypted")
    assert checks["manager token"].startswith("FAIL Telegram rejected MANAGER_BOT_TOKEN")
    assert checks["namespace"] == "FAIL agents not found"
    assert checks["public URL"].startswith("FAIL cannot connect to 127.0.0.1")
    assert checks["cluster"].startswith("PASS")
    assert checks["managed bots"] == "SKIP needs the manager token"
    assert revoked.token not in output and AGENT_TOKEN not in output


async def test_bot_management_mode_off_is_a_warning_with_the_way_to_turn_it_on(
    telegram: FakeTelegram, kube: FakeKubernetes, kubeconfig: Path, stored: tuple[str, str],
    public_endpoint: int, tmp_path: Path,
) -> None:  # fmt: skip
    manager = telegram.add_bot(username="hatchbot_bot")  # can_manage_bots: false
    env = base_env(manager, telegram, kubeconfig, *stored, public_endpoint)
    code, checks, output = await doctor(tmp_path, env)
    assert code == 0, output  # the manager runs: users paste BotFather tokens instead
    assert checks["managed bots"].startswith("WARN Bot Management Mode is off"), output
    assert "@BotFather → your bot → Bot Settings → Bot Management Mode → Turn on" in output
    assert "all checks passed (1 warning(s): managed bots)" in output


async def test_missing_permissions_unmigrated_database_and_unreachable_cluster(
    telegram: FakeTelegram, kube: FakeKubernetes, tmp_path: Path, public_endpoint: int
) -> None:
    manager = telegram.add_bot(username="hatchbot_bot")
    kube.deny(verb="create", resource="services")
    kube.deny(verb="get", resource="pods/log")
    database = tmp_path / "old.db"
    database.write_bytes(b"")  # exists, never migrated
    kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig")
    env = base_env(
        manager, telegram, kubeconfig, f"sqlite+aiosqlite:///{database}", generate_key(),
        public_endpoint,
    )  # fmt: skip
    code, checks, _ = await doctor(tmp_path, env)
    assert code == 1
    assert checks["migrations"].startswith("FAIL at an empty database, latest is")
    assert "python -m manager_bot migrate" in checks["migrations"]
    assert checks["permissions"] == (
        "FAIL missing in agents: create services, get pods/log (see k8s/base/rbac.yaml)"
    )
    dead = tmp_path / "dead-kubeconfig"
    dead.write_text(kubeconfig.read_text().replace(kube.url, f"http://127.0.0.1:{free_port()}"))
    code, checks, _ = await doctor(tmp_path, {**env, "KUBECONFIG": str(dead)})
    assert code == 1
    assert checks["cluster"] == "FAIL cannot reach the Kubernetes API (ConnectionRefusedError)"
    assert "namespace" not in checks


async def test_webhook_mode_checks_the_leader_lease_rights(
    telegram: FakeTelegram, kube: FakeKubernetes, kubeconfig: Path, stored: tuple[str, str],
    public_endpoint: int, tmp_path: Path, redis_url: str,
) -> None:  # fmt: skip
    """Several replicas elect a leader: the Lease in the manager's namespace must be theirs."""
    manager = telegram.add_bot(username="hatchbot_bot", can_manage_bots=True)
    env = {
        **base_env(manager, telegram, kubeconfig, *stored, public_endpoint),
        "MANAGER_WEBHOOK": "true",
        "MANAGER_WEBHOOK_SECRET": "doctor-webhook-secret",
        "REDIS_URL": redis_url,
        "K8S_MANAGER_NAMESPACE": "hatchbot-system",
    }
    _, checks, output = await doctor(tmp_path, env)
    assert checks["leader lease"] == (
        "PASS may get, create and update the Lease hatchbot-manager-leader in hatchbot-system"
    ), output
    kube.deny(verb="update", resource="leases", group="coordination.k8s.io")
    code, checks, _ = await doctor(tmp_path, env)
    assert code == 1
    assert checks["leader lease"] == (
        "FAIL cannot update the Lease hatchbot-manager-leader in hatchbot-system "
        "(see k8s/base/rbac.yaml)"
    )
    # Polling (one process, no Lease) does not ask.
    _, checks, _ = await doctor(tmp_path, {**env, "MANAGER_WEBHOOK": "false"})
    assert "leader lease" not in checks
