"""`python -m manager_bot` waits out trouble at start instead of crashing into a restart loop.

Telegram answering 502, a PostgreSQL database that does not exist yet, a Kubernetes
API answering 503: the manager serves /healthz at once, answers /readyz with 503
while it waits, logs one line per failed attempt, and starts serving when the
trouble passes. SIGTERM or SIGINT while it waits stops it at once.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from sqlalchemy.engine import make_url

from manager_bot.crypto import generate_key
from tests.e2e.conftest import PUBLIC_URL, polling, start_manager_process, stop_process
from tests.fakes.kubernetes_api import FakeKubernetes
from tests.fakes.loopback import free_port
from tests.fakes.telegram_api import FakeBot, FakeTelegram
from tests.fakes.waiting import wait_until


class Probes:
    """The manager's /healthz and /readyz, as kubelet asks them."""

    def __init__(self, http: aiohttp.ClientSession, port: int) -> None:
        self._http, self._base = http, f"http://127.0.0.1:{port}"

    async def status(self, path: str) -> tuple[int, str] | None:
        try:
            async with self._http.get(f"{self._base}{path}") as response:
                return response.status, await response.text()
        except aiohttp.ClientConnectionError:
            return None

    async def ready(self) -> bool:
        answer = await self.status("/readyz")
        return answer is not None and answer[0] == 200


def output_of(cwd: Path) -> str:
    """What the manager printed so far (start_manager_process writes it to a file)."""
    path = cwd / "manager-output.log"
    return path.read_text(errors="replace") if path.exists() else ""


def failures(cwd: Path, step: str) -> int:
    return output_of(cwd).count(f"start-up: {step} failed")


async def greets(telegram: FakeTelegram, manager: FakeBot) -> None:
    user = telegram.user(manager)
    await user.send("/start")
    await user.wait_for(text_contains="Hatchbot", timeout=15)


async def test_telegram_answering_502_at_start_delays_readiness_without_a_crash(
    telegram: FakeTelegram, tmp_path: Path
) -> None:
    manager = telegram.add_bot(username="hatchbot_manager_bot")
    telegram.inject_fault("getMe", status=502, times=3, bot=manager)
    telegram.inject_fault("setMyCommands", status=502, times=2, bot=manager)
    port = free_port()
    process = await start_manager_process(telegram, manager, tmp_path, METRICS_PORT=str(port))
    try:
        async with aiohttp.ClientSession() as http:
            probes = Probes(http, port)

            async def asked_for_itself() -> bool:
                return bool(telegram.calls("getMe", bot=manager))

            await wait_until(asked_for_itself, timeout=60)
            assert await probes.status("/healthz") == (200, "ok\n")
            code, text = await probes.status("/readyz") or (0, "")
            assert (code, text) == (503, "starting: waiting for Telegram getMe\n")
            await wait_until(probes.ready, timeout=30)
        assert process.returncode is None  # waited: never exited
        await greets(telegram, manager)
    finally:
        output = await stop_process(process)
    assert len(telegram.calls("getMe", bot=manager)) >= 4
    assert output.count("start-up: Telegram getMe failed (TelegramServerError") == 3
    assert output.count("start-up: Telegram setMyCommands failed") == 2
    assert "deploy" in {c["command"] for commands in manager.commands.values() for c in commands}
    assert "Traceback" not in output
    assert manager.token not in output


async def test_a_database_created_after_the_start_is_waited_for(
    telegram: FakeTelegram, tmp_path: Path, postgres_url: str
) -> None:
    # The fixture's database is dropped, then made again while the manager waits for it
    # (as when PostgreSQL's operator is still creating it).
    name = make_url(postgres_url).database
    admin_dsn = (
        make_url(os.environ["TEST_POSTGRES_URL"])
        .set(drivername="postgresql")
        .render_as_string(hide_password=False)
    )
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'DROP DATABASE "{name}"')
        manager = telegram.add_bot(username="hatchbot_manager_bot")
        port = free_port()
        process = await start_manager_process(
            telegram, manager, tmp_path, METRICS_PORT=str(port), DATABASE_URL=postgres_url,
            ENCRYPTION_KEYS=generate_key(),
        )  # fmt: skip
        try:
            async with aiohttp.ClientSession() as http:
                probes = Probes(http, port)

                async def failed_twice() -> bool:
                    return failures(tmp_path, "database") >= 2

                await wait_until(failed_twice, timeout=60)
                assert await probes.status("/healthz") == (200, "ok\n")
                assert await probes.status("/readyz") == (
                    503,
                    "starting: waiting for database\n",
                )
                assert process.returncode is None
                assert not telegram.calls("getUpdates", bot=manager)
                await admin.execute(f'CREATE DATABASE "{name}"')
                await wait_until(probes.ready, timeout=60)
            await greets(telegram, manager)
        finally:
            output = await stop_process(process)
    finally:
        await admin.close()
    assert f'database "{name}" does not exist' in output
    assert "start-up: database done after" in output
    assert "Traceback" not in output


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_stop_while_waiting_for_the_database_ends_the_process_at_once(
    telegram: FakeTelegram, tmp_path: Path, stop_signal: signal.Signals
) -> None:
    manager = telegram.add_bot(username="hatchbot_manager_bot")
    nobody = free_port()  # a PostgreSQL that never comes up
    port = free_port()
    process = await start_manager_process(
        telegram, manager, tmp_path, METRICS_PORT=str(port),
        DATABASE_URL=f"postgresql+asyncpg://postgres@127.0.0.1:{nobody}/hatchbot",
        ENCRYPTION_KEYS=generate_key(),
    )  # fmt: skip
    try:

        async def failed_four_times() -> bool:
            return failures(tmp_path, "database") >= 4

        await wait_until(failed_four_times, timeout=60)
        async with aiohttp.ClientSession() as http:
            assert await Probes(http, port).status("/readyz") == (
                503,
                "starting: waiting for database\n",
            )
        process.send_signal(stop_signal)
        # The next attempt is 4 s away (the backoff doubles): a prompt exit did not wait.
        assert await asyncio.wait_for(process.wait(), timeout=3) == 0
    finally:
        output = await stop_process(process)
    assert "ConnectionRefusedError" in output
    assert "stopped before start-up was done" in output
    assert "Traceback" not in output


def kubernetes_env(kubeconfig: Path, port: int) -> dict[str, str]:
    return {
        "BACKEND": "kubernetes",
        "PUBLIC_URL": PUBLIC_URL,
        "KUBECONFIG": str(kubeconfig),
        "METRICS_PORT": str(port),
    }


async def test_a_kubernetes_api_answering_503_at_start_is_retried_before_polling(
    telegram: FakeTelegram, tmp_path: Path, kube: FakeKubernetes, kubeconfig: Path
) -> None:
    kube.inject_fault(status=503, verb="list", resource="deployments", times=3)
    manager = telegram.add_bot(username="hatchbot_manager_bot")
    port = free_port()
    process = await start_manager_process(
        telegram, manager, tmp_path, **kubernetes_env(kubeconfig, port)
    )
    try:
        async with aiohttp.ClientSession() as http:
            probes = Probes(http, port)

            async def failed_once() -> bool:
                return failures(tmp_path, "reconcile") >= 1

            await wait_until(failed_once, timeout=60)
            assert await probes.status("/readyz") == (503, "starting: waiting for reconcile\n")
            assert not await polling(telegram, manager)
            await wait_until(probes.ready, timeout=30)
        await greets(telegram, manager)
    finally:
        output = await stop_process(process)
    assert "start-up: reconcile failed (KubernetesError: Kubernetes API answered 503" in output
    assert "reconciled: 0 applied, 0 removed" in output
    assert "Traceback" not in output


async def test_a_cluster_down_for_long_does_not_keep_users_waiting(
    telegram: FakeTelegram, tmp_path: Path, kube: FakeKubernetes, kubeconfig: Path
) -> None:
    kube.inject_fault(status=503, verb="list", resource="deployments", times=10_000)
    manager = telegram.add_bot(username="hatchbot_manager_bot")
    port = free_port()
    process = await start_manager_process(
        telegram, manager, tmp_path, **kubernetes_env(kubeconfig, port)
    )
    try:
        async with aiohttp.ClientSession() as http:
            # Past RECONCILE_PATIENCE (10 s) polling starts, the cluster still down.
            await wait_until(Probes(http, port).ready, timeout=60)
        await greets(telegram, manager)
        assert "polling starts; reconcile retries beside it" in output_of(tmp_path)
        kube.clear_faults()

        async def reconciled() -> bool:
            return "reconciled: 0 applied, 0 removed" in output_of(tmp_path)

        await wait_until(reconciled, timeout=60)  # the retries went on beside polling
    finally:
        output = await stop_process(process)
    assert "Traceback" not in output
