"""Reconciliation sweep: notifications stuck in ``created``, ``sending`` or ``sent``.

As GOV.UK Notify's sweeps do, each stuck state is resolved by what the provider knows, never by
a blind resend that could text a citizen twice:

- ``created`` longer than ``sweep_created_after_s``: the job was lost (a worker died before
  claiming); re-queued.
- ``sending`` longer than ``sweep_sending_after_s``: the worker died (or timed out) between the
  claim and writing the outcome. The provider is asked whether it has the message
  (``notifier.lookup``): if it does, the row becomes ``sent`` with its reference (no second
  SMS); if it answers that it does not, the claim is released and the row re-queued; if it
  cannot be asked at all, the row ends ``unknown-failure`` for a person to look at.
- ``sent`` longer than ``sweep_sent_after_s`` with no final status: the status callback never
  came. The provider is asked for the message's status by reference (``fetch_status``); a
  final answer is applied like a callback, anything else (still ``sent``, no such message, a
  provider that cannot be asked) ends ``unknown-failure``.
- Status reports still waiting for their reference after ``sweep_sending_after_s`` name a
  message we never sent: dead letters (stage ``callback``, reason ``unknown-message``).

With several providers (:class:`notifiers.routing.RoutingNotifier`) a row is asked of its own
provider when it has one (``find(…, provider=row.provider)``, ``fetch_status(ref,
provider=row.provider)``), else of every provider, and only a certain answer counts: "not
sent" is believed only when every provider could say so.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from sqlalchemy import func, or_, select

from infra.clock import to_wall_time
from infra.db import session
from infra.metrics import NOTIFICATIONS
from notifiers.errors import DeliveryError, LookupUnsupportedError, PermanentDeliveryError
from schemas.models import FINAL_STATUSES, Notification, NotificationStatus, utcnow
from workers import ledger
from workers.delivery import deliver_notification, get_notifier
from workers.status import UnknownStatusError, apply_pending, apply_status, dead_letter_unknown

if TYPE_CHECKING:
    from infra.settings import Settings
    from notifiers.routing import RoutingNotifier

__all__ = ["sweep"]

log = logging.getLogger("govnotify.sweep")

#: Look this far before the claim when asking the provider (clock skew between hosts).
LOOKUP_SKEW = dt.timedelta(minutes=5)


def sweep(
    settings: Settings, *, notifier: RoutingNotifier | None = None, now: dt.datetime | None = None
) -> dict[str, int]:
    """Resolve stuck rows once; returns counts of what was done.

    ``requeued``/``released``: handed to the delivery queue again; ``confirmed_sent``: found at
    the provider; ``fetched``: ``sent`` rows given their final status by the provider;
    ``unknown``: ended ``unknown-failure``; ``unresolved``: the provider could not be asked
    now (left for the next sweep); ``dead_letters``: status reports of unknown messages.
    """
    now = now or utcnow()
    notifier = notifier or get_notifier()
    counts = dict.fromkeys(
        (
            "requeued",
            "confirmed_sent",
            "released",
            "unresolved",
            "fetched",
            "unknown",
            "dead_letters",
        ),
        0,
    )
    created_before = now - dt.timedelta(seconds=settings.sweep_created_after_s)
    sending_before = now - dt.timedelta(seconds=settings.sweep_sending_after_s)
    sent_before = now - dt.timedelta(seconds=settings.sweep_sent_after_s)
    with session(settings) as s:
        stuck_created = (
            s.execute(
                select(Notification.id).where(
                    Notification.status == NotificationStatus.CREATED,
                    Notification.updated_at < created_before,
                    # A row held by the quiet hours or the daily cap has its job scheduled for
                    # its release slot (not_before): lost only if still here well after it.
                    or_(
                        Notification.not_before.is_(None),
                        Notification.not_before < created_before,
                    ),
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
        stuck_sent = (
            s.execute(
                select(Notification).where(
                    Notification.status == NotificationStatus.SENT,
                    func.coalesce(Notification.sent_at, Notification.updated_at) < sent_before,
                )
            )
            .scalars()
            .all()
        )
    for notification_id in stuck_created:
        deliver_notification.send(notification_id)
        counts["requeued"] += 1
    for row in stuck_sending:
        outcome = _resolve_sending(settings, notifier, row, now, deliver_notification.send)
        if outcome:
            counts[outcome] += 1
    for row in stuck_sent:
        outcome = _resolve_sent(settings, notifier, row)
        if outcome:
            counts[outcome] += 1
    # After the sending rows: every reference those could still get has been written now.
    with session(settings) as s:
        counts["dead_letters"] = dead_letter_unknown(s, received_before=sending_before)
    log.info("sweep: %s", counts)
    return counts


def _unknown(settings: Settings, row: Notification, provider: str, reason: str) -> str | None:
    with session(settings) as s:
        moved = ledger.advance(
            s, row.id, NotificationStatus.UNKNOWN_FAILURE, status_reason=reason[:500]
        )
    if not moved:
        return None
    NOTIFICATIONS.labels(row.flow, row.channel, provider, "unknown-failure").inc()
    log.warning("notification %s: unknown-failure: %s", row.id, reason)
    return "unknown"


def _resolve_sending(
    settings: Settings,
    notifier: RoutingNotifier,
    row: Notification,
    now: dt.datetime,
    requeue: Callable[[str], object],
) -> str | None:
    # The provider stamps messages with the real time; the claim is on the process clock.
    since = to_wall_time(ledger.as_utc(row.claimed_at) or now) - LOOKUP_SKEW
    try:
        found = notifier.find(
            row.recipient or "",
            row.body or "",
            since,
            notification_id=row.id,
            provider=row.provider,
        )
    except LookupUnsupportedError as exc:
        provider = exc.provider or row.provider or notifier.name
        return _unknown(
            settings,
            row,
            provider,
            f"outcome unknown: {provider} cannot be asked whether it was sent",
        )
    except DeliveryError as exc:
        # It may be at the provider that did not answer: ask again at the next sweep.
        log.warning("sweep could not ask about %s: %s", row.id, exc.reason)
        return "unresolved"
    if found is not None:
        provider, ref = found
        with session(settings) as s:
            moved = ledger.advance(
                s,
                row.id,
                NotificationStatus.SENT,
                provider=provider,
                provider_ref=ref,
                status_reason="confirmed by sweep",
            )
            # Callbacks for it may have been waiting for this reference.
            apply_pending(s, provider, ref)
        if not moved:
            return None
        NOTIFICATIONS.labels(row.flow, row.channel, provider, "sent").inc()
        return "confirmed_sent"
    with session(settings) as s:
        released = ledger.release_claim(s, row.id, "not found at provider by sweep")
    if not released:
        return None
    requeue(row.id)
    return "released"


def _resolve_sent(settings: Settings, notifier: RoutingNotifier, row: Notification) -> str | None:
    provider = row.provider or notifier.name
    after = f"after {settings.sweep_sent_after_s / 3600:g} h"
    if not row.provider_ref:
        return _unknown(settings, row, provider, "no final status and no provider reference")
    try:
        word = notifier.fetch_status(row.provider_ref, provider=provider)
    except LookupUnsupportedError:
        return _unknown(
            settings,
            row,
            provider,
            f"no final status from {provider} {after}; {provider} cannot be asked",
        )
    except PermanentDeliveryError as exc:
        # The provider does not know the reference (gateway "not_found"): it never will.
        return _unknown(
            settings, row, provider, f"{provider} cannot tell its fate {after}: {exc.reason}"
        )
    except DeliveryError as exc:
        log.warning("sweep could not ask %s about %s: %s", provider, row.id, exc.reason)
        return "unresolved"
    if word is None:
        return _unknown(settings, row, provider, f"{provider} has no message {row.provider_ref}")
    with session(settings) as s:
        try:
            apply_status(
                s,
                provider=provider,
                provider_ref=row.provider_ref,
                provider_status=str(word),
                error_code=getattr(word, "error_code", None),
                source="sweep",
            )
        except UnknownStatusError:
            pass  # an answer we cannot read is no final status: unknown-failure below
        status = s.execute(
            select(Notification.status).where(Notification.id == row.id)
        ).scalar_one()
    if status in FINAL_STATUSES:
        return "fetched"
    return _unknown(
        settings,
        row,
        provider,
        f"{provider} still reports {str(word)!r} {after}: its fate is unknown",
    )
