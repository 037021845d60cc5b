"""Delivery of a claimed notification through the configured notifier, for every flow.

The row is already ``sending`` (claimed) when :func:`deliver_claimed` runs. Each outcome moves
it forward with a reason: sent/delivered, permanent failure (never retried), temporary failure
once retries run out, technical failure for our own misconfiguration. A timeout is ambiguous
(the provider may have taken the message): the row stays ``sending`` for the sweep to resolve by
asking the provider, because sending again could send twice.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
import uuid
from collections.abc import Callable

import dramatiq
from dramatiq.middleware import CurrentMessage
from sqlmodel import Session

from infra.clock import Clock
from infra.db import session
from infra.logging import mask_mobile
from infra.metrics import DEFERRED, EVENT_TO_SEND, NOTIFICATIONS, PROVIDER_DURATION
from notifiers.base import Notifier, OutboundMessage
from notifiers.errors import (
    DeliveryTimeoutError,
    NotifierConfigError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from notifiers.registry import notifier_from_settings
from notifiers.sms import count_segments
from schemas.models import Notification, NotificationStatus, utcnow
from workers import ledger
from workers.broker import settings
from workers.policy import QuietHours

__all__ = [
    "CLOCK",
    "MAX_RETRIES",
    "RETRY_OPTIONS",
    "attempt",
    "create_notification",
    "deliver_claimed",
    "deliver_notification",
    "get_notifier",
    "register_stale_check",
]

log = logging.getLogger("govnotify.delivery")

#: Transient failures are retried this many times (exponential backoff between the bounds).
MAX_RETRIES = settings.delivery_max_retries
RETRY_OPTIONS = {
    "max_retries": MAX_RETRIES,
    "min_backoff": settings.delivery_min_backoff_ms,
    "max_backoff": settings.delivery_max_backoff_ms,
}

_local = threading.local()

CLOCK = Clock.from_settings(settings)
QUIET = QuietHours.parse(settings.quiet_hours)

#: flow → check run right after the claim: why the message no longer applies, or None.
StaleCheck = Callable[[Session, Notification], "str | None"]
_STALE_CHECKS: dict[str, StaleCheck] = {}


def register_stale_check(flow: str, check: StaleCheck) -> None:
    """Register the send-time check of a flow (faust-style explicit registry)."""
    _STALE_CHECKS[flow] = check


def create_notification(
    s: Session,
    *,
    key: str,
    flow: str,
    subject_id: str,
    recipient: str,
    body: str,
    category: str,
    critical: bool = False,
    event_at: dt.datetime | None = None,
    due_on: dt.date | None = None,
    channel: str = "sms",
) -> Notification:
    """Persist a notification once per ``key`` (replays return the existing row)."""
    now = utcnow()
    ledger.insert_ignore(
        s,
        Notification.__table__,
        {
            "id": uuid.uuid4().hex,
            "idempotency_key": key,
            "flow": flow,
            "channel": channel,
            "subject_id": subject_id,
            "recipient": recipient,
            "body": body,
            "segments": count_segments(body),
            "status": NotificationStatus.CREATED,
            "attempts": 0,
            "category": category,
            "critical": critical,
            "due_on": due_on,
            "event_at": event_at,
            "created_at": now,
            "updated_at": now,
        },
        "idempotency_key",
    )
    row = ledger.get_by_key(s, key)
    assert row is not None
    return row


def attempt(row: Notification) -> None:
    """Apply opt-out, quiet hours and the daily cap, claim, re-check the flow, and send.

    Deferred messages are scheduled for their first allowed instant; nothing is dropped.
    """
    if row.status != NotificationStatus.CREATED:
        return
    with session(settings) as s:
        decision = ledger.claim_for_send(
            s, row, now_local=CLOCK.now(), quiet=QUIET, daily_cap=settings.sms_daily_cap or None
        )
        if decision.action == "defer":
            from workers.scheduler import schedule

            until = decision.not_before
            schedule(
                s, f"deliver:{row.id}:{until.isoformat()}", until, "deliver_notification", row.id
            )
            DEFERRED.labels(flow=row.flow, reason=decision.reason).inc()
            log.info("notification %s deferred until %s (%s)", row.id, until, decision.reason)
            return
        if decision.action == "suppress":
            NOTIFICATIONS.labels(row.flow, row.channel, "none", "suppressed").inc()
            log.info("notification %s suppressed: %s", row.id, decision.reason)
            return
        if decision.action != "send":
            return
        check = _STALE_CHECKS.get(row.flow)
        reason = check(s, row) if check else None
        if reason:
            if ledger.advance(s, row.id, NotificationStatus.CANCELLED, status_reason=reason):
                NOTIFICATIONS.labels(row.flow, row.channel, "none", "cancelled").inc()
            return
    deliver_claimed(
        row.id, row.flow, row.recipient or "", row.body or "", ledger.as_utc(row.event_at)
    )


def get_notifier() -> Notifier:
    """One notifier per worker thread (HTTP sessions are not shared across threads)."""
    notifier = getattr(_local, "notifier", None)
    if notifier is None:
        notifier = _local.notifier = notifier_from_settings(settings)
    return notifier


def _retries_exhausted() -> bool:
    message = CurrentMessage.get_current_message()
    return message is None or message.options.get("retries", 0) >= MAX_RETRIES


def _fail(
    notification_id: str, flow: str, provider: str, status: NotificationStatus, reason: str
) -> None:
    """Move a notification to a final failure status with its reason, and count it."""
    with session(settings) as s:
        if ledger.advance(s, notification_id, status, status_reason=reason, provider=provider):
            NOTIFICATIONS.labels(flow, "sms", provider, status.value).inc()


def deliver_claimed(
    notification_id: str, flow: str, to: str, body: str, event_at: dt.datetime | None
) -> None:
    """Send a claimed notification and record the outcome; raises to have dramatiq retry."""
    notifier = get_notifier()
    started = time.perf_counter()
    outcome = "error"
    try:
        receipt = notifier.send(OutboundMessage(notification_id=notification_id, to=to, body=body))
        outcome = "ok"
    except PermanentDeliveryError as exc:
        outcome = "permanent"
        _fail(
            notification_id,
            flow,
            notifier.name,
            NotificationStatus.PERMANENT_FAILURE,
            f"{exc.reason} (code {exc.code})",
        )
        log.warning(
            "notification %s to %s failed permanently: %s",
            notification_id,
            mask_mobile(to),
            exc.reason,
        )
        raise
    except DeliveryTimeoutError:
        outcome = "timeout"
        # Ambiguous: the provider may have taken it. Leave it `sending` for the sweep, which asks
        # the provider; resending now could send twice.
        with session(settings) as s:
            s.execute(
                Notification.__table__.update()
                .where(Notification.id == notification_id)
                .values(status_reason="provider timeout: outcome unknown")
            )
            s.commit()
        log.warning("notification %s: provider timeout, left for the sweep", notification_id)
        return
    except TransientDeliveryError as exc:
        outcome = "transient"
        reason = f"{exc.reason} (code {exc.code})"
        if _retries_exhausted():
            _fail(
                notification_id,
                flow,
                notifier.name,
                NotificationStatus.TEMPORARY_FAILURE,
                f"retries exhausted: {reason}",
            )
            return
        with session(settings) as s:
            ledger.release_claim(s, notification_id, reason)
        raise
    except NotifierConfigError as exc:
        outcome = "misconfigured"
        _fail(
            notification_id,
            flow,
            notifier.name,
            NotificationStatus.TECHNICAL_FAILURE,
            f"notifier misconfigured: {exc.reason}",
        )
        log.error("notification %s: notifier misconfigured", notification_id)
        return
    finally:
        PROVIDER_DURATION.labels(notifier.name, outcome).observe(time.perf_counter() - started)
    status = (
        NotificationStatus.DELIVERED if receipt.status == "delivered" else NotificationStatus.SENT
    )
    with session(settings) as s:
        ledger.advance(
            s,
            notification_id,
            status,
            provider=receipt.provider,
            provider_ref=receipt.provider_ref,
            segments=receipt.segments,
        )
    NOTIFICATIONS.labels(flow, "sms", receipt.provider, status.value).inc()
    if event_at is not None:
        EVENT_TO_SEND.labels(flow).observe(max(0.0, (utcnow() - event_at).total_seconds()))
    log.info(
        "notification %s sent via %s as %s", notification_id, receipt.provider, receipt.provider_ref
    )


@dramatiq.actor(
    queue_name=settings.queue("delivery"),
    **RETRY_OPTIONS,
    throws=(PermanentDeliveryError,),
)
def deliver_notification(notification_id: str) -> None:
    """Deliver a persisted notification by id (the sweep and the scheduler re-queue with this)."""
    with session(settings) as s:
        row = s.get(Notification, notification_id)
    if row is None:
        log.error("notification %s does not exist; nothing to deliver", notification_id)
        return
    attempt(row)
