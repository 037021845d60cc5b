"""The settable clock: everything that asks "what time is it?" asks here.

``GOVNOTIFY_TODAY`` (or ``--today``) pins the local date so the demo and the tests run "as of" a
day; the time of day still moves. ``GOVNOTIFY_NOW`` pins the instant the clock starts at; it then
runs forward in real time, so delays and deadlines still pass. ``GOVNOTIFY_NOW_EPOCH`` (Unix
time) says when the pinned instant was; without it a process's clock starts at the process's
first reading, so processes started seconds apart would disagree about deadlines by those
seconds. All local dates are in the configured time zone (Asia/Shanghai by default), never the
machine's.

One clock per process: :meth:`Clock.from_settings` gives every caller with the same settings
the same clock, and :func:`install_clock` makes it the source of ``schemas.models.utcnow``, the
stamp of every row. A claim, the sweep that judges it stuck and the retention purge then all
read one clock, whatever ``GOVNOTIFY_NOW`` says.
"""

from __future__ import annotations

import datetime as dt
import functools
import threading
import time
from typing import Any
from zoneinfo import ZoneInfo

from schemas.models import set_utc_source, utcnow

__all__ = ["Clock", "event_horizon", "install_clock", "to_wall_time", "uninstall_clock"]


class Clock:
    """Local time in one zone, optionally pinned to a given date or started at an instant."""

    def __init__(
        self,
        tz: ZoneInfo,
        today: dt.date | None = None,
        start: dt.datetime | None = None,
        epoch: float | None = None,
    ) -> None:
        self.tz = tz
        self.pinned_today = today
        self.start = start.astimezone(tz) if start else None
        # Wall time, not monotonic, when an epoch is given: it is shared between processes.
        self._epoch = epoch
        self._started = time.monotonic()

    def now(self) -> dt.datetime:
        """Timezone-aware local now; on a pinned day, that day at the real time of day."""
        if self.start is not None:
            if self._epoch is not None:
                return self.start + dt.timedelta(seconds=time.time() - self._epoch)
            return self.start + dt.timedelta(seconds=time.monotonic() - self._started)
        real = dt.datetime.now(self.tz)
        if self.pinned_today is None:
            return real
        return real.replace(
            year=self.pinned_today.year, month=self.pinned_today.month, day=self.pinned_today.day
        )

    def today(self) -> dt.date:
        if self.start is not None:
            return self.now().date()
        return self.pinned_today or dt.datetime.now(self.tz).date()

    def utcnow(self) -> dt.datetime:
        return self.now().astimezone(dt.UTC)

    @classmethod
    def from_settings(cls, settings: Any) -> Clock:
        """The process's clock for ``settings``: one object per distinct clock setting, so two
        modules asking get the same pinned start (not each its own)."""
        return _shared(settings.timezone, settings.today, settings.now, settings.now_epoch)


_lock = threading.Lock()


@functools.cache
def _shared(
    timezone: str, today: dt.date | None, now: dt.datetime | None, epoch: float | None
) -> Clock:
    with _lock:
        return Clock(ZoneInfo(timezone), today, now, epoch)


def install_clock(settings: Any) -> Clock:
    """Make ``settings``' clock the one every row stamp (``schemas.models.utcnow``) reads."""
    clock = Clock.from_settings(settings)
    set_utc_source(clock.utcnow)
    return clock


def uninstall_clock() -> None:
    """Back to the wall clock for row stamps (tests that installed a pinned clock)."""
    set_utc_source(None)


def to_wall_time(instant: dt.datetime) -> dt.datetime:
    """``instant`` on the process clock as the real world's clock reads it.

    Providers stamp messages with the real time; a row stamped on a pinned clock
    (``GOVNOTIFY_NOW`` in the demo and the tests) is looked up at the provider by the real
    instant it was written at. In production the two are the same and this changes nothing.
    """
    return instant - (utcnow() - dt.datetime.now(dt.UTC))


def event_horizon(clock: Clock) -> dt.datetime:
    """The latest "now" an incoming event may be judged against: the later of ``clock`` and
    the real time (UTC).

    In production the two are one. On a clock pinned to another day (the demo, the tests, a
    replay of history) upstream systems still stamp events with their own time, which may be
    ahead of the pinned clock without being in anyone's future; an ``occurred_at`` beyond both
    (say 9999-12-31) is what the clock-skew check refuses.
    """
    return max(clock.utcnow(), dt.datetime.now(dt.UTC))
