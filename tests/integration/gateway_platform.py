"""The LLM gateway as the integration tests run it: the real one, on a fresh SQLite
database, in front of the fake OpenAI server, and agent rows made as the deployer makes
them (`platform.agent()`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

from manager_bot.config import PlatformSettings
from manager_bot.crypto import Vault, generate_key
from manager_bot.db.migrate import upgrade
from manager_bot.db.models import Agent, DesiredState
from manager_bot.db.repositories import Repositories
from manager_bot.db.session import Database
from manager_bot.gateway.credentials import credential_hash, new_credential
from manager_bot.gateway.process import build_gateway
from manager_bot.gateway.server import Gateway
from runtime.settings_loading import load_settings
from tests.fakes.openai_api import FakeOpenAI

PLATFORM_KEY = "sk-platformkeyplatformkey00"
USER_KEY = "sk-userownkeyuserownkey0000"
OWNER = 4242
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi there"}]


@dataclass
class Platform:
    database: Database
    key: str  # the vault's Fernet key
    settings: PlatformSettings
    gateway: Gateway
    llm: FakeOpenAI

    @property
    def vault(self) -> Vault:
        return Vault([self.key])

    async def agent(self, **fields: Any) -> tuple[Agent, str]:
        """An agent row with a fresh gateway credential (as the deployer makes one)."""
        return await agent_row(self.database, self.vault, **fields)

    async def update(self, agent_id: str, **fields: Any) -> None:
        async with self.database.session() as session:
            agent = await Repositories(session).agents.get(agent_id)
            assert agent is not None
            for name, value in fields.items():
                setattr(agent, name, value)

    async def stored_tokens(self, agent_id: str) -> int:
        async with self.database.session() as session:
            totals = await Repositories(session).usage.totals(
                since=datetime.now(UTC).date(), agent_ids=[agent_id]
            )
        return totals[agent_id].tokens if agent_id in totals else 0


@pytest.fixture
def gateway_env() -> dict[str, str]:
    return {}


@pytest.fixture
async def platform(
    sqlite_url: str, openai_server: FakeOpenAI, gateway_env: dict[str, str]
) -> AsyncIterator[Platform]:
    openai_server.expected_key = PLATFORM_KEY
    settings = load_settings(
        PlatformSettings,
        {
            "DATABASE_URL": sqlite_url,
            "OPENAI_API_KEY": PLATFORM_KEY,
            "OPENAI_BASE_URL": openai_server.url,
            "GATEWAY_CACHE_SECONDS": "0",
            "GATEWAY_FLUSH_SECONDS": "0.2",
            **gateway_env,
        },
    )
    await upgrade(sqlite_url)
    database, key = Database(sqlite_url), generate_key()
    gateway = build_gateway(settings=settings, database=database, vault=Vault([key]))
    await gateway.start("127.0.0.1", 0)
    platform = Platform(database, key, settings, gateway, openai_server)
    try:
        yield platform
    finally:
        await platform.gateway.stop()
        await database.close()


async def agent_row(
    database: Database, vault: Vault, *, owner_id: int = OWNER, **fields: Any
) -> tuple[Agent, str]:
    """An agent row with a fresh gateway credential, as the deployer makes one."""
    credential = new_credential()
    values: dict[str, Any] = {
        "owner_id": owner_id, "name": "A", "bot_id": abs(hash(credential)) % 10**9,
        "bot_username": "a_bot", "token_encrypted": vault.encrypt("1:x"),
        "webhook_secret_encrypted": vault.encrypt("w" * 32), "provider": "openai",
        "model": "gpt-4o-mini", "system_prompt": "Be brief.",
        "desired_state": DesiredState.RUNNING.value,
        "gateway_key_encrypted": vault.encrypt(credential),
        "gateway_key_hash": credential_hash(credential),
    }  # fmt: skip
    values.update(fields)
    async with database.session() as session:
        repos = Repositories(session)
        await repos.users.upsert(user_id=owner_id, username=None, first_name="O")
        agent = await repos.agents.add(Agent(**values))
    return agent, credential
