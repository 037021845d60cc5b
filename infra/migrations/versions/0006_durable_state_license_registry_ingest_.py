"""durable state: the license registry in PostgreSQL, the ingest journal, Kafka epochs

Licenses live for years: every field a reminder needs is kept in `license_record` (existing
rows get empty holder fields; republish the registry to fill them). The journal keeps every
accepted event until the stream applied it, so a Kafka that comes back empty loses nothing.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 01:18:34.171244
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "checkpoint",
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("value", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "ingest_event",
        sa.Column("event_id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("event_type", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("family", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("entity_key", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("occurred_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("fingerprint", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("relayed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("redriven", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("event_id"),
    )
    with op.batch_alter_table("ingest_event", schema=None) as batch_op:
        batch_op.create_index("ix_ingest_event_applied_at", ["applied_at"], unique=False)
        batch_op.create_index("ix_ingest_event_entity", ["family", "entity_key"], unique=False)
        batch_op.create_index(
            "ix_ingest_event_unapplied",
            ["received_at"],
            unique=False,
            postgresql_where=sa.text("applied_at IS NULL"),
            sqlite_where=sa.text("applied_at IS NULL"),
        )

    op.create_table(
        "kafka_epoch",
        sa.Column("generation", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("nonce", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("redriven", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("generation"),
    )
    with op.batch_alter_table("license_record", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "holder_name",
                sqlmodel.sql.sqltypes.AutoString(length=100),
                nullable=False,
                server_default="",
            )
        )
        batch_op.add_column(
            sa.Column(
                "holder_mobile",
                sqlmodel.sql.sqltypes.AutoString(length=20),
                nullable=False,
                server_default="",
            )
        )
        batch_op.add_column(sa.Column("issued_on", sa.Date(), nullable=True))
        batch_op.create_index(
            "ix_license_record_status_expires", ["status", "expires_on"], unique=False
        )


def downgrade() -> None:

    with op.batch_alter_table("license_record", schema=None) as batch_op:
        batch_op.drop_index("ix_license_record_status_expires")
        batch_op.drop_column("issued_on")
        batch_op.drop_column("holder_mobile")
        batch_op.drop_column("holder_name")

    op.drop_table("kafka_epoch")
    with op.batch_alter_table("ingest_event", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_ingest_event_unapplied",
            postgresql_where=sa.text("applied_at IS NULL"),
            sqlite_where=sa.text("applied_at IS NULL"),
        )
        batch_op.drop_index("ix_ingest_event_entity")
        batch_op.drop_index("ix_ingest_event_applied_at")

    op.drop_table("ingest_event")
    op.drop_table("checkpoint")
