"""``govnotify``: one command, a subcommand per part, each run as it would run in production."""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import shutil
import signal
import sys
import threading
from pathlib import Path

__all__ = ["main"]


def _settings():  # type: ignore[no-untyped-def]
    from infra.settings import get_settings

    return get_settings()


def _print_table(title: str, headers: list[str], rows: list[list[object]]) -> None:
    """A plain table on stdout; rich measures Chinese characters as two columns wide."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
    for i, header in enumerate(headers):
        table.add_column(header, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*(str(cell) for cell in row))
    Console(soft_wrap=True, width=120).print(table)


def _print_dict(values: dict[str, str]) -> None:
    for key, value in values.items():
        print(f"  {key:<10} {value}")


def cmd_services(args: argparse.Namespace) -> int:
    from infra import services

    action = {
        "up": services.services_up,
        "down": services.services_down,
        "status": services.services_status,
    }[args.action]
    print(f"services {args.action}:")
    _print_dict(action(_settings()))
    return 0


def cmd_db(args: argparse.Namespace) -> int:
    from infra.db import upgrade

    upgrade(_settings())
    print("database migrated to head")
    return 0


def cmd_schemas(args: argparse.Namespace) -> int:
    from schemas.jsonschema_gen import write_all

    for path in write_all():
        print(f"wrote {path}")
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    from producers.rabbitmq import Publisher

    s = _settings()
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


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def cmd_relay(args: argparse.Namespace) -> int:
    from infra.health import component_checks
    from infra.logging import configure_logging
    from infra.metrics import serve_metrics
    from producers.relay import Relay

    s = _settings()
    configure_logging(args.log_level, "relay")
    serve_metrics(s.relay_metrics_port, s.metrics_host, ready_checks=component_checks(s, "relay"))
    Relay(s).run(_stop_on_signals())
    return 0


def cmd_stream(args: argparse.Namespace) -> int:
    import faust

    from infra.health import component_checks
    from infra.logging import install_masking
    from infra.metrics import serve_metrics
    from streams.app import create_app, ready_check

    class Worker(faust.Worker):
        def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
            super().on_setup_root_logger(logger, level)
            # faust installs its own handlers; mask personal data on every one of them.
            install_masking(logger)

    s = _settings()
    app = create_app(s)
    checks = {**component_checks(s, "stream"), "stream": ready_check(app)}
    serve_metrics(s.stream_metrics_port, s.metrics_host, ready_checks=checks)
    Worker(app, loglevel=args.log_level, redirect_stdouts=False).execute_from_commandline()
    return 0


def worker_env(settings, base: dict[str, str] | None = None) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """Environment for dramatiq worker processes: one shared, freshly cleared metrics folder."""
    env = dict(os.environ if base is None else base)
    prom_dir = (settings.data_dir / "prometheus" / settings.namespace).resolve()
    shutil.rmtree(prom_dir, ignore_errors=True)
    prom_dir.mkdir(parents=True, exist_ok=True)
    env.update(
        PROMETHEUS_MULTIPROC_DIR=str(prom_dir),
        dramatiq_prom_db=str(prom_dir),
        dramatiq_prom_host=settings.metrics_host,
        dramatiq_prom_port=str(settings.worker_metrics_port),
    )
    return env


def cmd_worker(args: argparse.Namespace) -> int:
    s = _settings()
    argv = [
        sys.executable,
        "-m",
        "dramatiq",
        "workers.actors",
        "--processes",
        str(args.processes or s.worker_processes),
        "--threads",
        str(args.threads or s.worker_threads),
    ]
    if args.queues:
        argv += ["--queues", *(s.queue(q) for q in args.queues)]
    # exec: the worker keeps this pid, so whoever started it can stop it by pid.
    os.execve(sys.executable, argv, worker_env(s))  # noqa: S606  (argv, no shell)
    return 0  # pragma: no cover


def cmd_renewals(args: argparse.Namespace) -> int:
    """``govnotify renewals scan [--since DAY]``: the daily renewal scan, now."""
    import time

    from infra.clock import Clock
    from workers.reminders import renewal_scan

    started = time.monotonic()
    handed = renewal_scan(Clock.from_settings(_settings()), since=args.since)
    print(f"{handed} reminders handed to the queues in {time.monotonic() - started:.2f}s")
    return 0


def cmd_journal(args: argparse.Namespace) -> int:
    """``govnotify journal redrive [--older-than-minutes N] [--dry-run]``."""
    from producers.epochs import redrive_stuck

    older = dt.timedelta(minutes=args.older_than_minutes)
    count = redrive_stuck(_settings(), older, dry_run=args.dry_run)
    verb = "would be re-driven" if args.dry_run else "re-driven into Kafka"
    print(
        f"{count} events relayed over {args.older_than_minutes:g} min ago and not applied: {verb}"
    )
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from workers.sweep import sweep

    _print_dict({k: str(v) for k, v in sweep(_settings()).items()})
    return 0


def cmd_scheduler(args: argparse.Namespace) -> int:
    from infra.dbgauges import register_database_gauges
    from infra.health import component_checks
    from infra.logging import configure_logging
    from infra.metrics import serve_metrics
    from infra.workday_gauges import register_workday_gauges
    from workers.scheduler import run_scheduler

    s = _settings()
    configure_logging(args.log_level, "scheduler")
    # The scheduler is the one singleton with the database at hand: it serves the gauges read
    # from the tables (oldest pending, open tickets, unacknowledged alerts, open dead letters),
    # and how long the holiday data lasts; both before /metrics answers, so no scrape misses them.
    register_database_gauges(s)
    register_workday_gauges(s)
    serve_metrics(
        s.scheduler_metrics_port, s.metrics_host, ready_checks=component_checks(s, "scheduler")
    )
    run_scheduler(s, _stop_on_signals())
    return 0


def cmd_opt_out(args: argparse.Namespace) -> int:
    from infra.logging import mask_mobile
    from workers import optouts

    s = _settings()
    try:
        if args.action == "add":
            n = optouts.record_opt_out(s, args.mobile, args.category)
            print(f"{mask_mobile(args.mobile)}: {n} categor{'y' if n == 1 else 'ies'} refused")
        elif args.action == "remove":
            n = optouts.lift_opt_out(s, args.mobile, args.category)
            print(f"{mask_mobile(args.mobile)}: {n} refusal(s) lifted")
        else:
            cats = optouts.list_opt_outs(s, args.mobile)
            print(f"{mask_mobile(args.mobile)}: " + (", ".join(sorted(cats)) or "no opt-outs"))
    except ValueError as exc:
        print(f"govnotify: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_rectification(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from infra.db import session
    from schemas.models import RectificationTicket

    s = _settings()
    if args.action == "close":
        if not args.ticket or not args.outcome:
            print("govnotify: close needs TICKET and --outcome", file=sys.stderr)
            return 2
        from infra.clock import Clock
        from workers import actors  # noqa: F401  (declares the actors on the broker)
        from workers.rectification import close_rectification

        with session(s) as db:
            if db.get(RectificationTicket, args.ticket) is None:
                print(f"govnotify: no rectification ticket {args.ticket}", file=sys.stderr)
                return 1
        close_rectification.send(
            {
                "ticket_id": args.ticket,
                "outcome": args.outcome,
                "closed_at": Clock.from_settings(s).utcnow().isoformat(),
            }
        )
        print(f"ticket {args.ticket}: close requested")
        return 0
    with session(s) as db:
        query = select(RectificationTicket).order_by(RectificationTicket.deadline_at)
        if args.department:
            query = query.where(RectificationTicket.department == args.department)
        tickets = db.execute(query).scalars().all()
    rows: list[list[object]] = []
    for t in tickets:
        state = t.status + (" (overdue)" if t.overdue_at and t.status == "open" else "")
        deadline = t.deadline_at.astimezone(s.tz)
        rows.append([t.id, t.department, t.rating, f"{deadline:%Y-%m-%d %H:%M}", state])
    _print_table(
        "rectification tickets",
        ["ticket", "department", "rating", "deadline (local)", "status"],
        rows,
    )
    return 0


def cmd_green_channel(args: argparse.Namespace) -> int:
    from statistics import median

    from sqlalchemy import select

    from infra.db import session
    from schemas.models import StaffAlert
    from workers.ledger import as_utc

    with session(_settings()) as db:
        alerts = db.execute(select(StaffAlert)).scalars().all()
    by_point: dict[str, list[StaffAlert]] = {}
    for alert in alerts:
        by_point.setdefault(alert.service_point_id, []).append(alert)
    rows: list[list[object]] = []
    for point, here in sorted(by_point.items()):
        waits = [
            (as_utc(a.acknowledged_at) - as_utc(a.event_at)).total_seconds() / 60
            for a in here
            if a.acknowledged_at and a.event_at
        ]
        escalated = sum(a.escalated_at is not None for a in here)
        rows.append(
            [
                point,
                len(here),
                len(waits),
                escalated,
                f"{median(waits):.1f} min" if waits else "-",
                f"{max(waits):.1f} min" if waits else "-",
            ]
        )
    _print_table(
        "green-channel alerts",
        ["service point", "alerts", "acknowledged", "escalated", "median response", "slowest"],
        rows,
    )
    return 0


def cmd_satisfaction(args: argparse.Namespace) -> int:
    from infra.metrics import scrape

    s = _settings()
    try:
        samples = scrape(s.stream_metrics_port, s.metrics_host)
    except OSError:
        print(
            f"govnotify: the stream is not running (no metrics on :{s.stream_metrics_port})",
            file=sys.stderr,
        )
        return 1
    rows: dict[tuple[str, str], dict[str, float]] = {}
    for key, value in samples.items():
        name, _, labels = key.partition("{")
        if name not in ("govnotify_satisfaction_rate", "govnotify_satisfaction_ratings"):
            continue
        parts = dict(p.split("=", 1) for p in labels.rstrip("}").split(","))
        parts = {k: v.strip('"') for k, v in parts.items()}
        if parts["window"] != args.window or parts["dimension"] != args.by:
            continue
        rows.setdefault((parts["dimension"], parts["key"]), {})[name] = value
    table: list[list[object]] = []
    for (_dim, key), values in sorted(rows.items()):
        n = int(values.get("govnotify_satisfaction_ratings", 0))
        rate = values.get("govnotify_satisfaction_rate")
        table.append([key, n, f"{rate:.2%}" if rate is not None and n else "-"])
    _print_table(
        f"satisfaction by {args.by}, current {args.window} window",
        [args.by.replace("_", " "), "ratings", "satisfied"],
        table,
    )
    return 0


def _delegate(module: str) -> object:
    """A handler that imports ``module`` on use and calls its ``cli(args)``."""

    def handler(args: argparse.Namespace) -> int:
        import importlib

        return int(importlib.import_module(module).cli(args) or 0)

    return handler


def cmd_suppression(args: argparse.Namespace) -> int:
    from infra.db import session
    from infra.logging import mask_mobile
    from schemas.phone import normalize_mobile
    from workers import suppression

    s = _settings()
    mobile = normalize_mobile(args.mobile) if args.mobile else None
    with session(s) as db:
        if args.action == "lift":
            if not mobile:
                print("govnotify: suppression lift needs a mobile number", file=sys.stderr)
                return 2
            n = suppression.lift(db, recipient=mobile, category=args.category, by="cli")
            print(f"{mask_mobile(mobile)}: {n} suppression(s) lifted")
            return 0
        rows = suppression.active(db, mobile)
    _print_table(
        f"active suppressions ({len(rows)})",
        ["number", "category", "reason", "provider", "code", "since"],
        [
            [
                mask_mobile(r.recipient),
                r.category,
                r.reason,
                r.provider or "",
                r.error_code or "",
                f"{r.created_at.astimezone(s.tz):%Y-%m-%d %H:%M}",
            ]
            for r in rows
        ],
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from infra.demo import run_demo

    keep = _stop_on_signals() if args.keep_running else None
    return run_demo(_settings(), licenses=args.licenses, cases=args.cases, keep_running=keep)


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

    p = sub.add_parser("services", help="start, stop or check RabbitMQ, PostgreSQL and Kafka")
    p.add_argument("action", choices=["up", "down", "status"])
    p.set_defaults(func=cmd_services)

    p = sub.add_parser("db", help="apply the database migrations")
    p.add_argument("action", choices=["upgrade"])
    p.set_defaults(func=cmd_db)

    p = sub.add_parser("schemas", help="regenerate the JSON Schema files of every event")
    p.add_argument("action", choices=["generate"])
    p.set_defaults(func=cmd_schemas)

    p = sub.add_parser("publish", help="publish events from a JSON-lines file, with confirms")
    p.add_argument("file", help="JSON-lines file, one event envelope per line ('-' for stdin)")
    p.add_argument(
        "--no-validate",
        action="store_true",
        help="send lines as they are (the relay then rejects bad ones)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="also list accepted lines")
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser(
        "relay", help="move events from RabbitMQ into Kafka, dead-lettering bad ones"
    )
    p.set_defaults(func=cmd_relay)

    p = sub.add_parser("stream", help="run the Faust stream rules (cases, satisfaction windows)")
    p.set_defaults(func=cmd_stream)

    p = sub.add_parser("worker", help="run the dramatiq workers that deliver notifications")
    p.add_argument("--processes", type=int, default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument(
        "--queues",
        nargs="+",
        default=None,
        metavar="NAME",
        help="only these work queues (registry, reminders, delivery); default all",
    )
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("renewals", help="run the daily renewal scan of the license registry now")
    p.add_argument("action", choices=["scan"])
    p.add_argument(
        "--since",
        type=dt.date.fromisoformat,
        default=None,
        help="scan every reminder date from this day on, whatever the last scan did "
        "(reminders already sent are not sent again)",
    )
    p.set_defaults(func=cmd_renewals)

    p = sub.add_parser(
        "journal", help="re-drive accepted events the stream has not applied (see the runbook)"
    )
    p.add_argument("action", choices=["redrive"])
    p.add_argument(
        "--older-than-minutes",
        type=float,
        default=15.0,
        help="only events relayed longer ago than this (default 15)",
    )
    p.add_argument("--dry-run", action="store_true", help="count them, send nothing")
    p.set_defaults(func=cmd_journal)

    p = sub.add_parser("sweep", help="re-queue or resolve notifications stuck in created/sending")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("scheduler", help="hand jobs that are due (surveys, escalations) to queues")
    p.set_defaults(func=cmd_scheduler)

    p = sub.add_parser("opt-out", help="record, lift or list a citizen's refusal of a category")
    p.add_argument("action", choices=["add", "remove", "list"])
    p.add_argument("mobile", help="mainland mobile number")
    p.add_argument(
        "category",
        nargs="?",
        default="all",
        help="reminders, surveys, callbacks, rectification or all (default)",
    )
    p.set_defaults(func=cmd_opt_out)

    p = sub.add_parser("rectification", help="list rectification tickets or close one")
    p.add_argument("action", choices=["list", "close"])
    p.add_argument("ticket", nargs="?", help="ticket id (for close)")
    p.add_argument("--outcome", help="what was done (sent to a real-name citizen)")
    p.add_argument("--department", help="only this department's tickets (for list)")
    p.set_defaults(func=cmd_rectification)

    p = sub.add_parser("call-list", help="renewal calls staff owe: list them, or record one done")
    p.add_argument("action", choices=["list", "done"])
    p.add_argument("entry", nargs="?", help="entry id or unique prefix (for done)")
    p.add_argument("--outcome", help="what the call achieved (for done)")
    p.add_argument("--department", help="only this issuing department's entries (for list)")
    p.add_argument(
        "--status", choices=["open", "done", "cancelled", "all"], default="open", help="for list"
    )
    p.add_argument("--reveal", action="store_true", help="show names and numbers unmasked")
    p.set_defaults(func=_delegate("workers.call_list"))

    p = sub.add_parser("workdays", help="where the holiday data for deadlines comes from, to when")
    p.add_argument("--json", action="store_true", help="print it as JSON")
    p.set_defaults(func=_delegate("infra.workdays"))

    p = sub.add_parser(
        "green-channel", help="green-channel response times per service point (from the records)"
    )
    p.set_defaults(func=cmd_green_channel)

    p = sub.add_parser("satisfaction", help="live satisfaction rates from the running stream")
    p.add_argument("--by", choices=["department", "service_point"], default="department")
    p.add_argument("--window", choices=["day", "short"], default="day")
    p.set_defaults(func=cmd_satisfaction)

    p = sub.add_parser(
        "api", help="serve provider status callbacks (signed), with /metrics, /healthz, /readyz"
    )
    p.set_defaults(func=_delegate("infra.api"))

    p = sub.add_parser("dead-letters", help="list, show, replay or purge dead letters")
    p.add_argument("action", choices=["list", "show", "replay", "purge"])
    p.add_argument("ids", nargs="*", metavar="ID", help="dead-letter ids (or unique prefixes)")
    p.add_argument("--stage", help="only this stage: ingest, delivery, job, callback")
    p.add_argument("--reason", help="only this reason")
    p.add_argument("--status", choices=["open", "replayed"], help="only this status")
    p.add_argument("--all", action="store_true", help="every matching letter (replay, purge)")
    p.add_argument("--older-than-days", type=float, help="purge: only letters last seen before")
    p.add_argument("--limit", type=int, default=50, help="list: at most this many rows")
    p.set_defaults(func=_delegate("infra.deadletters"))

    p = sub.add_parser("retention", help="purge message bodies and recipients past retention")
    p.add_argument("action", choices=["purge"])
    p.add_argument("--days", type=int, default=None, help="default GOVNOTIFY_RETENTION_DAYS (30)")
    p.add_argument("--dry-run", action="store_true", help="count what would be purged")
    p.set_defaults(func=_delegate("infra.retention"))

    p = sub.add_parser("suppression", help="list suppressed numbers or lift a suppression")
    p.add_argument("action", choices=["list", "lift"])
    p.add_argument("mobile", nargs="?", help="mainland mobile number")
    p.add_argument("category", nargs="?", default=None, help="one category (default: all)")
    p.set_defaults(func=cmd_suppression)

    p = sub.add_parser("top", help="live terminal view of the running pipeline, from its metrics")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    p.add_argument("--once", action="store_true", help="print one frame and exit")
    p.set_defaults(func=_delegate("infra.top"))

    p = sub.add_parser("demo", help="run the whole pipeline on a generated license registry")
    p.add_argument("--licenses", type=int, default=5000, help="licenses to generate (>= 100)")
    p.add_argument("--cases", type=int, default=1500, help="cases in the centre's day")
    p.add_argument(
        "--keep-running",
        action="store_true",
        help="leave the pipeline up after the summary (for govnotify top), until Ctrl-C",
    )
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    from infra.settings import SettingsError, get_settings

    args = build_parser().parse_args(argv)
    if args.today:
        os.environ["GOVNOTIFY_TODAY"] = args.today.isoformat()
        get_settings.cache_clear()
    try:
        from infra.clock import install_clock

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
    except Exception as exc:
        from infra.services import ServiceError

        if isinstance(exc, ServiceError):
            print(f"govnotify: {exc}", file=sys.stderr)
            return 3
        raise


if __name__ == "__main__":
    sys.exit(main())
