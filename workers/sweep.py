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
  came. The provider is asked for the message's status by reference (``fetch_status``, an
  optional notifier method); a final answer is applied like a callback, anything else (still
  ``sent``, no such message, a provider that cannot be asked) ends ``unknown-failure``.
- Status reports still waiting for their reference after ``sweep_sending_after_s`` name a
  message we never sent: dead letters (stage ``callback``, reason ``unknown-message``).

With several providers (:class:`notifiers.routing.RoutingNotifier`) a row is asked of its own
provider when it has one (``find(…, provider=row.provider)``, ``fetch_status(ref,
provider=row.provider)``), else of every provider, and only a certain answer counts: "not
sent" is believed only when every provider could say so.
"""

from __future__ import annotations

import datetime as dt
import inspect
import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Protocol

from sqlalchemy import func, select

from infra.db import session
from infra.metrics import NOTIFICATIONS
from notifiers.errors import DeliveryError, LookupUnsupportedError, PermanentDeliveryError
from schemas.models import FINAL_STATUSES, Notification, NotificationStatus, utcnow
from workers import ledger
from workers.status import UnknownStatusError, apply_pending, apply_status, dead_letter_unknown

if TYPE_CHECKING:
    from infra.settings import Settings
    from notifiers.base import Notifier

__all__ = ["StatusFetcher", "sweep"]

log = logging.getLogger("govnotify.sweep")

#: Look this far before the claim when asking the provider (clock skew between hosts).
LOOKUP_SKEW = dt.timedelta(minutes=5)


class StatusFetcher(Protocol):
    """A notifier that can say what became of a message it took (Twilio: fetch by sid).

    The answer is the provider's own word (``delivered``, ``undelivered`` …); it may carry an
    ``error_code`` attribute (:class:`notifiers.twilio_sms.ProviderStatus`). ``None`` means the
    provider has no such message.
    """

    name: str

    def fetch_status(self, provider_ref: str) -> str | None: ...


def sweep(
    settings: Settings, *, notifier: Notifier | None = None, now: dt.datetime | None = None
) -> dict[str, int]:
    """Resolve stuck rows once; returns counts of what was done.

    ``requeued``/``released``: handed to the delivery queue again; ``confirmed_sent``: found at
    the provider; ``fetched``: ``sent`` rows given their final status by the provider;
    ``unknown``: ended ``unknown-failure``; ``unresolved``: the provider could not be asked
    now (left for the next sweep); ``dead_letters``: status reports of unknown messages.
    """
    from workers.delivery import deliver_notification, get_notifier

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


def _takes(function: Callable[..., object], parameter: str) -> bool:
    try:
        return parameter in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False


def _find(notifier: Notifier, row: Notification, since: dt.datetime) -> tuple[str, str] | None:
    """(provider, reference) of the row's message at its provider, or ``None`` if surely not sent.

    A routing notifier's ``find`` asks the row's own provider, or every provider; a single
    notifier is asked itself, and only about rows it could have sent.

    Raises:
      LookupUnsupportedError: a provider that may have it cannot be asked.
      DeliveryError: a provider could not be reached.
    """
    to, body = row.recipient or "", row.body or ""
    find = getattr(notifier, "find", None)
    if callable(find):
        return find(to, body, since, notification_id=row.id, provider=row.provider)
    if row.provider and row.provider != notifier.name:
        raise LookupUnsupportedError(
            f"{row.provider} is not configured here", provider=row.provider
        )
    if _takes(notifier.lookup, "notification_id"):
        # Providers that store our id (the gateway's out_id) match on it exactly.
        ref = notifier.lookup(to, body, since, notification_id=row.id)  # type: ignore[call-arg]
    else:
        ref = notifier.lookup(to, body, since)
    return (notifier.name, ref) if ref else None


def _fetch(notifier: Notifier, provider: str, provider_ref: str) -> str | None:
    """The provider's word for the message (see :class:`StatusFetcher`).

    Raises:
      LookupUnsupportedError: the provider cannot be asked.
      DeliveryError: asking failed.
    """
    providers = getattr(notifier, "providers", None)
    if isinstance(providers, Mapping):
        # A routing notifier: ask the row's provider itself, so its answer keeps the error
        # code that decides permanent against temporary failure.
        target = providers.get(provider)
        fetch = getattr(target, "fetch_status", None)
    else:
        fetch = getattr(notifier, "fetch_status", None) if provider == notifier.name else None
    if not callable(fetch):
        raise LookupUnsupportedError(f"{provider} cannot be asked", provider=provider)
    return fetch(provider_ref)


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
    notifier: Notifier,
    row: Notification,
    now: dt.datetime,
    requeue: Callable[[str], object],
) -> str | None:
    since = (ledger.as_utc(row.claimed_at) or now) - LOOKUP_SKEW
    try:
        found = _find(notifier, row, since)
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


def _resolve_sent(settings: Settings, notifier: Notifier, row: Notification) -> str | None:
    provider = row.provider or notifier.name
    after = f"after {settings.sweep_sent_after_s / 3600:g} h"
    if not row.provider_ref:
        return _unknown(settings, row, provider, "no final status and no provider reference")
    try:
        word = _fetch(notifier, provider, row.provider_ref)
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
