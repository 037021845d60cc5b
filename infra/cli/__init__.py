"""``govnotify``: one command, a subcommand per part, each run as it would run in production.

The roof of the layout (STYLE.md, "Floors"): every command group is a module of this package
with a ``register(sub)`` that adds its subcommands, and each command calls functions of the
package that owns the data. Nothing imports this package.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys

from infra.cli import (
    call_list,
    components,
    db,
    dead_letters,
    demo,
    green_channel,
    journal,
    opt_out,
    publish,
    rectification,
    renewals,
    retention,
    satisfaction,
    services,
    sources,
    suppression,
    top,
    workdays,
)
from infra.clock import install_clock
from infra.services import ServiceError
from infra.settings import SettingsError, get_settings

__all__ = ["COMMAND_GROUPS", "build_parser", "main"]

#: Every command group, in the order ``govnotify --help`` lists their subcommands.
COMMAND_GROUPS = (
    services,
    db,
    publish,
    components,
    renewals,
    journal,
    opt_out,
    rectification,
    call_list,
    workdays,
    green_channel,
    satisfaction,
    dead_letters,
    retention,
    suppression,
    sources,
    top,
    demo,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="govnotify",
        description="Event-driven notifications for government service centres.",
    )
    parser.add_argument(
        "--today",
        type=dt.date.fromisoformat,
        default=None,
        help="run as of this local date (YYYY-MM-DD); sets GOVNOTIFY_TODAY",
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in COMMAND_GROUPS:
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.today:
        os.environ["GOVNOTIFY_TODAY"] = args.today.isoformat()
        get_settings.cache_clear()
    try:
        # One clock for every decision and every row stamp this process makes.
        install_clock(get_settings())
        return int(args.func(args) or 0)
    except SettingsError as exc:
        print(f"govnotify: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # Output piped into `head` and closed: not an error of ours. Point stdout at devnull
        # so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except ServiceError as exc:
        print(f"govnotify: {exc}", file=sys.stderr)
        return 3
