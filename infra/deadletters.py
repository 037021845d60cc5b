"""Dead letters: one place for everything that could not be processed, and the way back.

Four stages write here, one row per distinct message (fingerprint = stage + raw bytes), with
its reason, count and first/last sighting:

========== ============================================ =========================================
stage      written by                                   ``raw``
========== ============================================ =========================================
ingest     the relay (bad JSON, unknown type, schema)   the event bytes as published
job        :class:`workers.middleware.DeadLetters`      the dramatiq message, retries reset
delivery   :func:`record_delivery_failure` (delivery    the notification id
           gave up: temporary or technical failure)
callback   the status-callback worker and the sweep     the callback as received
outcome    :mod:`workers.outcomes` (an outcome webhook  the outcome report's id
           out of attempts)
========== ============================================ =========================================

``govnotify dead-letters list|show|replay|purge`` works on them. A replay sends a letter back
through the normal path, never around it: each stage's owner knows that path and registers
its replayer here (:func:`register_replayer`) as its module is imported, since this store is on
the ground floor and the owners above it (STYLE.md, "Floors"):

========== ============================================
stage      replayer
========== ============================================
ingest     :mod:`producers.replay` (publish again)
job        :mod:`infra.jobs` (enqueue again)
delivery   :mod:`workers.replay` (re-open and queue)
callback   :mod:`workers.replay` (apply again)
outcome    :mod:`workers.outcomes` (post again)
========== ============================================

Whoever replays (the ``dead-letters`` command) imports those modules first. Every guard that
stops a duplicate send still applies: an event is validated again by the relay and made into
jobs with deterministic idempotency keys; a job finds its notification row already sent; a
notification is re-opened only from ``temporary-failure`` / ``technical-failure`` (the provider
certainly did not take it), by a guarded update only one replay can win. If the letter fails
again it is the same fingerprint: the row's count goes up and it is ``open`` again.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select, update
from sqlmodel import Session

from infra.db import conflict_insert, session
from infra.dbgauges import reading_engine
from infra.logging import mask_pii
from infra.metrics import DEAD_LETTERS
from schemas.models import DeadLetter, Notification, NotificationStatus, utcnow

if TYPE_CHECKING:
    from infra.settings import Settings

__all__ = [
    "REPLAYABLE_DELIVERY_STATUSES",
    "STAGES",
    "DeadLetterError",
    "NoReplayerError",
    "ReplayOutcome",
    "Replayer",
    "find_letters",
    "latest_letters",
    "list_letters",
    "purge_letters",
    "record_dead_letter",
    "record_delivery_failure",
    "register_replayer",
    "replay",
    "replay_letter",
]

#: Every stage that writes dead letters.
STAGES = ("ingest", "job", "delivery", "callback", "outcome")

#: A notification is re-opened for one more delivery only from these: the provider said, for
#: certain, that it did not take the message. Never from sent, delivered or unknown-failure
#: (the provider may have it: a resend could reach the citizen twice).
REPLAYABLE_DELIVERY_STATUSES = (
    NotificationStatus.TEMPORARY_FAILURE,
    NotificationStatus.TECHNICAL_FAILURE,
)

#: Column widths of the table (schemas.models.DeadLetter).
_REASON_MAX = 40
_DETAIL_MAX = 2000


class DeadLetterError(Exception):
    """Raised when a dead-letter command cannot do what was asked (unknown id, bad replay)."""


class NoReplayerError(LookupError):
    """Raised when no replayer is registered for a stage: its owner module was not imported."""


# ---- recording --------------------------------------------------------------------------------
def record_dead_letter(
    session: Session,
    *,
    stage: str,
    reason: str,
    detail: str,
    raw: bytes,
    event_type: str | None = None,
    event_id: str | None = None,
    publisher: str | None = None,
    http_source: str | None = None,
) -> None:
    """Keep ``raw`` with its reason; the same bytes seen again bump ``count`` and ``last_seen``.

    ``publisher`` (the AMQP user the relay judged an ingest event as) and ``http_source`` (the
    HTTP source that posted it) let a replay be judged as the first publisher's.

    Seen again after a replay, the letter is ``open`` again: the replay did not cure it.
    """
    fingerprint = hashlib.sha256(stage.encode() + b"\0" + raw).hexdigest()
    now = utcnow()
    reason = reason[:_REASON_MAX]
    table = DeadLetter.__table__
    insert = conflict_insert(session)
    stmt = insert(table).values(
        id=uuid.uuid4().hex,
        fingerprint=fingerprint,
        stage=stage,
        reason=reason,
        # The detail may quote library errors; personal data never reaches the table in clear.
        detail=mask_pii(detail)[:_DETAIL_MAX],
        event_type=(event_type or None) and event_type[:64],
        event_id=(event_id or None) and event_id[:64],
        raw=raw,
        publisher=publisher and publisher[:64],
        http_source=http_source and http_source[:64],
        count=1,
        first_seen=now,
        last_seen=now,
        status="open",
        replay_count=0,
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=["fingerprint"],
        set_={"count": table.c.count + 1, "last_seen": now, "status": "open"},
    )
    session.execute(stmt)
    session.commit()
    DEAD_LETTERS.labels(stage=stage, reason=reason).inc()


def record_delivery_failure(settings: Settings, notification_id: str, reason: str) -> None:
    """Make a notification that delivery gave up on visible as a dead letter (stage delivery).

    Called by the delivery worker right after it moved the row to ``temporary-failure`` or
    ``technical-failure``. The row's status is read back: a notification that is anything else
    by now (a race with a callback, a sweep) is not a dead letter and is not recorded.
    """
    with session(settings) as s:
        row = s.get(Notification, notification_id)
        if row is None or row.status not in REPLAYABLE_DELIVERY_STATUSES:
            return
        record_dead_letter(
            s,
            stage="delivery",
            # The status is the bounded label; the free text goes to detail.
            reason=row.status,
            detail=f"{row.flow} notification {row.id} via {row.provider or '-'}: {reason}",
            raw=notification_id.encode(),
            event_type=row.flow,
            event_id=notification_id,
        )


# ---- reading ------------------------------------------------------------------------------------
def _filtered(
    query,  # type: ignore[no-untyped-def]
    *,
    stage: str | None = None,
    reason: str | None = None,
    status: str | None = None,
    older_than: dt.datetime | None = None,
):
    if stage:
        query = query.where(DeadLetter.stage == stage)
    if reason:
        query = query.where(DeadLetter.reason == reason)
    if status:
        query = query.where(DeadLetter.status == status)
    if older_than is not None:
        query = query.where(DeadLetter.last_seen < older_than)
    return query


def list_letters(
    settings: Settings,
    *,
    stage: str | None = None,
    reason: str | None = None,
    status: str | None = None,
    limit: int | None = 50,
) -> list[DeadLetter]:
    """Dead letters, most recently seen first."""
    query = _filtered(select(DeadLetter), stage=stage, reason=reason, status=status).order_by(
        DeadLetter.last_seen.desc(), DeadLetter.id
    )
    if limit:
        query = query.limit(limit)
    with session(settings) as s:
        return list(s.execute(query).scalars())


def find_letters(settings: Settings, ids: Sequence[str]) -> list[DeadLetter]:
    """The letters named by ``ids`` (full ids or unique prefixes), in that order.

    Raises:
      DeadLetterError: an id matches no letter, or a prefix matches more than one.
    """
    found: list[DeadLetter] = []
    with session(settings) as s:
        for prefix in ids:
            prefix = prefix.strip().lower()
            if not prefix or any(c not in "0123456789abcdef" for c in prefix):
                raise DeadLetterError(f"not a dead-letter id: {prefix!r}")
            rows = list(
                s.execute(select(DeadLetter).where(DeadLetter.id.startswith(prefix)).limit(2))
                .scalars()
                .all()
            )
            if not rows:
                raise DeadLetterError(f"no dead letter {prefix}")
            if len(rows) > 1:
                raise DeadLetterError(f"dead-letter id {prefix} is ambiguous: give more of it")
            if rows[0] not in found:
                found.append(rows[0])
    return found


def latest_letters(settings: Settings, limit: int = 5) -> list[tuple[Any, ...]]:
    """(last seen, stage, reason, event type, count, status) of the most recent dead letters,
    read on a short-timeout engine (``govnotify top`` must not hang on a busy database)."""
    d = DeadLetter
    query = (
        select(d.last_seen, d.stage, d.reason, d.event_type, d.count, d.status)
        .order_by(d.last_seen.desc())
        .limit(limit)
    )
    with reading_engine(settings.resolved_database_url).connect() as conn:
        return [tuple(row) for row in conn.execute(query)]


# ---- replay -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReplayOutcome:
    """What one replay did: ``replayed``, ``skipped`` (already replayed), ``refused`` (not
    replayable, e.g. a notification that was sent meanwhile) or ``failed`` (an error)."""

    letter_id: str
    stage: str
    result: str
    detail: str


def _claim(settings: Settings, letter_id: str) -> bool:
    """``open → replayed``, counted; only one replay of a letter can win it."""
    with session(settings) as s:
        won = (
            s.execute(
                update(DeadLetter)
                .where(DeadLetter.id == letter_id, DeadLetter.status == "open")
                .values(
                    status="replayed",
                    replay_count=DeadLetter.replay_count + 1,
                    replayed_at=utcnow(),
                )
            ).rowcount
            == 1
        )
        s.commit()
    return won


def _unclaim(settings: Settings, letter: DeadLetter) -> None:
    """The replay did not happen: the letter is open again, as it was."""
    with session(settings) as s:
        s.execute(
            update(DeadLetter)
            .where(DeadLetter.id == letter.id, DeadLetter.status == "replayed")
            .values(
                status="open",
                replay_count=DeadLetter.replay_count - 1,
                replayed_at=letter.replayed_at,
            )
        )
        s.commit()


#: How a stage's letter goes back through the normal path: returns what was done, or raises
#: :class:`DeadLetterError` when the letter cannot be replayed (the replay is refused).
Replayer = Callable[["Settings", DeadLetter], str]

_REPLAYERS: dict[str, Replayer] = {}


def register_replayer(stage: str, fn: Replayer) -> Replayer:
    """Make ``fn`` the replayer of ``stage``'s letters; called by the stage's owner module as it
    is imported. Registering a stage again replaces its replayer (a module imported anew).
    Returns ``fn``.

    Raises:
      ValueError: for a stage that is not one of :data:`STAGES`.
    """
    if stage not in STAGES:
        raise ValueError(f"unknown dead-letter stage {stage!r} (one of {', '.join(STAGES)})")
    _REPLAYERS[stage] = fn
    return fn


def _replayer(stage: str) -> Replayer:
    try:
        return _REPLAYERS[stage]
    except KeyError:
        raise NoReplayerError(
            f"no replayer registered for dead-letter stage {stage!r}: import its owner "
            f"(producers.replay, infra.jobs, workers.replay) before replaying"
        ) from None


def replay(settings: Settings, letter: DeadLetter) -> str:
    """Send ``letter`` back through its stage's normal path with the stage's replayer; returns
    what was done. The letter's row is not touched: :func:`replay_letter` claims it first.

    Raises:
      NoReplayerError: when no replayer is registered for the letter's stage (an unknown stage,
        or its owner module was not imported).
      DeadLetterError: when the replayer refuses the letter.
    """
    return _replayer(letter.stage)(settings, letter)


def replay_letter(settings: Settings, letter: DeadLetter) -> ReplayOutcome:
    """Send one letter back through the normal path and mark it ``replayed``.

    The letter is claimed (``open → replayed``) before anything is sent, so two replays at once
    send once, and a failure seen again after the replay re-opens it. A replay that could not
    be done (refused, or the broker unreachable) leaves the letter open, as it was.

    Raises:
      NoReplayerError: when no replayer is registered for the letter's stage (nothing claimed).
    """
    if letter.stage not in STAGES:
        return ReplayOutcome(letter.id, letter.stage, "refused", f"unknown stage {letter.stage}")
    replayer = _replayer(letter.stage)
    if not _claim(settings, letter.id):
        return ReplayOutcome(letter.id, letter.stage, "skipped", "already replayed")
    try:
        detail = replayer(settings, letter)
    except DeadLetterError as exc:
        _unclaim(settings, letter)
        return ReplayOutcome(letter.id, letter.stage, "refused", str(exc))
    except Exception:
        _unclaim(settings, letter)
        raise
    return ReplayOutcome(letter.id, letter.stage, "replayed", detail)


# ---- purge ------------------------------------------------------------------------------------
def purge_letters(
    settings: Settings,
    *,
    ids: Sequence[str] = (),
    stage: str | None = None,
    reason: str | None = None,
    status: str | None = None,
    older_than_days: float | None = None,
    now: dt.datetime | None = None,
) -> int:
    """Delete the letters named by ``ids``, or else every letter matching the filters."""
    if ids:
        letter_ids = [letter.id for letter in find_letters(settings, ids)]
        stmt = delete(DeadLetter).where(DeadLetter.id.in_(letter_ids))
    else:
        older_than = None
        if older_than_days is not None:
            older_than = (now or utcnow()) - dt.timedelta(days=older_than_days)
        stmt = _filtered(
            delete(DeadLetter), stage=stage, reason=reason, status=status, older_than=older_than
        )
    with session(settings) as s:
        count = s.execute(stmt).rowcount
        s.commit()
    return int(count or 0)
