"""The whole manager in-process: real aiogram, real services, fake Telegram/OpenAI/Kubernetes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from manager_bot.app import ManagerParts, assemble_manager
from manager_bot.backends.base import Backend
from manager_bot.backends.kubernetes import KubernetesBackend
from manager_bot.backends.local import LocalBackend
from manager_bot.backends.manifests import ClusterConfig
from manager_bot.config import ManagerSettings
from manager_bot.crypto import Vault, generate_key
from manager_bot.db.models import Agent
from manager_bot.db.session import Database
from manager_bot.gateway.server import Gateway
from manager_bot.scheduler import Scheduler
from manager_bot.services.broadcast import Broadcaster
from manager_bot.services.deployer import Deployer, NewAgent
from manager_bot.services.health import HealthConfig
from manager_bot.services.reconciler import Reconciler
from runtime.settings_loading import load_settings
from tests.fakes.agent_pods import FakeAgentPods
from tests.fakes.install import manager_kube  # noqa: F401 (the `kube` fixture, with RBAC)
from tests.fakes.kubernetes_api import FakeKubernetes
from tests.fakes.loopback import free_port
from tests.fakes.openai_api import FakeOpenAI
from tests.fakes.telegram_api import FakeBot, FakeTelegram
from tests.fakes.user import SimUser
from tests.fakes.waiting import wait_until

PUBLIC_URL = "https://bots.example.com"
REPO = Path(__file__).resolve().parents[2]


class Manager:
    """A manager assembled as `python -m manager_bot` assembles it, polling the fake
    Telegram; its scheduler is not started (tests run a sweep when they want one).

    A restart stops polling and closes every part, then assembles the manager anew:
    what carries over is what a new process would find (the database with the wizards'
    states, the vault's keys, the backend's agents).
    """

    def __init__(
        self, *, fake: FakeBot, settings: ManagerSettings, backend: Backend,
        health: HealthConfig | None,
    ) -> None:  # fmt: skip
        self.fake = fake
        self._settings, self._backend, self._health = settings, backend, health
        self._vault = Vault([generate_key()])
        self._cleanup = contextlib.AsyncExitStack()
        self._polling: asyncio.Task[None] | None = None
        self.parts: ManagerParts

    async def start(self) -> None:
        self._cleanup = contextlib.AsyncExitStack()
        try:
            self.parts = await assemble_manager(
                self._settings, cleanup=self._cleanup, backend=self._backend, vault=self._vault,
                health=self._health, ready_timeout=30,
            )  # fmt: skip
        except BaseException:
            await self._cleanup.aclose()
            raise
        self._polling = asyncio.create_task(
            self.parts.dispatcher.start_polling(
                self.parts.bot, polling_timeout=1, handle_signals=False
            )
        )

    async def stop(self) -> None:
        if self._polling is not None:
            try:
                await self.parts.dispatcher.stop_polling()
            except RuntimeError:  # polling has not begun yet
                self._polling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._polling
            self._polling = None
        await self._cleanup.aclose()

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    @property
    def deployer(self) -> Deployer:
        return self.parts.deployer

    @property
    def database(self) -> Database:
        return self.parts.database

    @property
    def backend(self) -> Backend:
        return self.parts.backend

    @property
    def scheduler(self) -> Scheduler:
        return self.parts.scheduler

    @property
    def broadcaster(self) -> Broadcaster:
        return self.parts.broadcaster

    @property
    def reconciler(self) -> Reconciler:
        return self.parts.reconciler

    @property
    def vault(self) -> Vault:
        return self.parts.vault

    @property
    def gateway(self) -> Gateway:
        """The LLM gateway in the manager's process (the local backend's)."""
        assert self.parts.gateway is not None, "on Kubernetes the gateway is its own process"
        return self.parts.gateway


@pytest.fixture
def manager_env() -> dict[str, str]:
    """Overridable per test (e.g. no platform key, so the wizard asks for one)."""
    return {"OPENAI_API_KEY": "sk-platformkeyplatformkey00", "MAX_AGENTS_PER_USER": "2"}


async def start_manager(
    *, telegram: FakeTelegram, openai_server: FakeOpenAI, backend: Backend, url: str,
    env: dict[str, str], health: HealthConfig | None = None,
) -> AsyncIterator[Manager]:  # fmt: skip
    fake = telegram.add_bot(username="hatchbot_bot", can_manage_bots=True)
    on_kubernetes = isinstance(backend, KubernetesBackend)
    settings = load_settings(
        ManagerSettings,
        {
            "MANAGER_BOT_TOKEN": fake.token,
            "TELEGRAM_API_URL": telegram.url,
            "OPENAI_BASE_URL": openai_server.url,
            "DATABASE_URL": url,
            # Fixed, as in production: after a restart agents find the gateway where it was.
            "GATEWAY_PORT": str(free_port()),
            **({"BACKEND": "kubernetes", "PUBLIC_URL": PUBLIC_URL} if on_kubernetes else {}),
            **env,
        },
    )
    manager = Manager(fake=fake, settings=settings, backend=backend, health=health)
    await manager.start()
    try:
        yield manager
    finally:
        await manager.stop()


@pytest.fixture
def give_up_after() -> timedelta:
    """How long an agent may crash-loop before the health sweep stops it (overridable)."""
    return timedelta(minutes=15)


@pytest.fixture
def local_backend_options() -> dict[str, Any]:
    return {"restart_backoff": (0.2,)}


@pytest.fixture
async def local_manager(
    telegram: FakeTelegram, openai_server: FakeOpenAI, sqlite_url: str, tmp_path: Path,
    manager_env: dict[str, str], give_up_after: timedelta, local_backend_options: dict[str, Any],
) -> AsyncIterator[Manager]:  # fmt: skip
    backend = LocalBackend(data_dir=tmp_path, **local_backend_options)
    try:
        async for manager in start_manager(
            telegram=telegram, openai_server=openai_server, backend=backend, url=sqlite_url,
            env=manager_env,
            health=HealthConfig(webhook_mode=False, give_up_after=give_up_after),
        ):  # fmt: skip
            yield manager
    finally:
        await backend.shutdown_agents()


@pytest.fixture
async def kube_manager(
    telegram: FakeTelegram, openai_server: FakeOpenAI, sqlite_url: str, kube: FakeKubernetes,
    kubeconfig: Path, manager_env: dict[str, str], agent_pods: FakeAgentPods,
    give_up_after: timedelta,
) -> AsyncIterator[Manager]:  # fmt: skip
    kube.auto_ready = True
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    backend = KubernetesBackend(
        api_client=client.ApiClient(configuration),
        cluster=ClusterConfig(
            namespace="agents",
            image="hatchbot:e2e",
            router="istio",
            public_url=PUBLIC_URL,
            probe_base=agent_pods.url,
        ),
    )
    health = HealthConfig(
        webhook_mode=True, expected_webhook=f"{PUBLIC_URL}/webhook/", give_up_after=give_up_after
    )
    try:
        async for manager in start_manager(
            telegram=telegram, openai_server=openai_server, backend=backend, url=sqlite_url,
            env=manager_env, health=health,
        ):  # fmt: skip
            yield manager
    finally:
        await backend.close()


# -- agents, quickly ----------------------------------------------------------------


async def deploy_directly(
    manager: Manager, telegram: FakeTelegram, owner_id: int, username: str
) -> Agent:
    """An agent made through the deployer (not the chat), for tests about what follows."""
    bot = telegram.add_bot(username=username, first_name="Helper")
    return await manager.deployer.deploy(
        NewAgent(
            owner_id=owner_id, bot_token=bot.token, provider="openai", model="gpt-4o-mini",
            system_prompt="You are a test agent.",
        )
    )  # fmt: skip


async def paste_token(user: SimUser, telegram: FakeTelegram, username: str) -> None:
    """/deploy with a pasted token of a new bot, up to the choice of model."""
    bot = telegram.add_bot(username=username, first_name=username.removesuffix("_bot").title())
    await user.send("/deploy")
    await user.press("I already have a bot")
    await user.wait_for(text_contains="Paste")
    await user.send(bot.token)
    await user.wait_for(text_contains=f"Got it: @{username}")


async def fill_wizard(user: SimUser, telegram: FakeTelegram, username: str) -> None:
    """/deploy with a pasted token up to the summary card (Deploy not yet pressed)."""
    await paste_token(user, telegram, username)
    await user.press("OpenAI · gpt-4o-mini")
    await user.wait_for(text_contains="Last step")
    await user.send("You are a test agent.")
    await user.wait_for(text_contains="Ready to deploy")


# -- the manager as a separate process (python -m manager_bot) ----------------------


async def polling(telegram: FakeTelegram, bot: FakeBot) -> bool:
    return bool(telegram.calls("getUpdates", bot=bot))


# Output goes to a file, not a pipe: a busy manager would fill a pipe nobody reads and stall.
_outputs: dict[int, Path] = {}


async def start_manager_process(
    telegram: FakeTelegram, bot: FakeBot, cwd: Path, **env: str
) -> asyncio.subprocess.Process:
    output = cwd / "manager-output.log"
    with output.open("ab") as sink:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "manager_bot", cwd=cwd,
            env={
                "PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(REPO),
                "MANAGER_BOT_TOKEN": bot.token, "TELEGRAM_API_URL": telegram.url,
                "GATEWAY_PORT": str(free_port()), **env,
            },
            stdout=sink, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
    _outputs[process.pid] = output
    return process


async def interrupt(process: asyncio.subprocess.Process) -> None:
    """SIGINT, as Ctrl-C (aiogram's polling stops on it too); a kill if it hangs."""
    if process.returncode is None:
        process.send_signal(signal.SIGINT)
    try:
        await asyncio.wait_for(process.wait(), timeout=20)
    except TimeoutError:
        process.kill()
        await process.wait()


async def stop_process(process: asyncio.subprocess.Process) -> str:
    """`interrupt`; everything the manager processes of this directory printed."""
    await interrupt(process)
    return _outputs.pop(process.pid).read_text(errors="replace")


async def answer_start_once(telegram: FakeTelegram, cwd: Path, **env: str) -> str:
    """The manager as a process, with `env`: once polling, one user's /start is answered;
    then it is stopped. Everything it printed."""
    manager = telegram.add_bot(username="hatchbot_manager_bot")
    process = await start_manager_process(telegram, manager, cwd, **env)
    try:
        await wait_until(lambda: polling(telegram, manager), timeout=60)
        user = telegram.user(manager)
        await user.send("/start")
        await user.wait_for(text_contains="Hatchbot", timeout=15)
    finally:
        output = await stop_process(process)
    return output
