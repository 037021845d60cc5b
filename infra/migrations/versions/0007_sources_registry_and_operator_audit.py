"""sources registry and operator audit

Who may publish what: one row per upstream source, with the RabbitMQ user that publishes it, the
event types it may send and, for HTTP ingest, its token's salted HMAC (never the token). The
relay refuses an event whose publisher, source, type or routing key does not match a row
(``unauthorised``). No source is registered here: production registers each with
``govnotify sources add``; the relay registers govnotify's own (the default rating) itself.

``dead_letter`` keeps who published an ingest letter (``publisher``, ``http_source``), so that a
replay is judged as that publisher's event, not as govnotify's.

``operator_audit`` records what operators did that touches trust or personal data (adding or
disabling a source, revealing a call list's numbers).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 05:16:34.163598
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("dead_letter", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("publisher", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True)
        )
        batch_op.add_column(
            sa.Column("http_source", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True)
        )

    op.create_table(
        "operator_audit",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("operator", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("action", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("subject", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("detail", sa.Text(), server_default="", nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("operator_audit", schema=None) as batch_op:
        batch_op.create_index("ix_operator_audit_at", ["at"], unique=False)

    op.create_table(
        "source",
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("amqp_user", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("event_types", sa.Text(), nullable=False),
        sa.Column("token_id", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
        sa.Column("token_hash", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("name"),
        sa.UniqueConstraint("token_id"),
    )
    with op.batch_alter_table("source", schema=None) as batch_op:
        batch_op.create_index("ix_source_amqp_user", ["amqp_user"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("dead_letter", schema=None) as batch_op:
        batch_op.drop_column("http_source")
        batch_op.drop_column("publisher")

    with op.batch_alter_table("source", schema=None) as batch_op:
        batch_op.drop_index("ix_source_amqp_user")

    op.drop_table("source")
    with op.batch_alter_table("operator_audit", schema=None) as batch_op:
        batch_op.drop_index("ix_operator_audit_at")

    op.drop_table("operator_audit")
