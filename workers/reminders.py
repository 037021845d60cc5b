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
from sqlalchemy.dialects import postgresql, sqlite

from infra.clock import Clock
from infra.db import session
from infra.metrics import CALL_LIST_ENTRIES, NOTIFICATIONS
from notifiers.errors import (
    PermanentDeliveryError,
)
from notifiers.templates import load_templates
from schemas.categories import load_categories
from schemas.commands import LicenseStateJob, RenewalJob
from schemas.models import CallListEntry, LicenseRecord, Notification, NotificationStatus, utcnow
from workers import ledger
from workers.broker import settings
from workers.delivery import (
    RETRY_OPTIONS,
    attempt,
    create_from_template,
    register_stale_check,
)
from workers.jobs import parse_job

__all__ = ["add_call_list_entry", "record_licenses", "send_renewal_reminder"]

log = logging.getLogger("govnotify.reminders")

FLOW = "renewal"
#: Loaded at import: a template with a missing placeholder stops the worker at start, not at send.
TEMPLATE = load_templates()["renewal_reminder"]
CATEGORIES = load_categories()
CLOCK = Clock.from_settings(settings)


def _dialect() -> str:
    from infra.db import get_engine

    return get_engine(settings.resolved_database_url).dialect.name


def _stale(s: Any, license_id: str, expires_on: dt.date, state_at: dt.datetime) -> str | None:
    """Why the job's license state is out of date (renewed or revoked since), or None."""
    record = s.get(LicenseRecord, license_id)
    if record is None or ledger.as_utc(record.last_event_at) <= state_at:
        return None
    return _outdated(record, expires_on.isoformat())


@dramatiq.actor(queue_name=settings.queue("registry"), **RETRY_OPTIONS)
def record_licenses(jobs: list[dict[str, Any]]) -> None:
    """Record the latest state of a batch of licenses; cancel reminders made for older states.

    One job per stream batch (not per event) and one transaction per job: the registry sees
    every license event, so this is the busiest actor.
    """
    states = [st for job in jobs if (st := parse_job(LicenseStateJob, job, "record_licenses"))]
    if not states:
        return
    # The newest state per license in this batch; older ones would lose the upsert anyway.
    latest: dict[str, LicenseStateJob] = {}
    for st in states:
        if st.license_id not in latest or latest[st.license_id].state_at < st.state_at:
            latest[st.license_id] = st
    table = LicenseRecord.__table__
    insert = postgresql.insert if _dialect() == "postgresql" else sqlite.insert
    stmt = insert(table)
    stmt = stmt.on_conflict_do_update(
        index_elements=["license_id"],
        set_={
            k: stmt.excluded[k]
            for k in (
                "status",
                "category",
                "issuing_department",
                "expires_on",
                "last_event_at",
                "updated_at",
            )
        },
        # Only a newer state wins; a late or replayed older event changes nothing.
        where=table.c.last_event_at < stmt.excluded.last_event_at,
    )
    now = utcnow()
    rows = [
        {
            "license_id": st.license_id,
            "status": st.status,
            "category": st.category,
            "issuing_department": st.issuing_department,
            "expires_on": st.expires_on,
            "last_event_at": st.state_at,
            "updated_at": now,
        }
        for st in latest.values()
    ]
    ids = list(latest)
    with session(settings) as s:
        s.execute(stmt, rows)
        s.commit()
        records = {
            r.license_id: r
            for r in s.execute(
                select(LicenseRecord).where(LicenseRecord.license_id.in_(ids))
            ).scalars()
        }
        # Pending work for a state the record no longer has (renewed: other expiry; revoked).
        pending = s.execute(
            select(Notification.id, Notification.idempotency_key, Notification.subject_id).where(
                Notification.flow == FLOW,
                Notification.subject_id.in_(ids),
                Notification.status == NotificationStatus.CREATED,
            )
        ).all()
        for notification_id, key, license_id in pending:
            reason = _outdated(records.get(license_id), key.rsplit(":", 2)[1])
            if reason and ledger.advance(
                s, notification_id, NotificationStatus.CANCELLED, status_reason=reason
            ):
                NOTIFICATIONS.labels(FLOW, "sms", "none", "cancelled").inc()
        open_calls = (
            s.execute(
                select(CallListEntry).where(
                    CallListEntry.license_id.in_(ids), CallListEntry.status == "open"
                )
            )
            .scalars()
            .all()
        )
        for entry in open_calls:
            if _outdated(records.get(entry.license_id), entry.expires_on.isoformat()):
                entry.status = "cancelled"
        s.commit()


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
    queue_name=settings.queue("reminders"),
    **RETRY_OPTIONS,
    throws=(PermanentDeliveryError,),
    records_own_failures=True,
)
def send_renewal_reminder(job: dict[str, Any]) -> None:
    """Send one renewal SMS, exactly once per idempotency key."""
    reminder = parse_job(RenewalJob, job, "send_renewal_reminder")
    if reminder is None:
        return
    category = CATEGORIES.get(reminder.category)
    params = {
        "category_name": category.name_zh if category else reminder.category,
        "license_id": reminder.license_id,
        "expires_on": f"{reminder.expires_on:%Y年%m月%d日}",
        # Days left on the day it is sent (a late reminder must not claim 30 when 20 are left).
        "days_left": (reminder.expires_on - CLOCK.today()).days,
        "issuing_department": reminder.issuing_department,
    }
    with session(settings) as s:
        row = create_from_template(
            s,
            TEMPLATE,
            params,
            key=reminder.idempotency_key,
            flow=FLOW,
            subject_id=reminder.license_id,
            recipient=reminder.holder_mobile,
            category="reminders",
            event_at=reminder.state_at,
            due_on=reminder.due_on,
        )
        if row.status != NotificationStatus.CREATED:
            log.info("notification %s already %s; nothing to do", row.id, row.status)
            return
        stale = _stale(s, reminder.license_id, reminder.expires_on, reminder.state_at)
        if stale:
            if ledger.advance(s, row.id, NotificationStatus.CANCELLED, status_reason=stale):
                NOTIFICATIONS.labels(FLOW, "sms", "none", "cancelled").inc()
            return
    # attempt() checks again after its claim (registered below): record_licenses cancels only
    # `created` rows, so a renewal committed between the first check and the claim is caught
    # there (one of the two always sees the other's commit).
    attempt(row)


def _stale_after_claim(s: Any, row: Notification) -> str | None:
    expires_on = dt.date.fromisoformat(row.idempotency_key.rsplit(":", 2)[1])
    state_at = ledger.as_utc(row.event_at)
    assert state_at is not None
    return _stale(s, row.subject_id, expires_on, state_at)


register_stale_check(FLOW, _stale_after_claim)


@dramatiq.actor(queue_name=settings.queue("reminders"), **RETRY_OPTIONS)
def add_call_list_entry(job: dict[str, Any]) -> None:
    """Put a holder on the issuing department's call list, once per (license, expiry, offset)."""
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
