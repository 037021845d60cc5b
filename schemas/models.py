"""SQLModel tables: the single definition of each table; migrations are generated from these.

The notification row is the ledger of every message: written first with a deterministic
idempotency key (unique), claimed atomically before the provider call, then moved forward only.
"""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from collections.abc import Callable

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    false,
    text,
)
from sqlmodel import Field, SQLModel

__all__ = [
    "STATUS_RANK",
    "CallListEntry",
    "CallbackTask",
    "Checkpoint",
    "DeadLetter",
    "EvaluationRecord",
    "IngestEvent",
    "KafkaEpoch",
    "LicenseRecord",
    "Notification",
    "NotificationStatus",
    "NotificationStatusEvent",
    "OperatorAudit",
    "OptOut",
    "OutcomeReport",
    "RectificationTicket",
    "ScheduledJob",
    "Source",
    "StaffAlert",
    "Suppression",
    "set_utc_source",
    "utcnow",
]


class UTCDateTime(TypeDecorator[dt.datetime]):
    """An aware timestamp stored in UTC and read back aware, on every database.

    PostgreSQL's timestamptz keeps the instant; SQLite keeps only the text, dropping the offset,
    so a +08:00 time would come back eight hours off. Normalising to UTC on the way in and
    marking UTC on the way out makes both behave the same.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: object) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: timestamps must carry a time zone")
        return value.astimezone(dt.UTC)

    def process_result_value(
        self, value: dt.datetime | None, dialect: object
    ) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value


#: Timestamps are stored timezone-aware (timestamptz on PostgreSQL), always in UTC.
TZ = UTCDateTime()


#: Where :func:`utcnow` reads the time; ``infra.clock.install_clock`` points it at the settable
#: clock at a process's start, so every stamp a row gets is on the clock its decisions read.
_utc_source: Callable[[], dt.datetime] | None = None


def set_utc_source(source: Callable[[], dt.datetime] | None) -> None:
    """Make :func:`utcnow` read ``source`` (None: the wall clock)."""
    global _utc_source
    _utc_source = source


def utcnow() -> dt.datetime:
    """The process clock's current instant, in UTC (the wall clock until one is installed)."""
    source = _utc_source
    return source() if source is not None else dt.datetime.now(dt.UTC)


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
    #: Not sent: the recipient opted out of the category, or the number is suppressed for it
    #: after a permanent failure (checked right before sending).
    SUPPRESSED = "suppressed"
    #: The provider took the message but never told us its fate, and cannot be asked (sweep).
    UNKNOWN_FAILURE = "unknown-failure"


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
    NotificationStatus.SUPPRESSED: 3,
    NotificationStatus.UNKNOWN_FAILURE: 3,
}

#: Final statuses: nothing moves a notification out of these.
FINAL_STATUSES = frozenset(s for s, rank in STATUS_RANK.items() if rank == 3)


class Notification(SQLModel, table=True):
    """One message to one recipient, keyed by its deterministic idempotency key."""

    __tablename__ = "notification"
    __table_args__ = (
        Index("ix_notification_status_updated", "status", "updated_at"),
        Index("ix_notification_flow_status", "flow", "status"),
        Index("ix_notification_subject", "subject_id"),
        # The daily cap counts a recipient's claims per local day.
        Index("ix_notification_recipient_claimed", "recipient", "claimed_at"),
        # Outcome reports: the rows an upstream event caused whose final status was not yet
        # handed on (workers.outcomes); rows reported, or caused by no event, leave the index.
        Index(
            "ix_notification_outcome_due",
            "updated_at",
            postgresql_where=text(
                "event_id IS NOT NULL AND (outcome_status IS NULL OR outcome_status <> status)"
            ),
            sqlite_where=text(
                "event_id IS NOT NULL AND (outcome_status IS NULL OR outcome_status <> status)"
            ),
        ),
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
    provider_ref: str | None = Field(default=None, max_length=64, index=True)
    #: The provider's error code of the last failure (Twilio 30005, a gateway's code).
    error_code: str | None = Field(default=None, max_length=40)
    #: Template name and its parameters (JSON), for providers that send by template id.
    template: str | None = Field(default=None, max_length=40)
    template_params: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    attempts: int = 0
    #: The local date the message was due on (the reminder's send date).
    due_on: dt.date | None = None
    #: Opt-out category (reminders, surveys, callbacks, rectification); empty for staff messages.
    category: str = Field(default="", max_length=24)
    #: Critical messages bypass quiet hours and the daily cap.
    critical: bool = False
    #: Deferred (quiet hours, daily cap) until this instant.
    not_before: dt.datetime | None = Field(default=None, sa_type=TZ)
    #: When the triggering event happened upstream, for event-to-send latency.
    event_at: dt.datetime | None = Field(default=None, sa_type=TZ)
    #: The upstream event that caused it (its envelope's ``event_id``; for a renewal reminder,
    #: the license's latest registry event) and that event's ``source``, to whom its outcome
    #: is reported. None for rows no event caused, or made before they were recorded.
    event_id: str | None = Field(default=None, max_length=64, index=True)
    event_source: str | None = Field(default=None, max_length=64)
    #: The final status last judged for an outcome report (reported, or no report wanted);
    #: a row whose status differs is judged again (workers.outcomes).
    outcome_status: str | None = Field(default=None, max_length=24)
    created_at: dt.datetime = Field(default_factory=utcnow, sa_type=TZ)
    updated_at: dt.datetime = Field(default_factory=utcnow, sa_type=TZ)
    claimed_at: dt.datetime | None = Field(default=None, sa_type=TZ)
    sent_at: dt.datetime | None = Field(default=None, sa_type=TZ)


class NotificationStatusEvent(SQLModel, table=True):
    """One status a provider (or our sweep) reported for a message, with its time and error.

    Keyed by the provider's reference, not our id: a callback may arrive before the worker has
    written the reference on the notification; it is applied when the reference lands.
    ``dedupe_key`` makes a repeated callback (or one per SMS segment) a single row.
    """

    __tablename__ = "notification_status_event"
    __table_args__ = (
        Index("ix_status_event_provider_ref", "provider", "provider_ref"),
        # The sweep looks for reports still waiting for their reference: keep that scan small.
        Index(
            "ix_status_event_waiting",
            "received_at",
            postgresql_where=text("NOT applied"),
            sqlite_where=text("NOT applied"),
        ),
    )

    id: str = Field(default_factory=_new_id, primary_key=True, max_length=32)
    dedupe_key: str = Field(sa_column=Column(String(200), unique=True, nullable=False))
    notification_id: str | None = Field(default=None, max_length=32, index=True)
    provider: str = Field(max_length=32)
    provider_ref: str = Field(max_length=64)
    #: The provider's own word (Twilio MessageStatus: queued, sent, delivered, undelivered…).
    provider_status: str = Field(max_length=32)
    #: What it maps to in our status machine.
    status: str = Field(max_length=24)
    error_code: str | None = Field(default=None, max_length=40)
    #: callback | sweep | send
    source: str = Field(default="callback", max_length=16)
    #: True once applied to the notification (or found not to move it forward).
    applied: bool = False
    received_at: dt.datetime = Field(default_factory=utcnow, sa_type=TZ)


class Suppression(SQLModel, table=True):
    """A number that failed permanently for a category; no more sends until changed or lifted."""

    __tablename__ = "suppression"

    recipient: str = Field(primary_key=True, max_length=20)
    category: str = Field(primary_key=True, max_length=24)
    reason: str = Field(max_length=200)
    provider: str | None = Field(default=None, max_length=32)
    error_code: str | None = Field(default=None, max_length=40)
    #: active | lifted
    status: str = Field(default="active", max_length=16)
    created_at: dt.datetime = Field(default_factory=utcnow, sa_type=TZ)
    lifted_at: dt.datetime | None = Field(default=None, sa_type=TZ)
    lifted_by: str | None = Field(default=None, max_length=64)


class LicenseRecord(SQLModel, table=True):
    """The license registry: the latest known state of every license, the system of record.

    Licenses live for years, so their state lives here, not in the stream: every field a
    reminder needs, written by ``record_licenses`` (a newer event wins, a late or replayed
    older one changes nothing), read by the scheduler's daily renewal scan (an indexed query on
    ``(status, expires_on)``) and again at send time to stop stale reminders.
    """

    __tablename__ = "license_record"
    __table_args__ = (Index("ix_license_record_status_expires", "status", "expires_on"),)

    license_id: str = Field(primary_key=True, max_length=64)
    status: str = Field(max_length=16)  # live | revoked
    category: str = Field(max_length=40)
    issuing_department: str = Field(max_length=100)
    #: The holder's name and E.164 mobile, for the reminder; kept while the license lives
    #: (the reminder needs them), scrubbed by the retention purge once it has expired.
    holder_name: str = Field(default="", max_length=100)
    holder_mobile: str = Field(default="", max_length=20)
    issued_on: dt.date | None = None
    expires_on: dt.date
    #: occurred_at of the event that produced this state; older events never overwrite it.
    last_event_at: dt.datetime = Field(sa_type=TZ)
    #: That event's id and source: the reminders of this state are what it caused.
    last_event_id: str | None = Field(default=None, max_length=64)
    last_event_source: str | None = Field(default=None, max_length=64)
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
    #: When the department's daily call-list digest carried this entry.
    notified_at: dt.datetime | None = Field(default=None, sa_type=TZ)
    completed_at: dt.datetime | None = Field(default=None, sa_type=TZ)
    #: What the call achieved, as staff recorded it (``govnotify call-list done``).
    outcome: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    #: The upstream event that caused it (the license's latest registry event); None before
    #: it was recorded.
    event_id: str | None = Field(default=None, max_length=64, index=True)


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
    #: Ingest letters: the AMQP user the event was judged as (its publisher), and the HTTP
    #: source that posted it, if any; a replay is published on that publisher's behalf.
    publisher: str | None = Field(default=None, max_length=64)
    http_source: str | None = Field(default=None, max_length=64)
    count: int = 1
    first_seen: dt.datetime = Field(default_factory=utcnow, sa_type=TZ)
    last_seen: dt.datetime = Field(default_factory=utcnow, sa_type=TZ)
    #: open | replayed (sent back through the normal path; kept for the record)
    status: str = Field(default="open", max_length=16)
    replay_count: int = 0
    replayed_at: dt.datetime | None = Field(default=None, sa_type=TZ)


class ScheduledJob(SQLModel, table=True):
    """A job to hand to a work queue at a future instant (hours or days ahead).

    RabbitMQ message delays are held unacked by the worker and requeued after the broker's
    consumer timeout (30 min), so anything further ahead than minutes is kept here instead.
    """

    __tablename__ = "scheduled_job"
    __table_args__ = (Index("ix_scheduled_job_status_run_at", "status", "run_at"),)

    id: str = Field(default_factory=_new_id, primary_key=True, max_length=32)
    key: str = Field(sa_column=Column(String(200), unique=True, nullable=False))
    run_at: dt.datetime = Field(sa_type=TZ)
    actor_name: str = Field(max_length=64)
    #: JSON of the single positional argument the actor takes.
    payload: str = Field(sa_column=Column(Text, nullable=False))
    status: str = Field(default="pending", max_length=16)  # pending | enqueued | cancelled
    created_at: dt.datetime = Field(default_factory=utcnow, sa_type=TZ)
    enqueued_at: dt.datetime | None = Field(default=None, sa_type=TZ)
    #: The upstream event that caused it (envelope ``event_id``); None before it was recorded.
    event_id: str | None = Field(default=None, max_length=64, index=True)


class StaffAlert(SQLModel, table=True):
    """A green-channel alert to the on-duty staff of a service point, with its timestamps."""

    __tablename__ = "staff_alert"
    __table_args__ = (Index("ix_staff_alert_point_status", "service_point_id", "status"),)

    id: str = Field(default_factory=_new_id, primary_key=True, max_length=32)
    idempotency_key: str = Field(sa_column=Column(String(200), unique=True, nullable=False))
    case_id: str = Field(max_length=64, index=True)
    service_point_id: str = Field(max_length=64)
    special_groups: str = Field(max_length=120)  # comma-separated
    #: created | sent | acknowledged | escalated | failed
    status: str = Field(default="created", max_length=16)
    status_reason: str | None = Field(default=None, max_length=500)
    event_at: dt.datetime = Field(sa_type=TZ)
    sent_at: dt.datetime | None = Field(default=None, sa_type=TZ)
    acknowledged_at: dt.datetime | None = Field(default=None, sa_type=TZ)
    acknowledged_by: str | None = Field(default=None, max_length=64)
    escalated_at: dt.datetime | None = Field(default=None, sa_type=TZ)
    created_at: dt.datetime = Field(default_factory=utcnow, sa_type=TZ)
    #: The upstream event that caused it (envelope ``event_id``); None before it was recorded.
    event_id: str | None = Field(default=None, max_length=64, index=True)


class CallbackTask(SQLModel, table=True):
    """A follow-up callback (跟踪回访) a project steward or department owes a case's applicant."""

    __tablename__ = "callback_task"
    __table_args__ = (Index("ix_callback_task_status_due", "status", "due_at"),)

    id: str = Field(default_factory=_new_id, primary_key=True, max_length=32)
    idempotency_key: str = Field(sa_column=Column(String(200), unique=True, nullable=False))
    case_id: str = Field(max_length=64, index=True)
    kind: str = Field(max_length=24)  # key_project | negative_review
    owner_staff_id: str = Field(max_length=64)
    owner_name: str = Field(max_length=100)
    department: str = Field(max_length=100)
    service_item: str = Field(max_length=200)
    status: str = Field(default="open", max_length=16)  # open | done
    due_at: dt.datetime = Field(sa_type=TZ)
    created_at: dt.datetime = Field(default_factory=utcnow, sa_type=TZ)
    #: When the department head was told of the task; empty until a webhook took it, so a
    #: retry after a failed webhook tells them (the task row itself is already there).
    notified_at: dt.datetime | None = Field(default=None, sa_type=TZ)
    escalated_at: dt.datetime | None = Field(default=None, sa_type=TZ)
    completed_at: dt.datetime | None = Field(default=None, sa_type=TZ)
    outcome: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    #: The upstream event that caused it (envelope ``event_id``); None before it was recorded.
    event_id: str | None = Field(default=None, max_length=64, index=True)


class EvaluationRecord(SQLModel, table=True):
    """A citizen's rating of a case (好差评); a default rating is marked as such."""

    __tablename__ = "evaluation_record"

    evaluation_id: str = Field(primary_key=True, max_length=64)
    case_id: str = Field(max_length=64, index=True)
    rating: int
    real_name: bool
    is_default: bool = False
    department: str = Field(max_length=100)
    service_point_id: str = Field(max_length=64)
    evaluated_at: dt.datetime = Field(sa_type=TZ)


class RectificationTicket(SQLModel, table=True):
    """A negative review's rectification (整改): a department owes a fix by a deadline."""

    __tablename__ = "rectification_ticket"
    __table_args__ = (Index("ix_rectification_department_status", "department", "status"),)

    id: str = Field(default_factory=_new_id, primary_key=True, max_length=32)
    idempotency_key: str = Field(sa_column=Column(String(200), unique=True, nullable=False))
    evaluation_id: str = Field(max_length=64)
    case_id: str = Field(max_length=64, index=True)
    department: str = Field(max_length=100)
    service_item: str = Field(max_length=200)
    service_point_id: str = Field(max_length=64)
    rating: int
    comment: str = Field(default="", sa_column=Column(Text, nullable=False, server_default=""))
    #: E.164 of a real-name citizen, to tell them the outcome; None for anonymous reviews.
    citizen_mobile: str | None = Field(default=None, max_length=20)
    status: str = Field(default="open", max_length=16)  # open | closed
    opened_at: dt.datetime = Field(sa_type=TZ)
    deadline_at: dt.datetime = Field(sa_type=TZ)
    reminded_at: dt.datetime | None = Field(default=None, sa_type=TZ)
    overdue_at: dt.datetime | None = Field(default=None, sa_type=TZ)
    closed_at: dt.datetime | None = Field(default=None, sa_type=TZ)
    outcome: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    #: The upstream event that caused it (envelope ``event_id``); None before it was recorded.
    event_id: str | None = Field(default=None, max_length=64, index=True)


class OptOut(SQLModel, table=True):
    """A citizen's refusal (退订) of one category of messages."""

    __tablename__ = "opt_out"

    recipient: str = Field(primary_key=True, max_length=20)
    category: str = Field(primary_key=True, max_length=24)
    source: str = Field(default="cli", max_length=32)
    created_at: dt.datetime = Field(default_factory=utcnow, sa_type=TZ)


class IngestEvent(SQLModel, table=True):
    """The ingest journal: every valid event the relay accepted, before RabbitMQ is acked.

    Kafka carries the stream, but a broker can come back empty (the embedded Tansu keeps
    nothing across a restart). An event is ``applied`` once the stream has handed its effects
    on; anything accepted and not applied is re-driven into Kafka from here after a reset. The
    ``event_id`` key also de-duplicates an upstream that publishes the same event twice, and
    the stream rebuilds a case's state from the applied events here. Rows are deleted
    ``journal_keep_days`` after they were applied (they hold personal data).
    """

    __tablename__ = "ingest_event"
    __table_args__ = (
        # Re-drive and the "oldest unapplied" gauge read only what is not applied yet.
        Index(
            "ix_ingest_event_unapplied",
            "received_at",
            postgresql_where=text("applied_at IS NULL"),
            sqlite_where=text("applied_at IS NULL"),
        ),
        Index("ix_ingest_event_entity", "family", "entity_key"),
        Index("ix_ingest_event_applied_at", "applied_at"),
    )

    event_id: str = Field(primary_key=True, max_length=64)
    event_type: str = Field(max_length=64)
    #: The topic family (licenses, cases, evaluations) and the record key in it.
    family: str = Field(max_length=16)
    entity_key: str = Field(max_length=64)
    occurred_at: dt.datetime = Field(sa_type=TZ)
    #: The validated event as written to Kafka (JSON bytes).
    body: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    #: sha256 of ``body``: the same id with other content is a conflict, not a repeat.
    fingerprint: str = Field(max_length=64)
    received_at: dt.datetime = Field(default_factory=utcnow, sa_type=TZ)
    #: When Kafka acknowledged it (last time: a re-drive writes it again).
    relayed_at: dt.datetime | None = Field(default=None, sa_type=TZ)
    #: The Kafka epoch it was last written in (see :class:`KafkaEpoch`).
    epoch: int = 0
    #: When the stream had handed its effects on (jobs confirmed by RabbitMQ).
    applied_at: dt.datetime | None = Field(default=None, sa_type=TZ)
    redriven: int = 0


class KafkaEpoch(SQLModel, table=True):
    """One life of the Kafka cluster's data, as seen by govnotify.

    The relay writes the current epoch as a marker record into Kafka. A broker that lost its
    data (a restarted embedded Tansu) has no marker: a new epoch begins, and every event in the
    journal not applied yet is re-driven into Kafka. Records carry their epoch in a header, so
    a stream that sees a newer one knows its position and state belong to a lost log.
    """

    __tablename__ = "kafka_epoch"

    generation: int = Field(sa_column=Column(Integer, primary_key=True, autoincrement=False))
    nonce: str = Field(max_length=32)
    started_at: dt.datetime = Field(default_factory=utcnow, sa_type=TZ)
    #: Why it began: ``first`` (a new installation) or ``reset`` (the marker was gone).
    reason: str = Field(default="first", max_length=16)
    #: Events re-driven from the journal when it began.
    redriven: int = 0


class Checkpoint(SQLModel, table=True):
    """A named, durable mark of work done once (the day a scan last ran, the Kafka epoch a
    stream table was rebuilt for), so a restarted process neither repeats nor skips it."""

    __tablename__ = "checkpoint"

    name: str = Field(primary_key=True, max_length=64)
    value: str = Field(max_length=200)
    updated_at: dt.datetime = Field(default_factory=utcnow, sa_type=TZ)


class SendPace(SQLModel, table=True):
    """The pace of one sender, shared by every worker process: when its next send may go.

    ``key`` names a provider (``sms:gateway``), a staff robot (``staff:<webhook key>``) or the
    spread of a release (``release:<provider>:<instant>``: messages held by quiet hours go out
    one interval apart from the instant the hours end). ``next_at`` is the Unix time of the
    next free slot; a sender takes a slot with one ``UPDATE … SET next_at = max(next_at, now)
    + interval … RETURNING`` (notifiers.pacing), so two workers never take the same one.
    """

    __tablename__ = "send_pace"

    key: str = Field(primary_key=True, max_length=200)
    next_at: float = Field(sa_column=Column(Float, nullable=False))
    updated_at: dt.datetime = Field(default_factory=utcnow, sa_type=TZ)


class Source(SQLModel, table=True):
    """An upstream system allowed to publish events: the sources registry.

    ``name`` is what its events carry as the envelope's ``source``. It publishes over AMQP as
    ``amqp_user`` (RabbitMQ checks the ``user_id`` property against the connection's login,
    so the relay knows who really sent a message; one user may own several sources), or over
    HTTP with a token whose salted HMAC is kept here, never the token. ``event_types`` is the
    comma-separated list of types it may send. A disabled source is refused from
    ``disabled_at`` on (the row stays, for the record).
    """

    __tablename__ = "source"

    name: str = Field(primary_key=True, max_length=64)
    #: The RabbitMQ user that publishes it; None for a source that only posts over HTTP.
    amqp_user: str | None = Field(default=None, max_length=64, index=True)
    #: Comma-separated event types it may send (sorted, no blanks).
    event_types: str = Field(sa_column=Column(Text, nullable=False))
    #: Public half of the HTTP token, to find the row; None when it has no HTTP access.
    token_id: str | None = Field(default=None, max_length=32, unique=True)
    #: ``hmac-sha256$<salt>$<digest>`` of the token's secret half (infra.sources).
    token_hash: str | None = Field(default=None, max_length=200)
    created_at: dt.datetime = Field(default_factory=utcnow, sa_type=TZ)
    disabled_at: dt.datetime | None = Field(default=None, sa_type=TZ)
    #: May trace any id over the api (``GET /trace/<id>``), licenses, cases and mobiles
    #: included (the 12345 hotline); otherwise only the events it published.
    trace_any: bool = Field(
        default=False, sa_column=Column(Boolean, nullable=False, server_default=false())
    )
    #: Where the final status of what its events caused is POSTed (outcome webhooks), signed
    #: with a key derived from ``GOVNOTIFY_OUTCOME_SIGNING_KEY`` and the name; None: no reports.
    outcome_url: str | None = Field(default=None, max_length=500)


class OperatorAudit(SQLModel, table=True):
    """What an operator did that touches trust or personal data: who, when, to what.

    Written in the same transaction as the change it records (adding or disabling a source,
    revealing a call list's numbers), never updated or deleted by govnotify.
    """

    __tablename__ = "operator_audit"
    __table_args__ = (Index("ix_operator_audit_at", "at"),)

    id: int | None = Field(default=None, primary_key=True)
    at: dt.datetime = Field(default_factory=utcnow, sa_type=TZ)
    #: The operating-system user who ran the command.
    operator: str = Field(max_length=64)
    #: Dotted command, e.g. ``sources.add`` or ``call-list.reveal``.
    action: str = Field(max_length=64)
    #: What it acted on (a source name, a department); never a phone or ID number.
    subject: str = Field(max_length=200)
    detail: str = Field(default="", sa_column=Column(Text, nullable=False, server_default=""))


class OutcomeReport(SQLModel, table=True):
    """One final status of a notification, owed to the source whose event caused it.

    Enrolled by the scheduler when the notification reached the status (one row per
    notification and status: a notification re-opened by a replay and final again is reported
    again), POSTed to the source's ``outcome_url`` until it answers 2xx; ``next_at`` is when
    the next attempt is due (also the lease of an attempt in progress), and after
    ``outcome_max_attempts`` failures the row is ``dead`` and kept as a dead letter.
    Holds no personal data: ids, flow, status and the reason's code only.
    """

    __tablename__ = "outcome_report"
    __table_args__ = (Index("ix_outcome_report_state_next", "state", "next_at"),)

    id: str = Field(default_factory=_new_id, primary_key=True, max_length=32)
    #: ``<notification id>:<status>``: one report per final status a notification reached.
    key: str = Field(sa_column=Column(String(64), unique=True, nullable=False))
    notification_id: str = Field(max_length=32, index=True)
    event_id: str = Field(max_length=64, index=True)
    source: str = Field(max_length=64)
    flow: str = Field(max_length=32)
    status: str = Field(max_length=24)
    #: A short code of why (``invalid_number``, ``license revoked``), never free text.
    reason: str | None = Field(default=None, max_length=40)
    error_code: str | None = Field(default=None, max_length=40)
    #: When the notification reached ``status``.
    status_at: dt.datetime = Field(sa_type=TZ)
    #: pending | reported | dead
    state: str = Field(default="pending", max_length=16)
    attempts: int = 0
    next_at: dt.datetime = Field(default_factory=utcnow, sa_type=TZ)
    last_error: str | None = Field(default=None, max_length=200)
    created_at: dt.datetime = Field(default_factory=utcnow, sa_type=TZ)
    reported_at: dt.datetime | None = Field(default=None, sa_type=TZ)
