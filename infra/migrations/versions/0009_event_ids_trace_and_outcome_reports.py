"""event ids, trace and outcome reports

Every row an upstream event causes keeps that event's id (``event_id``, nullable: rows made
before keep None), so ``govnotify trace EVENT_ID`` and ``GET /trace/<id>`` show exactly what the
event caused. A notification also keeps its event's source, and which of its final statuses
was judged for an outcome report; the license registry keeps its latest event's id and source
for the reminders that state causes. Sources gain ``trace_any`` (the hotline) and an
``outcome_url``; ``outcome_report`` holds the reports owed to them.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 08:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: Tables that gain an indexed ``event_id``.
_CAUSED = ("notification", "scheduled_job", "staff_alert", "callback_task",
           "rectification_ticket", "call_list_entry")  # fmt: skip
_OUTCOME_DUE = "event_id IS NOT NULL AND (outcome_status IS NULL OR outcome_status <> status)"


def _string(length: int) -> sqlmodel.sql.sqltypes.AutoString:
    return sqlmodel.sql.sqltypes.AutoString(length=length)


def upgrade() -> None:
    for table in _CAUSED:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("event_id", _string(64), nullable=True))
            batch_op.create_index(f"ix_{table}_event_id", ["event_id"], unique=False)
    with op.batch_alter_table("notification", schema=None) as batch_op:
        batch_op.add_column(sa.Column("event_source", _string(64), nullable=True))
        batch_op.add_column(sa.Column("outcome_status", _string(24), nullable=True))
        batch_op.create_index(
            "ix_notification_outcome_due",
            ["updated_at"],
            unique=False,
            postgresql_where=sa.text(_OUTCOME_DUE),
            sqlite_where=sa.text(_OUTCOME_DUE),
        )
    with op.batch_alter_table("license_record", schema=None) as batch_op:
        batch_op.add_column(sa.Column("last_event_id", _string(64), nullable=True))
        batch_op.add_column(sa.Column("last_event_source", _string(64), nullable=True))
    with op.batch_alter_table("source", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("trace_any", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.add_column(sa.Column("outcome_url", _string(500), nullable=True))
    op.create_table(
        "outcome_report",
        sa.Column("id", _string(32), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("notification_id", _string(32), nullable=False),
        sa.Column("event_id", _string(64), nullable=False),
        sa.Column("source", _string(64), nullable=False),
        sa.Column("flow", _string(32), nullable=False),
        sa.Column("status", _string(24), nullable=False),
        sa.Column("reason", _string(40), nullable=True),
        sa.Column("error_code", _string(40), nullable=True),
        sa.Column("status_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("state", _string(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_error", _string(200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reported_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key"),
    )
    with op.batch_alter_table("outcome_report", schema=None) as batch_op:
        batch_op.create_index("ix_outcome_report_state_next", ["state", "next_at"], unique=False)
        batch_op.create_index(
            "ix_outcome_report_notification_id", ["notification_id"], unique=False
        )
        batch_op.create_index("ix_outcome_report_event_id", ["event_id"], unique=False)


def downgrade() -> None:
    op.drop_table("outcome_report")
    with op.batch_alter_table("source", schema=None) as batch_op:
        batch_op.drop_column("outcome_url")
        batch_op.drop_column("trace_any")
    with op.batch_alter_table("license_record", schema=None) as batch_op:
        batch_op.drop_column("last_event_source")
        batch_op.drop_column("last_event_id")
    with op.batch_alter_table("notification", schema=None) as batch_op:
        batch_op.drop_index("ix_notification_outcome_due")
        batch_op.drop_column("outcome_status")
        batch_op.drop_column("event_source")
    for table in reversed(_CAUSED):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_index(f"ix_{table}_event_id")
            batch_op.drop_column("event_id")
