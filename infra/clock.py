"""The settable clock: everything that asks "what time is it?" asks here.

``GOVNOTIFY_TODAY`` (or ``--today``) pins the local date so the demo and the tests run "as of" a
day; the time of day still moves. ``GOVNOTIFY_NOW`` pins the instant the clock starts at; it then
runs forward in real time, so delays and deadlines still pass. ``GOVNOTIFY_NOW_EPOCH`` (Unix
time) says when the pinned instant was; without it each process starts its clock at its own
start, so processes started seconds apart would disagree about deadlines by those seconds. All
local dates are in the configured time zone (Asia/Shanghai by default), never the machine's.
"""

from __future__ import annotations

import datetime as dt
import time
from zoneinfo import ZoneInfo

__all__ = ["Clock"]


class Clock:
    """Local time in one zone, optionally pinned to a given date."""

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
    def from_settings(cls, settings: object) -> Clock:
        return cls(
            settings.tz,  # type: ignore[attr-defined]
            settings.today,  # type: ignore[attr-defined]
            settings.now,  # type: ignore[attr-defined]
            settings.now_epoch,  # type: ignore[attr-defined]
        )
