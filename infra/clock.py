"""The settable clock: everything that asks "what day is it?" asks here.

``GOVNOTIFY_TODAY`` (or ``--today``) pins the local date so the demo and the tests run "as of" a
day; the time of day still moves. All local dates are in the configured time zone
(Asia/Shanghai by default), never the machine's.
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

__all__ = ["Clock"]


class Clock:
    """Local time in one zone, optionally pinned to a given date."""

    def __init__(self, tz: ZoneInfo, today: dt.date | None = None) -> None:
        self.tz = tz
        self.pinned_today = today

    def now(self) -> dt.datetime:
        """Timezone-aware local now; on a pinned day, that day at the real time of day."""
        real = dt.datetime.now(self.tz)
        if self.pinned_today is None:
            return real
        return real.replace(
            year=self.pinned_today.year, month=self.pinned_today.month, day=self.pinned_today.day
        )

    def today(self) -> dt.date:
        return self.pinned_today or dt.datetime.now(self.tz).date()

    @classmethod
    def from_settings(cls, settings: object) -> Clock:
        return cls(settings.tz, settings.today)  # type: ignore[attr-defined]
