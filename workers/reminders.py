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
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite

from infra.clock import Clock
from infra.db import session
from infra.deadletters import record_dead_letter
from infra.metrics import CALL_LIST_ENTRIES, NOTIFICATIONS
from notifiers.errors import (
    PermanentDeliveryError,
)
from notifiers.sms import count_segments
from notifiers.templates import load_templates
from schemas.categories import load_categories
from schemas.commands import LicenseStateJob, RenewalJob
from schemas.models import CallListEntry, LicenseRecord, Notification, NotificationStatus, utcnow
from workers import ledger
from workers.broker import settings
from workers.delivery import MAX_RETRIES, deliver_claimed

__all__ = ["add_call_list_entry", "record_license", "send_renewal_reminder"]

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
    if record.status != "live":
        return "license revoked"
    if record.expires_on != expires_on:
        return "license renewed"
    return None


def _parse(model: type, job: dict[str, Any], actor: str) -> Any:
    try:
        return model.model_validate(job)
    except ValidationError as exc:
        import json

        with session(settings) as s:
            record_dead_letter(
                s,
                stage="delivery",
                reason="invalid_job",
                detail=f"{actor}: {exc.errors(include_input=False)}",
                raw=json.dumps(job, default=str, ensure_ascii=False).encode(),
            )
        log.error("invalid %s job dead-lettered", actor)
        return None


@dramatiq.actor(queue_name=settings.queue("registry"), max_retries=MAX_RETRIES)
def record_license(job: dict[str, Any]) -> None:
    """Record a license's latest state and cancel reminders made for an older state."""
    state = _parse(LicenseStateJob, job, "record_license")
    if state is None:
        return
    table = LicenseRecord.__table__
    values = {
        "license_id": state.license_id,
        "status": state.status,
        "category": state.category,
        "issuing_department": state.issuing_department,
        "expires_on": state.expires_on,
        "last_event_at": state.state_at,
        "updated_at": utcnow(),
    }
    insert = postgresql.insert if _dialect() == "postgresql" else sqlite.insert
    stmt = insert(table).values(**values)
    stmt = stmt.on_conflict_do_update(
        index_elements=["license_id"],
        set_={k: stmt.excluded[k] for k in values if k != "license_id"},
        # Only a newer state wins; a late or replayed older event changes nothing.
        where=table.c.last_event_at < stmt.excluded.last_event_at,
    )
    with session(settings) as s:
        applied = s.execute(stmt).rowcount
        s.commit()
        if not applied:
            return
        reason = "license revoked" if state.status != "live" else "license renewed"
        pending = s.execute(
            select(Notification.id, Notification.idempotency_key).where(
                Notification.flow == FLOW,
                Notification.subject_id == state.license_id,
                Notification.status == NotificationStatus.CREATED,
            )
        ).all()
        for notification_id, key in pending:
            if state.status != "live" or f":{state.expires_on.isoformat()}:" not in key:
                if ledger.advance(
                    s, notification_id, NotificationStatus.CANCELLED, status_reason=reason
                ):
                    NOTIFICATIONS.labels(FLOW, "sms", "none", "cancelled").inc()
        s.execute(
            CallListEntry.__table__.update()
            .where(
                CallListEntry.license_id == state.license_id,
                CallListEntry.status == "open",
                (CallListEntry.expires_on != state.expires_on) | (state.status != "live"),
            )
            .values(status="cancelled")
        )
        s.commit()


@dramatiq.actor(
    queue_name=settings.queue("reminders"),
    max_retries=MAX_RETRIES,
    min_backoff=1_000,
    max_backoff=300_000,
    throws=(PermanentDeliveryError,),
)
def send_renewal_reminder(job: dict[str, Any]) -> None:
    """Send one renewal SMS, exactly once per idempotency key."""
    reminder = _parse(RenewalJob, job, "send_renewal_reminder")
    if reminder is None:
        return
    category = CATEGORIES.get(reminder.category)
    body = TEMPLATE.render(
        {
            "category_name": category.name_zh if category else reminder.category,
            "license_id": reminder.license_id,
            "expires_on": f"{reminder.expires_on:%Y年%m月%d日}",
            # Days left on the day it is sent (a late reminder must not claim 30 when 20 are left).
            "days_left": (reminder.expires_on - CLOCK.today()).days,
            "issuing_department": reminder.issuing_department,
        },
        signature=settings.sms_signature,
    )
    now = utcnow()
    with session(settings) as s:
        ledger.insert_ignore(
            s,
            Notification.__table__,
            {
                "id": uuid.uuid4().hex,
                "idempotency_key": reminder.idempotency_key,
                "flow": FLOW,
                "channel": "sms",
                "subject_id": reminder.license_id,
                "recipient": reminder.holder_mobile,
                "body": body,
                "segments": count_segments(body),
                "status": NotificationStatus.CREATED,
                "attempts": 0,
                "due_on": reminder.due_on,
                "event_at": reminder.state_at,
                "created_at": now,
                "updated_at": now,
            },
            "idempotency_key",
        )
        row = ledger.get_by_key(s, reminder.idempotency_key)
        assert row is not None
        if row.status != NotificationStatus.CREATED:
            log.info("notification %s already %s; nothing to do", row.id, row.status)
            return
        stale = _stale(s, reminder.license_id, reminder.expires_on, reminder.state_at)
        if stale:
            if ledger.advance(s, row.id, NotificationStatus.CANCELLED, status_reason=stale):
                NOTIFICATIONS.labels(FLOW, "sms", "none", "cancelled").inc()
            return
        if not ledger.claim(s, row.id):
            return
    deliver_claimed(row.id, FLOW, row.recipient or "", row.body or "", reminder.state_at)


@dramatiq.actor(queue_name=settings.queue("reminders"), max_retries=MAX_RETRIES)
def add_call_list_entry(job: dict[str, Any]) -> None:
    """Put a holder on the issuing department's call list, once per (license, expiry, offset)."""
    reminder = _parse(RenewalJob, job, "add_call_list_entry")
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
    if created:
        CALL_LIST_ENTRIES.labels(reminder.category).inc()
