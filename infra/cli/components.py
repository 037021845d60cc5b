"""The long-running components, each run as it runs in production: ``govnotify relay``,
``stream``, ``worker``, ``scheduler`` and ``api``; and ``sweep``, the one-shot repair of stuck
notifications that the scheduler also runs.

prometheus_client registers a metric as the module defining it is imported, and each component
serves ``/metrics`` from its own process: so each command imports its component's modules
itself (relay, stream, scheduler; the workers run in the program ``worker`` execs). Imported
here at the top, the relay's gauges would also be exported, as zeros, by the stream, the
scheduler and the api.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import socket
import sys
import threading
from collections.abc import Callable, Mapping

from infra.cli.output import print_dict
from infra.dbgauges import register_database_gauges
from infra.health import component_checks
from infra.heap import freeze_startup_heap
from infra.logging import configure_logging, install_masking, quiet_libraries
from infra.metrics import serve_metrics
from infra.settings import Settings, SettingsError, get_settings, warn_sandboxes
from infra.workday_gauges import register_workday_gauges
from producers import api
from workers import status

__all__ = [
    "cmd_api",
    "cmd_relay",
    "cmd_scheduler",
    "cmd_stream",
    "cmd_sweep",
    "cmd_worker",
    "register",
    "status_handlers",
    "stop_on_signals",
    "worker_env",
]


def register(sub: argparse._SubParsersAction) -> None:
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

    p = sub.add_parser("sweep", help="re-queue or resolve notifications stuck in created/sending")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("scheduler", help="hand jobs that are due (surveys, escalations) to queues")
    p.set_defaults(func=cmd_scheduler)

    p = sub.add_parser(
        "api",
        help="serve provider status callbacks (signed) and HTTP ingest (POST /events), with "
        "/metrics, /healthz, /readyz",
    )
    p.set_defaults(func=cmd_api)


def stop_on_signals() -> threading.Event:
    """An event set on SIGTERM or SIGINT: the component stops cleanly at its next turn."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def cmd_relay(args: argparse.Namespace) -> int:
    # lazy: the relay's gauges are registered as producers.relay is imported (module docstring).
    from producers.relay import Relay

    s = get_settings()
    configure_logging(args.log_level, "relay")
    warn_sandboxes(s)
    _serve_metrics(s, "relay", component_checks(s, "relay"))
    relay = Relay(s)
    freeze_startup_heap()
    relay.run(stop_on_signals())
    return 0


def cmd_stream(args: argparse.Namespace) -> int:
    # faust takes a third of a second to import; only the stream's process needs it.
    import faust

    # lazy: the stream's metrics are registered as its modules are imported (module docstring).
    from streams.app import create_app, ready_check

    class StreamWorker(faust.Worker):
        def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
            super().on_setup_root_logger(logger, level)
            # faust installs its own handlers; mask personal data on every one of them.
            install_masking(logger)
            # pika's INFO lines are the readiness check's RabbitMQ connection, a dozen per probe
            # (the other components quiet it in configure_logging). Faust's and aiokafka's stay:
            # group joins and start and stop steps are the stream's own story.
            quiet_libraries(level, ("pika",))

        async def on_startup_finished(self) -> None:
            await super().on_startup_finished()
            # Tables recovered, agents running: what is alive now lives as long as the process.
            freeze_startup_heap()

    s = get_settings()
    app = create_app(s)
    checks = {**component_checks(s, "stream"), "stream": ready_check(app)}
    _serve_metrics(s, "stream", checks)
    warn_sandboxes(s)
    StreamWorker(app, loglevel=args.log_level, redirect_stdouts=False).execute_from_commandline()
    return 0


def worker_env(
    settings: Settings, base: dict[str, str] | None = None, *, pid: int | None = None
) -> dict[str, str]:
    """Environment for the dramatiq worker processes of the ``govnotify worker`` with ``pid``
    (default: this process, which execs dramatiq and keeps its pid).

    Their metrics folder is this worker's own, ``<data dir>/prometheus/<namespace>/worker-<pid>``,
    freshly cleared (two workers on one host would otherwise count each other's samples, and
    clear each other's files at start); the folders of workers no longer running are removed.

    Raises:
      SettingsError: the metrics port is taken (a second worker on this host needs its own
        GOVNOTIFY_WORKER_METRICS_PORT); dramatiq would start regardless, without /metrics or
        /healthz.
    """
    pid = os.getpid() if pid is None else pid
    _check_port_free(settings.metrics_host, settings.worker_metrics_port)
    env = dict(os.environ if base is None else base)
    parent = (settings.data_dir / "prometheus" / settings.namespace).resolve()
    prom_dir = parent / f"worker-{pid}"
    if parent.is_dir():
        for old in parent.glob("worker-*"):
            if old == prom_dir or not _pid_alive(old.name.removeprefix("worker-")):
                shutil.rmtree(old, ignore_errors=True)
    prom_dir.mkdir(parents=True, exist_ok=True)
    env.update(
        PROMETHEUS_MULTIPROC_DIR=str(prom_dir),
        dramatiq_prom_db=str(prom_dir),
        dramatiq_prom_host=settings.metrics_host,
        dramatiq_prom_port=str(settings.worker_metrics_port),
    )
    return env


def _pid_alive(text: str) -> bool:
    if not text.isdigit():
        return False
    try:
        os.kill(int(text), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _serve_metrics(s: Settings, component: str, checks: Mapping[str, Callable[[], None]]) -> None:
    """Serve ``component``'s /metrics, /healthz and /readyz on its port.

    Raises:
      SettingsError: the port is taken (another process of this component on the host, or
        another program): one line naming the variable, exit 2, instead of a traceback.
    """
    port = getattr(s, f"{component}_metrics_port")
    try:
        serve_metrics(port, s.metrics_host, ready_checks=checks)
    except OSError as exc:
        raise _port_taken(component, s.metrics_host, port, exc) from None


def _port_taken(component: str, host: str, port: int, exc: OSError) -> SettingsError:
    """The one-line refusal of a component whose metrics port another process holds."""
    return SettingsError(
        f"invalid setting GOVNOTIFY_{component.upper()}_METRICS_PORT: {host}:{port} is taken "
        f"({exc.strerror}); each {component} on a host needs its own port"
    )


def _check_port_free(host: str, port: int) -> None:
    # Bound and released as the exposition server will bind it (SO_REUSEADDR, as wsgiref's
    # server does): a port left in TIME_WAIT is free, one with a listener is not. Port 0 asks
    # for any free port: nothing to check.
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise _port_taken("worker", host, port, exc) from None


def cmd_worker(args: argparse.Namespace) -> int:
    s = get_settings()
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
    configure_logging(args.log_level, "worker")
    warn_sandboxes(s)
    # exec: the worker keeps this pid, so whoever started it can stop it by pid. The workers
    # import prometheus_client in the new program, after PROMETHEUS_MULTIPROC_DIR is set.
    os.execve(sys.executable, argv, worker_env(s))  # noqa: S606  (argv, no shell)
    return 0  # pragma: no cover


def cmd_sweep(args: argparse.Namespace) -> int:
    # workers.sweep loads the delivery actors, whose broker and worker context are built from
    # the settings as they are imported: only once the CLI has validated them (exit 2).
    from workers.sweep import sweep  # lazy: reads the settings at import (above)

    print_dict({k: str(v) for k, v in sweep(get_settings()).items()})
    return 0


def cmd_scheduler(args: argparse.Namespace) -> int:
    # lazy: the scheduler's metrics are registered as its module is imported (module docstring).
    from workers.scheduler import run_scheduler

    s = get_settings()
    configure_logging(args.log_level, "scheduler")
    warn_sandboxes(s)
    # The scheduler is the one singleton with the database at hand: it serves the gauges read
    # from the tables (oldest pending, open tickets, unacknowledged alerts, open dead letters),
    # and how long the holiday data lasts; both before /metrics answers, so no scrape misses them.
    register_database_gauges(s)
    register_workday_gauges(s)
    _serve_metrics(s, "scheduler", component_checks(s, "scheduler"))
    freeze_startup_heap()
    run_scheduler(s, stop_on_signals())
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    """Serve provider status callbacks and HTTP ingest (``POST /events``, tokens from the
    sources registry) until SIGTERM or SIGINT, then exit 0."""
    s = get_settings()
    configure_logging(args.log_level, "api")
    warn_sandboxes(s)
    _serve_metrics(s, "api", component_checks(s, "api"))
    freeze_startup_heap()
    api.serve(s, status_handlers())
    return 0


def status_handlers() -> api.StatusHandlers:
    """The status ledger's functions the api applies verified callbacks with."""
    return api.StatusHandlers(
        twilio_fields=status.twilio_callback_fields,
        gateway_fields=status.gateway_report_fields,
        apply=status.apply_status,
        malformed=status.MalformedCallbackError,
    )
