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

import dramatiq
from dramatiq.middleware import CurrentMessage

from infra.db import session
from infra.logging import mask_mobile
from infra.metrics import EVENT_TO_SEND, NOTIFICATIONS, PROVIDER_DURATION
from notifiers.base import Notifier, OutboundMessage
from notifiers.errors import (
    DeliveryTimeoutError,
    NotifierConfigError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from notifiers.registry import notifier_from_settings
from schemas.models import Notification, NotificationStatus, utcnow
from workers import ledger
from workers.broker import settings

__all__ = ["MAX_RETRIES", "deliver_claimed", "deliver_notification", "get_notifier"]

log = logging.getLogger("govnotify.delivery")

#: Transient failures are retried this many times (exponential backoff between the bounds).
MAX_RETRIES = settings.delivery_max_retries
RETRY_OPTIONS = {
    "max_retries": MAX_RETRIES,
    "min_backoff": settings.delivery_min_backoff_ms,
    "max_backoff": settings.delivery_max_backoff_ms,
}

_local = threading.local()


def get_notifier() -> Notifier:
    """One notifier per worker thread (HTTP sessions are not shared across threads)."""
    notifier = getattr(_local, "notifier", None)
    if notifier is None:
        notifier = _local.notifier = notifier_from_settings(settings)
    return notifier


def _retries_exhausted() -> bool:
    message = CurrentMessage.get_current_message()
    return message is None or message.options.get("retries", 0) >= MAX_RETRIES


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
        with session(settings) as s:
            ledger.advance(
                s,
                notification_id,
                NotificationStatus.PERMANENT_FAILURE,
                status_reason=f"{exc.reason} (code {exc.code})",
                provider=notifier.name,
            )
        NOTIFICATIONS.labels(flow, "sms", notifier.name, "permanent-failure").inc()
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
        with session(settings) as s:
            reason = f"{exc.reason} (code {exc.code})"
            if _retries_exhausted():
                ledger.advance(
                    s,
                    notification_id,
                    NotificationStatus.TEMPORARY_FAILURE,
                    status_reason=f"retries exhausted: {reason}",
                    provider=notifier.name,
                )
                NOTIFICATIONS.labels(flow, "sms", notifier.name, "temporary-failure").inc()
                return
            ledger.release_claim(s, notification_id, reason)
        raise
    except NotifierConfigError as exc:
        outcome = "misconfigured"
        with session(settings) as s:
            ledger.advance(
                s,
                notification_id,
                NotificationStatus.TECHNICAL_FAILURE,
                status_reason=f"notifier misconfigured: {exc.reason}",
                provider=notifier.name,
            )
        NOTIFICATIONS.labels(flow, "sms", notifier.name, "technical-failure").inc()
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
    """Deliver a persisted notification by id (used by the sweep to re-queue stuck work)."""
    with session(settings) as s:
        row = s.get(Notification, notification_id)
        if row is None:
            log.error("notification %s does not exist; nothing to deliver", notification_id)
            return
        if row.status != NotificationStatus.CREATED or not ledger.claim(s, notification_id):
            return
    deliver_claimed(
        row.id, row.flow, row.recipient or "", row.body or "", ledger.as_utc(row.event_at)
    )
