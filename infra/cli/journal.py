"""``govnotify journal redrive [--older-than-minutes N] [--dry-run]`` (see the runbook)."""

from __future__ import annotations

import argparse
import datetime as dt

from infra import audit
from infra.cli import exits
from infra.cli.options import Verbs, json_option, operator_option
from infra.cli.output import print_json
from infra.settings import get_settings

__all__ = ["cmd_journal", "register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "journal", help="re-drive accepted events the stream has not applied (see the runbook)"
    )
    redrive = Verbs(p).add(
        "redrive",
        cmd_journal,
        "write again into Kafka the events relayed long ago and never applied",
        json_option(),
        operator_option(),
    )
    redrive.add_argument(
        "--older-than-minutes",
        type=float,
        default=15.0,
        help="only events relayed longer ago than this (default 15)",
    )
    redrive.add_argument("--dry-run", action="store_true", help="count them, send nothing")


def cmd_journal(args: argparse.Namespace) -> int:
    # Else every component's process would export the relay's epoch metrics, as zeros:
    # lazy: importing producers.epochs registers them (see infra.cli.components).
    from producers.epochs import redrive_stuck

    older = dt.timedelta(minutes=args.older_than_minutes)
    settings = get_settings()
    count = redrive_stuck(settings, older, dry_run=args.dry_run)
    if not args.dry_run:
        audit.record(
            settings,
            audit.operator_name(args.operator),
            "journal.redrive",
            f"older than {args.older_than_minutes:g} min",
            {"redriven": count},
        )
    if args.json:
        print_json(
            {
                "older_than_minutes": args.older_than_minutes,
                "dry_run": args.dry_run,
                "events": count,
            }
        )
        return exits.OK
    verb = "would be re-driven" if args.dry_run else "re-driven into Kafka"
    print(
        f"{count} events relayed over {args.older_than_minutes:g} min ago and not applied: {verb}"
    )
    return exits.OK
