"""SQLModel tables: the single definition of each table; migrations are generated from these.

The notification row is the ledger of every message: written first with a deterministic
idempotency key (unique), claimed atomically before the provider call, then moved forward only.
"""

from __future__ import annotations

import datetime as dt
import enum
import uuid

from sqlalchemy import Column, DateTime, Index, LargeBinary, String, Text
from sqlmodel import Field, SQLModel

__all__ = [
    "STATUS_RANK",
    "CallListEntry",
    "DeadLetter",
    "LicenseRecord",
    "Notification",
    "NotificationStatus",
    "utcnow",
]


#: Timestamps are stored timezone-aware (timestamptz on PostgreSQL), always in UTC.
TZ = DateTime(timezone=True)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _new_id() -> str:
    return uuid.uuid4().hex


class NotificationStatus(enum.StrEnum):
    """Where a notification is in its life; it only moves forward (see STATUS_RANK)."""

    CREATED = "created"
    SENDING = "sending"
    SENT = "sent"
    DELIVERED = "delivered"
    #: Stopped before sending: the license was renewed or revoked since the job was made.
    CANCELLED = "cancelled"
    #: Never to be retried: invalid number, unsubscribed, landline.
    PERMANENT_FAILURE = "permanent-failure"
    #: Transient errors until retries ran out.
    TEMPORARY_FAILURE = "temporary-failure"
    #: Our side failed (misconfiguration, a bug); the reason column says what.
    TECHNICAL_FAILURE = "technical-failure"


#: Forward-only order. A status may only be replaced by one of higher rank; the final ones share
#: the top rank so none overwrites another.
STATUS_RANK: dict[str, int] = {
    NotificationStatus.CREATED: 0,
    NotificationStatus.SENDING: 1,
    NotificationStatus.SENT: 2,
    NotificationStatus.DELIVERED: 3,
    NotificationStatus.CANCELLED: 3,
    NotificationStatus.PERMANENT_FAILURE: 3,
    NotificationStatus.TEMPORARY_FAILURE: 3,
    NotificationStatus.TECHNICAL_FAILURE: 3,
}


class Notification(SQLModel, table=True):
    """One message to one recipient, keyed by its deterministic idempotency key."""

    __tablename__ = "notification"
    __table_args__ = (
        Index("ix_notification_status_updated", "status", "updated_at"),
        Index("ix_notification_flow_status", "flow", "status"),
        Index("ix_notification_subject", "subject_id"),
    )

    id: str = Field(default_factory=_new_id, primary_key=True, max_length=32)
    #: e.g. ``renewal:LIC-1:2026-12-25:30``; the unique index is what makes replays harmless.
    idempotency_key: str = Field(sa_column=Column(String(200), unique=True, nullable=False))
    flow: str = Field(max_length=32)
    channel: str = Field(max_length=16)
    #: The entity the message is about (license id, case id); never a person.
    subject_id: str = Field(max_length=64)
    #: E.164; emptied by the retention purge.
    recipient: str | None = Field(default=None, max_length=20)
    body: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    segments: int = 0
    status: str = Field(default=NotificationStatus.CREATED, max_length=24)
    status_reason: str | None = Field(default=None, max_length=500)
    provider: str | None = Field(default=None, max_length=32)
    provider_ref: str | None = Field(default=None, max_length=64)
    attempts: int = 0
    #: The local date the message was due on (the reminder's send date).
    due_on: dt.date | None = None
    #: When the triggering event happened upstream, for event-to-send latency.
    event_at: dt.datetime | None = Field(default=None, sa_type=TZ)
    created_at: dt.datetime = Field(default_factory=utcnow, sa_type=TZ)
    updated_at: dt.datetime = Field(default_factory=utcnow, sa_type=TZ)
    claimed_at: dt.datetime | None = Field(default=None, sa_type=TZ)
    sent_at: dt.datetime | None = Field(default=None, sa_type=TZ)


class LicenseRecord(SQLModel, table=True):
    """The latest known state of a license, read again at send time to stop stale reminders."""

    __tablename__ = "license_record"

    license_id: str = Field(primary_key=True, max_length=64)
    status: str = Field(max_length=16)  # live | revoked
    category: str = Field(max_length=40)
    issuing_department: str = Field(max_length=100)
    expires_on: dt.date
    #: occurred_at of the event that produced this state; older events never overwrite it.
    last_event_at: dt.datetime = Field(sa_type=TZ)
    updated_at: dt.datetime = Field(default_factory=utcnow, sa_type=TZ)


class CallListEntry(SQLModel, table=True):
    """A license holder that the issuing department's staff should phone before expiry."""

    __tablename__ = "call_list_entry"
    __table_args__ = (Index("ix_call_list_department_status", "issuing_department", "status"),)

    id: str = Field(default_factory=_new_id, primary_key=True, max_length=32)
    idempotency_key: str = Field(sa_column=Column(String(200), unique=True, nullable=False))
    license_id: str = Field(max_length=64)
    category: str = Field(max_length=40)
    issuing_department: str = Field(max_length=100)
    holder_name: str | None = Field(default=None, max_length=100)
    holder_mobile: str | None = Field(default=None, max_length=20)
    expires_on: dt.date
    offset_days: int
    due_on: dt.date
    status: str = Field(default="open", max_length=16)  # open | cancelled | done
    created_at: dt.datetime = Field(default_factory=utcnow, sa_type=TZ)


class DeadLetter(SQLModel, table=True):
    """Something that could not be processed, kept with its reason and raw bytes."""

    __tablename__ = "dead_letter"
    __table_args__ = (Index("ix_dead_letter_stage_reason", "stage", "reason"),)

    id: str = Field(default_factory=_new_id, primary_key=True, max_length=32)
    #: sha256 of stage + raw bytes: the same bad message seen twice is one row with count 2.
    fingerprint: str = Field(sa_column=Column(String(64), unique=True, nullable=False))
    stage: str = Field(max_length=32)  # ingest | delivery | callback
    reason: str = Field(max_length=40)
    detail: str = Field(sa_column=Column(Text, nullable=False))
    event_type: str | None = Field(default=None, max_length=64)
    event_id: str | None = Field(default=None, max_length=64)
    raw: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    count: int = 1
    first_seen: dt.datetime = Field(default_factory=utcnow, sa_type=TZ)
    last_seen: dt.datetime = Field(default_factory=utcnow, sa_type=TZ)
