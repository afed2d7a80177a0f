"""SQLAlchemy models: the desired state of every agent, its history and the audit log."""

from __future__ import annotations

import enum
import secrets
import string
from datetime import UTC, date, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Stable constraint names, so autogenerate and both databases agree.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
_ID_ALPHABET = string.ascii_lowercase + string.digits


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """SQLite returns naive datetimes for timezone-aware columns; they are UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def new_agent_id() -> str:
    """10 characters, DNS-label safe: used in `agent-<id>` names and `/webhook/<id>`."""
    return secrets.choice(string.ascii_lowercase) + "".join(
        secrets.choice(_ID_ALPHABET) for _ in range(9)
    )


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class DesiredState(enum.StrEnum):
    RUNNING = "running"
    STOPPED = "stopped"
    DELETED = "deleted"


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    username: Mapped[str | None] = mapped_column(String(64))
    first_name: Mapped[str] = mapped_column(String(128), default="")
    language: Mapped[str | None] = mapped_column(String(16))  # picked with /language
    telegram_language: Mapped[str | None] = mapped_column(String(16))  # their app's
    is_banned: Mapped[bool] = mapped_column(Boolean, default=False)
    blocked_bot: Mapped[bool] = mapped_column(Boolean, default=False)
    # An admin's raise of the daily token budget for all of this user's agents.
    daily_token_budget: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Agent(Base):
    __tablename__ = "agents"
    __table_args__ = (
        Index("ix_agents_owner_id", "owner_id"),
        Index("ix_agents_desired_state", "desired_state"),
        Index("ix_agents_bot_id", "bot_id"),
        Index("ix_agents_gateway_key_hash", "gateway_key_hash", unique=True),
        # One bot, one live agent (one token, one webhook or poller), also when two
        # deploys race; deleted agents keep their history.
        Index(
            "ix_agents_live_bot_id",
            "bot_id",
            unique=True,
            sqlite_where=text("desired_state IN ('running', 'stopped')"),
            postgresql_where=text("desired_state IN ('running', 'stopped')"),
        ),
    )

    id: Mapped[str] = mapped_column(String(16), primary_key=True, default=new_agent_id)
    owner_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("users.id"))
    name: Mapped[str] = mapped_column(String(128))
    bot_id: Mapped[int] = mapped_column(BigInteger)
    bot_username: Mapped[str] = mapped_column(String(64))
    managed: Mapped[bool] = mapped_column(Boolean, default=False)
    token_encrypted: Mapped[str] = mapped_column(Text)
    webhook_secret_encrypted: Mapped[str] = mapped_column(Text)
    provider: Mapped[str] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(128))
    llm_api_key_encrypted: Mapped[str | None] = mapped_column(Text)
    # A user's own OpenAI-compatible endpoint (provider "custom"); only the gateway calls it.
    llm_base_url: Mapped[str | None] = mapped_column(String(300))
    system_prompt: Mapped[str] = mapped_column(Text)
    revision: Mapped[int] = mapped_column(Integer, default=1)
    # The agent's credential for the LLM gateway: encrypted (to rebuild its Secret) and
    # hashed (the gateway looks agents up by it). Replaced on every token rotation.
    gateway_key_encrypted: Mapped[str | None] = mapped_column(Text)
    gateway_key_hash: Mapped[str | None] = mapped_column(String(64))
    daily_token_budget: Mapped[int | None] = mapped_column(BigInteger)  # an admin's raise
    desired_state: Mapped[str] = mapped_column(String(16), default=DesiredState.RUNNING.value)
    observed_state: Mapped[str | None] = mapped_column(String(32))
    observed_reason: Mapped[str | None] = mapped_column(String(256))
    observed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    health: Mapped[str | None] = mapped_column(String(16))
    health_kind: Mapped[str | None] = mapped_column(String(32))  # stable code of the reason
    health_reason: Mapped[str | None] = mapped_column(String(256))
    health_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    muted_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Who may talk to the agent (services/agent_profile.py: AccessMode) and, for
    # "listed", the comma-separated Telegram user ids. Not part of a revision: an edit
    # or a revert keeps it.
    access: Mapped[str] = mapped_column(String(16), default="everyone")
    access_user_ids: Mapped[str | None] = mapped_column(Text)
    # The owner's one-liner for the bot's description (None: the prompt's first sentence).
    description: Mapped[str | None] = mapped_column(String(512))
    # False while Telegram may not show the agent's commands, description (and, for a
    # Managed Bot, access) as stored: reconcile sets them again.
    profile_synced: Mapped[bool] = mapped_column(Boolean, default=False)
    # The names of its MCP servers, comma-separated (the pod's MCP_SERVERS), written with
    # the McpServer rows: a pod's spec is built from this row alone, reconcile included.
    mcp_servers: Mapped[str] = mapped_column(String(200), default="", server_default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, onupdate=utcnow
    )


class AgentRevision(Base):
    """Every change of prompt, model or key; restoring n copies it as a new revision."""

    __tablename__ = "agent_revisions"
    __table_args__ = (UniqueConstraint("agent_id", "number", name="uq_agent_revisions_number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    agent_id: Mapped[str] = mapped_column(String(16), ForeignKey("agents.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    provider: Mapped[str] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(128))
    system_prompt: Mapped[str] = mapped_column(Text)
    llm_api_key_encrypted: Mapped[str | None] = mapped_column(Text)
    llm_base_url: Mapped[str | None] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    created_by: Mapped[int | None] = mapped_column(BigInteger)


class AuditEntry(Base):
    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_at", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    actor_id: Mapped[int | None] = mapped_column(BigInteger)  # None: the system itself
    action: Mapped[str] = mapped_column(String(64))
    agent_id: Mapped[str | None] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    outcome: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str | None] = mapped_column(String(512))  # never a secret


class Broadcast(Base):
    """An admin's message to many users; its deliveries say who got it."""

    __tablename__ = "broadcasts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    author_id: Mapped[int] = mapped_column(BigInteger)
    text: Mapped[str] = mapped_column(Text)  # HTML, as the admin formatted it
    photo_file_id: Mapped[str | None] = mapped_column(String(256))
    audience: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default="sending")  # sending|done|cancelled
    progress_chat_id: Mapped[int | None] = mapped_column(BigInteger)
    progress_message_id: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Delivery(Base):
    """One recipient of one broadcast: written before and after each send."""

    __tablename__ = "broadcast_deliveries"
    __table_args__ = (Index("ix_broadcast_deliveries_status", "broadcast_id", "status"),)

    broadcast_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("broadcasts.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    # pending | sending | sent | failed | blocked | uncertain (a crash between send and record)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(String(256))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class FsmState(Base):
    """aiogram FSM storage: a half-finished wizard survives a manager restart."""

    __tablename__ = "fsm_states"

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    state: Mapped[str | None] = mapped_column(String(255))
    data: Mapped[str] = mapped_column(Text, default="{}")


class AgentUsage(Base):
    """Tokens and requests of one agent on one UTC day, counted by the gateway."""

    __tablename__ = "agent_usage"

    agent_id: Mapped[str] = mapped_column(String(16), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    requests: Mapped[int] = mapped_column(Integer, default=0)


class Conversation(Base):
    """One chat's recent turns with one agent, written by the gateway for the runtime.

    Kept outside the pods so a restart, rollout or new token does not forget; an agent
    reaches only its own rows (the gateway keys them by the agent's credential)."""

    __tablename__ = "conversations"
    __table_args__ = (Index("ix_conversations_updated_at", "updated_at"),)

    agent_id: Mapped[str] = mapped_column(String(16), primary_key=True)
    chat_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    turns: Mapped[str] = mapped_column(Text)  # encrypted JSON: [{"role", "content"}]
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Notice(Base):
    """A message owed to a user (the outbox): written by whoever notices, sent by the
    manager, so a process without the bot's token (the gateway) can still tell people."""

    __tablename__ = "notices"
    __table_args__ = (Index("ix_notices_pending", "sent_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # Deduplicates: the same key is owed once (e.g. "budget-80:<agent>:<day>").
    key: Mapped[str] = mapped_column(String(96), unique=True)
    user_id: Mapped[int] = mapped_column(BigInteger)
    agent_id: Mapped[str | None] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text, default="{}")  # JSON, never a secret
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, default=0)


class Installation(Base):
    """This installation's id (one row): on every object the manager makes, so that
    reconcile removes only its own orphans, never another's or a restored backup's."""

    __tablename__ = "installation"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class OperationStatus(enum.StrEnum):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class Operation(Base):
    """A user's action, written before anything else it does: a manager that dies midway
    finds it at the next start, finishes or rolls it back, and tells the user."""

    __tablename__ = "operations"
    __table_args__ = (Index("ix_operations_status", "status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))  # deploy | stop | resume | change | ...
    agent_id: Mapped[str | None] = mapped_column(String(16))
    actor_id: Mapped[int | None] = mapped_column(BigInteger)
    chat_id: Mapped[int | None] = mapped_column(BigInteger)  # where the user is told
    message_id: Mapped[int | None] = mapped_column(Integer)  # the progress message, if any
    status: Mapped[str] = mapped_column(String(16), default=OperationStatus.RUNNING.value)
    detail: Mapped[str | None] = mapped_column(String(256))  # never a secret
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class McpServer(Base):
    """A remote MCP server (streamable HTTP) an agent takes tools from. Only the gateway
    connects to it: the agent knows its name, never its URL or token.

    The URL is encrypted like the token: hosted MCP servers often carry a secret in the
    path (`https://host/s/<secret>/mcp`). The host is kept plain, for the card."""

    __tablename__ = "agent_mcp_servers"
    __table_args__ = (UniqueConstraint("agent_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    agent_id: Mapped[str] = mapped_column(String(16), ForeignKey("agents.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(32))  # [a-z0-9][a-z0-9-]{0,31}
    url_encrypted: Mapped[str] = mapped_column(Text)
    host: Mapped[str] = mapped_column(String(255))
    header_name: Mapped[str | None] = mapped_column(String(64))  # None: Authorization: Bearer
    token_encrypted: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
