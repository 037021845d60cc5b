"""``govnotify green-channel``: response times per service point, from the records."""

from __future__ import annotations

import argparse

from infra.cli import exits
from infra.cli.output import add_json_flag, print_json, print_table
from infra.settings import get_settings

__all__ = ["cmd_green_channel", "register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "green-channel", help="green-channel response times per service point (from the records)"
    )
    add_json_flag(p)
    p.set_defaults(func=cmd_green_channel)


def _minutes(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} min"


def cmd_green_channel(args: argparse.Namespace) -> int:
    # Imported once main() has applied --today, inside its SettingsError handling (exit 2):
    # lazy: workers.broker reads the settings as it is imported.
    from workers.green_channel import response_times

    points = response_times(get_settings())
    if args.json:
        print_json(
            {
                "service_points": [
                    {
                        "service_point": point.service_point,
                        "alerts": point.alerts,
                        "acknowledged": point.acknowledged,
                        "escalated": point.escalated,
                        "median_minutes": point.median_minutes,
                        "slowest_minutes": point.slowest_minutes,
                    }
                    for point in points
                ]
            }
        )
        return exits.OK
    print_table(
        "green-channel alerts",
        ["service point", "alerts", "acknowledged", "escalated", "median response", "slowest"],
        [
            [
                point.service_point,
                point.alerts,
                point.acknowledged,
                point.escalated,
                _minutes(point.median_minutes),
                _minutes(point.slowest_minutes),
            ]
            for point in points
        ],
    )
    return exits.OK
