"""Outcome webhooks: the final status of what a source's events caused, POSTed to that source.

A source registered with an ``outcome_url`` (``govnotify sources add … --outcome-url``) is told,
for every notification one of its events caused, the status it ended in: delivered, a
permanent, temporary, technical or unknown failure, cancelled or suppressed
(:data:`schemas.models.FINAL_STATUSES`). Durable and at least once, in two steps the scheduler
runs every tick (:func:`tick`), each safe with any number of schedulers at once:

1. :func:`enrol`: notifications with an ``event_id`` whose final status differs from the one
   last judged (``outcome_status``) are read ``FOR UPDATE SKIP LOCKED``; for those whose
   source has an outcome URL an ``outcome_report`` row is inserted (once per notification and
   status), and every one is marked judged, in one transaction. A notification re-opened by a
   dead-letter replay and final again is reported again, with its new status.
2. :func:`post_due`: due reports are claimed (``FOR UPDATE SKIP LOCKED``, then ``next_at``
   moved past the batch's longest possible run: a lease, so a crashed scheduler's claim
   comes due again) and POSTed outside any transaction with a bounded timeout. A 2xx marks
   the report ``reported``; anything else retries after ``outcome_retry_s``, doubling, at
   most an hour; after ``outcome_max_attempts`` it is ``dead`` and kept as a dead letter
   (stage ``outcome``; ``govnotify dead-letters replay`` posts it again). A report whose
   source lost its URL is ``dropped``. Every POST is counted in
   ``govnotify_outcome_posts_total{result}``.

The body is small JSON with no recipient and no text: ``event_id``, ``notification_id``,
``flow``, ``status``, ``reason`` (a short code, see :func:`reason_code`), ``error_code`` (the
provider's) and ``at`` (when it reached the status). It is signed as
``X-Govnotify-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">`` with
``X-Govnotify-Timestamp: <unix seconds>``, under the source's key
(:func:`infra.sources.outcome_key`); a receiver recomputes it, compares in constant time and
refuses a timestamp more than five minutes off (a replayed request). ``X-Govnotify-Delivery``
is the report's id: the same on every attempt, so a receiver can drop a repeat.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import requests
from sqlalchemy import or_, select, update

from infra.db import conflict_insert, session, skip_locked
from infra.deadletters import DeadLetterError, record_dead_letter, register_replayer
from infra.metrics import OUTCOME_POSTS
from infra.sources import SourceError, outcome_key, outcome_urls
from schemas.models import FINAL_STATUSES, DeadLetter, Notification, OutcomeReport, utcnow

if TYPE_CHECKING:
    from infra.settings import Settings

__all__ = [
    "DELIVERY_HEADER",
    "ENROL_BATCH",
    "MAX_RETRY_S",
    "POST_BATCH",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "Posted",
    "enrol",
    "post_due",
    "reason_code",
    "replay_outcome",
    "sign",
    "tick",
]

log = logging.getLogger("govnotify.outcomes")

SIGNATURE_HEADER = "X-Govnotify-Signature"
TIMESTAMP_HEADER = "X-Govnotify-Timestamp"
DELIVERY_HEADER = "X-Govnotify-Delivery"
#: Longest wait between two attempts at one report.
MAX_RETRY_S = 3600.0
#: Notifications judged, and reports posted, per step at most.
ENROL_BATCH = 1000
POST_BATCH = 50
#: A reason short and plain enough to be a code: lowercase ASCII words, no digits (so never
#: a number), e.g. ``invalid_number``, ``license revoked``, ``already evaluated``.
_REASON = re.compile(r"[a-z][a-z_ -]{0,39}")


def reason_code(status_reason: str | None) -> str | None:
    """A short code of why a notification ended as it did, or None.

    The part before the first ``:`` of ``status_reason`` when that is lowercase ASCII words
    (``invalid_number: …`` → ``invalid_number``, ``license revoked`` as it is); free text (a
    provider's sentence, anything with digits or another script) is never sent.
    """
    if not status_reason:
        return None
    head = status_reason.split(":", 1)[0].strip()
    return head if _REASON.fullmatch(head) else None


# ---- 1. enrolment -----------------------------------------------------------------------------
def enrol(settings: Settings, *, limit: int = ENROL_BATCH) -> int:
    """Turn notifications that reached a final status into reports owed; returns how many."""
    with session(settings) as s:
        urls = outcome_urls(s)
        query = (
            select(
                Notification.id,
                Notification.event_id,
                Notification.event_source,
                Notification.flow,
                Notification.status,
                Notification.status_reason,
                Notification.error_code,
                Notification.updated_at,
            )
            .where(
                Notification.event_id.is_not(None),  # type: ignore[union-attr]
                Notification.status.in_(FINAL_STATUSES),  # type: ignore[attr-defined]
                or_(
                    Notification.outcome_status.is_(None),  # type: ignore[union-attr]
                    Notification.outcome_status != Notification.status,
                ),
            )
            .order_by(Notification.updated_at)
            .limit(limit)
        )
        rows = s.execute(skip_locked(s, query)).all()
        if not rows:
            return 0
        now = utcnow()
        reports = [
            {
                "id": uuid.uuid4().hex,
                "key": f"{r.id}:{r.status}",
                "notification_id": r.id,
                "event_id": r.event_id,
                "source": r.event_source,
                "flow": r.flow,
                "status": r.status,
                "reason": reason_code(r.status_reason),
                "error_code": r.error_code,
                "status_at": r.updated_at,
                "state": "pending",
                "attempts": 0,
                "next_at": now,
                "created_at": now,
            }
            for r in rows
            if r.event_source in urls
        ]
        if reports:
            insert = conflict_insert(s)(OutcomeReport.__table__)
            s.execute(insert.on_conflict_do_nothing(index_elements=["key"]), reports)
        # Judged, reported or not (no URL: nothing is owed for this status).
        s.execute(
            update(Notification)
            .where(Notification.id.in_([r.id for r in rows]))  # type: ignore[attr-defined]
            .values(outcome_status=Notification.status)
            .execution_options(synchronize_session=False)
        )
        s.commit()
    return len(reports)


# ---- 2. posting -------------------------------------------------------------------------------
def sign(key: str, timestamp: str, body: bytes) -> str:
    """The ``X-Govnotify-Signature`` value of ``body`` sent at ``timestamp``."""
    digest = hmac.new(key.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return f"sha256={digest.hexdigest()}"


def _body(report: OutcomeReport) -> bytes:
    at = report.status_at.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    data = {
        "event_id": report.event_id,
        "notification_id": report.notification_id,
        "flow": report.flow,
        "status": report.status,
        "reason": report.reason,
        "error_code": report.error_code,
        "at": at,
    }
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Posted:
    """What one :func:`post_due` did, by result."""

    reported: int = 0
    failed: int = 0
    dead: int = 0
    dropped: int = 0

    @property
    def total(self) -> int:
        return self.reported + self.failed + self.dead + self.dropped


def _claim(
    settings: Settings, now: dt.datetime, limit: int
) -> tuple[list[OutcomeReport], dict[str, str]]:
    """Lock due reports, lease them past this batch's longest run, return them claimed."""
    lease = now + dt.timedelta(seconds=limit * settings.outcome_timeout_s * 2 + 60)
    with session(settings) as s:
        query = (
            select(OutcomeReport.id)
            .where(OutcomeReport.state == "pending", OutcomeReport.next_at <= now)
            .order_by(OutcomeReport.next_at)
            .limit(limit)
        )
        ids = list(s.execute(skip_locked(s, query)).scalars())
        if not ids:
            return [], {}
        s.execute(
            update(OutcomeReport)
            .where(OutcomeReport.id.in_(ids))  # type: ignore[attr-defined]
            .values(next_at=lease, attempts=OutcomeReport.attempts + 1)
            .execution_options(synchronize_session=False)
        )
        reports = list(
            s.execute(
                select(OutcomeReport).where(OutcomeReport.id.in_(ids))  # type: ignore[attr-defined]
            ).scalars()
        )
        urls = outcome_urls(s)
        s.commit()
        for report in reports:
            s.expunge(report)
    return reports, urls


def _post(
    settings: Settings, http: requests.Session, url: str, report: OutcomeReport
) -> str | None:
    """POST one report; None when the receiver answered 2xx, else why not (short, no body)."""
    body = _body(report)
    timestamp = str(int(time.time()))
    try:
        key = outcome_key(settings, report.source)
    except SourceError:
        return "no GOVNOTIFY_OUTCOME_SIGNING_KEY"
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "govnotify-outcomes/1",
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: sign(key, timestamp, body),
        DELIVERY_HEADER: report.id,
    }
    try:
        answer = http.post(
            url,
            data=body,
            headers=headers,
            timeout=settings.outcome_timeout_s,
            allow_redirects=False,
        )
    except requests.RequestException as exc:
        return type(exc).__name__
    answer.close()
    if 200 <= answer.status_code < 300:
        return None
    return f"HTTP {answer.status_code}"


def post_due(
    settings: Settings,
    *,
    now: Callable[[], dt.datetime] = utcnow,
    limit: int = POST_BATCH,
    http: requests.Session | None = None,
) -> Posted:
    """POST every report due by ``now()`` (at most ``limit``) and record each result."""
    reports, urls = _claim(settings, now(), limit)
    counts = {"reported": 0, "failed": 0, "dead": 0, "dropped": 0}
    if not reports:
        return Posted()
    own = http is None
    http = http or requests.Session()
    try:
        for report in reports:
            url = urls.get(report.source)
            why = "the source has no outcome URL any more" if url is None else None
            if url is not None:
                why = _post(settings, http, url, report)
            result = _record(settings, report, why, dropped=url is None, at=now())
            counts[result] += 1
            OUTCOME_POSTS.labels(result).inc()
    finally:
        if own:
            http.close()
    return Posted(**counts)


def _record(
    settings: Settings, report: OutcomeReport, why: str | None, *, dropped: bool, at: dt.datetime
) -> str:
    """Record one attempt's result on the report (only if our claim still holds)."""
    ours = (OutcomeReport.id == report.id, OutcomeReport.attempts == report.attempts)
    values: dict[str, Any]
    if why is None:
        result, values = "reported", {"state": "reported", "reported_at": at, "last_error": None}
    elif dropped:
        result, values = "dropped", {"state": "dropped", "last_error": why[:200]}
    elif report.attempts >= settings.outcome_max_attempts:
        result, values = "dead", {"state": "dead", "last_error": why[:200]}
    else:
        wait = min(settings.outcome_retry_s * 2 ** (report.attempts - 1), MAX_RETRY_S)
        result = "failed"
        values = {"next_at": at + dt.timedelta(seconds=wait), "last_error": why[:200]}
    with session(settings) as s:
        changed = s.execute(
            update(OutcomeReport)
            .where(*ours, OutcomeReport.state == "pending")
            .values(**values)
            .execution_options(synchronize_session=False)
        ).rowcount
        s.commit()
        if changed and result == "dead":
            record_dead_letter(
                s,
                stage="outcome",
                reason="out_of_attempts",
                detail=(
                    f"outcome of notification {report.notification_id} ({report.status}) to "
                    f"source {report.source}: {report.attempts} attempts, last {why}"
                ),
                raw=report.id.encode(),
                event_type=report.flow,
                event_id=report.event_id,
            )
    if result == "reported":
        log.info("outcome %s of event %s reported to %s", report.id, report.event_id, report.source)
    elif result == "dead":
        log.error(
            "outcome %s to %s dead after %d attempts: %s",
            report.id,
            report.source,
            report.attempts,
            why,
        )
    else:
        log.warning("outcome %s to %s not reported: %s", report.id, report.source, why)
    return result


def tick(settings: Settings, *, now: Callable[[], dt.datetime] = utcnow) -> Posted:
    """One scheduler tick: enrol what became final, then post what is due."""
    enrol(settings)
    return post_due(settings, now=now)


# ---- dead letters of stage ``outcome`` -----------------------------------------------------------
def replay_outcome(settings: Settings, letter: DeadLetter) -> str:
    """Make a dead outcome report due again, attempts reset; the next tick posts it."""
    report_id = bytes(letter.raw).decode(errors="replace")
    with session(settings) as s:
        changed = s.execute(
            update(OutcomeReport)
            .where(OutcomeReport.id == report_id, OutcomeReport.state == "dead")
            .values(state="pending", attempts=0, next_at=utcnow())
            .execution_options(synchronize_session=False)
        ).rowcount
        s.commit()
    if not changed:
        raise DeadLetterError(f"outcome report {report_id[:32]} is not dead (or is gone)")
    return f"outcome report {report_id} due again"


register_replayer("outcome", replay_outcome)
