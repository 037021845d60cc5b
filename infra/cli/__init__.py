"""``govnotify``: one command, a subcommand per part, each run as it would run in production.

The roof of the layout (STYLE.md, "Floors"): every command group is a module of this package
with a ``register(sub)`` that adds its subcommands, and each command calls functions of the
package that owns the data. Nothing imports this package.

Exit codes are the same for the same outcome in every command (:mod:`infra.cli.exits`): 0 ok,
1 partial, 2 usage or configuration, 3 a service unreachable, 4 not found. The errors any
command may meet (a service down, a database without its tables, a bad setting) are turned
into one line on stderr here, once, by exception type, instead of a traceback.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import os
import sys

import pika.exceptions
import sqlalchemy.exc
from sqlalchemy.engine import make_url

from infra.cli import (
    call_list,
    components,
    db,
    dead_letters,
    demo,
    exits,
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
    trace,
    workdays,
)
from infra.clock import install_clock
from infra.logging import mask_pii
from infra.services import ServiceError
from infra.settings import SettingsError, get_settings

__all__ = ["COMMAND_GROUPS", "build_parser", "main", "version"]

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
    trace,
    retention,
    suppression,
    sources,
    top,
    demo,
)


#: What ``govnotify --help`` says of the exit codes (infra.cli.exits).
EXIT_CODES_HELP = (
    "exit codes: 0 ok, 1 partial, 2 usage or configuration, 3 a service unreachable or down, "
    "4 not found"
)

#: How a database without govnotify's tables answers: PostgreSQL, then SQLite.
_MISSING_TABLE = ("UndefinedTable", "no such table")


def version() -> str:
    """The installed distribution's version (``unknown`` when run from an uninstalled tree)."""
    try:
        return importlib.metadata.version("govnotify")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="govnotify",
        description="Event-driven notifications for government service centres.",
        epilog=EXIT_CODES_HELP,
    )
    parser.add_argument("--version", action="version", version=f"govnotify {version()}")
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


def _fail(message: str, code: int) -> int:
    print(f"govnotify: {message}", file=sys.stderr)
    return code


def _database_where() -> str:
    """The configured database, password hidden, for an error message."""
    try:
        url = make_url(get_settings().resolved_database_url)
    except Exception:  # the message is about another failure: never fail in it
        return "the database"
    if url.drivername.startswith("sqlite"):
        return f"SQLite database {url.database}"
    return f"PostgreSQL at {url.host or 'localhost'}:{url.port or 5432}/{url.database or ''}"


def _amqp_where() -> str:
    try:
        parts = pika.URLParameters(get_settings().amqp_url)
    except Exception:
        return "RabbitMQ"
    return f"RabbitMQ at {parts.host}:{parts.port}"


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return mask_pii(text[0]) if text else type(exc).__name__


def _missing_table(exc: sqlalchemy.exc.DBAPIError) -> bool:
    orig = exc.orig
    return type(orig).__name__ == _MISSING_TABLE[0] or _MISSING_TABLE[1] in str(orig)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.today:
        os.environ["GOVNOTIFY_TODAY"] = args.today.isoformat()
        get_settings.cache_clear()
    try:
        # One clock for every decision and every row stamp this process makes.
        install_clock(get_settings())
        return int(args.func(args) or 0)
    except exits.CommandError as exc:
        return _fail(str(exc), exc.code)
    except SettingsError as exc:
        return _fail(str(exc), exits.USAGE)
    except KeyboardInterrupt:
        return exits.INTERRUPTED
    except BrokenPipeError:
        # Output piped into `head` and closed: not an error of ours. Point stdout at devnull
        # so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return exits.OK
    except ServiceError as exc:
        return _fail(str(exc), exits.UNREACHABLE)
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.ProgrammingError) as exc:
        # SQLite reports a missing table as an OperationalError, PostgreSQL as a
        # ProgrammingError (UndefinedTable): both mean "not migrated", a configuration step.
        if _missing_table(exc):
            return _fail(
                f"{_database_where()} has no govnotify tables: run `govnotify db upgrade`",
                exits.USAGE,
            )
        if isinstance(exc, sqlalchemy.exc.OperationalError):
            return _fail(
                f"{_database_where()} is unreachable: {_first_line(exc)}", exits.UNREACHABLE
            )
        raise
    except pika.exceptions.AMQPConnectionError as exc:
        detail = _first_line(exc) if str(exc) else type(exc).__name__
        return _fail(f"{_amqp_where()} is unreachable: {detail}", exits.UNREACHABLE)
