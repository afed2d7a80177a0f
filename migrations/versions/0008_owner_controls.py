"""owner controls: who may talk to an agent, its description, and whether Telegram has them

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 12:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Server defaults fill the rows that exist: everyone may talk to them, as before, and
    # their profile (commands, description) is still to be set, which reconcile does.
    with op.batch_alter_table("agents") as agents:
        agents.add_column(
            sa.Column("access", sa.String(length=16), nullable=False, server_default="everyone")
        )
        agents.add_column(sa.Column("access_user_ids", sa.Text(), nullable=True))
        agents.add_column(sa.Column("description", sa.String(length=512), nullable=True))
        agents.add_column(
            sa.Column("profile_synced", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("agents") as agents:
        agents.drop_column("profile_synced")
        agents.drop_column("description")
        agents.drop_column("access_user_ids")
        agents.drop_column("access")
