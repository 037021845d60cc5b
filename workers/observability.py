"""The worker's exposition server: dramatiq's Prometheus middleware plus ``/healthz``, ``/readyz``.

dramatiq's ``Prometheus`` middleware serves metrics from a forked process (``forks``) that reads
the multi-process files every worker process writes. This subclass forks our server instead:
the same multi-process registry on ``/metrics`` (and every other path, as before), plus
``/healthz`` (the fork and the dramatiq main process that supervises the workers are alive) and
``/readyz`` (RabbitMQ and the database answer: see ``infra.health.COMPONENT_DEPENDENCIES``).

Registered in ``workers/broker.py`` in place of dramatiq's own::

    broker.add_middleware(WorkerPrometheus())

Every child dramatiq starts (worker processes and this server) calls :func:`die_with_parent` as
it boots: killed with SIGKILL, dramatiq's main process cannot stop its children, and orphaned
worker processes would go on consuming with the old code and settings (issue 13: two of them
did, for two hours).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time

from dramatiq.middleware import prometheus as dramatiq_prometheus

from infra.health import Readiness, component_checks, health_app, serve_http
from infra.metrics import sample_sum
from infra.settings import get_settings

__all__ = [
    "IN_FLIGHT_GAUGES",
    "ParentGone",
    "WorkerPrometheus",
    "die_with_parent",
    "holds_jobs",
    "run_exposition_server",
]

logger = logging.getLogger("govnotify.worker")

#: The middleware's gauges of the jobs a worker holds: running, or taken from a ``.DQ`` and
#: waiting for their retry's time. A worker whose gauges are 0 holds nothing.
IN_FLIGHT_GAUGES = ("dramatiq_messages_inprogress", "dramatiq_delayed_messages_inprogress")


def holds_jobs(samples: dict[str, float]) -> bool:
    """Whether a worker's scraped ``samples`` show a job it holds (:data:`IN_FLIGHT_GAUGES`)."""
    return any(sample_sum(samples, gauge) > 0 for gauge in IN_FLIGHT_GAUGES)


#: prctl(2) option: the signal this process receives when its parent dies (<linux/prctl.h>).
PR_SET_PDEATHSIG = 1
#: How often, where prctl does not exist, a watcher thread checks the parent is still there.
PARENT_POLL_S = 1.0


class ParentGone(SystemExit):
    """Raised when a child of dramatiq's main process boots after that process died.

    A SystemExit, so that dramatiq (which logs and ignores an Exception raised by a middleware
    hook) lets it end the process before any consumer exists."""


def _expected_parent() -> int:
    # The pid multiprocessing recorded in the parent before it forked: getppid() now could
    # already be init's (or a subreaper's), if the parent died before this child looked.
    parent = multiprocessing.parent_process()
    return parent.pid if parent is not None and parent.pid else os.getppid()


def die_with_parent(sig: signal.Signals = signal.SIGTERM) -> None:
    """Have this process receive ``sig`` when its parent dies; exit now if it already did.

    On Linux the kernel delivers it (``prctl(PR_SET_PDEATHSIG)``, asked through libc with
    ctypes); elsewhere a daemon thread checks the parent pid every :data:`PARENT_POLL_S` and
    signals this process itself. SIGTERM lets a worker process stop as it does under a
    ``govnotify worker`` stop: no new message, the ones in hand finished or given back.

    Raises:
      ParentGone: the parent died before this call (the kernel only signals a death that
        happens after prctl): nothing would ever stop this process.
    """
    parent = _expected_parent()
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    else:  # pragma: no cover  (the suite runs on Linux)
        threading.Thread(
            target=_watch_parent, args=(parent, sig), name="parent-watch", daemon=True
        ).start()
    # Checked after prctl, not before: a death in between is then either seen here or signalled.
    if os.getppid() != parent:
        raise ParentGone(f"govnotify: the worker's main process {parent} is gone; exiting")


def _watch_parent(parent: int, sig: signal.Signals) -> None:  # pragma: no cover  (not Linux)
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    os.kill(os.getpid(), sig)


class WorkerPrometheus(dramatiq_prometheus.Prometheus):
    """dramatiq's Prometheus middleware whose exposition server also answers health probes."""

    @property
    def forks(self):  # type: ignore[no-untyped-def]
        # dramatiq imports the fork by "module:name" in a fresh fork process: a module-level
        # function, not a closure.
        return [run_exposition_server]


def run_exposition_server() -> int:
    """Serve the workers' metrics and health on dramatiq's host and port until terminated.

    Ends with the dramatiq main process (:func:`die_with_parent`): it would otherwise keep the
    port, and answer a scrape for workers that no longer exist.
    """
    die_with_parent()
    db_path = dramatiq_prometheus.DB_PATH
    # As dramatiq does: before prometheus_client is imported here, so it reads the shared files.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = db_path
    os.environ["prometheus_multiproc_dir"] = db_path

    # lazy: prometheus_client picks its value class from the environment when first imported;
    # this fork must import it only after the directory is set.
    from prometheus_client import CollectorRegistry, make_wsgi_app
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    # Reads every worker process's files at each scrape, living and dead (counters survive a
    # worker's restart), exactly as dramatiq's own handler does.
    MultiProcessCollector(registry, path=db_path)
    parent = _expected_parent()

    def alive() -> bool:
        # Reparented (to init) means the dramatiq main process is gone: this server would
        # report for workers nobody supervises any more.
        return os.getppid() == parent

    app = health_app(
        make_wsgi_app(registry),
        Readiness(component_checks(get_settings(), "worker")),
        alive=alive,
    )
    try:
        serve_http(
            dramatiq_prometheus.HTTP_PORT, dramatiq_prometheus.HTTP_HOST, app, background=False
        )
    except OSError as exc:
        # `govnotify worker` checked the port before it started dramatiq; another process took
        # it since. Say so, naming the setting: the workers still run, unobserved.
        logger.critical(
            "cannot serve metrics on %s:%s (GOVNOTIFY_WORKER_METRICS_PORT): %s",
            dramatiq_prometheus.HTTP_HOST,
            dramatiq_prometheus.HTTP_PORT,
            exc,
        )
        return 1
    return 0
