"""``govnotify publish FILE``: events from a JSON-lines file, with publisher confirms."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from infra.settings import get_settings
from producers.rabbitmq import Publisher

__all__ = ["cmd_publish", "register"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("publish", help="publish events from a JSON-lines file, with confirms")
    p.add_argument("file", help="JSON-lines file, one event envelope per line ('-' for stdin)")
    p.add_argument(
        "--no-validate",
        action="store_true",
        help="send lines as they are (the relay then rejects bad ones)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="also list accepted lines")
    p.set_defaults(func=cmd_publish)


def cmd_publish(args: argparse.Namespace) -> int:
    s = get_settings()
    source = sys.stdin.buffer if args.file == "-" else Path(args.file).open("rb")
    with (
        source,
        Publisher.from_settings(s) as p,
    ):
        results = p.publish_lines(source, validate=not args.no_validate)
    rejected = [r for r in results if not r.accepted]
    for r in results:
        if r.accepted:
            if args.verbose:
                print(f"line {r.index}: accepted {r.event_id or ''}".rstrip())
        else:
            print(f"line {r.index}: rejected {r.reason}: {r.detail}")
    print(f"{len(results) - len(rejected)} accepted, {len(rejected)} rejected")
    return 1 if rejected else 0
