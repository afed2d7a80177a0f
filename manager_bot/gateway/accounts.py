"""Who is calling: an agent's credential resolved to what the gateway needs to serve it.

Rows are cached for `cache_seconds` (settings: GATEWAY_CACHE_SECONDS), so a Stop,
a ban or a new key reaches every gateway replica within about that time, without
a database query per completion. A row is served for up to twice that while
one background read refreshes it: agents whose rows expire together must not
queue their completions behind a burst of reads (bench/gateway.py saw that as
the added p99). So a change reaches the gateway within 2 × GATEWAY_CACHE_SECONDS.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime

from manager_bot.crypto import Vault
from manager_bot.db.models import Agent, DesiredState, User
from manager_bot.db.repositories import Repositories
from manager_bot.db.session import Database
from manager_bot.gateway.credentials import credential_hash
from manager_bot.services.budgets import effective_budget
from manager_bot.services.providers import CUSTOM, Provider, find_provider
from runtime.tasks import cancel_and_wait

log = logging.getLogger(__name__)
UNKNOWN_REMEMBERED = 10_000
READS_AT_ONCE = 4


def utc_today() -> date:
    return datetime.now(UTC).date()


@dataclass(frozen=True)
class Upstream:
    """Where one agent's completions go, and the header that carries the key."""

    chat_url: str
    models_url: str
    headers: dict[str, str]  # a provider key inside: never logged
    # A user's own endpoint: checked against private addresses on every request.
    user_endpoint: bool = False


@dataclass(frozen=True)
class AgentAccount:
    agent_id: str
    owner_id: int
    model: str
    # None when the agent may use the gateway; else why not (stopped, banned, deleted).
    refusal: str | None
    budget: int  # tokens per UTC day; 0: no limit
    used_in_database: int  # today's tokens as stored when the row was read
    day: date
    upstream: Upstream | None  # None: no key for the provider (the platform has none)
    fetched_at: float


def upstream_for(agent: Agent, providers: tuple[Provider, ...], vault: Vault) -> Upstream | None:
    """The provider's endpoint and the right key: the user's own, else the platform's."""
    provider = find_provider(providers, agent.provider)
    key: str | None = None
    if agent.llm_api_key_encrypted:
        key = vault.decrypt(agent.llm_api_key_encrypted)
    elif provider is not None and provider.platform_key is not None:
        key = provider.platform_key.get_secret_value()
    if agent.provider == CUSTOM:
        if not agent.llm_base_url:
            return None
        base = agent.llm_base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return Upstream(f"{base}/chat/completions", f"{base}/models", headers, user_endpoint=True)
    if provider is None or key is None or provider.base_url is None:
        return None
    base = provider.base_url.rstrip("/")
    if provider.runtime_provider == "azure":
        version = provider.api_version or "2024-10-21"
        return Upstream(
            f"{base}/openai/deployments/{agent.model}/chat/completions?api-version={version}",
            f"{base}/openai/models?api-version={version}",
            {"api-key": key},
        )
    return Upstream(
        f"{base}/chat/completions", f"{base}/models", {"Authorization": f"Bearer {key}"}
    )


def refusal_of(agent: Agent, owner: User | None) -> str | None:
    if agent.desired_state == DesiredState.DELETED:
        return "deleted"
    if owner is not None and owner.is_banned:
        return "banned"
    if agent.desired_state != DesiredState.RUNNING:
        return "stopped"
    return None


class AccountBook:
    """Credential -> AgentAccount, cached briefly; unknown credentials are cached too."""

    def __init__(
        self,
        *,
        database: Database,
        vault: Vault,
        providers: tuple[Provider, ...],
        default_budget: int,
        cache_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        today: Callable[[], date] = utc_today,
    ) -> None:
        self._db = database
        self._vault = vault
        self._providers = providers
        self._default_budget = default_budget
        self._ttl = cache_seconds
        self._clock = clock
        self._today = today
        self._known: dict[str, AgentAccount] = {}
        self._unknown: OrderedDict[str, float] = OrderedDict()
        self._reading: dict[str, asyncio.Task[AgentAccount | None]] = {}
        # A few reads at a time: a burst of refreshes must not fill the loop (and SQLite's
        # readers) while completions wait behind it.
        self._read_slots = asyncio.Semaphore(READS_AT_ONCE)

    async def find(self, credential: str) -> AgentAccount | None:
        key_hash = credential_hash(credential)
        now = self._clock()
        cached = self._known.get(key_hash)
        if cached is not None:
            age = now - cached.fetched_at
            if age < self._ttl:
                return cached
            if age < 2 * self._ttl:  # served while one read refreshes it behind
                if key_hash not in self._reading:
                    self._start_read(key_hash, now)
                return cached
        missed_at = self._unknown.get(key_hash)
        if missed_at is not None and now - missed_at < self._ttl:
            return None
        reading = self._reading.get(key_hash) or self._start_read(key_hash, now)
        return await asyncio.shield(reading)

    async def reread(self, credential: str) -> AgentAccount | None:
        """The row read now, whatever the cache holds (after a provider refused the key)."""
        key_hash = credential_hash(credential)
        reading = self._reading.get(key_hash) or self._start_read(key_hash, self._clock())
        return await asyncio.shield(reading)

    def _start_read(self, key_hash: str, now: float) -> asyncio.Task[AgentAccount | None]:
        """One read per credential at a time, whoever asks."""
        task = asyncio.create_task(self._refresh(key_hash, now))
        self._reading[key_hash] = task
        task.add_done_callback(lambda _: self._reading.pop(key_hash, None))
        return task

    async def _refresh(self, key_hash: str, now: float) -> AgentAccount | None:
        try:
            async with self._read_slots:
                account = await self._read(key_hash, now)
        except Exception:
            cached = self._known.get(key_hash)
            if cached is None:
                raise
            log.warning("re-reading an agent's row failed; the cached one is served")
            return cached
        if account is None:
            self._known.pop(key_hash, None)
            self._unknown[key_hash] = now
            while len(self._unknown) > UNKNOWN_REMEMBERED:
                self._unknown.popitem(last=False)
        else:
            self._known[key_hash] = account
            self._unknown.pop(key_hash, None)
        return account

    async def close(self) -> None:
        for task in list(self._reading.values()):
            with contextlib.suppress(Exception):  # a failed read: closing anyway
                await cancel_and_wait(task)

    async def _read(self, key_hash: str, now: float) -> AgentAccount | None:
        day = self._today()
        async with self._db.reading() as session:
            repos = Repositories(session)
            found = await repos.agents.by_gateway_key(key_hash, day=day)
            if found is None:
                return None
            agent, owner, used = found
            # Built inside the session: the reading session's end expires its rows.
            return AgentAccount(
                agent_id=agent.id,
                owner_id=agent.owner_id,
                model=agent.model,
                refusal=refusal_of(agent, owner),
                budget=effective_budget(agent, owner, self._default_budget),
                used_in_database=used,
                day=day,
                upstream=upstream_for(agent, self._providers, self._vault),
                # Spread over the last half of the lifetime: rows read together (a burst
                # after a quiet spell) do not all expire together again.
                fetched_at=now - random.uniform(0, self._ttl / 2),
            )
