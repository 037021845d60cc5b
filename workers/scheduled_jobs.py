"""Jobs due later (minutes to days): kept in ``scheduled_job``, handed to the queues when due.

``schedule()`` is called by actors (insert-once by key, so replays schedule nothing twice);
``tick()`` hands what is due to the queues, run by the ``govnotify scheduler`` process
(:mod:`workers.scheduler`). It enqueues first and marks the rows afterwards: a crash in between
enqueues a job twice, which the idempotent actors absorb, while the other order could lose a job.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import uuid
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Gauge
from sqlalchemy import func, select, update
from sqlmodel import Session

from infra.db import conflict_insert, session, skip_locked
from infra.jobs import JobSender
from schemas.models import ScheduledJob, utcnow
from workers import ledger

if TYPE_CHECKING:
    from infra.clock import Clock
    from infra.settings import Settings

__all__ = ["BATCH", "cancel", "schedule", "schedule_many", "tick"]

log = logging.getLogger("govnotify.scheduler")

SCHEDULED = Counter(
    "govnotify_scheduled_jobs_total", "Jobs handed to the work queues when due.", ["actor"]
)


@functools.cache
def _pending_gauge() -> Gauge:
    """Made on the scheduler's first tick: worker processes import this module for schedule()
    and would otherwise export the gauge too, as pid-labelled zeros (multiprocess mode)."""
    return Gauge("govnotify_scheduled_jobs_pending", "Jobs waiting for their time.")


#: At most this many due jobs per tick, oldest first.
BATCH = 1000


def _json_default(value: object) -> str:
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    # Not str(): a model stringified would reach its actor as an unreadable job.
    raise TypeError(f"a scheduled job's payload must be JSON data, not {type(value).__name__}")


def _to_json(payload: Any) -> str:
    return json.dumps(payload, ensure_ascii=False, default=_json_default)


def _event_of(payload: Any, event_id: str | None = None) -> str | None:
    """The upstream event a job was caused by: ``event_id``, else the payload's own (a job
    model dumped as a dict carries it, see ``schemas.commands``)."""
    if event_id is None and isinstance(payload, dict):
        found = payload.get("event_id")
        event_id = found if isinstance(found, str) else None
    return event_id[:64] if event_id else None


def schedule(
    s: Session,
    key: str,
    run_at: dt.datetime,
    actor_name: str,
    payload: Any,
    *,
    event_id: str | None = None,
    commit: bool = True,
) -> bool:
    """Schedule ``actor_name(payload)`` at ``run_at``, once per ``key``; True if new.

    ``event_id`` names the upstream event that caused it (default: the payload's, if any).
    Committed, unless ``commit=False``: then in the caller's transaction, for it to commit.
    """
    return ledger.insert_ignore(
        s,
        ScheduledJob.__table__,
        {
            "id": uuid.uuid4().hex,
            "key": key,
            "run_at": run_at.astimezone(dt.UTC),
            "actor_name": actor_name,
            "payload": _to_json(payload),
            "status": "pending",
            "created_at": utcnow(),
            "event_id": _event_of(payload, event_id),
        },
        "key",
        commit=commit,
    )


def schedule_many(s: Session, jobs: list[tuple[str, dt.datetime, str, Any]]) -> int:
    """:func:`schedule` for many ``(key, run_at, actor_name, payload)`` in one statement, in
    the caller's transaction (not committed); returns how many were new. Each payload is the
    actor's one argument as JSON-ready data (a model's ``model_dump(mode="json")``); its
    ``event_id``, if any, is kept on the row."""
    if not jobs:
        return 0
    table = ScheduledJob.__table__
    insert = conflict_insert(s)
    now = utcnow()
    rows = [
        {
            "id": uuid.uuid4().hex,
            "key": key,
            "run_at": run_at.astimezone(dt.UTC),
            "actor_name": actor_name,
            "payload": _to_json(payload),
            "status": "pending",
            "created_at": now,
            "enqueued_at": None,
            "event_id": _event_of(payload),
        }
        for key, run_at, actor_name, payload in jobs
    ]
    stmt = insert(table).on_conflict_do_nothing(index_elements=["key"]).returning(table.c.key)
    return len(s.scalars(stmt, rows).all())


def cancel(s: Session, key: str) -> bool:
    """Cancel a pending job; False if it already ran or does not exist."""
    result = s.execute(
        update(ScheduledJob)
        .where(ScheduledJob.key == key, ScheduledJob.status == "pending")
        .values(status="cancelled")
    )
    s.commit()
    return result.rowcount == 1


def tick(settings: Settings, clock: Clock, sender: JobSender | None = None) -> int:
    """Enqueue every job due by ``clock``'s now, ``BATCH`` at a time; returns how many.

    Any number of schedulers may tick at once on PostgreSQL: the due rows are locked as they
    are read (``FOR UPDATE SKIP LOCKED``) and stay locked until they are marked enqueued, so
    another scheduler's tick skips them and takes the next ones; each due job is handed out
    once. SQLite (the single-process default) has no row locks: run one scheduler there.
    """
    sender = sender or _sender(settings)
    now = clock.utcnow()
    with session(settings) as s:
        query = (
            select(ScheduledJob)
            .where(ScheduledJob.status == "pending", ScheduledJob.run_at <= now)
            .order_by(ScheduledJob.run_at)
            .limit(BATCH)
        )
        due = s.execute(skip_locked(s, query)).scalars().all()
        if due:
            # Confirms pipelined: a batch is one round of writes, not a round trip per job.
            sender.send_many([(job.actor_name, json.loads(job.payload)) for job in due])
            for job in due:
                SCHEDULED.labels(actor=job.actor_name).inc()
            s.execute(
                update(ScheduledJob)
                .where(ScheduledJob.id.in_([j.id for j in due]), ScheduledJob.status == "pending")
                .values(status="enqueued", enqueued_at=utcnow())
            )
            s.commit()
        _pending_gauge().set(
            s.execute(
                select(func.count())
                .select_from(ScheduledJob)
                .where(ScheduledJob.status == "pending")
            ).scalar_one()
        )
    return len(due)


_senders: dict[tuple[str, str, str], JobSender] = {}


def _sender(settings: Settings) -> JobSender:
    """One job sender per RabbitMQ, namespace and queue type (it caches declared queues)."""
    key = (settings.amqp_url, settings.namespace, settings.rabbitmq_queue_type)
    if key not in _senders:
        _senders[key] = JobSender(settings)
    return _senders[key]
