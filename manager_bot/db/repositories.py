"""Queries behind intent-revealing names; no SQL lives outside manager_bot/db/."""

from __future__ import annotations

import functools
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, cast

from sqlalchemy import Select, Table, bindparam, delete, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from manager_bot.db.models import (
    Agent,
    AgentRevision,
    AgentUsage,
    AuditEntry,
    Broadcast,
    Conversation,
    Delivery,
    DesiredState,
    Installation,
    McpServer,
    Notice,
    Operation,
    OperationStatus,
    User,
    utcnow,
)

ACTIVE = (DesiredState.RUNNING.value, DesiredState.STOPPED.value)
LIVE_BOT_INDEX = "ix_agents_live_bot_id"  # one live agent per bot (models.Agent, migration 0005)

# The statements of every wizard step and deploy, built once with bound parameters, on
# the tables rather than the ORM classes. Building a statement (and the cache key
# SQLAlchemy derives from it) cost as much as half of running it: 0.15 of 0.35 ms for the
# quota count on SQLite, measured. And a statement on an ORM class goes through the ORM's
# execution layer (bulk insert and update, session sync, result entities) even when it
# only moves plain values: 0.72 ms against 0.55 ms for the audit INSERT in a session,
# measured on SQLite. These only read or write values, so the tables serve.
_USERS = cast(Table, User.__table__)
_AGENTS = cast(Table, Agent.__table__)
_AUDIT = cast(Table, AuditEntry.__table__)
_OPERATIONS = cast(Table, Operation.__table__)
_USER_LOCK = select(_USERS.c.id).where(_USERS.c.id == bindparam("user_id")).with_for_update()
_USER_LANGUAGE = select(_USERS.c.language).where(_USERS.c.id == bindparam("user_id"))
_COUNT_ACTIVE = select(func.count()).where(
    _AGENTS.c.owner_id == bindparam("owner_id"), _AGENTS.c.desired_state.in_(ACTIVE)
)
_LIVE_ON_BOT = select(_AGENTS.c.id).where(
    _AGENTS.c.bot_id == bindparam("bot_id"), _AGENTS.c.desired_state.in_(ACTIVE)
)
_AUDIT_TIMES = (
    select(_AUDIT.c.at)
    .where(
        _AUDIT.c.actor_id == bindparam("actor_id"),
        _AUDIT.c.action == bindparam("action"),
        _AUDIT.c.outcome == bindparam("outcome"),
        _AUDIT.c.at >= bindparam("since"),
    )
    .order_by(_AUDIT.c.at)
)
# Rows written on every deploy: one INSERT each, without the ORM's unit of work (a flush
# of one new object cost several times the statement).
_AUDIT_INSERT = insert(_AUDIT)
_REVISION_INSERT = insert(cast(Table, AgentRevision.__table__))
_OPERATION_INSERT = insert(_OPERATIONS).returning(_OPERATIONS.c.id)  # SQLite 3.35+, PostgreSQL
_OPERATION_CONCERNS = (
    update(_OPERATIONS)
    .where(_OPERATIONS.c.id == bindparam("operation_id"))
    .values(agent_id=bindparam("agent_id"))
)
_OPERATION_FINISH = (
    update(_OPERATIONS)
    .where(_OPERATIONS.c.id == bindparam("operation_id"))
    .values(status=bindparam("status"), detail=bindparam("detail"), finished_at=bindparam("at"))
)
# Agents.write: an UPDATE whose SET clause is the parameters given (so one statement
# serves every set of columns); no caller holds the row loaded in the same session, so
# the ORM's session sync of such an update has nothing to do.
_AGENT_WRITE = update(_AGENTS).where(_AGENTS.c.id == bindparam("agent_id_"))


class Users:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def upsert(
        self,
        *,
        user_id: int,
        username: str | None,
        first_name: str,
        telegram_language: str | None = None,
    ) -> None:
        """Made when first seen, else refreshed; one statement either way. Writing to us
        means they no longer block the bot; a missing language (Telegram leaves it out at
        times) keeps the one known."""
        await self._session.execute(
            _user_upsert(_dialect(self._session)),
            {
                "id": user_id,
                "username": username,
                "first_name": first_name,
                "telegram_language": telegram_language,
            },
        )

    async def set_language(self, user_id: int, language: str) -> None:
        """What /language picked (a missing row is made: the pick must outlive a restart)."""
        user = await self._session.get(User, user_id)
        if user is None:
            self._session.add(User(id=user_id, first_name="", language=language))
        else:
            user.language = language
        await self._session.flush()

    async def get(self, user_id: int) -> User | None:
        return await self._session.get(User, user_id)

    async def language(self, user_id: int) -> str | None:
        """The language they picked with /language (None: none, or not a user yet)."""
        return await self._session.scalar(_USER_LANGUAGE, {"user_id": user_id})

    async def lock(self, user_id: int) -> None:
        """Holds the user's row (FOR UPDATE) until the transaction ends: what is checked
        after it (quota, deploy throttle) stays true until the insert it allows. A missing
        row is made first (a caller that never wrote to the bot), so one is always locked.

        SQLite ignores FOR UPDATE; there Database.session() has the one writer connection
        for the whole transaction, so such transactions run one after another anyway."""
        found = await self._session.execute(_USER_LOCK, {"user_id": user_id})
        if found.first() is None:
            missing = _dialect(self._session).insert(_USERS).values(id=user_id, first_name="")
            await self._session.execute(missing.on_conflict_do_nothing(index_elements=["id"]))
            await self._session.execute(_USER_LOCK, {"user_id": user_id})

    async def banned_ids(self) -> Sequence[int]:
        return (await self._session.scalars(select(User.id).where(User.is_banned.is_(True)))).all()

    async def page(self, offset: int, limit: int) -> Sequence[User]:
        query = select(User).order_by(User.created_at, User.id).offset(offset).limit(limit)
        return (await self._session.scalars(query)).all()

    async def counts(self) -> dict[str, int]:
        query = select(
            func.count(),
            func.count().filter(User.is_banned.is_(True)),
            func.count().filter(User.blocked_bot.is_(True)),
        )
        total, banned, blocked = (await self._session.execute(query)).one()
        return {"total": int(total), "banned": int(banned), "blocked": int(blocked)}

    async def set_banned(self, user_id: int, banned: bool) -> User | None:
        user = await self._session.get(User, user_id)
        if user is not None:
            user.is_banned = banned
        return user

    async def mark_blocked(self, user_id: int) -> None:
        """Telegram said 403: the user blocked the manager bot."""
        user = await self._session.get(User, user_id)
        if user is not None:
            user.blocked_bot = True


class Agents:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add(self, agent: Agent) -> Agent:
        self._session.add(agent)
        await self._session.flush()
        return agent

    async def add_live(self, agent: Agent) -> Agent | None:
        """Adds a live agent; None if another live agent runs its bot (the unique index
        refused it: a deploy of the same bot committed first). After None the transaction
        is spent: the caller ends it (raising rolls it back)."""
        try:
            return await self.add(agent)
        except IntegrityError as error:
            # PostgreSQL names the index; SQLite names its column, and no other unique
            # index is on bot_id alone.
            message = str(error.orig)
            if LIVE_BOT_INDEX in message or "UNIQUE constraint failed: agents.bot_id" in message:
                return None
            raise

    async def get(self, agent_id: str) -> Agent | None:
        return await self._session.get(Agent, agent_id)

    async def get_owned(self, owner_id: int, agent_id: str) -> Agent | None:
        """The agent if it exists, is not deleted and belongs to `owner_id`; else None."""
        agent = await self._session.get(Agent, agent_id)
        if agent is None or agent.owner_id != owner_id:
            return None
        return None if agent.desired_state == DesiredState.DELETED else agent

    async def owned_by(self, owner_id: int) -> Sequence[Agent]:
        query = (
            select(Agent)
            .where(Agent.owner_id == owner_id, Agent.desired_state.in_(ACTIVE))
            .order_by(Agent.created_at)
        )
        return (await self._session.scalars(query)).all()

    async def count_active(self, owner_id: int) -> int:
        return int(await self._session.scalar(_COUNT_ACTIVE, {"owner_id": owner_id}) or 0)

    async def bot_in_use(self, bot_id: int) -> bool:
        """Whether a live agent runs this Telegram bot (one bot, one agent); its id only,
        as loading the whole agent cost more than the query."""
        found = await self._session.scalars(_LIVE_ON_BOT, {"bot_id": bot_id})
        return found.first() is not None

    async def all_active(self) -> Sequence[Agent]:
        query = select(Agent).where(Agent.desired_state.in_(ACTIVE))
        return (await self._session.scalars(query)).all()

    async def all(self) -> Sequence[Agent]:
        return (await self._session.scalars(select(Agent))).all()

    async def owned_by_any(self, owner_ids: Sequence[int]) -> dict[int, list[Agent]]:
        query = (
            select(Agent)
            .where(Agent.owner_id.in_(owner_ids), Agent.desired_state.in_(ACTIVE))
            .order_by(Agent.created_at)
        )
        found: dict[int, list[Agent]] = {owner: [] for owner in owner_ids}
        for agent in (await self._session.scalars(query)).all():
            found[agent.owner_id].append(agent)
        return found

    async def running(self) -> Sequence[Agent]:
        """Agents that should be running: what a health sweep looks at."""
        query = select(Agent).where(Agent.desired_state == DesiredState.RUNNING.value)
        return (await self._session.scalars(query)).all()

    async def write(self, agent_id: str, **values: object) -> None:
        """Sets columns of one agent without loading it (nothing if it is gone): an ORM
        load and flush cost several times this one UPDATE."""
        await self._session.execute(_AGENT_WRITE, {"agent_id_": agent_id, **values})

    async def update_many(self, rows: list[dict[str, object]]) -> None:
        """One executemany UPDATE by primary key, whatever the number of rows."""
        await self._session.execute(update(Agent), rows)

    async def count_by_state(self) -> dict[tuple[str, str], int]:
        """Live agents counted by (desired, last observed) state, in one query."""
        query = (
            select(Agent.desired_state, Agent.observed_state, func.count())
            .where(Agent.desired_state.in_(ACTIVE))
            .group_by(Agent.desired_state, Agent.observed_state)
        )
        rows = (await self._session.execute(query)).all()
        return {(desired, observed or "unknown"): int(count) for desired, observed, count in rows}

    async def by_gateway_key(
        self, key_hash: str, *, day: date
    ) -> tuple[Agent, User | None, int] | None:
        """The agent holding this gateway credential, its owner (budgets, bans) and its
        tokens on `day`, in one query."""
        used = AgentUsage.prompt_tokens + AgentUsage.completion_tokens
        query = (
            select(Agent, User, used)
            .outerjoin(User, User.id == Agent.owner_id)
            .outerjoin(AgentUsage, (AgentUsage.agent_id == Agent.id) & (AgentUsage.day == day))
            .where(Agent.gateway_key_hash == key_hash)
        )
        row = (await self._session.execute(query)).first()
        return (row[0], row[1], int(row[2] or 0)) if row is not None else None

    async def without_gateway_key(self) -> Sequence[Agent]:
        """Live agents made before the gateway: they get a credential at start-up."""
        query = select(Agent).where(
            Agent.desired_state.in_(ACTIVE), Agent.gateway_key_hash.is_(None)
        )
        return (await self._session.scalars(query)).all()

    async def profile_pending(self, limit: int) -> Sequence[str]:
        """Live agents whose Telegram profile may be out of date; random ones first, so
        a few that always fail (a revoked token) do not starve the rest."""
        query = (
            select(Agent.id)
            .where(Agent.desired_state.in_(ACTIVE), Agent.profile_synced.is_(False))
            .order_by(func.random())
            .limit(limit)
        )
        return (await self._session.scalars(query)).all()


class Revisions:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def record(self, agent: Agent, *, created_by: int | None) -> None:
        """Snapshot the agent's current prompt/model/key as revision `agent.revision`."""
        await self._session.execute(
            _REVISION_INSERT,
            {
                "agent_id": agent.id,
                "number": agent.revision,
                "provider": agent.provider,
                "model": agent.model,
                "system_prompt": agent.system_prompt,
                "llm_api_key_encrypted": agent.llm_api_key_encrypted,
                "llm_base_url": agent.llm_base_url,
                "created_by": created_by,
            },
        )

    async def get(self, agent_id: str, number: int) -> AgentRevision | None:
        query = select(AgentRevision).where(
            AgentRevision.agent_id == agent_id, AgentRevision.number == number
        )
        return (await self._session.scalars(query)).first()

    async def of(self, agent_id: str) -> Sequence[AgentRevision]:
        query = (
            select(AgentRevision)
            .where(AgentRevision.agent_id == agent_id)
            .order_by(AgentRevision.number)
        )
        return (await self._session.scalars(query)).all()

    async def all(self) -> Sequence[AgentRevision]:
        return (await self._session.scalars(select(AgentRevision))).all()


class Audit:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def record(
        self,
        *,
        actor_id: int | None,
        action: str,
        outcome: str,
        agent_id: str | None = None,
        detail: str | None = None,
    ) -> None:
        await self._session.execute(
            _AUDIT_INSERT,
            {
                "actor_id": actor_id,
                "action": action,
                "agent_id": agent_id,
                "outcome": outcome,
                "detail": detail[:512] if detail else None,
            },
        )

    async def times(
        self, *, actor_id: int, action: str, outcome: str, since: datetime
    ) -> Sequence[datetime]:
        """When this actor's matching entries happened since a moment, oldest first."""
        parameters = {"actor_id": actor_id, "action": action, "outcome": outcome, "since": since}
        return (await self._session.scalars(_AUDIT_TIMES, parameters)).all()

    async def recorded(self, *, action: str, agent_id: str, outcome: str, since: datetime) -> bool:
        """Whether such an entry for this agent was written since a moment."""
        query = select(AuditEntry.id).where(
            AuditEntry.action == action, AuditEntry.agent_id == agent_id,
            AuditEntry.outcome == outcome, AuditEntry.at >= since,
        ).limit(1)  # fmt: skip
        return (await self._session.scalar(query)) is not None

    async def outcomes(self, action: str, since: datetime) -> dict[str, int]:
        """How often `action` ended in each outcome since a moment (e.g. deploys this week)."""
        query = (
            select(AuditEntry.outcome, func.count())
            .where(AuditEntry.action == action, AuditEntry.at >= since)
            .group_by(AuditEntry.outcome)
        )
        return {outcome: int(n) for outcome, n in (await self._session.execute(query)).all()}

    async def recent(
        self, limit: int = 20, *, since: datetime | None = None
    ) -> Sequence[AuditEntry]:
        query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
        if since is not None:
            query = query.where(AuditEntry.at >= since)
        return (await self._session.scalars(query)).all()


AUDIENCES = ("all", "with_agents", "agent_down")


class Broadcasts:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    def _audience(self, audience: str) -> Select[int]:
        reachable = select(User.id).where(User.is_banned.is_(False), User.blocked_bot.is_(False))
        if audience == "all":
            return reachable
        live = select(Agent.id).where(Agent.owner_id == User.id)
        if audience == "with_agents":
            live = live.where(Agent.desired_state.in_(ACTIVE))
        elif audience == "agent_down":
            live = live.where(
                Agent.desired_state == DesiredState.RUNNING.value,
                or_(Agent.health == "down", Agent.observed_state == "crash-looping"),
            )
        else:
            raise ValueError(f"unknown audience {audience!r}")
        return reachable.where(live.exists())

    async def audience_size(self, audience: str) -> int:
        query = select(func.count()).select_from(self._audience(audience).subquery())
        return int(await self._session.scalar(query) or 0)

    async def create(self, broadcast: Broadcast) -> int:
        """The broadcast and one pending delivery per recipient, snapshotted now."""
        self._session.add(broadcast)
        await self._session.flush()
        recipients = (await self._session.scalars(self._audience(broadcast.audience))).all()
        if recipients:
            await self._session.execute(
                insert(Delivery),
                [{"broadcast_id": broadcast.id, "user_id": user_id} for user_id in recipients],
            )
        return len(recipients)

    async def get(self, broadcast_id: int) -> Broadcast | None:
        return await self._session.get(Broadcast, broadcast_id)

    async def unfinished(self) -> Sequence[Broadcast]:
        query = select(Broadcast).where(Broadcast.status == "sending").order_by(Broadcast.id)
        return (await self._session.scalars(query)).all()

    async def pending(self, broadcast_id: int, limit: int) -> list[int]:
        query = (
            select(Delivery.user_id)
            .where(Delivery.broadcast_id == broadcast_id, Delivery.status == "pending")
            .order_by(Delivery.user_id)
            .limit(limit)
        )
        return list((await self._session.scalars(query)).all())

    async def set_delivery(
        self, broadcast_id: int, user_id: int, status: str, *, error: str | None = None,
        attempt: bool = False,
    ) -> None:  # fmt: skip
        values: dict[str, object] = {"status": status, "updated_at": utcnow(), "error": error}
        if attempt:
            values["attempts"] = Delivery.attempts + 1
        await self._session.execute(
            update(Delivery)
            .where(Delivery.broadcast_id == broadcast_id, Delivery.user_id == user_id)
            .values(**values)
        )

    async def interrupted_to_uncertain(self, broadcast_id: int) -> int:
        """Deliveries a crash left between send and record: never sent again."""
        result = await self._session.execute(
            update(Delivery)
            .where(Delivery.broadcast_id == broadcast_id, Delivery.status == "sending")
            .values(status="uncertain", updated_at=utcnow())
        )
        return int(getattr(result, "rowcount", 0) or 0)

    async def counts(self, broadcast_id: int) -> dict[str, int]:
        query = (
            select(Delivery.status, func.count())
            .where(Delivery.broadcast_id == broadcast_id)
            .group_by(Delivery.status)
        )
        return {status: int(count) for status, count in (await self._session.execute(query)).all()}


def _dialect(session: AsyncSession) -> Any:
    """The dialect module whose `insert` has ON CONFLICT (SQLite's or PostgreSQL's)."""
    return postgresql if session.get_bind().dialect.name == "postgresql" else sqlite


@functools.cache
def _user_upsert(dialect: Any) -> Any:
    """Users.upsert's statement for one dialect, built once."""
    statement = dialect.insert(_USERS).values(
        id=bindparam("id"),
        username=bindparam("username"),
        first_name=bindparam("first_name"),
        telegram_language=bindparam("telegram_language"),
    )
    new = statement.excluded
    return statement.on_conflict_do_update(
        index_elements=[_USERS.c.id],
        set_={
            "username": new.username,
            "first_name": new.first_name,
            "telegram_language": func.coalesce(new.telegram_language, _USERS.c.telegram_language),
            "last_seen_at": new.last_seen_at,
            "blocked_bot": False,
        },
    )


@dataclass(frozen=True)
class UsageDelta:
    agent_id: str
    day: date
    prompt_tokens: int
    completion_tokens: int
    requests: int


@dataclass(frozen=True)
class UsageTotals:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


class Usage:
    """Per-agent daily usage, counted by the gateway and written in batches."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def add(self, deltas: Sequence[UsageDelta]) -> dict[tuple[str, date], int]:
        """Adds each delta to its (agent, day) row; returns the rows' new token totals.

        One multi-row upsert (`ON CONFLICT DO UPDATE ... RETURNING`, on SQLite and
        PostgreSQL alike) that adds, so gateway replicas never overwrite each other."""
        if not deltas:
            return {}
        table = AgentUsage.__table__.c
        statement = _dialect(self._session).insert(AgentUsage).values(
            [
                {
                    "agent_id": d.agent_id, "day": d.day, "prompt_tokens": d.prompt_tokens,
                    "completion_tokens": d.completion_tokens, "requests": d.requests,
                }
                for d in deltas
            ]
        )  # fmt: skip
        statement = statement.on_conflict_do_update(
            index_elements=[table.agent_id, table.day],
            set_={
                "prompt_tokens": table.prompt_tokens + statement.excluded.prompt_tokens,
                "completion_tokens": table.completion_tokens + statement.excluded.completion_tokens,
                "requests": table.requests + statement.excluded.requests,
            },
        ).returning(table.agent_id, table.day, table.prompt_tokens + table.completion_tokens)
        rows = (await self._session.execute(statement)).all()
        return {(agent_id, day): int(total) for agent_id, day, total in rows}

    async def totals(
        self, *, since: date, agent_ids: Sequence[str] | None = None
    ) -> dict[str, UsageTotals]:
        """Usage per agent summed over the days from `since` on."""
        query = select(
            AgentUsage.agent_id,
            func.sum(AgentUsage.prompt_tokens),
            func.sum(AgentUsage.completion_tokens),
            func.sum(AgentUsage.requests),
        ).where(AgentUsage.day >= since)
        if agent_ids is not None:
            query = query.where(AgentUsage.agent_id.in_(agent_ids))
        rows = (await self._session.execute(query.group_by(AgentUsage.agent_id))).all()
        return {
            agent_id: UsageTotals(int(prompt or 0), int(completion or 0), int(requests or 0))
            for agent_id, prompt, completion, requests in rows
        }

    async def platform_totals(self, *, since: date) -> UsageTotals:
        query = select(
            func.sum(AgentUsage.prompt_tokens),
            func.sum(AgentUsage.completion_tokens),
            func.sum(AgentUsage.requests),
        ).where(AgentUsage.day >= since)
        prompt, completion, requests = (await self._session.execute(query)).one()
        return UsageTotals(int(prompt or 0), int(completion or 0), int(requests or 0))


class Notices:
    """The outbox of messages owed to users; a key is owed at most once."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def owe(
        self, *, key: str, user_id: int, kind: str, agent_id: str | None, detail: str = "{}"
    ) -> None:
        dialect = _dialect(self._session)
        statement = dialect.insert(Notice).values(
            key=key, user_id=user_id, agent_id=agent_id, kind=kind, detail=detail,
            created_at=utcnow(), attempts=0,
        )  # fmt: skip
        await self._session.execute(statement.on_conflict_do_nothing(index_elements=["key"]))

    async def pending(self, limit: int = 100) -> Sequence[Notice]:
        query = select(Notice).where(Notice.sent_at.is_(None)).order_by(Notice.id).limit(limit)
        return (await self._session.scalars(query)).all()

    async def mark_sent(self, notice_id: int) -> None:
        await self._session.execute(
            update(Notice).where(Notice.id == notice_id).values(sent_at=utcnow())
        )

    async def count_attempt(self, notice_id: int) -> None:
        await self._session.execute(
            update(Notice).where(Notice.id == notice_id).values(attempts=Notice.attempts + 1)
        )

    async def all(self) -> Sequence[Notice]:
        return (await self._session.scalars(select(Notice).order_by(Notice.id))).all()


class Operations:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def start(
        self, *, kind: str, agent_id: str | None, actor_id: int | None,
        chat_id: int | None = None, message_id: int | None = None,
    ) -> int:  # fmt: skip
        result = await self._session.execute(
            _OPERATION_INSERT,
            {
                "kind": kind, "agent_id": agent_id, "actor_id": actor_id, "chat_id": chat_id,
                "message_id": message_id, "status": OperationStatus.RUNNING.value,
                "started_at": utcnow(),
            },
        )  # fmt: skip
        return int(result.scalar_one())

    async def finish(self, operation_id: int, status: OperationStatus, detail: str = "") -> None:
        await self._session.execute(
            _OPERATION_FINISH,
            {
                "operation_id": operation_id,
                "status": status.value,
                "detail": detail[:256] or None,
                "at": utcnow(),
            },
        )

    async def concerns(self, operation_id: int, agent_id: str) -> None:
        """The operation's agent, once it exists (a deploy's is made midway)."""
        await self._session.execute(
            _OPERATION_CONCERNS, {"operation_id": operation_id, "agent_id": agent_id}
        )

    async def unfinished(self) -> Sequence[Operation]:
        query = (
            select(Operation)
            .where(Operation.status == OperationStatus.RUNNING.value)
            .order_by(Operation.id)
        )
        return (await self._session.scalars(query)).all()

    async def all_of(self, agent_id: str) -> Sequence[Operation]:
        query = select(Operation).where(Operation.agent_id == agent_id).order_by(Operation.id)
        return (await self._session.scalars(query)).all()


class Installations:
    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def get_or_create(self) -> str:
        """The installation's id, made on the first start (a new database: a new id)."""
        existing = (await self._session.scalars(select(Installation.id))).first()
        if existing is not None:
            return existing
        statement = (
            _dialect(self._session)
            .insert(Installation)
            .values(id=secrets.token_hex(8), created_at=utcnow())
        )
        await self._session.execute(statement.on_conflict_do_nothing())
        return (await self._session.scalars(select(Installation.id))).one()


class Conversations:
    """Agents' per-chat history (the gateway's memory endpoints, gateway/memory.py)."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def turns(self, agent_id: str, chat_id: int) -> str | None:
        row = await self._session.get(Conversation, (agent_id, chat_id))
        return row.turns if row is not None else None

    async def save(self, agent_id: str, chat_id: int, turns: str) -> None:
        """One upsert: the runtime sends a chat's whole bounded history each time."""
        statement = (
            _dialect(self._session)
            .insert(Conversation)
            .values(agent_id=agent_id, chat_id=chat_id, turns=turns, updated_at=utcnow())
        )
        await self._session.execute(
            statement.on_conflict_do_update(
                index_elements=["agent_id", "chat_id"],
                set_={"turns": statement.excluded.turns, "updated_at": utcnow()},
            )
        )

    async def forget(self, agent_id: str, chat_id: int | None = None) -> int:
        """One chat's history, or all of an agent's (None); returns how many chats."""
        statement = delete(Conversation).where(Conversation.agent_id == agent_id)
        if chat_id is not None:
            statement = statement.where(Conversation.chat_id == chat_id)
        result = await self._session.execute(statement)
        return int(result.rowcount or 0)  # type: ignore[attr-defined]

    async def forget_idle(self, before: datetime) -> int:
        """Chats idle since `before`, and any a deleted agent's last flush left behind."""
        deleted = select(Agent.id).where(Agent.desired_state == DesiredState.DELETED.value)
        result = await self._session.execute(
            delete(Conversation).where(
                or_(Conversation.updated_at < before, Conversation.agent_id.in_(deleted))
            )
        )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]


class McpServers:
    """An agent's MCP servers (services/agent_tools.py keeps Agent.mcp_servers in step)."""

    def __init__(self, session: AsyncSession) -> None:
        self._session = session

    async def of(self, agent_id: str) -> Sequence[McpServer]:
        query = select(McpServer).where(McpServer.agent_id == agent_id).order_by(McpServer.id)
        return (await self._session.scalars(query)).all()

    async def all(self) -> Sequence[McpServer]:
        """Every agent's (key rotation re-encrypts them)."""
        return (await self._session.scalars(select(McpServer))).all()

    async def add(self, server: McpServer) -> McpServer:
        self._session.add(server)
        await self._session.flush()
        return server

    async def remove(self, agent_id: str, name: str) -> bool:
        server = await self._session.scalar(
            select(McpServer).where(McpServer.agent_id == agent_id, McpServer.name == name)
        )
        if server is None:
            return False
        await self._session.delete(server)
        await self._session.flush()
        return True


class Repositories:
    """All repositories over one session (one unit of work)."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self.users = Users(session)
        self.agents = Agents(session)
        self.revisions = Revisions(session)
        self.audit = Audit(session)
        self.broadcasts = Broadcasts(session)
        self.usage = Usage(session)
        self.notices = Notices(session)
        self.installation = Installations(session)
        self.operations = Operations(session)
        self.mcp_servers = McpServers(session)
        self.conversations = Conversations(session)
