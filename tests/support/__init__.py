"""Helpers for tests on the real services (imported by conftest and tests).

The case-flow builders (events, staff env) are in :mod:`tests.support.cases`."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
from sqlalchemy import func, select

from infra.db import session, upgrade
from infra.metrics import sample_sum as metric
from infra.metrics import scrape
from infra.processes import Child, ProcessGroup, wait_until
from infra.services import create_topics, free_port
from producers.rabbitmq import Publisher, queue_depth
from producers.rabbitmq import delete_namespace as purge_namespace

if TYPE_CHECKING:
    import datetime as dt

    from infra.settings import Settings
    from schemas.events import Event
    from workers.context import WorkerContext

__all__ = [
    "Pipeline",
    "clean_env",
    "count_rows",
    "create_database",
    "drop_database",
    "enqueue",
    "env_for",
    "free_ports",
    "metric",
    "pipeline_settings",
    "publish",
    "purge_namespace",
    "queue_depth",
    "run_cli",
    "scrape",
    "unmasked_mobiles",
    "wait_until",
    "worker_context",
]


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def create_database(admin_url: str, name: str) -> str:
    """Create database ``name`` next to ``admin_url``'s, migrate it, return its SQLAlchemy URL."""
    with psycopg.connect(_libpq(admin_url), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = admin_url.rsplit("/", 1)[0] + f"/{name}"
    upgrade(url=url)
    return url


def drop_database(admin_url: str, url: str) -> None:
    from infra.db import get_engine

    get_engine(url).dispose()
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(_libpq(admin_url), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


#: Every port a component listens on: each test pipeline gets free ones, so none collide.
LISTEN_PORTS = (
    "relay_metrics_port",
    "stream_metrics_port",
    "worker_metrics_port",
    "scheduler_metrics_port",
    "api_metrics_port",
    "api_port",
)


def free_ports() -> dict[str, int]:
    """A free loopback port for every listening setting."""
    return {name: free_port() for name in LISTEN_PORTS}


def pipeline_settings(
    *, namespace: str, data_dir: Path, amqp_url: str, kafka_url: str, database_url: str
) -> Settings:
    """Settings for one isolated pipeline on free ports; its Kafka topics are created."""
    from infra.settings import load_settings

    s = load_settings(
        namespace=namespace,
        data_dir=data_dir,
        amqp_url=amqp_url,
        kafka_url=kafka_url,
        database_url=database_url,
        # Reminders go out at once unless a test sets a settle window (pipeline.set_env).
        renewal_settle_s=0,
        **free_ports(),
    )
    create_topics(s.kafka_bootstrap, s.topics, s.kafka_partitions)
    return s


def publish(settings: Settings, events: list[Event]) -> None:
    """Publish ``events`` to ``settings``' exchange, each confirmed."""
    with Publisher.from_settings(settings) as p:
        for event in events:
            p.publish(event)


def enqueue(settings: Settings, queue: str, actor_name: str, *args: object) -> None:
    """Put one dramatiq job on ``settings``' queue ``queue``, as the stream or sweep would
    (declaring the queue as the workers do: of ``settings.rabbitmq_queue_type``)."""
    import dramatiq

    from infra.jobs import make_broker

    broker = make_broker(settings.amqp_url, queue_type=settings.rabbitmq_queue_type)
    try:
        broker.enqueue(
            dramatiq.Message(
                queue_name=settings.queue(queue),
                actor_name=actor_name,
                args=args,
                kwargs={},
                options={},
            )
        )
    finally:
        broker.close()


def count_rows(settings: Settings, model, *where) -> int:  # type: ignore[no-untyped-def]
    with session(settings) as s:
        return s.execute(select(func.count()).select_from(model).where(*where)).scalar_one()


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any GOVNOTIFY_* variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GOVNOTIFY_")}
    env.update(extra)
    return env


def run_cli(
    *args: str, env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``govnotify ARGS`` as a subprocess with ``env``; output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "infra.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def env_for(settings: Settings, **extra: str) -> dict[str, str]:
    """Environment that makes a child process load exactly ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GOVNOTIFY_")}
    return {**env, **settings.env(), **extra}


def worker_context(settings: Settings) -> WorkerContext:
    """A worker context for running actors in this process (``actor.fn``, a stub broker) whose
    send slots are taken in the database as every worker takes them, without sleeping until
    them: the staff robots' 20 a minute would make each further webhook of a test wait 3 s.

    Every database operation of a send is still there (tests that pause a job at each one see
    the same operations); these tests check what is sent and marked, never when.
    """
    from infra.clock import Clock
    from notifiers.pacing import DatabasePacer
    from workers.context import WorkerContext

    context = WorkerContext(settings)
    context.pacer = DatabasePacer(
        settings, Clock.from_settings(settings), sleep=lambda _seconds: None
    )
    return context


#: ``govnotify worker``'s arguments in a test pipeline.
WORKER_ARGS = ("--threads", "4")


class Pipeline(ProcessGroup):
    """relay, stream and worker processes for one test's settings."""

    def __init__(self, settings: Settings, log_dir: Path, **extra_env: str) -> None:
        super().__init__(env=env_for(settings, **extra_env), log_dir=log_dir)
        self.settings = settings

    def stop_all(self, timeout: float = 15.0) -> None:
        """Stop every child as :meth:`Child.stop` does (SIGTERM to its process group, a deadline,
        then SIGKILL of whatever is left), all of them side by side: each shuts down in a second
        or so, which one after the other was seconds of every test's teardown."""
        children = list(reversed(self.children))
        for child in children:
            if child.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.popen.wait(max(0.0, deadline - time.monotonic()))
            # Children of the group (dramatiq's worker and fork processes) may outlive the leader.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signal.SIGKILL)
            if child.popen.poll() is None:
                child.popen.wait(10)
        self.children.clear()

    def set_env(self, **extra: str) -> None:
        if "GOVNOTIFY_NOW" in extra and "GOVNOTIFY_NOW_EPOCH" not in extra:
            # A newly pinned instant starts now, for every child alike (one clock: a sweep run
            # later judges the worker's claims by the worker's own clock).
            self.started = time.time()
            extra = {**extra, "GOVNOTIFY_NOW_EPOCH": repr(self.started)}
        self.env.update(extra)

    def relay(self) -> Child:
        child = self.start("relay", "relay")
        wait_until(
            lambda: _answers(self.settings.relay_metrics_port),
            30,
            message="relay metrics did not come up:\n" + child.log_tail(),
        )
        return child

    def stream(self, name: str = "stream") -> Child:
        return self.start(name, "stream")

    def worker(self, *args: str, name: str = "worker") -> Child:
        return self._worker_up(self.start(name, "worker", *WORKER_ARGS, *args))

    def _worker_up(self, child: Child) -> Child:
        wait_until(lambda: _answers(self.settings.worker_metrics_port) or not child.alive(), 60)
        assert child.alive(), child.log_tail()
        return child

    def api(self) -> Child:
        """``govnotify api``, once both its ports answer (callbacks, and /metrics).

        The ports come from the children's environment (``set_env`` may have changed them).
        """
        port = int(self.env.get("GOVNOTIFY_API_PORT", self.settings.api_port))
        metrics_port = int(
            self.env.get("GOVNOTIFY_API_METRICS_PORT", self.settings.api_metrics_port)
        )
        child = self.start("api", "api")
        wait_until(lambda: (_answers(metrics_port) and _listens(port)) or not child.alive(), 30)
        assert child.alive(), child.log_tail()
        return child

    def now(self, start: dt.datetime) -> dt.datetime:
        """The pipeline's clock, pinned at ``start`` by GOVNOTIFY_NOW and running since all().

        Every child shares it: all() gives them its start as GOVNOTIFY_NOW_EPOCH.
        """
        return start + timedelta(seconds=time.time() - self.started)

    def scheduler(self) -> Child:
        return self._scheduler_up(self.start("scheduler", "scheduler"))

    def _scheduler_up(self, child: Child) -> Child:
        wait_until(lambda: _answers(self.settings.scheduler_metrics_port) or not child.alive(), 30)
        assert child.alive(), child.log_tail()
        return child

    def all(self) -> None:
        self.started = time.time()
        self.env["GOVNOTIFY_NOW_EPOCH"] = repr(self.started)
        # The relay first: it writes the Kafka epoch marker the stream starts from.
        self.relay()
        self.stream()
        # The worker and the scheduler start side by side (each takes seconds of imports);
        # the scheduler's jobs wait on their queues until the worker consumes.
        worker = self.start("worker", "worker", *WORKER_ARGS)
        scheduler = self.start("scheduler", "scheduler")
        self._worker_up(worker)
        self._scheduler_up(scheduler)


#: A full mainland mobile number as it could leak into a log line (not inside ids or hex).
_FULL_MOBILE = re.compile(r"(?<![0-9A-Za-z])(?:\+?86)?1[3-9][0-9]{9}(?![0-9A-Za-z])")


def unmasked_mobiles(log_dir: Path) -> list[str]:
    """Log lines under ``log_dir`` that contain a full mobile number."""
    leaks = []
    for path in sorted(log_dir.glob("*.log")):
        for line in path.read_text(errors="replace").splitlines():
            if _FULL_MOBILE.search(line):
                leaks.append(f"{path.name}: {line[:300]}")
    return leaks


def _listens(port: int, host: str = "127.0.0.1") -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
    except OSError:
        return False
    return True


def _answers(port: int) -> bool:
    try:
        scrape(port)
    except OSError:
        return False
    return True
