"""Provider delivery statuses applied to notifications: once, forward only, in any order.

Providers report a message's fate after they took it: Twilio by status callbacks (one per
change, sometimes one per SMS segment, in no guaranteed order), the mainland gateway by batched
reports, and our sweep by asking. Every report is kept once in ``notification_status_event``
(the history: each status once, with its time and error code) and then moves the notification
forward through :func:`workers.ledger.advance`, so a late ``sent`` never overwrites
``delivered`` and two final statuses never overwrite each other.

A report can arrive before the worker has written the provider's reference on the notification
(the provider answers the worker and calls us back at nearly the same moment). It is then kept
unapplied, and :func:`apply_pending` applies it as soon as the reference lands. One still
unapplied after the sweep's threshold names a message we never sent: the sweep turns it into a
dead letter (stage ``callback``, reason ``unknown-message``) that :func:`replay_callback` can
re-apply later.

How provider words map to ours is each provider's own business, as in GOV.UK Notify's
``clients/sms/``: the provider's class declares its words
(:attr:`notifiers.sms.SMSNotifier.status_words`; Twilio's in :mod:`notifiers.sms.twilio`, the
gateway's in :mod:`notifiers.sms.gateway`) and :func:`map_status` asks it through the registry
(:func:`notifiers.registry.provider_class`). A failure word is decided by its error code: a
number or content error → ``permanent-failure``, an account or setting error →
``technical-failure`` (our side, not the citizen's), anything else → ``temporary-failure``.

A permanent failure about the number suppresses it for the message's category, as a permanent
failure at send time does (:mod:`workers.suppression`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select, update
from sqlmodel import Session

from infra.db import session
from infra.deadletters import record_dead_letter
from infra.metrics import NOTIFICATIONS, STATUS_CALLBACKS_APPLIED
from notifiers.errors import DeliveryError, PermanentDeliveryError, UnknownStatusWordError
from notifiers.registry import provider_class
from schemas.models import (
    Notification,
    NotificationStatus,
    NotificationStatusEvent,
    utcnow,
)
from workers import ledger
from workers.suppression import suppress_after

if TYPE_CHECKING:
    from infra.settings import Settings

__all__ = [
    "ADVANCED",
    "APPLIED",
    "DUPLICATE",
    "IGNORED",
    "PENDING",
    "MalformedCallbackError",
    "UnknownStatusError",
    "apply_pending",
    "apply_pending_many",
    "apply_status",
    "callback_raw",
    "dead_letter_unknown",
    "gateway_report_fields",
    "map_status",
    "replay_callback",
    "twilio_callback_fields",
]

log = logging.getLogger("govnotify.status")

#: Results of applying one report (also the ``result`` label of STATUS_CALLBACKS_APPLIED).
ADVANCED = "advanced"  # the notification moved forward
IGNORED = "ignored"  # not forward of where it is (a late `sent`, a second final status)
DUPLICATE = "duplicate"  # this report was seen before (a retry, one callback per segment)
PENDING = "pending"  # no notification has this reference yet; kept for apply_pending
APPLIED = "applied"  # applied meanwhile by another process that saw the reference land

_FAILURES = frozenset(
    {
        NotificationStatus.PERMANENT_FAILURE,
        NotificationStatus.TEMPORARY_FAILURE,
        NotificationStatus.TECHNICAL_FAILURE,
    }
)
#: A provider reference, status word or error code as we accept it from outside: printable
#: ASCII without spaces (an Aliyun BizId looks like ``900619746936498440^0``), 64 at most.
_TOKEN = re.compile(r"[!-~]{1,64}")


class MalformedCallbackError(ValueError):
    """Raised when a status report lacks a field or carries one we cannot read."""


class UnknownStatusError(MalformedCallbackError):
    """Raised when a provider reports a status word we do not know."""


# ---- mapping -----------------------------------------------------------------------------------
def map_status(
    provider: str, provider_status: str, error_code: str | None = None
) -> tuple[NotificationStatus, type[DeliveryError] | None]:
    """Our status for a provider's word, and for a failure the error class it stands for.

    The provider's class answers (:meth:`notifiers.sms.SMSNotifier.status_of`).

    Raises:
      UnknownStatusError: when the provider reports no statuses, or the word is not its own.
    """
    try:
        notifier = provider_class(provider)
    except KeyError:
        notifier = None
    if notifier is None or not notifier.status_words:
        raise UnknownStatusError(f"no status mapping for provider {provider!r}")
    try:
        return notifier.status_of(provider_status, error_code)
    except UnknownStatusWordError as exc:
        raise UnknownStatusError(str(exc)) from None


def _code(error_code: str | int | None) -> str | None:
    if error_code is None or str(error_code).strip() in ("", "0"):
        return None
    return str(error_code).strip()[:40]


# ---- applying ----------------------------------------------------------------------------------
def apply_status(
    s: Session,
    *,
    provider: str,
    provider_ref: str,
    provider_status: str,
    error_code: str | int | None,
    source: str = "callback",
    received_at: dt.datetime | None = None,
) -> str:
    """Record one provider report once and move its notification forward.

    Parameters:
      provider: ``twilio`` or ``gateway`` (the notification's ``provider``).
      provider_ref: the provider's id of the message (Twilio sid, gateway ``biz_id``).
      provider_status: the provider's own word (``delivered``, ``FAILED`` …).
      error_code: the provider's error code, if any (``"30005"``).
      source: ``callback``, ``sweep`` or ``replay``; kept in the history.
      received_at: when the report reached us (a replay keeps the original time).

    Raises:
      UnknownStatusError: when the word is not known for the provider.

    Returns:
      :data:`ADVANCED`, :data:`IGNORED`, :data:`DUPLICATE`, :data:`PENDING` or :data:`APPLIED`.
    """
    code = _code(error_code)
    status, _ = map_status(provider, provider_status, code)
    event_id = uuid.uuid4().hex
    created = ledger.insert_ignore(
        s,
        NotificationStatusEvent.__table__,
        {
            "id": event_id,
            # One row per distinct report: Twilio repeats a callback per segment and on retry.
            "dedupe_key": f"{provider}:{provider_ref}:{provider_status}:{code or ''}"[:200],
            "notification_id": None,
            "provider": provider,
            "provider_ref": provider_ref,
            "provider_status": provider_status[:32],
            "status": status.value,
            "error_code": code,
            "source": source,
            "applied": False,
            "received_at": received_at or utcnow(),
        },
        "dedupe_key",
    )
    if not created:
        STATUS_CALLBACKS_APPLIED.labels(provider, DUPLICATE).inc()
        return DUPLICATE
    results = _apply_pending(s, provider, provider_ref)
    if event_id in results:
        return results[event_id]
    applied = s.execute(
        select(NotificationStatusEvent.applied).where(NotificationStatusEvent.id == event_id)
    ).scalar_one()
    if not applied:
        log.info(
            "%s status %s for %s kept until the reference is written",
            provider,
            provider_status,
            provider_ref,
        )
    return APPLIED if applied else PENDING


def apply_pending(s: Session, provider: str, provider_ref: str) -> list[str]:
    """Apply reports that arrived before ``provider_ref`` was written; their results.

    Called right after a notification gets its reference (the worker's success, the sweep's
    confirmation). Safe to call from several processes at once: the notification only moves
    forward, and each report is marked applied once.
    """
    return list(_apply_pending(s, provider, provider_ref).values())


def apply_pending_many(s: Session, sent: list[tuple[str, str]]) -> list[str]:
    """:func:`apply_pending` for many ``(provider, provider_ref)`` at once: one indexed read
    finds the few references with reports waiting, and only those are applied."""
    refs = sorted({ref for _provider, ref in sent})
    if not refs:
        return []
    waiting = {
        (provider, ref)
        for provider, ref in s.execute(
            select(NotificationStatusEvent.provider, NotificationStatusEvent.provider_ref)
            .where(
                NotificationStatusEvent.provider_ref.in_(refs),
                NotificationStatusEvent.applied.is_(False),
            )
            .distinct()
        )
    }
    s.commit()
    results: list[str] = []
    for provider, ref in sent:
        if (provider, ref) in waiting:
            results.extend(apply_pending(s, provider, ref))
    return results


def _apply_pending(s: Session, provider: str, provider_ref: str) -> dict[str, str]:
    # Reports first: after almost every send there are none, and this is one indexed read.
    events = (
        s.execute(
            select(NotificationStatusEvent)
            .where(
                NotificationStatusEvent.provider == provider,
                NotificationStatusEvent.provider_ref == provider_ref,
                NotificationStatusEvent.applied.is_(False),
            )
            .order_by(NotificationStatusEvent.received_at, NotificationStatusEvent.id)
        )
        .scalars()
        .all()
    )
    row = None
    if events:
        row = (
            s.execute(
                select(Notification).where(
                    Notification.provider_ref == provider_ref, Notification.provider == provider
                )
            )
            .scalars()
            .first()
        )
    s.commit()
    if row is None:
        return {}
    return {event.id: _apply_one(s, row, event) for event in events}


def _apply_one(s: Session, row: Notification, event: NotificationStatusEvent) -> str:
    status = NotificationStatus(event.status)
    values: dict[str, Any] = {}
    if event.error_code:
        values["error_code"] = event.error_code
    if status in _FAILURES:
        values["status_reason"] = f"{event.provider} reported {event.provider_status}" + (
            f" (code {event.error_code})" if event.error_code else ""
        )
    if status in (NotificationStatus.SENT, NotificationStatus.DELIVERED):
        # Keep when the provider took it; `delivered` is a later time, not a later send.
        values["sent_at"] = row.sent_at or event.received_at
    # Advance first, mark applied second: a crash in between re-applies the report later,
    # which the forward-only move makes harmless; the other order could lose it.
    advanced = ledger.advance(s, row.id, status, **values)
    marked = (
        s.execute(
            update(NotificationStatusEvent)
            .where(
                NotificationStatusEvent.id == event.id,
                NotificationStatusEvent.applied.is_(False),
            )
            .values(applied=True, notification_id=row.id)
        ).rowcount
        == 1
    )
    s.commit()
    result = ADVANCED if advanced else IGNORED
    if advanced or marked:
        STATUS_CALLBACKS_APPLIED.labels(event.provider, result).inc()
    if advanced:
        NOTIFICATIONS.labels(row.flow, row.channel, event.provider, status.value).inc()
        if status == NotificationStatus.PERMANENT_FAILURE:
            _suppress(s, row, event)
    log.info(
        "notification %s: %s status %s → %s (%s)",
        row.id,
        event.provider,
        event.provider_status,
        status.value,
        result,
    )
    return result


def _suppress(s: Session, row: Notification, event: NotificationStatusEvent) -> None:
    _, cls = map_status(event.provider, event.provider_status, event.error_code)
    if cls is None or not issubclass(cls, PermanentDeliveryError):
        return
    error = cls(
        f"{event.provider} reported {event.provider_status}",
        code=event.error_code,
        provider=event.provider,
    )
    suppress_after(s, recipient=row.recipient or "", category=row.category, error=error)


# ---- reading reports ---------------------------------------------------------------------------
def _token(value: object, name: str) -> str:
    text = str(value or "").strip()
    if not _TOKEN.fullmatch(text):
        raise MalformedCallbackError(f"{name} is missing or not an identifier")
    return text


def twilio_callback_fields(params: Mapping[str, str]) -> tuple[str, str, str | None]:
    """(sid, MessageStatus, ErrorCode) of a Twilio status callback's form parameters.

    Raises:
      MalformedCallbackError: when the sid or the status is missing or unreadable.
    """
    sid = _token(params.get("MessageSid") or params.get("SmsSid"), "MessageSid")
    word = _token(params.get("MessageStatus") or params.get("SmsStatus"), "MessageStatus")
    code = params.get("ErrorCode") or None
    if code is not None:
        code = _token(code, "ErrorCode")
    map_status("twilio", word, code)
    return sid, word, _code(code)


def gateway_report_fields(report: object) -> tuple[str, str, str | None]:
    """(biz_id, status, error_code) of one report of the gateway's status callback.

    Raises:
      MalformedCallbackError: when ``biz_id`` or ``status`` is missing or unreadable.
    """
    if not isinstance(report, Mapping):
        raise MalformedCallbackError("a report is not an object")
    biz_id = _token(report.get("biz_id"), "biz_id")
    word = _token(report.get("status"), "status")
    code = report.get("error_code") or None
    if code is not None:
        code = _token(code, "error_code")
    map_status("gateway", word, code)
    return biz_id, word, _code(code)


# ---- dead letters ------------------------------------------------------------------------------
def callback_raw(
    provider: str,
    provider_ref: str,
    provider_status: str,
    error_code: str | None,
    received_at: dt.datetime | None = None,
) -> bytes:
    """A report as the provider sent it, for a dead letter that :func:`replay_callback` reads.

    Twilio: ``{"provider": "twilio", "params": {MessageSid, MessageStatus, ErrorCode}}``;
    gateway: ``{"provider": "gateway", "reports": [{biz_id, status, error_code}]}``; both with
    ``received_at`` (ISO 8601) so a replay keeps the original time in the history.
    """
    data: dict[str, Any]
    if provider == "twilio":
        params = {"MessageSid": provider_ref, "MessageStatus": provider_status}
        if error_code:
            params["ErrorCode"] = error_code
        data = {"provider": provider, "params": params}
    else:
        report = {"biz_id": provider_ref, "status": provider_status}
        if error_code:
            report["error_code"] = error_code
        data = {"provider": provider, "reports": [report]}
    if received_at is not None:
        data["received_at"] = received_at.astimezone(dt.UTC).isoformat()
    return json.dumps(data, sort_keys=True).encode()


def dead_letter_unknown(s: Session, *, received_before: dt.datetime) -> int:
    """Dead-letter reports still waiting for their reference since before ``received_before``.

    By then the sweep has resolved every ``sending`` row claimed that long ago, so no
    notification will get the reference: the report names a message we did not send (or one
    sent from another account). The report leaves the history and becomes a dead letter
    (stage ``callback``, reason ``unknown-message``); :func:`replay_callback` re-applies it.
    Returns how many.
    """
    stale = (
        s.execute(
            select(NotificationStatusEvent).where(
                NotificationStatusEvent.applied.is_(False),
                NotificationStatusEvent.received_at < received_before,
            )
        )
        .scalars()
        .all()
    )
    s.commit()
    count = 0
    for event in stale:
        if _apply_pending(s, event.provider, event.provider_ref):
            continue  # the reference landed after all
        received = ledger.as_utc(event.received_at)
        record_dead_letter(
            s,
            stage="callback",
            reason="unknown-message",
            detail=(
                f"{event.provider} status {event.provider_status} for {event.provider_ref}, "
                f"received {received:%Y-%m-%d %H:%M:%S}Z: no notification has this reference"
            ),
            raw=callback_raw(
                event.provider,
                event.provider_ref,
                event.provider_status,
                event.error_code,
                received,
            ),
            event_type=f"{event.provider}.status",
            event_id=event.provider_ref,
        )
        # Out of the history once it is a dead letter: a replay records it afresh.
        s.execute(
            delete(NotificationStatusEvent).where(
                NotificationStatusEvent.id == event.id,
                NotificationStatusEvent.applied.is_(False),
            )
        )
        s.commit()
        log.warning(
            "%s status %s for unknown message %s dead-lettered",
            event.provider,
            event.provider_status,
            event.provider_ref,
        )
        count += 1
    return count


def replay_callback(settings: Settings, raw: bytes) -> str:
    """Re-apply a callback kept as a dead letter (see :func:`callback_raw` for ``raw``).

    Returns:
      The result of each report, comma-separated (``"advanced"``, ``"pending"`` …): still
      ``pending`` when no notification has the reference yet.

    Raises:
      MalformedCallbackError: when ``raw`` is not such a record.
    """
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedCallbackError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise MalformedCallbackError("not a JSON object")
    provider = data.get("provider")
    if provider == "twilio" and isinstance(data.get("params"), dict):
        reports = [twilio_callback_fields(data["params"])]
    elif provider == "gateway" and isinstance(data.get("reports"), list) and data["reports"]:
        reports = [gateway_report_fields(r) for r in data["reports"]]
    else:
        raise MalformedCallbackError(
            'expected {"provider": "twilio", "params": …} or {"provider": "gateway", "reports": …}'
        )
    received_at = None
    if isinstance(data.get("received_at"), str):
        try:
            received_at = dt.datetime.fromisoformat(data["received_at"])
        except ValueError:
            raise MalformedCallbackError("received_at is not an ISO 8601 time") from None
        if received_at.tzinfo is None:
            raise MalformedCallbackError("received_at has no UTC offset")
    with session(settings) as s:
        results = [
            apply_status(
                s,
                provider=provider,
                provider_ref=ref,
                provider_status=word,
                error_code=code,
                source="replay",
                received_at=received_at,
            )
            for ref, word, code in reports
        ]
    return ",".join(results)
