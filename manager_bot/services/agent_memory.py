"""What agents remember of their chats: forgetting on the owner's word, and with age.

Conversations are kept by the gateway (`gateway/memory.py`, table `conversations`)
and cached by each running agent. "Forget all conversations" deletes the rows and
then tells the running agent, with its webhook secret, to forget too (the agent's
own forget goes after any write it still has queued, so nothing forgotten comes
back). An agent that cannot be told is restarted: a fresh process remembers only
what is stored, which is nothing. Chats idle for MEMORY_IDLE_DAYS are dropped by
the manager's sweep; deleting an agent deletes its conversations (Deployer.delete).
"""

from __future__ import annotations

import enum
import logging
from datetime import timedelta

import aiohttp

from manager_bot.backends.base import Backend, BackendError
from manager_bot.crypto import Vault
from manager_bot.db.models import DesiredState, utcnow
from manager_bot.db.repositories import Repositories
from manager_bot.db.session import Database
from manager_bot.services.deployer import Deployer

log = logging.getLogger(__name__)
TELL_TIMEOUT = 25.0  # the agent answers once the gateway has forgotten (≤ 20 s)


class Forgotten(enum.StrEnum):
    AT_ONCE = "at-once"  # the running agent forgot too (or none was running)
    BY_RESTART = "by-restart"  # the agent could not be told, so it was restarted


class AgentMemory:
    def __init__(
        self, *, database: Database, vault: Vault, backend: Backend, deployer: Deployer,
        idle_days: int,
    ) -> None:  # fmt: skip
        self._db = database
        self._vault = vault
        self._backend = backend
        self._deployer = deployer
        self._idle = timedelta(days=idle_days)

    async def forget_all(self, *, owner_id: int, agent_id: str) -> Forgotten:
        """Every conversation of one of the owner's agents (AgentNotFound otherwise)."""
        agent = await self._deployer.queries.agent(owner_id=owner_id, agent_id=agent_id)
        async with self._db.session() as session:
            repos = Repositories(session)
            chats = await repos.conversations.forget(agent.id)
            await repos.audit.record(
                actor_id=owner_id, action="forget_memory", agent_id=agent.id, outcome="ok",
                detail=f"{chats} stored chats",
            )  # fmt: skip
        if agent.desired_state != DesiredState.RUNNING:
            return Forgotten.AT_ONCE  # no process holds any of it
        if await self._tell(agent.id, self._vault.decrypt(agent.webhook_secret_encrypted)):
            return Forgotten.AT_ONCE
        await self._deployer.restart(owner_id=owner_id, agent_id=agent_id)
        return Forgotten.BY_RESTART

    async def forget_idle(self) -> int:
        """Drops chats nobody wrote in for MEMORY_IDLE_DAYS; returns how many."""
        async with self._db.session() as session:
            dropped = await Repositories(session).conversations.forget_idle(utcnow() - self._idle)
        if dropped:
            log.info("forgot %d conversations idle for %s days", dropped, self._idle.days)
        return dropped

    async def _tell(self, agent_id: str, secret: str) -> bool:
        """True when the running agent has forgotten (and made the gateway forget)."""
        try:
            observed = await self._backend.observe(agent_id)
        except BackendError as error:
            log.warning("cannot find agent %s to make it forget: %s", agent_id, error)
            return False
        if observed is None or observed.probe_url is None:
            return False
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=TELL_TIMEOUT)) as http,
                http.post(
                    f"{observed.probe_url}/memory/forget",
                    headers={"Authorization": f"Bearer {secret}"},
                ) as answer,
            ):
                told = answer.status == 200
        except (aiohttp.ClientError, TimeoutError) as error:
            log.warning("agent %s did not answer forget: %s", agent_id, type(error).__name__)
            return False
        if not told:
            log.warning("agent %s refused to forget (HTTP %s)", agent_id, answer.status)
        return told
