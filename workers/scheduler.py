"""Jobs due later (minutes to days): kept in ``scheduled_job``, handed to the queues when due.

``schedule()`` is called by actors (insert-once by key, so replays schedule nothing twice);
``run_scheduler()`` is the ``govnotify scheduler`` loop. It enqueues first and marks the rows
afterwards: a crash in between enqueues a job twice, which the idempotent actors absorb, while
the other order could lose a job.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import threading
import uuid
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Gauge
from sqlalchemy import func, select, update
from sqlmodel import Session

from infra.db import session
from schemas.models import ScheduledJob, utcnow
from workers import ledger

if TYPE_CHECKING:
    from infra.clock import Clock
    from infra.settings import Settings

__all__ = ["cancel", "run_scheduler", "schedule", "tick"]

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
BATCH = 500


def schedule(s: Session, key: str, run_at: dt.datetime, actor_name: str, payload: Any) -> bool:
    """Schedule ``actor_name(payload)`` at ``run_at``, once per ``key``; True if new."""
    return ledger.insert_ignore(
        s,
        ScheduledJob.__table__,
        {
            "id": uuid.uuid4().hex,
            "key": key,
            "run_at": run_at.astimezone(dt.UTC),
            "actor_name": actor_name,
            "payload": json.dumps(payload, ensure_ascii=False, default=str),
            "status": "pending",
            "created_at": utcnow(),
        },
        "key",
    )


def cancel(s: Session, key: str) -> bool:
    """Cancel a pending job; False if it already ran or does not exist."""
    result = s.execute(
        update(ScheduledJob)
        .where(ScheduledJob.key == key, ScheduledJob.status == "pending")
        .values(status="cancelled")
    )
    s.commit()
    return result.rowcount == 1


def tick(settings: Settings, clock: Clock) -> int:
    """Enqueue every job due by ``clock``'s now; returns how many."""
    import dramatiq

    broker = dramatiq.get_broker()
    now = clock.utcnow()
    with session(settings) as s:
        due = (
            s.execute(
                select(ScheduledJob)
                .where(ScheduledJob.status == "pending", ScheduledJob.run_at <= now)
                .order_by(ScheduledJob.run_at)
                .limit(BATCH)
            )
            .scalars()
            .all()
        )
        for job in due:
            broker.get_actor(job.actor_name).send(json.loads(job.payload))
            SCHEDULED.labels(actor=job.actor_name).inc()
        if due:
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


def run_scheduler(settings: Settings, stop: threading.Event) -> None:
    """Tick until ``stop`` is set; errors are logged and retried on the next tick."""
    from infra.clock import Clock
    from infra.workdays import WorkdayCalendar
    from workers import actors  # noqa: F401  (declares every actor on the broker)
    from workers.call_list import schedule_digests

    clock = Clock.from_settings(settings)
    calendar = WorkdayCalendar.from_settings(settings)
    digests_for: dt.date | None = None
    log.info("scheduler running every %.1fs", settings.scheduler_interval_s)
    if settings.sweep_interval_s:
        # Its own thread: a sweep asking a slow provider must not hold up due escalations.
        threading.Thread(
            target=_sweep_loop, args=(settings, stop), name="sweep", daemon=True
        ).start()
    while not stop.is_set():
        try:
            if digests_for != clock.today():
                # Daily jobs with no event to start them: the departments' call-list digests.
                schedule_digests(settings, clock, calendar)
                digests_for = clock.today()
            while tick(settings, clock) == BATCH and not stop.is_set():
                pass
        except Exception:
            log.exception("scheduler tick failed; retrying")
        stop.wait(settings.scheduler_interval_s)


def _sweep_loop(settings: Settings, stop: threading.Event) -> None:
    """Reconcile stuck notifications every ``sweep_interval_s`` until ``stop`` is set."""
    from workers.sweep import sweep

    log.info("reconciliation sweep every %.0fs", settings.sweep_interval_s)
    while not stop.wait(settings.sweep_interval_s):
        try:
            sweep(settings)
        except Exception:
            log.exception("sweep failed; retrying at the next interval")
