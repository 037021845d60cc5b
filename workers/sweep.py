"""Reconciliation sweep for notifications stuck in ``created`` or ``sending``.

As GOV.UK Notify's sweeps do: ``created`` rows older than a threshold are re-queued (a job was
lost, e.g. the worker died before claiming); ``sending`` rows older than another threshold are
resolved by asking the provider whether the message went out. If it did, the row becomes
``sent`` with the provider's reference; if it did not, the claim is released and the row
re-queued; if the provider cannot be asked, the row ends as ``technical-failure`` with the
reason, for a person to look at (never a blind resend that could send twice).
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import TYPE_CHECKING

from sqlalchemy import select

from infra.db import session
from infra.metrics import NOTIFICATIONS
from notifiers.errors import DeliveryError, LookupUnsupportedError
from schemas.models import Notification, NotificationStatus, utcnow
from workers import ledger

if TYPE_CHECKING:
    from infra.settings import Settings
    from notifiers.base import Notifier

__all__ = ["sweep"]

log = logging.getLogger("govnotify.sweep")

#: Look this far before the claim when asking the provider (clock skew between hosts).
LOOKUP_SKEW = dt.timedelta(minutes=5)


def sweep(
    settings: Settings, *, notifier: Notifier | None = None, now: dt.datetime | None = None
) -> dict[str, int]:
    """Resolve stuck rows once; returns counts of what was done."""
    from workers.delivery import deliver_notification, get_notifier

    now = now or utcnow()
    notifier = notifier or get_notifier()
    counts = {"requeued": 0, "confirmed_sent": 0, "released": 0, "unresolved": 0}
    created_before = now - dt.timedelta(seconds=settings.sweep_created_after_s)
    sending_before = now - dt.timedelta(seconds=settings.sweep_sending_after_s)
    with session(settings) as s:
        stuck_created = (
            s.execute(
                select(Notification.id).where(
                    Notification.status == NotificationStatus.CREATED,
                    Notification.updated_at < created_before,
                )
            )
            .scalars()
            .all()
        )
        stuck_sending = (
            s.execute(
                select(Notification).where(
                    Notification.status == NotificationStatus.SENDING,
                    Notification.claimed_at < sending_before,
                )
            )
            .scalars()
            .all()
        )
    for notification_id in stuck_created:
        deliver_notification.send(notification_id)
        counts["requeued"] += 1
    for row in stuck_sending:
        claimed_at = ledger.as_utc(row.claimed_at) or now
        try:
            ref = notifier.lookup(row.recipient or "", row.body or "", claimed_at - LOOKUP_SKEW)
        except LookupUnsupportedError:
            with session(settings) as s:
                ledger.advance(
                    s,
                    row.id,
                    NotificationStatus.TECHNICAL_FAILURE,
                    status_reason="outcome unknown: provider cannot be asked",
                )
            NOTIFICATIONS.labels(row.flow, row.channel, notifier.name, "technical-failure").inc()
            counts["unresolved"] += 1
            continue
        except DeliveryError as exc:
            log.warning("sweep could not ask %s about %s: %s", notifier.name, row.id, exc.reason)
            counts["unresolved"] += 1
            continue
        with session(settings) as s:
            if ref:
                if ledger.advance(
                    s,
                    row.id,
                    NotificationStatus.SENT,
                    provider=notifier.name,
                    provider_ref=ref,
                    status_reason="confirmed by sweep",
                ):
                    NOTIFICATIONS.labels(row.flow, row.channel, notifier.name, "sent").inc()
                    counts["confirmed_sent"] += 1
            elif ledger.release_claim(s, row.id, "not found at provider by sweep"):
                deliver_notification.send(row.id)
                counts["released"] += 1
    log.info("sweep: %s", counts)
    return counts
