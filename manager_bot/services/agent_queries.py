"""What users and jobs read about agents: their rows, counts, logs and what runs.

The Deployer keeps the write paths; these never change anything.
"""

from __future__ import annotations

from manager_bot.backends.base import Backend, BackendError, Observed
from manager_bot.crypto import Vault
from manager_bot.db.models import Agent
from manager_bot.db.repositories import Repositories
from manager_bot.db.session import Database
from manager_bot.services.errors import AgentNotFound, DeployFailed, cluster_code
from manager_bot.services.telegram import AgentTelegram, WebhookStatus
from runtime.redaction import redact

LOGS_STEP = "workload"


async def owned(repos: Repositories, owner_id: int, agent_id: str) -> Agent:
    """The owner's live agent; a forged id and another user's agent look the same."""
    agent = await repos.agents.get_owned(owner_id, agent_id)
    if agent is None:
        raise AgentNotFound(agent_id)
    return agent


class AgentQueries:
    def __init__(
        self, *, database: Database, vault: Vault, backend: Backend, telegram: AgentTelegram,
        max_agents_per_user: int,
    ) -> None:  # fmt: skip
        self._db = database
        self._vault = vault
        self._backend = backend
        self._telegram = telegram
        self._max_agents = max_agents_per_user

    async def agent(self, *, owner_id: int, agent_id: str) -> Agent:
        async with self._db.session() as session:
            return await owned(Repositories(session), owner_id, agent_id)

    async def agents_of(self, owner_id: int) -> list[Agent]:
        async with self._db.session() as session:
            return list(await Repositories(session).agents.owned_by(owner_id))

    async def agent_counts(self) -> dict[tuple[str, str], int]:
        """Live agents by (desired, observed) state, for the manager's metrics."""
        async with self._db.session() as session:
            return await Repositories(session).agents.count_by_state()

    async def quota_reached(self, owner_id: int) -> bool:
        async with self._db.reading() as session:
            count = await Repositories(session).agents.count_active(owner_id)
        return count >= self._max_agents

    async def observed(self, agent_id: str) -> Observed | None:
        """What the backend sees of one agent now (None if it cannot tell)."""
        try:
            return await self._backend.observe(agent_id)
        except BackendError:
            return None

    async def webhook_status(self, agent: Agent) -> WebhookStatus:
        return await self._telegram.webhook_status(self._vault.decrypt(agent.token_encrypted))

    async def logs(self, *, owner_id: int, agent_id: str, lines: int = 100) -> str:
        """The agent's recent log, with its secrets (and anything secret-shaped) redacted."""
        async with self._db.session() as session:
            agent = await owned(Repositories(session), owner_id, agent_id)
        try:
            text = await self._backend.logs(agent.id, lines)
        except BackendError as error:
            raise DeployFailed(
                LOGS_STEP, str(error), rolled_back=False, code=cluster_code(error.status)
            ) from None
        return redact(text, self._secrets_of(agent))

    def _secrets_of(self, agent: Agent) -> list[str]:
        values = [
            self._vault.decrypt(agent.token_encrypted),
            self._vault.decrypt(agent.webhook_secret_encrypted),
        ]
        for optional in (agent.llm_api_key_encrypted, agent.gateway_key_encrypted):
            if optional:
                values.append(self._vault.decrypt(optional))
        return values
