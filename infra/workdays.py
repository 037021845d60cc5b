"""Chinese working days, for rectification deadlines and "remind N working days before".

A working day is what the State Council's yearly holiday notice says it is: Monday to Friday,
minus public holidays, plus the weekend make-up working days (调休). The calendar data comes from
the ``chinesecalendar`` package, which only knows the years whose notice it shipped with; the
notice for next year is published each November, so the package must be upgraded every year.
Until it is, a year without data falls back to plain Monday–Friday (loudly, once per year) so
that deadlines keep being computed rather than every ticket failing on 1 January.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from zoneinfo import ZoneInfo

import chinese_calendar

__all__ = ["WorkdayCalendar", "WorkdayDataMissing", "fallback_years"]

log = logging.getLogger("govnotify.workdays")

_PACKAGE_VERSION: str = getattr(chinese_calendar, "__version__", "unknown")

# Process-wide on purpose: every WorkdayCalendar shares one package, so one warning per year per
# process is enough, and SREs (health checks, metrics) can ask which years were guessed.
_FALLBACK_YEARS: set[int] = set()
_FALLBACK_LOCK = threading.Lock()

_ONE_DAY = dt.timedelta(days=1)


class WorkdayDataMissing(Exception):
    """Raised when no holiday data exists for a year and fallback is off."""


def fallback_years() -> frozenset[int]:
    """The years for which this process counted Mon–Fri only, for lack of holiday data."""
    with _FALLBACK_LOCK:
        return frozenset(_FALLBACK_YEARS)


def _note_fallback(year: int) -> None:
    with _FALLBACK_LOCK:
        if year in _FALLBACK_YEARS:
            return
        _FALLBACK_YEARS.add(year)
    log.warning(
        "holiday data for %d not available in chinesecalendar %s; counting Mon–Fri only; "
        "upgrade the package",
        year,
        _PACKAGE_VERSION,
    )


class WorkdayCalendar:
    """Chinese working days: weekends, public holidays and make-up working days (调休)."""

    def __init__(self, *, fallback_weekdays: bool = True) -> None:
        self.fallback_weekdays = fallback_weekdays

    def is_workday(self, day: dt.date) -> bool:
        """Whether ``day`` is a working day; see the module docstring for years without data."""
        if isinstance(day, dt.datetime):
            # A datetime is a date subclass: accepting it would silently drop its time zone.
            raise TypeError("is_workday takes a date; convert the datetime to a local date first")
        try:
            return chinese_calendar.is_workday(day)
        except NotImplementedError as exc:
            if not self.fallback_weekdays:
                raise WorkdayDataMissing(
                    f"no holiday data for {day.year} in chinesecalendar {_PACKAGE_VERSION}; "
                    "upgrade the package"
                ) from exc
            _note_fallback(day.year)
            return day.weekday() < 5

    def add_workdays(self, start: dt.date, n: int) -> dt.date:
        """The ``n``-th working day after ``start`` (before it if ``n`` < 0); ``start`` if 0.

        ``start`` itself never counts, whether or not it is a working day: a ticket opened on a
        Friday with ``n=1`` is due the next working day, not that Friday.
        """
        step = _ONE_DAY if n > 0 else -_ONE_DAY
        day = start
        remaining = abs(n)
        while remaining:
            day += step
            if self.is_workday(day):
                remaining -= 1
        return day

    def workdays_between(self, start: dt.date, end: dt.date) -> int:
        """Working days in ``(start, end]``; 0 when ``end`` is not after ``start``.

        The inverse of :meth:`add_workdays`: ``workdays_between(d, add_workdays(d, n)) == n``
        for ``n`` >= 0, so "overdue by" is ``workdays_between(deadline_day, today)``.
        """
        count = 0
        day = start + _ONE_DAY
        while day <= end:
            if self.is_workday(day):
                count += 1
            day += _ONE_DAY
        return count

    def deadline(
        self,
        opened_at: dt.datetime,
        n: int,
        tz: ZoneInfo,
        *,
        end_of_day: dt.time = dt.time(23, 59, 59),
    ) -> dt.datetime:
        """Due instant of something opened at ``opened_at`` with ``n`` working days to act.

        Opened at any moment of local date D, it is due at ``end_of_day`` (local) of
        ``add_workdays(D, n)``. D is the date in ``tz``, not in ``opened_at``'s own zone: an event
        stamped in UTC late on Friday is a Saturday in Shanghai.
        """
        if opened_at.tzinfo is None or opened_at.utcoffset() is None:
            raise ValueError("opened_at must be timezone-aware; a naive time has no local date")
        local_day = opened_at.astimezone(tz).date()
        due_day = self.add_workdays(local_day, n)
        return dt.datetime.combine(due_day, end_of_day.replace(tzinfo=None), tzinfo=tz)
