"""The notification ledger: insert-once, atomic claim, forward-only status moves.

Every function takes a SQLAlchemy session and commits its own small transaction, so no session
is held open across a provider call (a slow provider must not hold database connections).
Two leave the commit to their caller: :func:`insert_notification`, so a message's row is
committed with its claim, and :func:`claim_many_for_send`, so what a decision causes is
committed with it (a held message and its release job). Some take ``commit=False`` for that.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from sqlalchemy import (
    Table,
    and_,
    bindparam,
    func,
    literal_column,
    select,
    text,
    update,
)
from sqlalchemy.orm import configure_mappers
from sqlmodel import Session

from infra.db import (
    conflict_insert,
    none_of,
    on_postgresql,
    one_of,
    unnest_insert,
    unnest_params,
)
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
    "advance_many",
    "as_utc",
    "claim",
    "claim_many_for_send",
    "get_by_key",
    "insert_ignore",
    "insert_notification",
    "insert_notifications",
    "release_claim",
]


_TABLE = Notification.__table__


def insert_ignore(
    session: Session,
    table: Table,
    values: dict[str, Any],
    key: str | tuple[str, ...],
    *,
    commit: bool = True,
) -> bool:
    """``INSERT … ON CONFLICT (key) DO NOTHING``, committed; True when this call created the row.

    ``key`` names the unique column, or the columns of a composite primary key. With
    ``commit=False`` the row joins the caller's transaction, for the caller to commit.
    """
    created = _insert_ignore(session, table, values, key)
    if commit:
        session.commit()
    return created


def insert_notification(session: Session, values: dict[str, Any]) -> Notification:
    """The notification with ``values["idempotency_key"]``: inserted now, or the one already there.

    :func:`insert_notifications` for one row.
    """
    return insert_notifications(session, [values])[0]


def insert_notifications(session: Session, rows: list[dict[str, Any]]) -> list[Notification]:
    """The notifications with these rows' idempotency keys, in their order: each inserted now, or
    the one already there (a key given twice is inserted once and returned twice).

    One round trip when every key is new (``INSERT … ON CONFLICT DO NOTHING RETURNING *``, all
    rows in one statement); replays are read with a second one. Does not commit: the caller
    commits the rows, alone or with the claim that follows them (a new row is invisible to
    everyone else until then, and a second insert of the same key waits for that commit, then
    finds the row).
    """
    if not rows:
        return []
    unique: dict[str, dict[str, Any]] = {}
    for values in rows:
        unique.setdefault(values["idempotency_key"], values)
    found: dict[str, Notification] = {}
    if on_postgresql(session):
        columns = tuple(next(iter(unique.values())))
        params = unnest_params(_TABLE, columns, unique.values())
        # The rows made now are the values sent: built here, not read back, and as the ORM
        # builds what it loads (SQLModel's __init__ would validate each again: 65 µs a row).
        configure_mappers()  # as a query would first (a no-op once done)
        manager = Notification._sa_class_manager
        inserted = unnest_insert(
            _TABLE, columns, "ON CONFLICT (idempotency_key) DO NOTHING RETURNING idempotency_key"
        )
        for key in session.scalars(inserted, params):
            found[key] = row = manager.new_instance()
            row.__dict__.update(unique[key])
    elif session.get_bind().dialect.insert_returning:
        stmt = (
            conflict_insert(session)(Notification)
            .on_conflict_do_nothing(index_elements=["idempotency_key"])
            .returning(Notification)
        )
        found = {row.idempotency_key: row for row in session.scalars(stmt, list(unique.values()))}
    else:  # SQLite before 3.35: insert, then read
        for values in unique.values():
            _insert_ignore(session, _TABLE, values, "idempotency_key")
    missing = [key for key in unique if key not in found]
    if missing:
        found.update(
            (row.idempotency_key, row)
            for row in session.scalars(
                select(Notification).where(Notification.idempotency_key.in_(missing))
            )
        )
    return [found[values["idempotency_key"]] for values in rows]


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


def release_claim(
    session: Session, notification_id: str, reason: str, *, commit: bool = True
) -> bool:
    """``sending → created`` after the provider said, for certain, that it did not take it.

    Not a backward status move: the message never left, so the claim (a lease) is returned for
    the retry. An ambiguous failure (timeout) never releases; the sweep resolves it. With
    ``commit=False`` the caller commits (with what the release causes, e.g. the held job).
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
    if commit:
        session.commit()
    return result.rowcount == 1


def advance(
    session: Session,
    notification_id: str,
    status: NotificationStatus,
    **values: Any,
) -> bool:
    """Move a notification forward to ``status``; a move to an equal or lower rank is ignored."""
    now = utcnow()
    if status in (NotificationStatus.SENT, NotificationStatus.DELIVERED):
        values.setdefault("sent_at", now)
    result = session.execute(
        update(Notification)
        .where(and_(Notification.id == notification_id, Notification.status.in_(_below(status))))
        .values(status=status, updated_at=now, **values)
    )
    session.commit()
    return result.rowcount == 1


def _below(status: NotificationStatus) -> list[NotificationStatus]:
    """The statuses a notification may move to ``status`` from: every lower rank."""
    return [s for s, rank in STATUS_RANK.items() if rank < STATUS_RANK[status]]


def advance_many(
    session: Session, moves: list[tuple[str, NotificationStatus, dict[str, Any]]]
) -> None:
    """:func:`advance` for many ``(notification id, status, values)`` at once: one statement
    per target status (executed for every row, pipelined by the driver), one commit."""
    groups: dict[tuple[NotificationStatus, tuple[str, ...]], list[dict[str, Any]]] = {}
    now = utcnow()
    for notification_id, status, values in moves:
        values = dict(values)
        if status in (NotificationStatus.SENT, NotificationStatus.DELIVERED):
            values.setdefault("sent_at", now)
        groups.setdefault((status, tuple(sorted(values))), []).append(
            {"b_id": notification_id, **{f"b_{k}": v for k, v in values.items()}}
        )
    for (status, columns), params in groups.items():
        # Written into the statement: an executemany cannot expand a list parameter. The
        # values are the status enum's own, never input.
        from_statuses = [literal_column(f"'{s.value}'") for s in _below(status)]
        stmt = (
            _TABLE.update()
            .where(_TABLE.c.id == bindparam("b_id"), _TABLE.c.status.in_(from_statuses))
            .values(status=status, updated_at=now, **{k: bindparam(f"b_{k}") for k in columns})
        )
        session.execute(stmt, params)
    session.commit()


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


#: The flow's check for a batch: why each message no longer applies, by notification id.
StaleMany = Callable[[Session, list[Notification]], dict[str, str]]


def claim_many_for_send(
    session: Session,
    rows: list[Notification],
    *,
    now_local: dt.datetime,
    quiet: Any,
    daily_cap: int | None,
    stale: StaleMany | None = None,
) -> dict[str, Decision]:
    """Check the flow, decide (opt-out, quiet hours, daily cap) and claim ``rows``, in one
    transaction, with a fixed number of statements however many rows there are.

    On PostgreSQL a transaction-scoped advisory lock on each recipient serialises concurrent
    sends to one citizen, so the cap is exact: the 6th message of the day is deferred even when
    two workers race (or the six are in one batch: the rows are decided in order, each counting
    the ones claimed before it). The locks are taken in one order (by hash) in every
    transaction, so two batches sharing recipients cannot deadlock. (SQLite, the
    single-machine default, serialises writers itself but may let a simultaneous pair through.)

    ``stale`` is the flow's check (why each message no longer applies). It runs after the locks
    and before the policy, in this transaction; what it reads that a concurrent writer cancels
    by must be read with a lock (``FOR SHARE``), so that writer's change is either seen here or
    committed after this claim (see ``workers.reminders``). A stale message is moved
    ``created → cancelled`` in this transaction, whatever the policy would have said.

    Not committed: the caller commits the transaction (with whatever it put in it before, e.g.
    the new rows), after adding what the decisions cause (a held row's release job: row and
    job become visible together, and the recipients' locks are held until then). Returns each
    row's :class:`workers.policy.Decision` by id; a ``send`` decision means the row is now
    ``sending``; ``skip`` means another worker won (or cancelled it) first.
    """
    now_utc = now_local.astimezone(dt.UTC)
    rows = list({row.id: row for row in rows}.values())  # a row given twice is claimed once
    recipients = sorted({row.recipient for row in rows if row.recipient})
    if on_postgresql(session) and recipients:
        session.execute(
            text(
                "SELECT pg_advisory_xact_lock(h) FROM (SELECT DISTINCT hashtextextended(r, 0) AS h"
                " FROM unnest(CAST(:rs AS text[])) AS r ORDER BY h) AS locks"
            ),
            {"rs": recipients},
        )
    reasons = stale(session, rows) if stale else {}
    decisions = _decide_many(
        session,
        [row for row in rows if row.id not in reasons],
        now_local=now_local,
        quiet=quiet,
        daily_cap=daily_cap,
    )
    decisions.update({row_id: Decision("cancel", reason=why) for row_id, why in reasons.items()})
    # One UPDATE per kind of outcome (and reason), each only on rows still `created`.
    groups: dict[tuple[str, Any, str], list[str]] = {}
    for row in rows:
        decision = decisions[row.id]
        groups.setdefault((decision.action, decision.not_before, decision.reason), []).append(
            row.id
        )
    won: set[str] = set()
    for (action, not_before, reason), ids in groups.items():
        if action == "send":
            values: dict[str, Any] = {
                "status": NotificationStatus.SENDING,
                "claimed_at": now_utc,
                "attempts": _TABLE.c.attempts + 1,
            }
        elif action == "suppress":
            values = {"status": NotificationStatus.SUPPRESSED, "status_reason": reason}
        elif action == "cancel":
            values = {"status": NotificationStatus.CANCELLED, "status_reason": reason}
        else:
            values = {"not_before": not_before, "status_reason": reason}
        won |= _move_created(session, ids, {**values, "updated_at": utcnow()})
    return {
        row.id: decisions[row.id] if row.id in won else Decision("skip", reason="no longer created")
        for row in rows
    }


def _move_created(session: Session, ids: list[str], values: dict[str, Any]) -> set[str]:
    """Set ``values`` on those of ``ids`` still ``created``; the ids it changed."""
    where = and_(one_of(session, _TABLE.c.id, ids), _TABLE.c.status == NotificationStatus.CREATED)
    if session.get_bind().dialect.update_returning:
        stmt = _TABLE.update().where(where).values(**values).returning(_TABLE.c.id)
        return set(session.scalars(stmt))
    return {
        row_id
        for row_id in ids
        if session.execute(
            _TABLE.update()
            .where(_TABLE.c.id == row_id, _TABLE.c.status == NotificationStatus.CREATED)
            .values(**values)
        ).rowcount
        == 1
    }


def _decide_many(
    session: Session,
    rows: list[Notification],
    *,
    now_local: dt.datetime,
    quiet: Any,
    daily_cap: int | None,
) -> dict[str, Decision]:
    """The citizen rules for ``rows``, read in the claim's transaction (after its locks), one
    statement per rule for all of them."""
    recipients = sorted({row.recipient for row in rows if row.recipient and row.category})
    opted_out: set[tuple[str, str]] = set()
    suppressed: dict[tuple[str, str], str] = {}
    if recipients:
        opted_out = {
            (recipient, category)
            for recipient, category in session.execute(
                select(OptOut.recipient, OptOut.category).where(
                    one_of(session, OptOut.recipient, recipients)
                )
            )
        }
        suppressed = {
            (recipient, category): reason
            for recipient, category, reason in session.execute(
                select(Suppression.recipient, Suppression.category, Suppression.reason).where(
                    one_of(session, Suppression.recipient, recipients),
                    Suppression.status == "active",
                )
            )
        }
    day_start, day_end = local_day_bounds(now_local)
    capped = sorted({row.recipient for row in rows if not row.critical and row.recipient})
    sent_today: dict[str, int] = {}
    if daily_cap and capped:
        sent_today = {
            recipient: count
            for recipient, count in session.execute(
                select(Notification.recipient, func.count())
                .where(
                    one_of(session, Notification.recipient, capped),
                    Notification.critical.is_(False),
                    none_of(session, Notification.id, [row.id for row in rows]),
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
                .group_by(Notification.recipient)
            )
        }
    decisions: dict[str, Decision] = {}
    for row in rows:
        key = (row.recipient or "", row.category)
        decision = decide(
            now_local=now_local,
            critical=row.critical,
            opted_out=bool(row.category) and key in opted_out,
            suppressed=suppressed.get(key) if row.category and row.recipient else None,
            sent_today=sent_today.get(row.recipient or "", 0),
            daily_cap=daily_cap,
            quiet=quiet,
        )
        if decision.action == "send" and not row.critical and row.recipient:
            # The next message of this batch to the same citizen counts this one.
            sent_today[row.recipient] = sent_today.get(row.recipient, 0) + 1
        decisions[row.id] = decision
    return decisions
