"""The ``govnotify scheduler`` process: due jobs to the queues, daily work, the sweep.

It ticks :func:`workers.scheduled_jobs.tick` every ``scheduler_interval_s``, starts the
departments' call-list digests once a local day, runs the daily renewal scan, the nightly
retention purge, the reconciliation sweep and the outcome webhooks (:mod:`workers.outcomes`),
each in its own thread so a slow one holds up no other.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from typing import TYPE_CHECKING

from infra.clock import Clock
from infra.db import session
from infra.journal import get_checkpoint, set_checkpoint
from infra.retention import purge
from infra.workdays import WorkdayCalendar
from workers import outcomes
from workers.call_list import schedule_digests
from workers.reminders import renewal_scan
from workers.scheduled_jobs import BATCH, tick
from workers.sweep import sweep

if TYPE_CHECKING:
    from infra.settings import Settings

__all__ = ["PURGE_CHECKPOINT", "purge_if_due", "run_scheduler"]

log = logging.getLogger("govnotify.scheduler")


def run_scheduler(settings: Settings, stop: threading.Event) -> None:
    """Tick until ``stop`` is set; errors are logged and retried on the next tick."""
    clock = Clock.from_settings(settings)
    calendar = WorkdayCalendar.from_settings(settings)
    digests_for: dt.date | None = None
    log.info("scheduler running every %.1fs", settings.scheduler_interval_s)
    if settings.sweep_interval_s:
        # Its own thread: a sweep asking a slow provider must not hold up due escalations.
        threading.Thread(
            target=_sweep_loop, args=(settings, stop), name="sweep", daemon=True
        ).start()
    # The daily renewal scan, also in its own thread: a large registry's scan must not hold up
    # the escalations that come due meanwhile.
    threading.Thread(
        target=_renewal_scan_loop, args=(settings, clock, stop), name="renewal-scan", daemon=True
    ).start()
    # The nightly retention purge: batched, but a large backlog still takes a while.
    threading.Thread(
        target=_retention_loop, args=(settings, clock, stop), name="retention", daemon=True
    ).start()
    # Outcome webhooks: a slow or dead receiver must not hold up due escalations either.
    threading.Thread(
        target=_outcome_loop, args=(settings, clock, stop), name="outcomes", daemon=True
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


#: How often the scan thread looks whether a new local day began.
SCAN_POLL_S = 5.0


def _renewal_scan_loop(settings: Settings, clock: Clock, stop: threading.Event) -> None:
    """Run the renewal scan once per local day (its checkpoint makes a restart not repeat it)."""
    scanned: dt.date | None = None
    while not stop.is_set():
        today = clock.today()
        if scanned != today:
            try:
                renewal_scan(clock)
                scanned = today
            except Exception:
                log.exception("renewal scan failed; retrying")
        stop.wait(SCAN_POLL_S)


def _sweep_loop(settings: Settings, stop: threading.Event) -> None:
    """Reconcile stuck notifications every ``sweep_interval_s`` until ``stop`` is set."""
    log.info("reconciliation sweep every %.0fs", settings.sweep_interval_s)
    while not stop.wait(settings.sweep_interval_s):
        try:
            sweep(settings)
        except Exception:
            log.exception("sweep failed; retrying at the next interval")


def _outcome_loop(settings: Settings, clock: Clock, stop: threading.Event) -> None:
    """Report final statuses to the sources' outcome URLs every ``scheduler_interval_s``."""
    while not stop.is_set():
        try:
            while outcomes.tick(settings, now=clock.utcnow).total == outcomes.POST_BATCH:
                if stop.is_set():
                    break
        except Exception:
            log.exception("outcome webhooks failed; retrying")
        stop.wait(settings.scheduler_interval_s)


#: Checkpoint of the nightly retention purge: the local day whose purge last ran.
PURGE_CHECKPOINT = "retention_purge"


def _purge_day(settings: Settings, now: dt.datetime) -> dt.date:
    """The local day whose purge is the latest one due at local ``now``: today once
    ``retention_purge_at`` has passed, else yesterday."""
    today = now.date()
    return today if now.time() >= settings.retention_purge_at else today - dt.timedelta(days=1)


def purge_if_due(settings: Settings, clock: Clock) -> dict[str, int] | None:
    """Run the retention purge if tonight's (or a missed night's) has not run; else None.

    The purge for local day D is due from D at ``retention_purge_at`` (02:30). The checkpoint
    ``retention_purge`` holds the last day purged: a restart finds it and does not repeat the
    night, a scheduler that was down over one or more nights purges once when it is back (one
    run covers every older row). Claimed before running (``only_if`` the value read), so two
    schedulers do not both purge; a failed purge gives the claim back to be retried. Returns
    the rows scrubbed per table.
    """
    purge_day = _purge_day(settings, clock.now())
    day = purge_day.isoformat()
    with session(settings) as s:
        last = get_checkpoint(s, PURGE_CHECKPOINT)
        # ISO dates compare as strings.
        if last is not None and last >= day:
            return None
        if not set_checkpoint(s, PURGE_CHECKPOINT, day, only_if=last or ""):
            return None  # another scheduler claimed it first
    try:
        counts = purge(settings, now=clock.utcnow())
    except Exception:
        # Back to what it was (the day before, for a first purge ever): the next poll retries.
        before = last or (purge_day - dt.timedelta(days=1)).isoformat()
        with session(settings) as s:
            set_checkpoint(s, PURGE_CHECKPOINT, before, only_if=day)
        raise
    log.info(
        "retention purge for %s (older than %d days): %s",
        day,
        settings.retention_days,
        ", ".join(f"{table} {n}" for table, n in counts.items() if n) or "nothing to scrub",
    )
    return counts


def _retention_loop(settings: Settings, clock: Clock, stop: threading.Event) -> None:
    """Run :func:`purge_if_due` until ``stop``; the database is asked once per new day only."""
    done_for: dt.date | None = None
    while not stop.is_set():
        day = _purge_day(settings, clock.now())
        if done_for != day:
            try:
                purge_if_due(settings, clock)
                done_for = day
            except Exception:
                log.exception("retention purge failed; retrying")
        stop.wait(SCAN_POLL_S)
