"""call list: when the department's digest carried an entry, and the call's outcome

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 07:20:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("call_list_entry", schema=None) as batch_op:
        batch_op.add_column(sa.Column("notified_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("outcome", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("call_list_entry", schema=None) as batch_op:
        batch_op.drop_column("outcome")
        batch_op.drop_column("completed_at")
        batch_op.drop_column("notified_at")
