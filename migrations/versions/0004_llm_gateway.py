"""LLM gateway: per-agent credentials, custom endpoints, budgets, usage and the outbox

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 17:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("agents") as agents:
        agents.add_column(sa.Column("llm_base_url", sa.String(length=300), nullable=True))
        agents.add_column(sa.Column("gateway_key_encrypted", sa.Text(), nullable=True))
        agents.add_column(sa.Column("gateway_key_hash", sa.String(length=64), nullable=True))
        agents.add_column(sa.Column("daily_token_budget", sa.BigInteger(), nullable=True))
        agents.create_index("ix_agents_gateway_key_hash", ["gateway_key_hash"], unique=True)
    with op.batch_alter_table("agent_revisions") as revisions:
        revisions.add_column(sa.Column("llm_base_url", sa.String(length=300), nullable=True))
    with op.batch_alter_table("users") as users:
        users.add_column(sa.Column("daily_token_budget", sa.BigInteger(), nullable=True))
    op.create_table(
        "agent_usage",
        sa.Column("agent_id", sa.String(length=16), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("agent_id", "day", name=op.f("pk_agent_usage")),
    )
    op.create_table(
        "notices",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("key", sa.String(length=96), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("agent_id", sa.String(length=16), nullable=True),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notices")),
        sa.UniqueConstraint("key", name=op.f("uq_notices_key")),
    )
    op.create_index("ix_notices_pending", "notices", ["sent_at"])


def downgrade() -> None:
    op.drop_index("ix_notices_pending", table_name="notices")
    op.drop_table("notices")
    op.drop_table("agent_usage")
    with op.batch_alter_table("users") as users:
        users.drop_column("daily_token_budget")
    with op.batch_alter_table("agent_revisions") as revisions:
        revisions.drop_column("llm_base_url")
    with op.batch_alter_table("agents") as agents:
        agents.drop_index("ix_agents_gateway_key_hash")
        agents.drop_column("daily_token_budget")
        agents.drop_column("gateway_key_hash")
        agents.drop_column("gateway_key_encrypted")
        agents.drop_column("llm_base_url")
