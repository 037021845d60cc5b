"""Chinese working days: holidays, make-up working days (调休) and the Mon–Fri fallback.

Every date below was checked against chinesecalendar 1.11.0 (``get_holiday_detail``) and is
written literally, so a wrong package upgrade shows up here as a changed fact, not a changed
computation.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from prometheus_client import CollectorRegistry

from infra import workdays
from infra.settings import load_settings
from infra.workday_gauges import register_workday_gauges
from infra.workdays import (
    HolidayFileError,
    WorkdayCalendar,
    WorkdayDataMissing,
    fallback_years,
    load_holiday_notices,
)

SHANGHAI = ZoneInfo("Asia/Shanghai")
D = dt.date.fromisoformat


@pytest.fixture(autouse=True)
def fresh_fallback_years(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts with no year recorded as fallen back (the record is process-wide)."""
    monkeypatch.setattr(workdays, "_FALLBACK_YEARS", set())


@pytest.fixture
def cal() -> WorkdayCalendar:
    return WorkdayCalendar()


# ---- is_workday ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("day", "expected"),
    [
        # A plain week.
        ("2025-06-09", True),  # Mon
        ("2025-06-07", False),  # Sat
        # Holiday weekdays are not working days.
        ("2025-06-02", False),  # Mon, Dragon Boat Festival
        ("2025-10-01", False),  # Wed, National Day
        ("2025-10-06", False),  # Mon, Mid-autumn Festival inside the National Day break
        ("2025-10-08", False),  # Wed, last day of the 2025 National Day break
        ("2026-02-16", False),  # Mon, Spring Festival
        ("2026-02-23", False),  # Mon, last day of the 2026 Spring Festival break
        ("2026-09-25", False),  # Fri, Mid-autumn Festival
        ("2026-10-07", False),  # Wed, last day of the 2026 National Day break
        # Make-up weekend days (调休) are working days.
        ("2025-09-28", True),  # Sun, for National Day 2025
        ("2025-10-11", True),  # Sat, for National Day 2025
        ("2026-01-04", True),  # Sun, for New Year 2026
        ("2026-02-14", True),  # Sat, for Spring Festival 2026
        ("2026-02-28", True),  # Sat, for Spring Festival 2026
        ("2026-09-20", True),  # Sun, for National Day 2026
        ("2026-10-10", True),  # Sat, for National Day 2026
        # The ordinary weekend right after a make-up Saturday is still off.
        ("2025-10-12", False),  # Sun
    ],
)
def test_is_workday_follows_the_official_calendar(
    cal: WorkdayCalendar, day: str, expected: bool
) -> None:
    # Given the calendar with real holiday data
    # When asking about one day
    result = cal.is_workday(D(day))
    # Then holidays are off and make-up weekend days are on
    assert result is expected


def test_is_workday_refuses_a_datetime(cal: WorkdayCalendar) -> None:
    # Given a datetime, whose date depends on a time zone
    moment = dt.datetime(2025, 10, 11, 1, 0, tzinfo=SHANGHAI)
    # When / Then it must be turned into a local date by the caller
    with pytest.raises(TypeError, match="local date"):
        cal.is_workday(moment)


# ---- add_workdays ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("start", "n", "expected"),
    [
        # A plain week: 2025-06-09 Mon .. 2025-06-16 Mon, no holiday.
        ("2025-06-09", 5, "2025-06-16"),  # Mon + 5 → next Mon
        ("2025-06-13", 1, "2025-06-16"),  # Fri + 1 → Mon
        ("2025-06-14", 1, "2025-06-16"),  # Sat + 1 → Mon
        ("2025-06-15", 1, "2025-06-16"),  # Sun + 1 → Mon
        ("2025-06-14", 0, "2025-06-14"),  # n = 0 is start itself, even on a weekend
        # National Day 2025: off Oct 1–8, make-up Sun Sep 28 and Sat Oct 11.
        ("2025-09-30", 1, "2025-10-09"),
        ("2025-09-30", 5, "2025-10-14"),  # Oct 9, 10, 11 (Sat, make-up), 13, 14
        ("2025-09-30", 15, "2025-10-28"),
        ("2025-10-01", 1, "2025-10-09"),  # opened on a holiday
        ("2025-10-10", 1, "2025-10-11"),  # Fri + 1 → the make-up Saturday
        ("2025-09-26", 1, "2025-09-28"),  # Fri + 1 → the make-up Sunday
        # National Day 2026: Mid-autumn off Sep 25–27, National Day off Oct 1–7,
        # make-up Sun Sep 20 and Sat Oct 10.
        ("2026-09-18", 1, "2026-09-20"),  # Fri + 1 → the make-up Sunday
        ("2026-09-24", 1, "2026-09-28"),  # Thu + 1 → skips Mid-autumn Fri–Sun
        ("2026-09-30", 1, "2026-10-08"),
        ("2026-09-30", 5, "2026-10-13"),  # Oct 8, 9, 10 (Sat, make-up), 12, 13
        # Spring Festival 2026: off Feb 15–23, make-up Sat Feb 14 and Sat Feb 28.
        ("2026-02-13", 1, "2026-02-14"),  # Fri + 1 → the make-up Saturday
        ("2026-02-13", 2, "2026-02-24"),
        ("2026-02-13", 5, "2026-02-27"),  # Feb 14, 24, 25, 26, 27
        ("2026-02-13", 6, "2026-02-28"),  # ... then the second make-up Saturday
        ("2026-02-13", 7, "2026-03-02"),
        # New Year 2026: off Jan 1–3, make-up Sun Jan 4.
        ("2025-12-31", 1, "2026-01-04"),
        # Negative n: "remind 1 working day before the deadline".
        ("2025-06-16", -1, "2025-06-13"),  # Mon - 1 → Fri
        ("2025-10-14", -1, "2025-10-13"),
        ("2025-10-13", -1, "2025-10-11"),  # Mon - 1 → the make-up Saturday
        ("2025-10-09", -1, "2025-09-30"),  # back across the whole National Day break
        ("2025-10-14", -5, "2025-09-30"),
        ("2026-02-24", -1, "2026-02-14"),  # back across the Spring Festival break
    ],
)
def test_add_workdays(cal: WorkdayCalendar, start: str, n: int, expected: str) -> None:
    # Given a start date that itself never counts
    # When adding n working days
    result = cal.add_workdays(D(start), n)
    # Then the n-th working day after (or before) it is returned
    assert result == D(expected)


# ---- workdays_between ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        ("2025-06-09", "2025-06-16", 5),
        ("2025-09-30", "2025-10-14", 5),
        ("2025-09-30", "2025-10-08", 0),  # only holidays in (start, end]
        ("2026-02-13", "2026-03-02", 7),
        ("2025-06-09", "2025-06-09", 0),  # empty interval
        ("2025-10-14", "2025-09-30", 0),  # end before start
    ],
)
def test_workdays_between(cal: WorkdayCalendar, start: str, end: str, expected: int) -> None:
    # Given an interval (start, end]
    # When counting its working days
    result = cal.workdays_between(D(start), D(end))
    # Then start is excluded and end included
    assert result == expected


@pytest.mark.parametrize("start", ["2025-09-26", "2025-12-31", "2026-02-13", "2026-09-18"])
def test_workdays_between_inverts_add_workdays(cal: WorkdayCalendar, start: str) -> None:
    # Given start dates next to holidays and make-up days
    for n in range(20):
        # When adding n working days
        due = cal.add_workdays(D(start), n)
        # Then exactly n working days lie in (start, due]
        assert cal.workdays_between(D(start), due) == n


# ---- years without holiday data --------------------------------------------------------------
@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (lambda c: c.is_workday(D("2027-01-01")), True),  # Fri (a holiday in reality)
        (lambda c: c.is_workday(D("2027-01-02")), False),  # Sat
        (lambda c: c.add_workdays(D("2027-01-01"), 1), D("2027-01-04")),  # Fri + 1 → Mon
        (lambda c: c.add_workdays(D("2027-01-04"), 5), D("2027-01-11")),
        (lambda c: c.add_workdays(D("2026-12-31"), 2), D("2027-01-04")),  # across the year
        (lambda c: c.workdays_between(D("2026-12-31"), D("2027-01-08")), 6),
    ],
)
def test_fallback_counts_monday_to_friday(call: object, expected: object) -> None:
    # Given a calendar allowed to fall back, and a date in 2027 (no data in 1.11.0)
    cal = WorkdayCalendar(fallback_weekdays=True)
    # When computing with it
    result = call(cal)  # type: ignore[operator]
    # Then Mon–Fri count as working days and 2027 is reported as fallen back
    assert result == expected
    assert fallback_years() == frozenset({2027})


def test_fallback_warns_once_per_year(caplog: pytest.LogCaptureFixture) -> None:
    # Given a calendar allowed to fall back
    cal = WorkdayCalendar()
    caplog.set_level(logging.WARNING, logger="govnotify.workdays")
    # When many days of 2027 and then one of 2028 are asked about
    cal.workdays_between(D("2027-01-01"), D("2027-03-01"))
    WorkdayCalendar().is_workday(D("2027-06-01"))  # another instance, same process
    cal.is_workday(D("2028-01-03"))
    # Then there is one warning per year, naming the year, the package and the fix
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(messages) == 2
    assert messages[0].startswith("holiday data for 2027 not available in chinesecalendar ")
    assert "counting Mon–Fri only; upgrade the package" in messages[0]
    assert messages[1].startswith("holiday data for 2028 ")
    assert fallback_years() == frozenset({2027, 2028})


def test_years_with_data_do_not_fall_back(cal: WorkdayCalendar) -> None:
    # Given only dates the package has data for
    # When computing across a whole covered year
    cal.workdays_between(D("2025-01-01"), D("2026-12-31"))
    # Then no year is reported
    assert fallback_years() == frozenset()


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.is_workday(D("2027-01-04")),
        lambda c: c.is_workday(D("2003-06-02")),  # before the package's first year too
        lambda c: c.add_workdays(D("2026-12-31"), 1),  # 2026 is known, 2027 is not
        lambda c: c.workdays_between(D("2026-12-30"), D("2027-01-05")),
        lambda c: c.deadline(dt.datetime(2026, 12, 30, 10, tzinfo=SHANGHAI), 5, SHANGHAI),
    ],
)
def test_no_fallback_raises(call: object) -> None:
    # Given a calendar not allowed to guess
    cal = WorkdayCalendar(fallback_weekdays=False)
    # When a computation reaches a year without data
    # Then it fails loudly and records no fallback
    with pytest.raises(WorkdayDataMissing, match="upgrade the package"):
        call(cal)  # type: ignore[operator]
    assert fallback_years() == frozenset()


def test_no_fallback_still_works_inside_known_years() -> None:
    # Given a calendar not allowed to guess
    cal = WorkdayCalendar(fallback_weekdays=False)
    # When staying inside 2025
    # Then real data is used
    assert cal.add_workdays(D("2025-09-30"), 5) == D("2025-10-14")


# ---- deadline --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("opened_at", "n", "expected"),
    [
        # Opened during the last working day before National Day 2025.
        (dt.datetime(2025, 9, 30, 15, 0, tzinfo=SHANGHAI), 5, "2025-10-14T23:59:59+08:00"),
        (dt.datetime(2025, 9, 30, 0, 0, tzinfo=SHANGHAI), 5, "2025-10-14T23:59:59+08:00"),
        (dt.datetime(2025, 9, 30, 23, 59, 59, tzinfo=SHANGHAI), 5, "2025-10-14T23:59:59+08:00"),
        # 17:00 UTC on Fri Oct 10 is 01:00 on Sat Oct 11 in Shanghai (a make-up working day):
        # the local date counts, so the due day is Mon Oct 13, not Sat Oct 11.
        (dt.datetime(2025, 10, 10, 17, 0, tzinfo=dt.UTC), 1, "2025-10-13T23:59:59+08:00"),
        # Spring Festival 2026, 15 working days (a region's longer deadline).
        (dt.datetime(2026, 2, 13, 9, 0, tzinfo=SHANGHAI), 15, "2026-03-12T23:59:59+08:00"),
    ],
)
def test_deadline(opened_at: dt.datetime, n: int, expected: str) -> None:
    # Given a rectification ticket opened at some moment
    cal = WorkdayCalendar()
    # When computing its deadline in Shanghai
    due = cal.deadline(opened_at, n, SHANGHAI)
    # Then it is the end of the n-th working day after the local opening date, in Shanghai
    assert due == dt.datetime.fromisoformat(expected)
    assert due.isoformat() == expected
    assert due.tzinfo is SHANGHAI


def test_deadline_with_a_custom_end_of_day_and_reminder() -> None:
    # Given a ticket due at the close of office hours
    cal = WorkdayCalendar()
    opened = dt.datetime(2025, 9, 30, 15, 0, tzinfo=SHANGHAI)
    # When computing the deadline and the "1 working day before" reminder day
    due = cal.deadline(opened, 5, SHANGHAI, end_of_day=dt.time(17, 30))
    remind_on = cal.add_workdays(due.date(), -1)
    # Then both fall on working days around National Day 2025
    assert due == dt.datetime(2025, 10, 14, 17, 30, tzinfo=SHANGHAI)
    assert remind_on == D("2025-10-13")


def test_deadline_refuses_a_naive_datetime() -> None:
    # Given a naive opening time
    cal = WorkdayCalendar()
    # When / Then it is refused: its local date is unknown
    with pytest.raises(ValueError, match="timezone-aware"):
        cal.deadline(dt.datetime(2025, 9, 30, 15, 0), 5, SHANGHAI)


# ---- the holiday notices file (GOVNOTIFY_HOLIDAYS_FILE) ----------------------------------------
#: TEST DATA, not the real 2027 notice (unpublished when this was written): a made-up Spring
#: Festival off Wed Feb 10 – Tue Feb 16 (the weekend inside it listed, as notices do), with
#: Saturday Feb 20 worked instead, and New Year's Day.
FICTIONAL_2027 = {
    "holidays": [
        "2027-01-01",
        "2027-02-10",
        "2027-02-11",
        "2027-02-12",
        "2027-02-13",
        "2027-02-14",
        "2027-02-15",
        "2027-02-16",
    ],
    "workdays": ["2027-02-20"],
}


def write_notices(tmp_path: Path, notices: object, name: str = "holidays.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(notices, ensure_ascii=False), encoding="utf-8")
    return path


@pytest.fixture
def cal_2027(tmp_path: Path) -> WorkdayCalendar:
    """A calendar strict about missing data, with the fictional 2027 notice from a file."""
    path = write_notices(tmp_path, {"2027": FICTIONAL_2027})
    return WorkdayCalendar(fallback_weekdays=False, notices=load_holiday_notices(path))


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (lambda c: c.is_workday(D("2027-01-01")), False),  # Fri, listed holiday
        (lambda c: c.is_workday(D("2027-02-09")), True),  # Tue before the break
        (lambda c: c.is_workday(D("2027-02-10")), False),  # Wed, first day off
        (lambda c: c.is_workday(D("2027-02-13")), False),  # Sat inside the break
        (lambda c: c.is_workday(D("2027-02-16")), False),  # Tue, last day off
        (lambda c: c.is_workday(D("2027-02-17")), True),  # Wed, back at work
        (lambda c: c.is_workday(D("2027-02-20")), True),  # Sat, make-up working day
        (lambda c: c.is_workday(D("2027-02-21")), False),  # Sun, an ordinary weekend day
        (lambda c: c.add_workdays(D("2027-02-09"), 1), D("2027-02-17")),  # over the break
        (lambda c: c.add_workdays(D("2027-02-19"), 1), D("2027-02-20")),  # Fri + 1 → make-up Sat
        (lambda c: c.add_workdays(D("2027-02-17"), -1), D("2027-02-09")),
        (lambda c: c.add_workdays(D("2026-12-31"), 1), D("2027-01-04")),  # package, then file
        (lambda c: c.workdays_between(D("2027-02-09"), D("2027-02-22")), 5),  # 17-20, 22
        (
            lambda c: c.deadline(dt.datetime(2027, 2, 9, 15, tzinfo=SHANGHAI), 5, SHANGHAI),
            dt.datetime(2027, 2, 22, 23, 59, 59, tzinfo=SHANGHAI),
        ),
    ],
)
def test_the_file_is_used_for_its_years(
    cal_2027: WorkdayCalendar, call: object, expected: object
) -> None:
    # Given a calendar with a 2027 notice from the file, not allowed to guess
    # When computing with days of 2027
    result = call(cal_2027)  # type: ignore[operator]
    # Then the notice's holidays and make-up day count, and nothing was guessed
    assert result == expected
    assert fallback_years() == frozenset()


@pytest.mark.parametrize(
    ("day", "package", "with_file"),
    [
        ("2026-06-08", True, False),  # Mon: a holiday in the file only
        ("2026-06-19", False, True),  # Fri: Dragon Boat Festival in the package, not in the file
        ("2026-06-20", False, True),  # Sat: a make-up working day in the file only
        ("2026-02-14", True, False),  # Sat: the package's make-up day, not the file's
        ("2026-06-22", True, True),  # Mon: an ordinary working day in both
    ],
)
def test_the_file_wins_over_the_package_for_a_year_it_lists(
    tmp_path: Path, day: str, package: bool, with_file: bool
) -> None:
    # Given an operator's correction of 2026 (test data, not a real notice)
    path = write_notices(
        tmp_path, {"2026": {"holidays": ["2026-06-08"], "workdays": ["2026-06-20"]}}
    )
    corrected = WorkdayCalendar(notices=load_holiday_notices(path))
    # When asking both calendars about the same day
    # Then the package's answer is replaced by the file's for the whole year
    assert WorkdayCalendar().is_workday(D(day)) is package
    assert corrected.is_workday(D(day)) is with_file


@pytest.mark.parametrize("day", ["2028-01-03", "2003-06-02"])
def test_the_fallback_still_applies_to_years_in_neither(tmp_path: Path, day: str) -> None:
    # Given notices for 2027 only
    path = write_notices(tmp_path, {"2027": FICTIONAL_2027})
    cal = WorkdayCalendar(notices=load_holiday_notices(path))
    # When asking about a Monday of a year neither the package nor the file knows
    result = cal.is_workday(D(day))
    # Then Mon–Fri counts, and the year is reported as guessed
    assert result is True
    assert fallback_years() == frozenset({D(day).year})


@pytest.mark.parametrize(
    ("years", "expected"),
    [
        ([], "2026-12-31"),  # the package alone (1.11.0: 2004–2026)
        (["2027"], "2027-12-31"),
        (["2027", "2028"], "2028-12-31"),
        (["2028"], "2026-12-31"),  # a gap: 2027 is guessed, so 2028 does not help
        (["2027", "2029"], "2027-12-31"),
        (["2026"], "2026-12-31"),  # a correction inside the package's years
        (["2003"], "2026-12-31"),  # before the package's first year
    ],
)
def test_covered_until(tmp_path: Path, years: list[str], expected: str) -> None:
    # Given notices for some years (or no file)
    notices = {year: {"holidays": [f"{year}-01-01"], "workdays": []} for year in years}
    path = write_notices(tmp_path, notices)
    cal = WorkdayCalendar(notices=load_holiday_notices(path) if years else None)
    # When asking how far the data reaches
    # Then it is the end of the unbroken run of years from the package's first
    assert cal.covered_until() == D(expected)


def test_from_settings_reads_the_file_when_one_is_set(tmp_path: Path) -> None:
    # Given settings with and without GOVNOTIFY_HOLIDAYS_FILE
    path = write_notices(tmp_path, {"2027": FICTIONAL_2027})
    # When building calendars from them
    with_file = WorkdayCalendar.from_settings(load_settings(holidays_file=path))
    without = WorkdayCalendar.from_settings(load_settings(holidays_file=None))
    # Then only the first knows 2027
    assert with_file.covered_until() == D("2027-12-31")
    assert with_file.is_workday(D("2027-02-10")) is False
    assert without.covered_until() == D("2026-12-31")


def test_a_file_saved_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    # Given the notice saved by an editor that writes a UTF-8 byte order mark
    path = tmp_path / "holidays.json"
    path.write_text(json.dumps({"2027": FICTIONAL_2027}), encoding="utf-8-sig")
    # When / Then it loads like any other
    assert sorted(load_holiday_notices(path)) == [2027]


GOOD = FICTIONAL_2027


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "cannot read it (No such file or directory)"),
        (b"\xff\xfe{}", "not UTF-8 text"),
        ('{"2027": ', "not JSON (Expecting value at line 1 column 10)"),
        ("", "not JSON (Expecting value at line 1 column 1)"),
        ([GOOD], "the top level must be an object keyed by year, not a list"),
        ({"27": GOOD}, 'key "27" is not a 4-digit year'),
        ({"2027年": GOOD}, 'key "2027年" is not a 4-digit year'),
        ({"２０２７": GOOD}, 'key "２０２７" is not a 4-digit year'),  # full-width digits
        (
            '{"2027": {"holidays": ["2027-01-01"], "workdays": []}, "2027": {}}',
            'key "2027" appears twice',
        ),
        (
            {"2027": ["2027-01-01"]},
            '2027: must be an object of "holidays" and "workdays", not a list',
        ),
        ({"2027": {"holidays": ["2027-01-01"]}}, '2027: missing "workdays"'),
        ({"2027": {}}, '2027: missing "holidays", "workdays"'),
        (
            {"2027": {**GOOD, "holiday": ["2027-10-01"]}},
            '2027: unknown key "holiday"; only "holidays" and "workdays"',
        ),
        (
            {"2027": {**GOOD, "holidays": "2027-01-01"}},
            '2027: "holidays" must be a list of dates, not a string',
        ),
        (
            {"2027": {**GOOD, "workdays": None}},
            '2027: "workdays" must be a list of dates, not null',
        ),
        (
            {"2027": {**GOOD, "holidays": ["2027-2-10"]}},
            '2027: "holidays": "2027-2-10" is not a date in YYYY-MM-DD form',
        ),
        (
            {"2027": {**GOOD, "holidays": ["20270210"]}},
            '2027: "holidays": "20270210" is not a date in YYYY-MM-DD form',
        ),
        (
            {"2027": {**GOOD, "holidays": ["2027-02-30"]}},
            '2027: "holidays": "2027-02-30" is not a date in YYYY-MM-DD form',
        ),
        (
            {"2027": {**GOOD, "workdays": [20270220]}},
            '2027: "workdays": 20270220 is not a date in YYYY-MM-DD form',
        ),
        (
            {"2027": {**GOOD, "holidays": ["2027-01-01", "2028-01-01"]}},
            '2027: "holidays": 2028-01-01 is not in 2027',
        ),
        (
            {"2027": {**GOOD, "workdays": ["2026-12-26"]}},
            '2027: "workdays": 2026-12-26 is not in 2027',
        ),
        (
            {"2027": {**GOOD, "workdays": ["2027-02-13"]}},
            "2027: 2027-02-13 is both a holiday and a workday",
        ),
        (
            {"2027": {**GOOD, "workdays": ["2027-02-20", "2027-02-17"]}},
            '2027: "workdays": 2027-02-17 is a Wednesday; make-up working days (调休) are '
            "Saturdays or Sundays",
        ),
        ({"2027": {"holidays": [], "workdays": []}}, '2027: "holidays" is empty'),
    ],
)
def test_a_wrong_file_is_refused_naming_the_file_and_the_problem(
    tmp_path: Path, content: object, problem: str
) -> None:
    # Given a notices file with one mistake (or none at all)
    path = tmp_path / "holidays.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    elif content is not None:
        write_notices(tmp_path, content)
    # When loading it
    with pytest.raises(HolidayFileError) as caught:
        load_holiday_notices(path)
    # Then the error names the file and says what is wrong, and is a ValueError
    assert str(caught.value).startswith(f"holiday notices file {path}: ")
    assert problem in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_a_wrong_file_fails_building_the_calendar_from_settings(tmp_path: Path) -> None:
    # Given settings pointing at a file with a weekday listed as a make-up working day
    path = write_notices(tmp_path, {"2027": {**GOOD, "workdays": ["2027-02-17"]}})
    settings = load_settings(holidays_file=path)
    # When / Then the calendar (and so the worker) refuses to start
    with pytest.raises(HolidayFileError, match="2027-02-17 is a Wednesday"):
        WorkdayCalendar.from_settings(settings)


@pytest.mark.parametrize(("notices", "expected"), [(None, 35.0), ({"2027": GOOD}, 400.0)])
def test_the_days_left_gauge_counts_from_the_settable_clock(
    tmp_path: Path, notices: object, expected: float
) -> None:
    # Given the clock pinned at 2026-11-26 in Shanghai, with or without a 2027 notice
    path = write_notices(tmp_path, notices) if notices else None
    settings = load_settings(now="2026-11-26T10:00:00+08:00", holidays_file=path)
    registry = CollectorRegistry()
    # When the gauge is registered and scraped
    register_workday_gauges(settings, registry)
    value = registry.get_sample_value("govnotify_holiday_data_days_left")
    # Then it is the days to the last covered day (2026-12-31, or 2027-12-31 with the file)
    assert value == expected
