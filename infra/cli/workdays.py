"""``govnotify workdays [--json]``: where the holiday data comes from, and until when.

Exits 2 with the file's problem when ``GOVNOTIFY_HOLIDAYS_FILE`` is wrong, as the workers would
refuse to start with it.
"""

from __future__ import annotations

import argparse
import json
import sys

from infra.clock import Clock
from infra.settings import get_settings
from infra.workdays import (
    PACKAGE_FIRST_YEAR,
    PACKAGE_LAST_YEAR,
    PACKAGE_VERSION,
    HolidayFileError,
    WorkdayCalendar,
)

__all__ = ["cmd_workdays", "register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("workdays", help="where the holiday data for deadlines comes from, to when")
    p.add_argument("--json", action="store_true", help="print it as JSON")
    p.set_defaults(func=cmd_workdays)


def cmd_workdays(args: argparse.Namespace) -> int:
    settings = get_settings()
    try:
        calendar = WorkdayCalendar.from_settings(settings)
    except HolidayFileError as exc:
        print(f"govnotify: {exc}", file=sys.stderr)
        return 2
    today = Clock.from_settings(settings).today()
    until = calendar.covered_until()
    days_left = (until - today).days
    file_years = sorted(calendar.notices)
    if args.json:
        report = {
            "package": {
                "name": "chinesecalendar",
                "version": PACKAGE_VERSION,
                "first_year": PACKAGE_FIRST_YEAR,
                "last_year": PACKAGE_LAST_YEAR,
            },
            "file": (
                {"path": str(settings.holidays_file), "years": file_years}
                if settings.holidays_file
                else None
            ),
            "covered_until": until.isoformat(),
            "today": today.isoformat(),
            "days_left": days_left,
        }
        print(json.dumps(report, ensure_ascii=False, indent=2))
        return 0
    package = f"chinesecalendar {PACKAGE_VERSION}, {PACKAGE_FIRST_YEAR}–{PACKAGE_LAST_YEAR}"
    if settings.holidays_file:
        years = ", ".join(map(str, file_years)) or "no year"
        file = f"{settings.holidays_file}: {years}"
    else:
        file = "none (GOVNOTIFY_HOLIDAYS_FILE is not set)"
    print("holiday data for working-day deadlines:")
    print(f"  {'package':<13} {package}")
    print(f"  {'file':<13} {file}")
    print(f"  {'covered until':<13} {until}")
    print(f"  {'days left':<13} {days_left} (today is {today})")
    if days_left < 31:
        # The same threshold as the GovnotifyHolidayDataRunningOut alert.
        print(
            f"after {until}, deadlines count Monday to Friday only: upgrade chinesecalendar or "
            "add next year's notice to GOVNOTIFY_HOLIDAYS_FILE (docs/runbooks.md)"
        )
    return 0
