"""One bot, one live agent: a partial unique index on agents(bot_id) for live agents

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 12:00:00.000000

Two deploys of one bot that raced before this index may have left two live agents
for one bot, and the index cannot be built over them. The upgrade keeps the newest
(by created_at, then id) and marks the older ones deleted, with an audit entry and
a warning each: the same bot's token can serve only one of them anyway (one webhook,
one poller), and the reconciler removes a deleted agent's workload as usual. The
downgrade drops the index; the agents it retired stay deleted.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

INDEX = "ix_agents_live_bot_id"
LIVE = "desired_state IN ('running', 'stopped')"

log = logging.getLogger("alembic.runtime.migration")

audit_log = sa.table(
    "audit_log",
    sa.column("actor_id", sa.BigInteger()),
    sa.column("action", sa.String()),
    sa.column("agent_id", sa.String()),
    sa.column("at", sa.DateTime(timezone=True)),
    sa.column("outcome", sa.String()),
    sa.column("detail", sa.String()),
)


def upgrade() -> None:
    retire_duplicates()
    op.create_index(
        INDEX,
        "agents",
        ["bot_id"],
        unique=True,
        sqlite_where=sa.text(LIVE),
        postgresql_where=sa.text(LIVE),
    )


def downgrade() -> None:
    op.drop_index(INDEX, table_name="agents")


def retire_duplicates() -> None:
    """Every live agent with a newer live agent of the same bot becomes deleted."""
    bind = op.get_bind()
    older = bind.execute(
        sa.text(
            "SELECT agents.id, agents.bot_id FROM agents "
            "WHERE agents.desired_state IN ('running', 'stopped') AND EXISTS ("
            " SELECT 1 FROM agents AS newer"
            " WHERE newer.bot_id = agents.bot_id"
            " AND newer.desired_state IN ('running', 'stopped')"
            " AND (newer.created_at > agents.created_at"
            "  OR (newer.created_at = agents.created_at AND newer.id > agents.id)))"
        )
    ).all()
    if not older:
        return
    now = datetime.now(UTC)
    agents = sa.table(
        "agents",
        sa.column("id", sa.String()),
        sa.column("desired_state", sa.String()),
        sa.column("observed_reason", sa.String()),
        sa.column("updated_at", sa.DateTime(timezone=True)),
    )
    for agent_id, bot_id in older:
        log.warning("agent %s retired: a newer live agent runs the same bot %s", agent_id, bot_id)
        bind.execute(
            agents.update()
            .where(agents.c.id == agent_id)
            .values(
                desired_state="deleted",
                observed_reason="a newer agent runs the same bot",
                updated_at=now,
            )
        )
    op.bulk_insert(
        audit_log,
        [
            {
                "actor_id": None,  # the system
                "action": "delete",
                "agent_id": agent_id,
                "at": now,
                "outcome": "ok",
                "detail": f"migration 0005: a newer live agent runs bot {bot_id}",
            }
            for agent_id, bot_id in older
        ],
    )
