"""agents' MCP servers: remote tool servers the gateway proxies to

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-10 12:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "agent_mcp_servers",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("agent_id", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("url_encrypted", sa.Text(), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("header_name", sa.String(length=64), nullable=True),
        sa.Column("token_encrypted", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["agent_id"],
            ["agents.id"],
            name=op.f("fk_agent_mcp_servers_agent_id_agents"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agent_mcp_servers")),
        sa.UniqueConstraint("agent_id", "name", name=op.f("uq_agent_mcp_servers_agent_id")),
    )
    # The names the pod is given (MCP_SERVERS), beside the rows: the deployer builds a
    # pod's spec from the agent's row alone, reconcile included. Empty: no tools.
    with op.batch_alter_table("agents") as agents:
        agents.add_column(
            sa.Column("mcp_servers", sa.String(length=200), nullable=False, server_default="")
        )


def downgrade() -> None:
    with op.batch_alter_table("agents") as agents:
        agents.drop_column("mcp_servers")
    op.drop_table("agent_mcp_servers")
