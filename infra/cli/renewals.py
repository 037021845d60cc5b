"""``govnotify renewals scan [--since DAY]``: the daily renewal scan, now."""

from __future__ import annotations

import argparse
import datetime as dt
import time

from infra.cli.options import Verbs
from infra.clock import Clock
from infra.settings import get_settings

__all__ = ["cmd_renewals", "register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("renewals", help="run the daily renewal scan of the license registry now")
    scan = Verbs(p).add(
        "scan",
        cmd_renewals,
        "the daily scan, now: due reminders to the queues (keyed: never twice)",
    )
    scan.add_argument(
        "--since",
        type=dt.date.fromisoformat,
        default=None,
        help="scan every reminder date from this day on, whatever the last scan did "
        "(reminders already sent are not sent again)",
    )


def cmd_renewals(args: argparse.Namespace) -> int:
    # Imported once main() has applied --today, inside its SettingsError handling (exit 2):
    # lazy: workers.broker reads the settings as it is imported.
    from workers.reminders import renewal_scan

    started = time.monotonic()
    handed = renewal_scan(Clock.from_settings(get_settings()), since=args.since)
    print(f"{handed} reminders handed to the queues in {time.monotonic() - started:.2f}s")
    return 0
