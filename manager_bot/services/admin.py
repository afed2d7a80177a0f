"""The admin console's use cases: stats, users, bans and the audit log.

Every call names the acting admin and leaves an audit entry, views included:
who looked at the user list is part of the record.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from manager_bot.db.models import Agent, AuditEntry, User, utcnow
from manager_bot.db.repositories import Repositories
from manager_bot.db.session import Database
from manager_bot.services.budgets import Budgets
from manager_bot.services.deployer import Deployer

USERS_PER_PAGE = 10


class BanList:
    """Banned user ids in memory, so the ban check costs no query per update."""

    def __init__(self) -> None:
        self._ids: set[int] = set()

    async def load(self, database: Database) -> None:
        async with database.session() as session:
            self._ids = set(await Repositories(session).users.banned_ids())

    def __contains__(self, user_id: object) -> bool:
        return user_id in self._ids

    def set(self, user_id: int, banned: bool) -> None:
        (self._ids.add if banned else self._ids.discard)(user_id)


@dataclass(frozen=True)
class UsersPage:
    users: Sequence[User]
    agents: dict[int, list[Agent]]
    total: int
    page: int
    pages: int


class AdminConsole:
    def __init__(
        self, *, database: Database, deployer: Deployer, bans: BanList, budgets: Budgets
    ) -> None:
        self._db = database
        self._deployer = deployer
        self._bans = bans
        self._budgets = budgets

    async def stats(self, actor_id: int) -> dict[str, object]:
        now = utcnow()
        async with self._db.session() as session:
            repos = Repositories(session)
            users = await repos.users.counts()
            agents = await repos.agents.count_by_state()
            day = await repos.audit.outcomes("deploy", now - timedelta(days=1))
            week = await repos.audit.outcomes("deploy", now - timedelta(days=7))
            await repos.audit.record(actor_id=actor_id, action="stats", agent_id=None, outcome="ok")
        day_usage, month_usage = await self._budgets.platform()
        return {
            "users": users["total"], "banned": users["banned"], "blocked": users["blocked"],
            "agents": agents,
            "deploys_day_ok": day.get("ok", 0), "deploys_day_failed": day.get("failed", 0),
            "deploys_week_ok": week.get("ok", 0), "deploys_week_failed": week.get("failed", 0),
            "tokens_day": day_usage.tokens, "requests_day": day_usage.requests,
            "tokens_month": month_usage.tokens, "requests_month": month_usage.requests,
        }  # fmt: skip

    async def users_page(self, actor_id: int, page: int) -> UsersPage:
        async with self._db.session() as session:
            repos = Repositories(session)
            total = (await repos.users.counts())["total"]
            pages = max(1, -(-total // USERS_PER_PAGE))
            page = min(max(page, 0), pages - 1)
            users = await repos.users.page(page * USERS_PER_PAGE, USERS_PER_PAGE)
            agents = await repos.agents.owned_by_any([u.id for u in users])
            await repos.audit.record(
                actor_id=actor_id, action="users", agent_id=None, outcome="ok",
                detail=f"page {page + 1}",
            )  # fmt: skip
        return UsersPage(users, agents, total, page, pages)

    async def ban(self, actor_id: int, user_id: int) -> int | None:
        """None if there is no such user; else how many of their agents were stopped."""
        if not await self._set_banned(actor_id, user_id, banned=True):
            return None
        return await self._deployer.stop_all_of(user_id, actor_id=actor_id)

    async def unban(self, actor_id: int, user_id: int) -> bool:
        """False if there is no such user. Their agents stay stopped until resumed."""
        return await self._set_banned(actor_id, user_id, banned=False)

    async def _set_banned(self, actor_id: int, user_id: int, *, banned: bool) -> bool:
        async with self._db.session() as session:
            repos = Repositories(session)
            user = await repos.users.set_banned(user_id, banned)
            await repos.audit.record(
                actor_id=actor_id, action="ban" if banned else "unban", agent_id=None,
                outcome="ok" if user else "not_found", detail=f"user {user_id}",
            )  # fmt: skip
        if user is not None:
            self._bans.set(user_id, banned)
        return user is not None

    async def audit(self, actor_id: int, limit: int = 20) -> Sequence[AuditEntry]:
        async with self._db.session() as session:
            repos = Repositories(session)
            entries = await repos.audit.recent(limit)
            await repos.audit.record(actor_id=actor_id, action="audit", agent_id=None, outcome="ok")
        return entries
