"""The notification ledger: insert-once, atomic claim, forward-only status moves.

Every function takes a SQLAlchemy session and commits its own small transaction, so no session
is held open across a provider call (a slow provider must not hold database connections).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Table, and_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session

from schemas.models import STATUS_RANK, Notification, NotificationStatus, utcnow

__all__ = ["advance", "as_utc", "claim", "get_by_key", "insert_ignore", "release_claim"]


def insert_ignore(session: Session, table: Table, values: dict[str, Any], key: str) -> bool:
    """``INSERT … ON CONFLICT (key) DO NOTHING``; True when this call created the row."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = (
        insert(table)
        .values(**values)
        .on_conflict_do_nothing(index_elements=[key])
        # rowcount is -1 for this statement on psycopg 3; RETURNING says whether a row was made.
        .returning(table.c[key])
    )
    created = session.execute(stmt).first() is not None
    session.commit()
    return created


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
