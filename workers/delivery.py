"""Delivery of a claimed notification through the configured notifier, for every flow.

The row is already ``sending`` (claimed) when :func:`deliver_claimed` runs. Each outcome moves
it forward with a reason: sent/delivered, permanent failure (never retried), temporary failure
once retries run out, technical failure for our own misconfiguration. A timeout is ambiguous
(the provider may have taken the message): the row stays ``sending`` for the sweep to resolve by
asking the provider, because sending again could send twice.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import uuid
from collections.abc import Callable
from typing import Any

import dramatiq
from dramatiq.middleware import CurrentMessage
from sqlalchemy import select, update
from sqlmodel import Session

import workers.broker  # noqa: F401  (declares the broker the actors below are bound to)
from infra.db import connected_session, session
from infra.deadletters import record_delivery_failure
from infra.logging import mask_mobile
from infra.metrics import DEFERRED, EVENT_TO_SEND, NOTIFICATIONS
from notifiers.errors import (
    DeliveryTimeoutError,
    NotifierConfigError,
    PermanentDeliveryError,
    RateLimitedError,
    TransientDeliveryError,
)
from notifiers.pacing import interval_of, release_key
from notifiers.routing import RoutingNotifier
from notifiers.sms import OutboundMessage, Receipt
from notifiers.sms.text import count_segments
from notifiers.templates import SmsTemplate
from schemas.models import Notification, NotificationStatus, ScheduledJob, utcnow
from workers import ledger
from workers.context import current
from workers.scheduled_jobs import schedule
from workers.status import apply_pending_many
from workers.suppression import suppress_after

__all__ = [
    "MAX_RETRIES",
    "RETRY_OPTIONS",
    "attempt",
    "claim_many",
    "claim_to_send",
    "create_from_template",
    "create_many",
    "create_notification",
    "deliver_claimed",
    "deliver_claimed_many",
    "deliver_notification",
    "get_notifier",
    "register_stale_check",
    "register_stale_checks",
    "rendered",
    "retry_delivery",
]

log = logging.getLogger("govnotify.delivery")

#: Transient failures are retried this many times (exponential backoff between the bounds).
MAX_RETRIES = current().settings.delivery_max_retries
RETRY_OPTIONS = {
    "max_retries": MAX_RETRIES,
    "min_backoff": current().settings.delivery_min_backoff_ms,
    "max_backoff": current().settings.delivery_max_backoff_ms,
}


#: flow → check run in the claim's transaction: why each message no longer applies, by id.
#: It must lock (``FOR SHARE``) what a concurrent canceller changes
#: (see ledger.claim_many_for_send).
StaleCheck = Callable[[Session, Notification], "str | None"]
_STALE_CHECKS: dict[str, ledger.StaleMany] = {}


def register_stale_check(flow: str, check: StaleCheck) -> None:
    """Register the send-time check of a flow, one row at a time (faust-style explicit
    registry); a batch runs it for each of its rows."""
    register_stale_checks(
        flow, lambda s, rows: {row.id: reason for row in rows if (reason := check(s, row))}
    )


def register_stale_checks(flow: str, check: ledger.StaleMany) -> None:
    """Register the send-time check of a flow that checks a batch at once (a fixed number of
    statements however many rows)."""
    _STALE_CHECKS[flow] = check


def _stale_many(s: Session, rows: list[Notification]) -> dict[str, str]:
    """Every flow's check on its rows of ``rows``."""
    by_flow: dict[str, list[Notification]] = {}
    for row in rows:
        by_flow.setdefault(row.flow, []).append(row)
    reasons: dict[str, str] = {}
    for flow, flow_rows in by_flow.items():
        if check := _STALE_CHECKS.get(flow):
            reasons.update(check(s, flow_rows))
    return reasons


def notification_values(
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
    template: str | None = None,
    template_params: dict[str, object] | None = None,
    event_id: str | None = None,
    event_source: str | None = None,
) -> dict[str, Any]:
    """The columns of a new notification row (see :func:`create_notification`)."""
    now = utcnow()
    return {
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
        "event_id": event_id,
        "event_source": event_source,
        "template": template,
        "template_params": (
            None
            if template_params is None
            else json.dumps({k: str(v) for k, v in template_params.items()}, ensure_ascii=False)
        ),
        "created_at": now,
        "updated_at": now,
    }


def create_notification(s: Session, *, commit: bool = True, **notification: Any) -> Notification:
    """Persist a notification once per ``key`` (replays return the existing row).

    ``template`` and ``template_params`` are what ``body`` was rendered from; providers that
    send by approved template id (the mainland gateway) use them instead of the body.
    ``event_id`` and ``event_source`` name the upstream event that caused it (trace, outcome
    webhooks). ``commit=False`` leaves a new row in ``s``'s transaction, for
    :func:`claim_to_send` to commit with its claim. The keywords are
    :func:`notification_values`'.
    """
    row = ledger.insert_notification(s, notification_values(**notification))
    if commit:
        s.commit()
    return row


def create_from_template(
    s: Session, template: SmsTemplate, params: dict[str, object], **notification: Any
) -> Notification:
    """:func:`create_notification` with the body rendered from ``template`` and ``params``
    (signature and opt-out hint from the settings), keeping both for template-id providers."""
    return create_notification(s, **rendered(template, params), **notification)


def create_many(s: Session, notifications: list[dict[str, Any]]) -> list[Notification]:
    """:func:`create_notification` for many (each the keywords of
    :func:`notification_values`) in one statement, not committed (:func:`claim_many` commits
    them with their claims); the rows in the order given, each new or the one already there."""
    return ledger.insert_notifications(s, [notification_values(**kw) for kw in notifications])


def rendered(template: SmsTemplate, params: dict[str, object]) -> dict[str, Any]:
    """The body of ``template`` with ``params`` (signature and opt-out hint from the settings),
    and both kept for template-id providers: keywords for :func:`notification_values`.

    Raises:
      notifiers.templates.UnsafeValueError: a value, or the text, is not safe to send.
    """
    settings = current().settings
    body = template.render(
        params, signature=settings.sms_signature, opt_out_hint=settings.opt_out_hint
    )
    return {"body": body, "template": template.name, "template_params": params}


def attempt(row: Notification) -> None:
    """Apply opt-out, quiet hours and the daily cap, claim, re-check the flow, and send.

    Deferred messages are scheduled for their first allowed instant; nothing is dropped.
    """
    if row.status != NotificationStatus.CREATED:
        return
    with session(current().settings) as s:
        claimed = claim_to_send(s, row)
    if claimed:
        deliver_claimed(row)


def claim_to_send(s: Session, row: Notification) -> bool:
    """Check the flow, apply the citizen rules and claim ``row``, in one transaction of ``s``.

    True when the row is now ``sending`` and the caller is to :func:`deliver_claimed` it;
    :func:`claim_many` for one row.
    """
    return bool(claim_many(s, [row]))


def claim_many(s: Session, rows: list[Notification]) -> list[Notification]:
    """Check the flows, apply the citizen rules and claim ``rows``, in one transaction of ``s``.

    The rows now ``sending``, for the caller to :func:`deliver_claimed_many` (after leaving
    ``s``: the transaction is committed here, so no connection is held across the provider
    calls). Anything the caller put in ``s``'s transaction before (the new rows) is committed
    with the claims. A deferral schedules the held delivery; a stale message is cancelled, a
    suppressed one recorded, in the same way.
    """
    # A row once, however often it was given (a key twice in one batch is one message).
    rows = [
        row
        for row in {row.id: row for row in rows}.values()
        if row.status == NotificationStatus.CREATED
    ]
    if not rows:  # nothing new was inserted either: a new row is `created`
        return []
    settings = current().settings
    decisions = ledger.claim_many_for_send(
        s,
        rows,
        now_local=current().clock.now(),
        quiet=current().quiet,
        daily_cap=settings.sms_daily_cap or None,
        stale=_stale_many,
    )
    # A held row and its release job are committed together: no one (the sweep, an operator's
    # query) sees a row held until 08:00 with nothing scheduled to send it then.
    held: dict[str, dt.datetime] = {}
    for row in rows:
        decision = decisions[row.id]
        if decision.action == "defer":
            until = decision.not_before
            job = f"deliver:{row.id}:{until.isoformat()}"
            held[row.id] = run_at = _release_slot(s, row, job, until)
            # The held delivery is part of what the event caused: its trace shows it.
            schedule(
                s, job, run_at, "deliver_notification", row.id, event_id=row.event_id, commit=False
            )
    s.commit()
    claimed = []
    for row in rows:
        decision = decisions[row.id]
        if decision.action == "send":
            claimed.append(row)
        elif decision.action == "defer":
            DEFERRED.labels(flow=row.flow, reason=decision.reason).inc()
            log.info(
                "notification %s deferred until %s (%s)", row.id, held[row.id], decision.reason
            )
        elif decision.action in ("suppress", "cancel"):
            status = "suppressed" if decision.action == "suppress" else "cancelled"
            NOTIFICATIONS.labels(row.flow, row.channel, "none", status).inc()
            log.info("notification %s %s: %s", row.id, status, decision.reason)
    return claimed


def _release_slot(s: Session, row: Notification, job: str, until: dt.datetime) -> dt.datetime:
    """When a message held until ``until`` goes: its slot in the release spread.

    Everything held by the quiet hours (or the daily cap) may go at the same instant, 08:00;
    handed to the queues at once, thousands would wait for the provider's pace inside the
    workers. Instead each takes the next slot one interval apart from ``until`` at its flow's
    primary provider's rate (``release:<provider>:<until>``, in this transaction, committed
    with the job, and written to the row's ``not_before``), so they are released at that rate.
    Unpaced: ``until``. A job already scheduled (a replay) keeps its time and takes no slot.
    """
    if row.channel != "sms":
        return until
    notifier = get_notifier()
    primary = notifier.route(row.flow)[0]
    interval = interval_of(notifier.rate(primary))
    if interval is None:
        return until
    if s.execute(select(ScheduledJob.id).where(ScheduledJob.key == job)).first() is not None:
        return until
    slot = current().pacer.reserve_at(s, release_key(primary, until), until, interval)
    # The row says when it goes (the sweep leaves a held row alone until then).
    s.execute(
        update(Notification)
        .where(Notification.id == row.id, Notification.status == NotificationStatus.CREATED)
        .values(not_before=slot)
    )
    return slot


def get_notifier() -> RoutingNotifier:
    """This worker thread's SMS notifier (HTTP sessions are not shared across threads)."""
    return current().sms_notifier()


def _in_retry_actor() -> bool:
    message = CurrentMessage.get_current_message()
    return message is not None and message.actor_name == "retry_delivery"


def _retries_exhausted() -> bool:
    """True when this attempt was the last allowed: 1 first attempt + ``MAX_RETRIES`` retries.

    The first retry is the retry actor's first run (dramatiq ``retries`` 0), so the retry
    actor's ``retries`` option counts the retries after it.
    """
    if MAX_RETRIES == 0:
        return True
    message = CurrentMessage.get_current_message()
    if message is None or message.actor_name != "retry_delivery":
        return False
    return message.options.get("retries", 0) >= MAX_RETRIES - 1


def _fail(
    row: Notification,
    provider: str,
    status: NotificationStatus,
    reason: str,
    error_code: str | None = None,
) -> None:
    """Move a notification to a final failure status with its reason, and count it."""
    settings = current().settings
    with session(settings) as s:
        moved = ledger.advance(
            s, row.id, status, status_reason=reason, provider=provider, error_code=error_code
        )
    if not moved:
        return
    NOTIFICATIONS.labels(row.flow, row.channel, provider, status.value).inc()
    if status in (NotificationStatus.TEMPORARY_FAILURE, NotificationStatus.TECHNICAL_FAILURE):
        # Delivery gave up although the provider never took the message: one place to see it,
        # and `govnotify dead-letters replay` to try once more.
        record_delivery_failure(settings, row.id, reason)


def outbound(row: Notification) -> OutboundMessage:
    """The provider-facing message of a notification row."""
    return OutboundMessage(
        notification_id=row.id,
        to=row.recipient or "",
        body=row.body or "",
        flow=row.flow,
        category=row.category,
        template=row.template,
        params=json.loads(row.template_params) if row.template_params else {},
    )


def deliver_claimed(row: Notification) -> None:
    """Send a claimed notification and record the outcome (:func:`deliver_claimed_many`)."""
    deliver_claimed_many([row])


def deliver_claimed_many(rows: list[Notification]) -> None:
    """Send claimed notifications one after the other, and record the outcomes.

    A failure is recorded for its message as it happens (see :func:`_send`); the messages the
    provider took are recorded together at the end, in one transaction, also when a send
    raised something unforeseen (that message stays ``sending`` for the sweep, which asks the
    provider, and the exception goes on to dramatiq). No send starts after half the claim's
    lease (``sweep_sending_after_s``): what is left then goes back to the queue.
    """
    notifier = get_notifier()
    # A claim is a lease: the sweep takes a row still `sending` after sweep_sending_after_s
    # and, when the provider has no such message, sends it again. A batch behind a slow
    # provider (each send up to its timeout) could outlast that, and then send a row the sweep
    # had already handed on: twice. So no send starts after half the lease; the rest go back.
    # The claim committed just before this call: its lease is counted from here.
    deadline = utcnow() + dt.timedelta(seconds=current().settings.sweep_sending_after_s) / 2
    sent: list[tuple[Notification, Receipt]] = []
    try:
        for i, row in enumerate(rows):
            if i and utcnow() >= deadline:
                _hand_back(rows[i:])
                break
            receipt = _send(row, notifier)
            if receipt is not None:
                sent.append((row, receipt))
    finally:
        if sent:
            _record_sent(sent)


def _hand_back(rows: list[Notification]) -> None:
    """Claimed rows not sent within half their lease: back to ``created`` (the message never
    left) and to the delivery queue, before the sweep could take them."""
    settings = current().settings
    why = "not sent within half its claim's lease; queued again"
    with session(settings) as s:
        released = [row.id for row in rows if ledger.release_claim(s, row.id, why, commit=False)]
        s.commit()
    for notification_id in released:
        deliver_notification.send(notification_id)
    log.warning(
        "%d claimed notification(s) handed back, not sent within half the claim's lease (%d s): %s",
        len(released),
        settings.sweep_sending_after_s // 2,
        " ".join(released),
    )


def _send(row: Notification, notifier: RoutingNotifier) -> Receipt | None:
    """Hand one claimed message to the provider: its receipt, or None after recording why not.

    A transient failure releases the claim and hands the notification to the retry queue
    (``delivery-retry``), so a provider outage's retries never queue in front of first
    deliveries; inside the retry actor it raises for dramatiq's backoff instead.
    """
    settings = current().settings
    notification_id = row.id
    try:
        return notifier.send(outbound(row))
    except PermanentDeliveryError as exc:
        provider = exc.provider or notifier.name
        _fail(
            row,
            provider,
            NotificationStatus.PERMANENT_FAILURE,
            f"{exc.reason} (code {exc.code})",
            exc.code,
        )
        with session(settings) as s:
            suppress_after(s, recipient=row.recipient or "", category=row.category, error=exc)
        log.warning(
            "notification %s to %s failed permanently: %s",
            notification_id,
            mask_mobile(row.recipient or ""),
            exc.reason,
        )
        # Recorded on the row (and the number suppressed): finished, not a failed job. Raising
        # would park the job on the queue's .XQ, where it reads as work left undone.
        return None
    except DeliveryTimeoutError as exc:
        # Ambiguous: the provider may have taken it. Leave it `sending` for the sweep, which asks
        # the provider; resending now could send twice.
        with session(settings) as s:
            s.execute(
                Notification.__table__.update()
                # Only while still ours to resolve: a sweep or a callback may have settled it
                # already (statuses move forward only; so does what explains them).
                .where(
                    Notification.id == notification_id,
                    Notification.status == NotificationStatus.SENDING,
                )
                .values(
                    status_reason="provider timeout: outcome unknown",
                    # The sweep asks this provider (only) whether it took the message.
                    provider=exc.provider or notifier.name,
                )
            )
            s.commit()
        log.warning("notification %s: provider timeout, left for the sweep", notification_id)
        return None
    except TransientDeliveryError as exc:
        # Not sent (a rate limit among them: routing does not fail over on one): again later.
        _retry_later(row, exc, notifier.name)
        return None
    except NotifierConfigError as exc:
        _fail(
            row,
            exc.provider or notifier.name,
            NotificationStatus.TECHNICAL_FAILURE,
            f"notifier misconfigured: {exc.reason}",
        )
        log.error("notification %s: notifier misconfigured", notification_id)
        return None


def _record_sent(sent: list[tuple[Notification, Receipt]]) -> None:
    """Record what the provider took: one statement per status, one commit, then the status
    reports that beat it (one read)."""
    settings = current().settings
    moves = [
        (
            row.id,
            NotificationStatus.DELIVERED
            if receipt.status == "delivered"
            else NotificationStatus.SENT,
            {
                "provider": receipt.provider,
                "provider_ref": receipt.provider_ref,
                "segments": receipt.segments,
            },
        )
        for row, receipt in sent
    ]
    # One connection for both transactions (one checkout, one pre-ping).
    with connected_session(settings) as s:
        ledger.advance_many(s, moves)
        # A status callback can beat this write (the provider calls back as it answers us);
        # the api kept it waiting for the reference, so apply it now. Not in the advance's
        # transaction: the api stores a report, then looks for the reference; this looks for
        # reports after the reference is committed, so one of the two sees the other's commit.
        # Read in one transaction with the write, both could miss (neither commit visible to
        # the other's read) and the report would wait for the sweep's dead letter.
        apply_pending_many(s, [(receipt.provider, receipt.provider_ref) for _row, receipt in sent])
    now = utcnow()
    for (row, receipt), (_id, status, _values) in zip(sent, moves, strict=True):
        NOTIFICATIONS.labels(row.flow, row.channel, receipt.provider, status.value).inc()
        event_at = ledger.as_utc(row.event_at)
        if event_at is not None:
            EVENT_TO_SEND.labels(row.flow).observe(max(0.0, (now - event_at).total_seconds()))
    by_provider: dict[str, list[str]] = {}
    for row, receipt in sent:
        by_provider.setdefault(receipt.provider, []).append(row.id)
    # One line per batch and provider, every id in it (the notifier logs each at DEBUG).
    for provider, ids in by_provider.items():
        log.info("%d notification(s) sent via %s: %s", len(ids), provider, " ".join(ids))


def _retry_later(row: Notification, exc: TransientDeliveryError, default_provider: str) -> None:
    """Nothing was sent and it may go later: release the claim and hand the notification to the
    retry queue (``delivery-retry``), so a provider outage's retries never queue in front of
    first deliveries; inside the retry actor, raise for dramatiq's backoff instead. A rate
    limit waits at least the provider's ``Retry-After`` and goes to the same provider again
    (the route's primary is tried first). Out of retries: a temporary failure."""
    settings = current().settings
    reason = f"{exc.reason} (code {exc.code})"
    provider = exc.provider or default_provider
    if isinstance(exc, RateLimitedError) and _daily_limit(provider, exc.code):
        _hold_until_tomorrow(row, reason)
        return
    if _retries_exhausted():
        _fail(
            row,
            provider,
            NotificationStatus.TEMPORARY_FAILURE,
            f"retries exhausted: {reason}",
            exc.code,
        )
        return
    with session(settings) as s:
        ledger.release_claim(s, row.id, reason)
    retry_after = exc.retry_after if isinstance(exc, RateLimitedError) else None
    delay_ms = settings.delivery_min_backoff_ms
    if retry_after is not None:
        delay_ms = max(delay_ms, int(retry_after * 1000))
    if _in_retry_actor():
        if retry_after is None:
            raise exc  # dramatiq's backoff schedules the next retry
        raise dramatiq.Retry(f"{exc.reason} at {provider}", delay=delay_ms)
    retry_delivery.send_with_options(args=(row.id,), delay=delay_ms)
    log.info(
        "notification %s: %s at %s; handed to the retry queue (%d ms)",
        row.id,
        exc.reason,
        provider,
        delay_ms,
    )


def _daily_limit(provider: str, code: str | int | None) -> bool:
    """Did ``provider`` answer that the recipient has had its messages for today?"""
    notifier = get_notifier().providers.get(provider)
    return code is not None and str(code) in getattr(notifier, "daily_limit_codes", frozenset())


def _hold_until_tomorrow(row: Notification, reason: str) -> None:
    """The carrier's daily limit for this number is reached: retrying today cannot succeed, and
    another provider would defeat the limit. Hold the message until the centre's next day
    begins (its quiet hours then hold it to their end, in the release spread), as a scheduled
    job in PostgreSQL; the retry budget is not spent."""
    now = current().clock.now()
    tomorrow = (now + dt.timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    with session(current().settings) as s:
        # One transaction: the released row is never `created` without its job for tomorrow.
        if not ledger.release_claim(s, row.id, reason, commit=False):
            return
        s.execute(
            update(Notification)
            .where(Notification.id == row.id, Notification.status == NotificationStatus.CREATED)
            .values(not_before=tomorrow.astimezone(dt.UTC))
        )
        job = f"deliver:{row.id}:{tomorrow.isoformat()}"
        schedule(
            s, job, tomorrow, "deliver_notification", row.id, event_id=row.event_id, commit=False
        )
        s.commit()
    DEFERRED.labels(flow=row.flow, reason="recipient_daily_limit").inc()
    log.info("notification %s: recipient's daily limit reached; held until %s", row.id, tomorrow)


@dramatiq.actor(
    queue_name=current().settings.queue("delivery"),
    **RETRY_OPTIONS,
    throws=(PermanentDeliveryError,),
    records_own_failures=True,
)
def deliver_notification(notification_id: str) -> None:
    """Deliver a persisted notification by id (the sweep, scheduler and replay use this)."""
    _attempt_by_id(notification_id)


@dramatiq.actor(
    queue_name=current().settings.queue("delivery-retry"),
    # Below every first delivery: workers take retries only when nothing fresher waits.
    priority=100,
    **RETRY_OPTIONS,
    throws=(PermanentDeliveryError,),
    records_own_failures=True,
)
def retry_delivery(notification_id: str) -> None:
    """Deliver again after a transient failure; dramatiq's backoff spaces the attempts."""
    _attempt_by_id(notification_id)


def _attempt_by_id(notification_id: str) -> None:
    # The row is read in the claim's transaction: a plain read (no lock), and the claim is a
    # conditional UPDATE (status still `created`), so a row changed since the read is only
    # not claimed. The fields the rules read (recipient, category, critical) never change.
    with session(current().settings) as s:
        row = s.get(Notification, notification_id)
        if row is None:
            log.error("notification %s does not exist; nothing to deliver", notification_id)
            return
        claimed = row.status == NotificationStatus.CREATED and claim_to_send(s, row)
    if claimed:
        deliver_claimed(row)
