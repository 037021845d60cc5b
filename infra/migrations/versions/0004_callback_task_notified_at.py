"""callback task: when its department head was told

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 07:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("callback_task", schema=None) as batch_op:
        batch_op.add_column(sa.Column("notified_at", sa.DateTime(timezone=True), nullable=True))
    # Tasks opened before this column existed were told when they were opened.
    op.execute("UPDATE callback_task SET notified_at = created_at")


def downgrade() -> None:
    with op.batch_alter_table("callback_task", schema=None) as batch_op:
        batch_op.drop_column("notified_at")
