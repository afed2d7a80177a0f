"""health kind: a stable code for the health reason, so notifications fire on changes only

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 18:50:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("agents") as batch:
        batch.add_column(sa.Column("health_kind", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("agents") as batch:
        batch.drop_column("health_kind")
