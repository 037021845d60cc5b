"""The notification ledger: insert-once, atomic claim, forward-only status moves.

Every function takes a SQLAlchemy session and commits its own small transaction, so no session
is held open across a provider call (a slow provider must not hold database connections).
One leaves the commit to its caller, so a message's row is committed with its claim:
:func:`insert_notification`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from sqlalchemy import Table, and_, func, select, text, update
from sqlmodel import Session

from infra.db import conflict_insert
from schemas.models import (
    STATUS_RANK,
    Notification,
    NotificationStatus,
    OptOut,
    Suppression,
    utcnow,
)
from workers.policy import Decision, decide, local_day_bounds

__all__ = [
    "advance",
    "as_utc",
    "claim",
    "claim_for_send",
    "get_by_key",
    "insert_ignore",
    "insert_notification",
    "release_claim",
]


def insert_ignore(
    session: Session, table: Table, values: dict[str, Any], key: str | tuple[str, ...]
) -> bool:
    """``INSERT … ON CONFLICT (key) DO NOTHING``, committed; True when this call created the row.

    ``key`` names the unique column, or the columns of a composite primary key.
    """
    created = _insert_ignore(session, table, values, key)
    session.commit()
    return created


def insert_notification(session: Session, values: dict[str, Any]) -> Notification:
    """The notification with ``values["idempotency_key"]``: inserted now, or the one already there.

    One round trip when the key is new (``INSERT … ON CONFLICT DO NOTHING RETURNING *``); a
    replay reads the existing row with a second one. Does not commit: the caller commits the
    row, alone or with the claim that follows it (a new row is invisible to everyone else until
    then, and a second insert of the same key waits for that commit, then finds the row).
    """
    dialect = session.get_bind().dialect
    if not dialect.insert_returning:  # SQLite before 3.35: insert, then read
        _insert_ignore(session, Notification.__table__, values, "idempotency_key")
        row = get_by_key(session, values["idempotency_key"])
        assert row is not None
        return row
    stmt = (
        conflict_insert(session)(Notification)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["idempotency_key"])
        .returning(Notification)
    )
    row = session.scalars(stmt).first()
    if row is None:
        row = get_by_key(session, values["idempotency_key"])
        assert row is not None
    return row


def _insert_ignore(
    session: Session, table: Table, values: dict[str, Any], key: str | tuple[str, ...]
) -> bool:
    """:func:`insert_ignore` without the commit."""
    columns = [key] if isinstance(key, str) else list(key)
    insert = conflict_insert(session)
    stmt = insert(table).values(**values).on_conflict_do_nothing(index_elements=columns)
    if session.get_bind().dialect.insert_returning:
        # rowcount is -1 for this statement on psycopg 3; RETURNING says whether a row was made.
        return session.execute(stmt.returning(table.c[columns[0]])).first() is not None
    return session.execute(stmt).rowcount == 1


def claim(session: Session, notification_id: str) -> bool:
    """Atomically move ``created → sending``; only one worker can win, however many try."""
    now = utcnow()
    result = session.execute(
        update(Notification)
        .where(
            and_(
                Notification.id == notification_id,
                Notification.status == NotificationStatus.CREATED,
            )
        )
        .values(
            status=NotificationStatus.SENDING,
            claimed_at=now,
            updated_at=now,
            attempts=Notification.attempts + 1,
        )
    )
    session.commit()
    return result.rowcount == 1


def release_claim(session: Session, notification_id: str, reason: str) -> bool:
    """``sending → created`` after the provider said, for certain, that it did not take it.

    Not a backward status move: the message never left, so the claim (a lease) is returned for
    the retry. An ambiguous failure (timeout) never releases; the sweep resolves it.
    """
    result = session.execute(
        update(Notification)
        .where(
            and_(
                Notification.id == notification_id,
                Notification.status == NotificationStatus.SENDING,
            )
        )
        .values(status=NotificationStatus.CREATED, status_reason=reason, updated_at=utcnow())
    )
    session.commit()
    return result.rowcount == 1


def advance(
    session: Session,
    notification_id: str,
    status: NotificationStatus,
    **values: Any,
) -> bool:
    """Move a notification forward to ``status``; a move to an equal or lower rank is ignored."""
    allowed_from = [s for s, rank in STATUS_RANK.items() if rank < STATUS_RANK[status]]
    now = utcnow()
    if status in (NotificationStatus.SENT, NotificationStatus.DELIVERED):
        values.setdefault("sent_at", now)
    result = session.execute(
        update(Notification)
        .where(and_(Notification.id == notification_id, Notification.status.in_(allowed_from)))
        .values(status=status, updated_at=now, **values)
    )
    session.commit()
    return result.rowcount == 1


def get_by_key(session: Session, idempotency_key: str) -> Notification | None:
    """The notification with this idempotency key, if any."""
    return session.execute(
        select(Notification).where(Notification.idempotency_key == idempotency_key)
    ).scalar_one_or_none()


def as_utc(value: dt.datetime | None) -> dt.datetime | None:
    """SQLite returns naive datetimes; everything we store is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value


def claim_for_send(
    session: Session,
    row: Notification,
    *,
    now_local: dt.datetime,
    quiet: Any,
    daily_cap: int | None,
    stale: Callable[[Session, Notification], str | None] | None = None,
) -> Any:
    """Check the flow, decide (opt-out, quiet hours, daily cap) and claim, in one transaction.

    On PostgreSQL a transaction-scoped advisory lock on the recipient serialises concurrent
    sends to one citizen, so the cap is exact: the 6th message of the day is deferred even when
    two workers race. (SQLite, the single-machine default, serialises writers itself but may
    let a simultaneous pair through.)

    ``stale`` is the flow's check (why the message no longer applies, or None). It runs after the
    lock and before the policy, in this transaction; what it reads that a concurrent writer
    cancels by must be read with a lock (``FOR SHARE``), so that writer's change is either seen
    here or committed after this claim (see ``workers.reminders``). A stale message is moved
    ``created → cancelled`` in this transaction, whatever the policy would have said.

    Whatever happens, the transaction is committed here (with whatever the caller put in it
    before, e.g. the new row). Returns the :class:`workers.policy.Decision`; a ``send`` decision
    means the row is now ``sending``; ``skip`` means another worker won (or cancelled it) first.
    """
    now_utc = now_local.astimezone(dt.UTC)
    if session.get_bind().dialect.name == "postgresql" and row.recipient:
        session.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended(:r, 0))"), {"r": row.recipient}
        )
    reason = stale(session, row) if stale else None
    decision = (
        Decision("cancel", reason=reason)
        if reason
        else _decide(session, row, now_local=now_local, quiet=quiet, daily_cap=daily_cap)
    )
    where = and_(Notification.id == row.id, Notification.status == NotificationStatus.CREATED)
    if decision.action == "send":
        values: dict[str, Any] = {
            "status": NotificationStatus.SENDING,
            "claimed_at": now_utc,
            "updated_at": utcnow(),
            "attempts": Notification.attempts + 1,
        }
    elif decision.action == "suppress":
        values = {
            "status": NotificationStatus.SUPPRESSED,
            "status_reason": decision.reason,
            "updated_at": utcnow(),
        }
    elif decision.action == "cancel":
        values = {
            "status": NotificationStatus.CANCELLED,
            "status_reason": decision.reason,
            "updated_at": utcnow(),
        }
    else:
        values = {
            "not_before": decision.not_before,
            "status_reason": decision.reason,
            "updated_at": utcnow(),
        }
    won = (
        session.execute(
            update(Notification)
            .where(where)
            .values(**values)
            .execution_options(synchronize_session=False)
        ).rowcount
        == 1
    )
    session.commit()
    if not won:
        return Decision("skip", reason="no longer created")
    return decision


def _decide(
    session: Session,
    row: Notification,
    *,
    now_local: dt.datetime,
    quiet: Any,
    daily_cap: int | None,
) -> Decision:
    """The citizen rules for ``row``, read in the claim's transaction (after its lock)."""
    opted_out = (
        bool(row.category) and session.get(OptOut, (row.recipient, row.category)) is not None
    )
    suppression = (
        session.get(Suppression, (row.recipient, row.category))
        if row.category and row.recipient
        else None
    )
    suppressed = suppression.reason if suppression and suppression.status == "active" else None
    day_start, day_end = local_day_bounds(now_local)
    sent_today = 0
    if not row.critical and daily_cap:
        sent_today = session.execute(
            select(func.count())
            .select_from(Notification)
            .where(
                Notification.recipient == row.recipient,
                Notification.critical.is_(False),
                Notification.id != row.id,
                Notification.status.in_(
                    [
                        NotificationStatus.SENDING,
                        NotificationStatus.SENT,
                        NotificationStatus.DELIVERED,
                    ]
                ),
                Notification.claimed_at >= day_start.astimezone(dt.UTC),
                Notification.claimed_at < day_end.astimezone(dt.UTC),
            )
        ).scalar_one()
    return decide(
        now_local=now_local,
        critical=row.critical,
        opted_out=opted_out,
        suppressed=suppressed,
        sent_today=sent_today,
        daily_cap=daily_cap,
        quiet=quiet,
    )
