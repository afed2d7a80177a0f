"""A manager's parts against the fakes, assembled as `python -m manager_bot` assembles them
(`manager_bot.app.assemble_manager`), without the chat: the integration tests' one wiring."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from manager_bot.app import ManagerParts, assemble_manager
from manager_bot.backends.base import Backend
from manager_bot.backends.kubernetes import KubernetesBackend
from manager_bot.config import ManagerSettings
from manager_bot.crypto import Vault, generate_key
from manager_bot.db.repositories import Repositories
from manager_bot.db.session import Database
from manager_bot.services.deployer import Deployer
from manager_bot.services.reconciler import Reconciler
from manager_bot.services.telegram import AgentTelegram
from runtime.settings_loading import load_settings
from tests.fakes.openai_api import FakeOpenAI
from tests.fakes.telegram_api import FakeBot, FakeTelegram

PUBLIC_URL = "https://bots.example.com"
OWNER, STRANGER = 1001, 2002


@dataclass
class World:
    parts: ManagerParts
    telegram: FakeTelegram
    llm: FakeOpenAI
    database_url: str
    manager: FakeBot  # the manager's own bot (it can manage bots)
    cleanup: contextlib.AsyncExitStack

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
    def reconciler(self) -> Reconciler:
        return self.parts.reconciler

    @property
    def agent_telegram(self) -> AgentTelegram:
        return self.parts.agent_telegram

    async def close(self) -> None:
        await self.cleanup.aclose()


async def build_world(
    *, url: str, backend: Backend, telegram: FakeTelegram, llm: FakeOpenAI
) -> World:
    manager = telegram.add_bot(username="hatch_bot", can_manage_bots=True)
    settings = load_settings(
        ManagerSettings,
        {
            "MANAGER_BOT_TOKEN": manager.token,
            "TELEGRAM_API_URL": telegram.url,
            "OPENAI_API_KEY": "sk-platformkeyplatformkey00",
            "OPENAI_BASE_URL": llm.url,
            "DATABASE_URL": url,
            "MAX_AGENTS_PER_USER": "2",
            "GATEWAY_PORT": "0",
            "PUBLIC_URL": PUBLIC_URL,
            **({"BACKEND": "kubernetes"} if isinstance(backend, KubernetesBackend) else {}),
        },
    )
    cleanup = contextlib.AsyncExitStack()
    try:
        parts = await assemble_manager(
            settings, cleanup=cleanup, backend=backend, vault=Vault([generate_key()]),
            ready_timeout=20, ready_poll_interval=0.05,
        )  # fmt: skip
        async with parts.database.session() as session:
            for user_id in (OWNER, STRANGER):
                await Repositories(session).users.upsert(
                    user_id=user_id, username=None, first_name="U"
                )
    except BaseException:
        await cleanup.aclose()
        raise
    return World(parts, telegram, llm, url, manager, cleanup)


@contextlib.asynccontextmanager
async def world_on(
    backend: Backend, *, url: str, telegram: FakeTelegram, llm: FakeOpenAI
) -> AsyncIterator[World]:
    world = await build_world(url=url, backend=backend, telegram=telegram, llm=llm)
    try:
        yield world
    finally:
        await world.close()
