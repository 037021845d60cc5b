"""``govnotify``: one command, a subcommand per part, each run as it would run in production.

The roof of the layout (STYLE.md, "Floors"): every command group is a module of this package
with a ``register(sub)`` that adds its subcommands, named with them in :data:`COMMAND_GROUPS`
(a command imports its own group only), and each command calls functions of the package that
owns the data. Nothing imports this package.

Exit codes are the same for the same outcome in every command (:mod:`infra.cli.exits`): 0 ok,
1 partial, 2 usage or configuration, 3 a service unreachable, 4 not found. The errors any
command may meet (a service down, a database without its tables, a bad setting) are turned
into one line on stderr here, once, by exception type, instead of a traceback.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import importlib.metadata
import os
import sys
from typing import NoReturn

import pika.exceptions
import sqlalchemy.exc
from sqlalchemy.engine import make_url

from infra.cli import exits
from infra.clock import install_clock
from infra.logging import mask_pii
from infra.services import ServiceError
from infra.settings import SettingsError, get_settings

__all__ = ["COMMAND_GROUPS", "build_parser", "command_of", "main", "version"]

#: Every command group, in the order ``govnotify --help`` lists their subcommands: its module
#: under ``infra.cli`` and the commands its ``register(sub)`` adds (a test holds the two to each
#: other). A command imports its own group only: each group pulls in the packages it runs
#: (the relay, the stream, the api's server, the notifiers …); a one-shot command starts
#: ~0.3 s sooner for it, a component 0.05-0.1 s (its own modules need most of the same).
COMMAND_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("services", ("services",)),
    ("db", ("db", "schemas")),
    ("publish", ("publish",)),
    ("components", ("relay", "stream", "worker", "sweep", "scheduler", "api")),
    ("renewals", ("renewals",)),
    ("journal", ("journal",)),
    ("opt_out", ("opt-out",)),
    ("rectification", ("rectification",)),
    ("call_list", ("call-list",)),
    ("workdays", ("workdays",)),
    ("green_channel", ("green-channel",)),
    ("satisfaction", ("satisfaction",)),
    ("dead_letters", ("dead-letters",)),
    ("trace", ("trace",)),
    ("retention", ("retention",)),
    ("suppression", ("suppression",)),
    ("sources", ("sources",)),
    ("top", ("top",)),
    ("demo", ("demo",)),
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


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``govnotify`` parser: with ``command``, only the group that holds it is imported and
    registered (the same parse for that command's arguments); without, or for a command no
    group holds, every group (``--help`` lists them all; a typo gets the full choice)."""
    parser = argparse.ArgumentParser(
        prog="govnotify",
        description="Event-driven notifications for government service centres.",
        epilog=EXIT_CODES_HELP,
    )
    parser.add_argument("--version", action="version", version=f"govnotify {version()}")
    _global_options(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    holding = [name for name, commands in COMMAND_GROUPS if command in commands]
    for name in holding or [name for name, _commands in COMMAND_GROUPS]:
        # lazy: a registry resolved on dispatch (see COMMAND_GROUPS), not a cycle dodged:
        # nothing below the roof imports infra.cli.
        importlib.import_module(f"infra.cli.{name}").register(sub)
    return parser


def _global_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--today",
        type=dt.date.fromisoformat,
        default=None,
        help="run as of this local date (YYYY-MM-DD); sets GOVNOTIFY_TODAY",
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING"])


class _QuietParser(argparse.ArgumentParser):
    """Raises ArgumentError where a parser would print usage and exit."""

    def error(self, message: str) -> NoReturn:
        raise argparse.ArgumentError(None, message)


def command_of(argv: list[str]) -> str | None:
    """The command ``argv`` names after the global options, or None (``--help``, none given,
    or options this cannot read: the full parser then says what is wrong)."""
    reader = _QuietParser(add_help=False)
    _global_options(reader)
    reader.add_argument("--version", action="store_true")
    try:
        _known, rest = reader.parse_known_args(argv)
    except argparse.ArgumentError:
        return None
    return rest[0] if rest and not rest[0].startswith("-") else None


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
    if argv is None:
        argv = sys.argv[1:]
    args = build_parser(command_of(argv)).parse_args(argv)
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
