"""users' language: their Telegram app's, beside the one picked with /language

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05 12:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # `language` (0001) holds what /language picked; this one, what the user's app says,
    # so alerts sent outside their updates are in their language too. Unknown for the
    # rows that exist until the user writes again: English meanwhile.
    with op.batch_alter_table("users") as users:
        users.add_column(sa.Column("telegram_language", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("users") as users:
        users.drop_column("telegram_language")
