"""What agents spend: usage counted by the gateway, and each agent's daily budget.

Everything here reads the database, never a pod: usage survives restarts,
edits and rotations, and `/stats` is the platform's own bookkeeping.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime

from manager_bot.db.models import Agent, User
from manager_bot.db.repositories import Repositories, UsageTotals
from manager_bot.db.session import Database
from manager_bot.services.errors import AgentNotFound


def today() -> date:
    return datetime.now(UTC).date()


@dataclass(frozen=True)
class Spend:
    today: UsageTotals
    month: UsageTotals
    budget: int  # tokens per UTC day; 0: no limit

    @property
    def left(self) -> int | None:
        return None if self.budget <= 0 else max(0, self.budget - self.today.tokens)


def effective_budget(agent: Agent, owner: User | None, default: int) -> int:
    """An admin's raise for the agent wins, then one for its owner, then the setting."""
    return _choose(agent.daily_token_budget, owner.daily_token_budget if owner else None, default)


def _choose(for_agent: int | None, for_owner: int | None, default: int) -> int:
    if for_agent is not None:
        return for_agent
    return for_owner if for_owner is not None else default


class Budgets:
    def __init__(self, *, database: Database, default_budget: int) -> None:
        self._db = database
        self.default_budget = default_budget

    async def spend_of(self, agents: Sequence[Agent]) -> dict[str, Spend]:
        if not agents:
            return {}
        day = today()
        ids = [agent.id for agent in agents]
        async with self._db.reading() as session:
            repos = Repositories(session)
            daily = await repos.usage.totals(since=day, agent_ids=ids)
            monthly = await repos.usage.totals(since=day.replace(day=1), agent_ids=ids)
            owners = {a.owner_id: await repos.users.get(a.owner_id) for a in agents}
            # Read inside the session: its end expires the rows it loaded.
            for_owner = {
                owner_id: owner.daily_token_budget if owner else None
                for owner_id, owner in owners.items()
            }
        return {
            agent.id: Spend(
                today=daily.get(agent.id, UsageTotals()),
                month=monthly.get(agent.id, UsageTotals()),
                budget=_choose(
                    agent.daily_token_budget, for_owner[agent.owner_id], self.default_budget
                ),
            )
            for agent in agents
        }

    async def platform(self) -> tuple[UsageTotals, UsageTotals]:
        """(today, this month) over every agent."""
        day = today()
        async with self._db.reading() as session:
            repos = Repositories(session)
            return (
                await repos.usage.platform_totals(since=day),
                await repos.usage.platform_totals(since=day.replace(day=1)),
            )

    async def raise_agent(self, *, actor_id: int, agent_id: str, tokens: int) -> Agent:
        """An admin sets one agent's daily budget (audited)."""
        async with self._db.session() as session:
            repos = Repositories(session)
            agent = await repos.agents.get(agent_id)
            if agent is None:
                raise AgentNotFound(agent_id)
            agent.daily_token_budget = tokens
            await repos.audit.record(
                actor_id=actor_id, action="budget", agent_id=agent_id, outcome="ok",
                detail=f"agent budget {tokens}",
            )  # fmt: skip
        return agent

    async def double(self, *, actor_id: int, agent_id: str) -> tuple[Agent, int]:
        """Doubles one agent's daily budget (an agent with no limit keeps none)."""
        async with self._db.session() as session:
            repos = Repositories(session)
            agent = await repos.agents.get(agent_id)
            if agent is None:
                raise AgentNotFound(agent_id)
            owner = await repos.users.get(agent.owner_id)
            current = effective_budget(agent, owner, self.default_budget)
            if current > 0:
                agent.daily_token_budget = current * 2
                await repos.audit.record(
                    actor_id=actor_id, action="budget", agent_id=agent_id, outcome="ok",
                    detail=f"agent budget {current * 2}",
                )  # fmt: skip
        return agent, current * 2 if current > 0 else 0

    async def raise_user(self, *, actor_id: int, user_id: int, tokens: int) -> bool:
        """An admin sets the daily budget of every agent of one user; False: no such user."""
        async with self._db.session() as session:
            repos = Repositories(session)
            user = await repos.users.get(user_id)
            if user is not None:
                user.daily_token_budget = tokens
            await repos.audit.record(
                actor_id=actor_id, action="budget", agent_id=None,
                outcome="ok" if user else "not_found", detail=f"user {user_id} budget {tokens}",
            )  # fmt: skip
        return user is not None
