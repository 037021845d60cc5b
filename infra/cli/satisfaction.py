"""``govnotify satisfaction [--by D] [--window W]``: live rates from the running stream."""

from __future__ import annotations

import argparse
import sys

from infra.cli import exits
from infra.cli.output import add_json_flag, print_json, print_table
from infra.metrics import parse_samples, scrape_text
from infra.settings import get_settings
from streams.satisfaction import current_rates

__all__ = ["cmd_satisfaction", "register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("satisfaction", help="live satisfaction rates from the running stream")
    p.add_argument("--by", choices=["department", "service_point"], default="department")
    p.add_argument("--window", choices=["day", "short"], default="day")
    add_json_flag(p)
    p.set_defaults(func=cmd_satisfaction)


def cmd_satisfaction(args: argparse.Namespace) -> int:
    s = get_settings()
    try:
        samples = parse_samples(scrape_text(s.stream_metrics_port, s.metrics_host))
    except OSError:
        print(
            f"govnotify: the stream is not running (no metrics on :{s.stream_metrics_port})",
            file=sys.stderr,
        )
        return exits.UNREACHABLE
    rates = current_rates(samples, window=args.window, dimension=args.by)
    if args.json:
        print_json(
            {
                "by": args.by,
                "window": args.window,
                "rates": [
                    {args.by: r.key, "ratings": r.ratings, "satisfied": r.rate} for r in rates
                ],
            }
        )
        return exits.OK
    print_table(
        f"satisfaction by {args.by}, current {args.window} window",
        [args.by.replace("_", " "), "ratings", "satisfied"],
        [
            [r.key, r.ratings, f"{r.rate:.2%}" if r.rate is not None and r.ratings else "-"]
            for r in rates
        ],
    )
    return exits.OK
