"""The ``govnotify scheduler`` process: due jobs to the queues, daily work, the sweep.

It ticks :func:`workers.scheduled_jobs.tick` every ``scheduler_interval_s``, starts the
departments' call-list digests once a local day, runs the daily renewal scan and the
reconciliation sweep, each in its own thread so a slow one holds up no other.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from typing import TYPE_CHECKING

from infra.clock import Clock
from infra.workdays import WorkdayCalendar
from workers.call_list import schedule_digests
from workers.reminders import renewal_scan
from workers.scheduled_jobs import BATCH, tick
from workers.sweep import sweep

if TYPE_CHECKING:
    from infra.settings import Settings

__all__ = ["run_scheduler"]

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
