"""Chinese working days, for rectification deadlines and "remind N working days before".

A working day is what the State Council's yearly holiday notice says it is: Monday to Friday,
minus public holidays, plus the weekend make-up working days (调休). The calendar data comes from
the ``chinesecalendar`` package, which only knows the years whose notice it shipped with; the
notice for next year is published each November, so the package must be upgraded every year.
When the package lags, the operator writes the notice into ``GOVNOTIFY_HOLIDAYS_FILE`` (see
:func:`load_holiday_notices`); for the years it lists, the file wins over the package. A year in
neither falls back to plain Monday–Friday (loudly, once per year) so that deadlines keep being
computed rather than every ticket failing on 1 January. :meth:`WorkdayCalendar.covered_until`
says how far the data reaches; the scheduler exports it as ``govnotify_holiday_data_days_left``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import chinese_calendar
from chinese_calendar import constants as _package_data

if TYPE_CHECKING:
    from infra.settings import Settings

__all__ = [
    "PACKAGE_FIRST_YEAR",
    "PACKAGE_LAST_YEAR",
    "PACKAGE_VERSION",
    "HolidayFileError",
    "HolidayNotices",
    "WorkdayCalendar",
    "WorkdayDataMissing",
    "YearNotice",
    "fallback_years",
    "load_holiday_notices",
]

log = logging.getLogger("govnotify.workdays")

#: The installed chinesecalendar's version (``govnotify workdays`` shows it).
PACKAGE_VERSION: str = getattr(chinese_calendar, "__version__", "unknown")
#: The years the installed package has data for (it raises NotImplementedError outside them);
#: the same bounds the package itself checks, from its table of holidays.
PACKAGE_FIRST_YEAR: int = min(_package_data.holidays).year
PACKAGE_LAST_YEAR: int = max(_package_data.holidays).year

# Process-wide on purpose: every WorkdayCalendar shares one package, so one warning per year per
# process is enough, and SREs (health checks, metrics) can ask which years were guessed.
_FALLBACK_YEARS: set[int] = set()
_FALLBACK_LOCK = threading.Lock()

_ONE_DAY = dt.timedelta(days=1)


class WorkdayDataMissing(Exception):
    """Raised when no holiday data exists for a year and fallback is off."""


class HolidayFileError(ValueError):
    """Raised when the holiday notices file cannot be read or says something impossible."""


@dataclass(frozen=True)
class YearNotice:
    """One year's holiday notice: the days off, and the weekend days worked instead (调休)."""

    holidays: frozenset[dt.date]
    workdays: frozenset[dt.date]


#: Holiday notices by year, as written in ``GOVNOTIFY_HOLIDAYS_FILE``.
HolidayNotices = Mapping[int, YearNotice]

_YEAR = re.compile(r"[0-9]{4}")
_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_KEYS = ("holidays", "workdays")
_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def load_holiday_notices(path: Path | str) -> HolidayNotices:
    """Read and check a holiday notices file (the format is in :class:`infra.settings.Settings`).

    ``{"2027": {"holidays": ["2027-01-01", ...], "workdays": ["2027-02-07", ...]}}``: every
    day off of the year (weekend days inside a holiday span may be listed, as notices do) and
    every make-up working day. A mistake here moves citizens' deadlines, so anything doubtful
    is refused rather than guessed.

    Raises:
        HolidayFileError: naming the file and what is wrong with it.
    """
    path = Path(path)

    def fail(problem: str) -> HolidayFileError:
        return HolidayFileError(f"holiday notices file {path}: {problem}")

    try:
        # utf-8-sig: a file saved by Windows Notepad starts with a byte order mark.
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise fail(f"cannot read it ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise fail("not UTF-8 text") from None
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except _DuplicateKeyError as exc:
        raise fail(f"key {_q(exc.key)} appears twice") from None
    except json.JSONDecodeError as exc:
        raise fail(f"not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    if not isinstance(data, dict):
        raise fail(f"the top level must be an object keyed by year, not {_json_type(data)}")
    notices: dict[int, YearNotice] = {}
    for key, entry in data.items():
        if not _YEAR.fullmatch(key):
            raise fail(f"key {_q(key)} is not a 4-digit year")
        try:
            notices[int(key)] = _year_notice(int(key), entry)
        except ValueError as exc:
            raise fail(f"{key}: {exc}") from None
    return MappingProxyType(notices)


def _year_notice(year: int, entry: Any) -> YearNotice:
    """One year's entry; a ValueError says what is wrong (the caller adds file and year)."""
    if not isinstance(entry, dict):
        raise ValueError(f'must be an object of "holidays" and "workdays", not {_json_type(entry)}')
    missing = [k for k in _KEYS if k not in entry]
    if missing:
        raise ValueError(f"missing {', '.join(map(_q, missing))}")
    extra = sorted(set(entry) - set(_KEYS))
    if extra:
        raise ValueError(f'unknown key {", ".join(map(_q, extra))}; only "holidays" and "workdays"')
    holidays, workdays = (_dates(year, key, entry[key]) for key in _KEYS)
    if not holidays:
        # An empty placeholder would count as data: deadlines would silently ignore the year's
        # holidays, and the "holiday data running out" alert would stay quiet.
        raise ValueError('"holidays" is empty; every notice lists days off')
    both = sorted(holidays & workdays)
    if both:
        raise ValueError(f"{both[0]} is both a holiday and a workday")
    on_weekdays = sorted(d for d in workdays if d.weekday() < 5)
    if on_weekdays:
        # A weekday is a working day anyway: listing one is a typo for another day.
        day = on_weekdays[0]
        raise ValueError(
            f'"workdays": {day} is a {_WEEKDAYS[day.weekday()]}; make-up working days (调休) '
            "are Saturdays or Sundays"
        )
    return YearNotice(holidays=holidays, workdays=workdays)


def _dates(year: int, key: str, values: Any) -> frozenset[dt.date]:
    if not isinstance(values, list):
        raise ValueError(f"{_q(key)} must be a list of dates, not {_json_type(values)}")
    days = set()
    for value in values:
        bad = ValueError(f"{_q(key)}: {_q(value)} is not a date in YYYY-MM-DD form")
        # fromisoformat alone would also take "20270101" and "2027-W05-1".
        if not isinstance(value, str) or not _ISO_DATE.fullmatch(value):
            raise bad
        try:
            day = dt.date.fromisoformat(value)
        except ValueError:
            raise bad from None
        if day.year != year:
            raise ValueError(f"{_q(key)}: {value} is not in {year}")
        days.add(day)
    return frozenset(days)


class _DuplicateKeyError(ValueError):
    """Raised when a JSON object repeats a key (json.loads would silently keep the last one)."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKeyError(key)
        out[key] = value
    return out


def _q(value: Any) -> str:
    """``value`` as JSON writes it: as the operator sees it in the file."""
    return json.dumps(value, ensure_ascii=False)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    names = {dict: "an object", list: "a list", str: "a string", bool: "true or false"}
    return names.get(type(value), "a number")


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
        "upgrade the package or add the year's notice to GOVNOTIFY_HOLIDAYS_FILE",
        year,
        PACKAGE_VERSION,
    )


class WorkdayCalendar:
    """Chinese working days: weekends, public holidays and make-up working days (调休)."""

    def __init__(
        self, *, fallback_weekdays: bool = True, notices: HolidayNotices | None = None
    ) -> None:
        self.fallback_weekdays = fallback_weekdays
        self.notices: HolidayNotices = notices or {}

    @classmethod
    def from_settings(cls, settings: Settings) -> WorkdayCalendar:
        """The calendar with ``GOVNOTIFY_HOLIDAYS_FILE``'s notices, if set.

        Raises:
            HolidayFileError: the file is unreadable or wrong; the process should not start.
        """
        path = settings.holidays_file
        return cls(notices=load_holiday_notices(path) if path else None)

    def covered_until(self) -> dt.date:
        """The last day up to which every year, from the package's first, has holiday data.

        A gap ends the run: notices for 2028 without 2027 leave the data ending in 2026.
        """
        year = PACKAGE_FIRST_YEAR
        while year + 1 <= PACKAGE_LAST_YEAR or year + 1 in self.notices:
            year += 1
        return dt.date(year, 12, 31)

    def is_workday(self, day: dt.date) -> bool:
        """Whether ``day`` is a working day; see the module docstring for years without data."""
        if isinstance(day, dt.datetime):
            # A datetime is a date subclass: accepting it would silently drop its time zone.
            raise TypeError("is_workday takes a date; convert the datetime to a local date first")
        notice = self.notices.get(day.year)
        if notice is not None:
            # The file wins over the package: it is how an operator corrects the package too.
            return day in notice.workdays or (day.weekday() < 5 and day not in notice.holidays)
        try:
            return chinese_calendar.is_workday(day)
        except NotImplementedError as exc:
            if not self.fallback_weekdays:
                raise WorkdayDataMissing(
                    f"no holiday data for {day.year} in chinesecalendar {PACKAGE_VERSION}; "
                    "upgrade the package or add the year's notice to GOVNOTIFY_HOLIDAYS_FILE"
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
