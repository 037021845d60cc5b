"""Renewal reminders (无感续证): SMS to license holders and call-list entries for staff.

Each job is persisted first under its idempotency key, re-checked against the latest license
state, claimed atomically, and only then handed to the notifier. A replayed or redelivered job
finds its row already past ``created`` and does nothing.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from typing import Any

import dramatiq
from sqlalchemy import select
from sqlalchemy.dialects import sqlite

import workers.broker  # noqa: F401  (declares the broker the actors below are bound to)
from infra.clock import Clock
from infra.db import get_engine, one_of, session, unnest_insert, unnest_params
from infra.journal import get_checkpoint, set_checkpoint
from infra.metrics import CALL_LIST_ENTRIES, NOTIFICATIONS
from notifiers.errors import (
    PermanentDeliveryError,
)
from notifiers.templates import UnsafeValueError, load_templates
from schemas.categories import load_categories
from schemas.commands import LicenseStateJob, RenewalJob
from schemas.models import CallListEntry, LicenseRecord, Notification, NotificationStatus, utcnow
from workers import ledger
from workers.context import current
from workers.delivery import (
    RETRY_OPTIONS,
    claim_many,
    create_many,
    deliver_claimed_many,
    register_stale_checks,
    rendered,
)
from workers.jobs import dead_letter_job, parse_job
from workers.renewal_rules import due_renewal_jobs, scan_windows
from workers.scheduled_jobs import schedule_many

__all__ = [
    "SCAN_CHECKPOINT",
    "add_call_list_entry",
    "record_licenses",
    "reminder_actor",
    "renewal_scan",
    "send_renewal_reminder",
    "send_renewal_reminders",
]

log = logging.getLogger("govnotify.reminders")

FLOW = "renewal"
#: Loaded at import: a template with a missing placeholder stops the worker at start, not at send.
TEMPLATE = load_templates()["renewal_reminder"]
CATEGORIES = load_categories()
#: Checkpoint holding the local day the daily renewal scan last completed.
SCAN_CHECKPOINT = "renewal_scan"


def _dialect() -> str:
    settings = current().settings
    return get_engine(settings.resolved_database_url).dialect.name


def _stale(s: Any, license_id: str, expires_on: dt.date, state_at: dt.datetime) -> str | None:
    """Why the job's license state is out of date (renewed or revoked since), or None."""
    return _outdated_since(s.get(LicenseRecord, license_id), expires_on.isoformat(), state_at)


def _outdated_since(record: Any, expires_on: str, state_at: dt.datetime) -> str | None:
    """:func:`_outdated`, for work made from the license's state at ``state_at``: only a record
    written after that can have outdated it."""
    if record is None or ledger.as_utc(record.last_event_at) <= state_at:
        return None
    return _outdated(record, expires_on)


#: Columns a newer live state sets; a revocation sets only the status.
_LIVE_COLUMNS = (
    "status",
    "category",
    "holder_name",
    "holder_mobile",
    "issuing_department",
    "issued_on",
    "expires_on",
    "last_event_at",
    "last_event_id",
    "last_event_source",
    "updated_at",
)
#: What an upsert inserts (a revoked license never seen is recorded revoked, its fields empty).
_INSERT_COLUMNS = ("license_id", *_LIVE_COLUMNS)
_REVOKED_COLUMNS = ("status", "last_event_at", "last_event_id", "last_event_source", "updated_at")


def _upsert(s: Any, states: list[LicenseStateJob], columns: tuple[str, ...]) -> None:
    """Insert or update ``states`` in the registry; only a newer state wins."""
    if not states:
        return
    table = LicenseRecord.__table__
    now = utcnow()
    rows = [
        {
            "license_id": st.license_id,
            "status": st.status,
            "category": st.category,
            "holder_name": st.holder_name,
            "holder_mobile": st.holder_mobile,
            "issuing_department": st.issuing_department,
            "issued_on": st.issued_on,
            "expires_on": st.expires_on,
            "last_event_at": st.state_at,
            "last_event_id": st.event_id,
            "last_event_source": st.event_source,
            "updated_at": now,
        }
        for st in states
    ]
    # Only a newer state wins; a late or replayed older event changes nothing.
    if _dialect() == "postgresql":
        # One statement text whatever the batch's size, its values as binary arrays.
        upsert = unnest_insert(
            table,
            _INSERT_COLUMNS,
            "ON CONFLICT (license_id) DO UPDATE SET "
            + ", ".join(f"{k} = EXCLUDED.{k}" for k in columns)
            + f" WHERE {table.name}.last_event_at < EXCLUDED.last_event_at",
        )
        s.execute(upsert, unnest_params(table, _INSERT_COLUMNS, rows))
        return
    stmt = sqlite.insert(table)
    stmt = stmt.on_conflict_do_update(
        index_elements=["license_id"],
        set_={k: stmt.excluded[k] for k in columns},
        where=table.c.last_event_at < stmt.excluded.last_event_at,
    )
    s.execute(stmt, rows)


def reminder_actor(job: RenewalJob) -> str:
    """The actor that carries out a due reminder."""
    return "send_renewal_reminder" if job.kind == "sms" else "add_call_list_entry"


def _send_jobs(jobs: list[RenewalJob]) -> None:
    current().jobs.send_many([(reminder_actor(job), job.model_dump(mode="json")) for job in jobs])


@dramatiq.actor(queue_name=current().settings.queue("registry"), **RETRY_OPTIONS)
def record_licenses(jobs: list[dict[str, Any]]) -> None:
    """Record a batch of license events in the registry and plan what they make due.

    One job per stream batch (not per event) and one transaction per job: the registry sees
    every license event, so this is the busiest actor. In that transaction: the registry rows
    (a newer state wins), the reminders due today for the licenses as they now stand (held
    for the settle window, ``renewal_settle_s``, then checked against the registry again, so
    an issue followed at once by a renewal or revocation texts nobody), and the cancellation
    of pending work made for states the registry no longer has. A retry does it all again
    harmlessly: reminders are keyed, the registry only moves forward.
    """
    settings = current().settings
    states = [st for job in jobs if (st := parse_job(LicenseStateJob, job, "record_licenses"))]
    if not states:
        return
    # The newest state per license in this batch; older ones would lose the upsert anyway.
    latest: dict[str, LicenseStateJob] = {}
    for st in states:
        if st.license_id not in latest or latest[st.license_id].state_at < st.state_at:
            latest[st.license_id] = st
    # In license order: the rows are locked in the order a reminder batch's claim locks them.
    ids = sorted(latest)
    ordered = [latest[license_id] for license_id in ids]
    today, now = current().clock.today(), current().clock.utcnow()
    with session(settings) as s:
        _upsert(s, [st for st in ordered if st.status == "live"], _LIVE_COLUMNS)
        _upsert(s, [st for st in ordered if st.status == "revoked"], _REVOKED_COLUMNS)
        # Plain rows, not ORM objects: building 500 instances a batch was an eighth of the
        # worker's CPU, and nothing here changes them.
        records = {
            r.license_id: r
            for r in s.execute(
                select(*LicenseRecord.__table__.c).where(one_of(s, LicenseRecord.license_id, ids))
            )
        }
        due = [
            job
            for record in records.values()
            for job in due_renewal_jobs(
                record, today, settings.renewal_sms_offsets, settings.renewal_call_offsets
            )
        ]
        settle = dt.timedelta(seconds=settings.renewal_settle_s)
        if due and settle:
            schedule_many(
                s,
                [
                    (
                        f"settle:{job.idempotency_key}",
                        now + settle,
                        reminder_actor(job),
                        job.model_dump(mode="json"),
                    )
                    for job in due
                ],
            )
        # Pending work for a state the record no longer has (renewed: other expiry; revoked).
        pending = s.execute(
            select(Notification.id, Notification.idempotency_key, Notification.subject_id).where(
                Notification.flow == FLOW,
                one_of(s, Notification.subject_id, ids),
                Notification.status == NotificationStatus.CREATED,
            )
        ).all()
        cancelled = [
            (notification_id, reason)
            for notification_id, key, license_id in pending
            if (reason := _outdated(records.get(license_id), key.rsplit(":", 2)[1]))
        ]
        open_calls = (
            s.execute(
                select(CallListEntry).where(
                    one_of(s, CallListEntry.license_id, ids), CallListEntry.status == "open"
                )
            )
            .scalars()
            .all()
        )
        for entry in open_calls:
            if _outdated(records.get(entry.license_id), entry.expires_on.isoformat()):
                entry.status = "cancelled"
        s.commit()
        for notification_id, reason in cancelled:
            if ledger.advance(
                s, notification_id, NotificationStatus.CANCELLED, status_reason=reason
            ):
                NOTIFICATIONS.labels(FLOW, "sms", "none", "cancelled").inc()
    if due and not settle:
        _send_jobs(due)


def renewal_scan(
    clock: Clock, send: Any = None, *, batch: int = 2000, since: dt.date | None = None
) -> int:
    """Hand the reminders that time brought due to the queues, once per local day.

    An indexed query on the registry (``status``, ``expires_on``), ``batch`` rows at a time:
    only licenses whose reminder date falls on a day since the last scan (the checkpoint
    ``renewal_scan``; the first scan ever looks back as far as the largest offset), so a
    scheduler that was down for days catches up, and a scan that runs twice in a day finds its
    checkpoint and does nothing. ``since`` scans from that day whatever the checkpoint says
    (``govnotify renewals scan --since``). Reminders sent before are found by their keys and not
    sent again. Returns the jobs handed over.
    """
    settings = current().settings
    send = send or _send_jobs
    today = clock.today()
    with session(settings) as s:
        last = get_checkpoint(s, SCAN_CHECKPOINT)
    if last == today.isoformat() and since is None:
        return 0
    offsets = [*settings.renewal_sms_offsets, *settings.renewal_call_offsets]
    # A reminder date further back than the largest offset belongs to an expired license, so
    # the first scan ever (or one after a long outage) looks back that far and no further.
    first = today - dt.timedelta(days=max(offsets, default=0))
    if since is not None:
        first = min(today, max(first, since))
    elif last is not None:
        first = min(today, max(first, dt.date.fromisoformat(last) + dt.timedelta(days=1)))
    total = 0
    for low, high in scan_windows(first, today, offsets):
        after: tuple[dt.date, str] | None = None
        while True:
            query = select(LicenseRecord).where(
                LicenseRecord.status == "live",
                LicenseRecord.expires_on >= low,
                LicenseRecord.expires_on <= high,
            )
            if after is not None:
                query = query.where(
                    (LicenseRecord.expires_on > after[0])
                    | (
                        (LicenseRecord.expires_on == after[0])
                        & (LicenseRecord.license_id > after[1])
                    )
                )
            with session(settings) as s:
                rows = list(
                    s.scalars(
                        query.order_by(LicenseRecord.expires_on, LicenseRecord.license_id).limit(
                            batch
                        )
                    )
                )
            jobs = [
                job
                for row in rows
                for job in due_renewal_jobs(
                    row, today, settings.renewal_sms_offsets, settings.renewal_call_offsets
                )
            ]
            send(jobs)
            total += len(jobs)
            if len(rows) < batch:
                break
            after = (rows[-1].expires_on, rows[-1].license_id)
    with session(settings) as s:
        set_checkpoint(s, SCAN_CHECKPOINT, today.isoformat())
    log.info("renewal scan for %s: %d reminders handed to the queues", today, total)
    return total


def _outdated(record: LicenseRecord | None, expires_on: str) -> str | None:
    """Why work made for a license expiring on ``expires_on`` no longer applies, or None."""
    if record is None:
        return None
    if record.status != "live":
        return "license revoked"
    if record.expires_on.isoformat() != expires_on:
        return "license renewed"
    return None


@dramatiq.actor(
    queue_name=current().settings.queue("reminders"),
    **RETRY_OPTIONS,
    throws=(PermanentDeliveryError,),
    records_own_failures=True,
)
def send_renewal_reminder(job: dict[str, Any]) -> None:
    """Send one renewal SMS, exactly once per idempotency key (jobs queued one by one: by an
    older version, or with ``GOVNOTIFY_JOB_BATCH_SIZE=1``)."""
    _send_reminders([job], "send_renewal_reminder")


@dramatiq.actor(
    queue_name=current().settings.queue("reminders"),
    **RETRY_OPTIONS,
    throws=(PermanentDeliveryError,),
    records_own_failures=True,
)
def send_renewal_reminders(jobs: list[dict[str, Any]]) -> None:
    """Send a batch of renewal SMS, each exactly once per idempotency key.

    :class:`infra.jobs.JobSender` hands reminders over in batches (``GOVNOTIFY_JOB_BATCH_SIZE``):
    the rows of the whole batch are inserted, checked and claimed in one transaction with a
    fixed number of statements, sent one after the other, and recorded in one more. A retry of
    the job does again only what is left: rows past ``created`` are not claimed twice.
    """
    if not isinstance(jobs, list):
        jobs = [jobs]  # parse_job dead-letters it with its reason
    _send_reminders(jobs, "send_renewal_reminders")


def _send_reminders(jobs: list[Any], actor: str) -> None:
    settings = current().settings
    today = current().clock.today()
    notifications = []
    for job in jobs:
        reminder = parse_job(RenewalJob, job, actor)
        if reminder is None:
            continue
        category = CATEGORIES.get(reminder.category)
        params: dict[str, object] = {
            "category_name": category.name_zh if category else reminder.category,
            "license_id": reminder.license_id,
            "expires_on": f"{reminder.expires_on:%Y年%m月%d日}",
            # Days left on the day it is sent (a late reminder must not claim 30 when 20 are
            # left).
            "days_left": (reminder.expires_on - today).days,
            "issuing_department": reminder.issuing_department,
        }
        try:
            text = rendered(TEMPLATE, params)
        except UnsafeValueError as exc:
            # This reminder can never be sent as it stands; the others of the batch still go.
            dead_letter_job(job, actor, "unsafe_text", f"{actor}: {exc}")
            continue
        notification = {
            **text,
            "key": reminder.idempotency_key,
            "flow": FLOW,
            "subject_id": reminder.license_id,
            "recipient": reminder.holder_mobile,
            "category": "reminders",
            "event_at": reminder.state_at,
            "due_on": reminder.due_on,
            "event_id": reminder.event_id,
            "event_source": reminder.event_source,
        }
        notifications.append(notification)
    if not notifications:
        return
    with session(settings) as s:
        # One transaction: the new rows are committed with their claims (or cancellations, or
        # deferrals); the licenses are checked in it too (_stale_many_at_claim).
        rows = create_many(s, notifications)
        for row in rows:
            if row.status != NotificationStatus.CREATED:
                log.info("notification %s already %s; nothing to do", row.id, row.status)
        claimed = claim_many(s, rows)
    deliver_claimed_many(claimed)


def _stale_many_at_claim(s: Any, rows: list[Notification]) -> dict[str, str]:
    """The license check, in the claim's transaction (``ledger.claim_many_for_send``): why each
    reminder no longer applies, by notification id.

    The license rows are read ``FOR SHARE``, in license order (record_licenses writes them in
    that order too, so the two do not deadlock): record_licenses cancels the `created` rows of
    a license it updates, after updating it. A renewal updated (not yet committed) before this
    read makes the read wait for its commit and see it: cancelled here. One that comes after
    the read waits for this claim's commit, and then finds the row `sending`, not `created`: it
    was already due to go, exactly as a renewal recorded a moment after the send.
    """
    ids = sorted({row.subject_id for row in rows})
    records = {
        record.license_id: record
        for record in s.execute(
            select(
                LicenseRecord.license_id,
                LicenseRecord.status,
                LicenseRecord.expires_on,
                LicenseRecord.last_event_at,
            )
            .where(one_of(s, LicenseRecord.license_id, ids))
            .order_by(LicenseRecord.license_id)
            .with_for_update(read=True)
        )
    }
    reasons = {}
    for row in rows:
        state_at = ledger.as_utc(row.event_at)
        assert state_at is not None
        expires_on = row.idempotency_key.rsplit(":", 2)[1]
        if reason := _outdated_since(records.get(row.subject_id), expires_on, state_at):
            reasons[row.id] = reason
    return reasons


register_stale_checks(FLOW, _stale_many_at_claim)


@dramatiq.actor(queue_name=current().settings.queue("reminders"), **RETRY_OPTIONS)
def add_call_list_entry(job: dict[str, Any]) -> None:
    """Put a holder on the issuing department's call list, once per (license, expiry, offset)."""
    settings = current().settings
    reminder = parse_job(RenewalJob, job, "add_call_list_entry")
    if reminder is None:
        return
    with session(settings) as s:
        if _stale(s, reminder.license_id, reminder.expires_on, reminder.state_at):
            return
        created = ledger.insert_ignore(
            s,
            CallListEntry.__table__,
            {
                "id": uuid.uuid4().hex,
                "idempotency_key": reminder.idempotency_key,
                "license_id": reminder.license_id,
                "category": reminder.category,
                "issuing_department": reminder.issuing_department,
                "holder_name": reminder.holder_name,
                "holder_mobile": reminder.holder_mobile,
                "expires_on": reminder.expires_on,
                "offset_days": reminder.offset_days,
                "due_on": reminder.due_on,
                "status": "open",
                "created_at": utcnow(),
                "event_id": reminder.event_id,
            },
            "idempotency_key",
        )
        # Same double check as for SMS: a renewal recorded while we inserted cancels the entry.
        if _stale(s, reminder.license_id, reminder.expires_on, reminder.state_at):
            s.execute(
                CallListEntry.__table__.update()
                .where(CallListEntry.idempotency_key == reminder.idempotency_key)
                .values(status="cancelled")
            )
            s.commit()
            return
    if created:
        CALL_LIST_ENTRIES.labels(reminder.category).inc()
