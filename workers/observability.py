"""The worker's exposition server: dramatiq's Prometheus middleware plus ``/healthz``, ``/readyz``.

dramatiq's ``Prometheus`` middleware serves metrics from a forked process (``forks``) that reads
the multi-process files every worker process writes. This subclass forks our server instead:
the same multi-process registry on ``/metrics`` (and every other path, as before), plus
``/healthz`` (the fork and the dramatiq main process that supervises the workers are alive) and
``/readyz`` (RabbitMQ and the database answer: see ``infra.health.COMPONENT_DEPENDENCIES``).

Registered in ``workers/broker.py`` in place of dramatiq's own::

    broker.add_middleware(WorkerPrometheus())
"""

from __future__ import annotations

import os

from dramatiq.middleware import prometheus as dramatiq_prometheus

from infra.health import Readiness, component_checks, health_app, serve_http
from infra.settings import get_settings

__all__ = ["WorkerPrometheus", "run_exposition_server"]


class WorkerPrometheus(dramatiq_prometheus.Prometheus):
    """dramatiq's Prometheus middleware whose exposition server also answers health probes."""

    @property
    def forks(self):  # type: ignore[no-untyped-def]
        # dramatiq imports the fork by "module:name" in a fresh fork process: a module-level
        # function, not a closure.
        return [run_exposition_server]


def run_exposition_server() -> int:
    """Serve the workers' metrics and health on dramatiq's host and port until terminated."""
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
    parent = os.getppid()

    def alive() -> bool:
        # Reparented (to init) means the dramatiq main process is gone: this server would
        # report for workers nobody supervises any more.
        return os.getppid() == parent

    app = health_app(
        make_wsgi_app(registry),
        Readiness(component_checks(get_settings(), "worker")),
        alive=alive,
    )
    serve_http(dramatiq_prometheus.HTTP_PORT, dramatiq_prometheus.HTTP_HOST, app, background=False)
    return 0
