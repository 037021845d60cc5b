"""Shared set-up for the benchmarks: an isolated govnotify environment, rows, the table.

``bench_env`` gives one benchmark its own Tansu broker (free loopback port, memory storage), a
unique namespace (exchange, queues, topics, consumer groups) and a fresh migrated PostgreSQL
database ``bench_<hex>``; on exit it deletes the namespace's RabbitMQ queues, drops the database
and stops the broker by pid, on every exit path.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pika

from infra.clock import Clock
from infra.services import (
    TansuProcess,
    check_rabbitmq,
    create_topics,
    free_port,
    start_tansu,
    stop_pid,
    topic_configs,
)
from infra.settings import Settings, load_settings
from producers.rabbitmq import delete_namespace, queue_depth

# Benchmarks run from the repository (python -m benchmarks), beside the tests' helpers.
from tests.support import create_database, drop_database

__all__ = [
    "AMQP_URL",
    "BENCH_NOW",
    "PG_ADMIN_URL",
    "TODAY",
    "BenchEnv",
    "BenchError",
    "Row",
    "bench_env",
    "child_env",
    "deadline_loop",
    "on_pipeline_clock",
    "pipeline_now",
    "print_table",
    "purge_queue",
    "queue_depth",
    "run_main",
    "take_jobs",
]

#: Admin URL of the PostgreSQL server (trust auth); benchmark databases are created next to it.
PG_ADMIN_URL = os.environ.get(
    "GOVNOTIFY_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
AMQP_URL = os.environ.get("GOVNOTIFY_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
#: The settable clock for every benchmark: generated registries are relative to it.
TODAY = dt.date(2026, 11, 26)
#: Every benchmark process's clock starts here (GOVNOTIFY_NOW), whatever the wall clock says:
#: 10:00 in Asia/Shanghai on TODAY, a Thursday morning outside quiet hours (21:00–08:00).
BENCH_NOW = dt.datetime.combine(TODAY, dt.time(10, 0), tzinfo=dt.timezone(dt.timedelta(hours=8)))


class BenchError(Exception):
    """A benchmark could not produce its figures (deadline, lost messages, dead process)."""


@dataclass(frozen=True)
class Row:
    """One line of the result table: a measured figure against its same-run baseline."""

    bench: str
    metric: str
    measured_label: str
    measured: float
    baseline_label: str
    baseline: float

    @property
    def ratio(self) -> float:
        return self.measured / self.baseline if self.baseline else float("nan")


@dataclass
class BenchEnv:
    """What one benchmark runs against."""

    settings: Settings
    tmp: Path
    tansu: TansuProcess


def _require_loopback(url: str) -> None:
    host = urlsplit(url).hostname or "127.0.0.1"
    if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
        raise BenchError(f"benchmarks only talk to loopback services, not {host}")


@contextlib.contextmanager
def bench_env(name: str) -> Iterator[BenchEnv]:
    """Tansu + namespace + database for one benchmark; everything is removed afterwards."""
    _require_loopback(AMQP_URL)
    _require_loopback(PG_ADMIN_URL)
    check_rabbitmq(AMQP_URL, start=False)
    run_id = uuid.uuid4().hex[:10]
    tmp = Path(tempfile.mkdtemp(prefix=f"govnotify-bench-{name}-"))
    tansu: TansuProcess | None = None
    db_url: str | None = None
    settings: Settings | None = None
    ok = False
    try:
        tansu = start_tansu(free_port(), tmp / "tansu.log")
        db_url = create_database(PG_ADMIN_URL, f"bench_{run_id}")
        settings = load_settings(
            namespace=f"bench{run_id}",
            data_dir=tmp / "data",
            amqp_url=AMQP_URL,
            kafka_url=tansu.url,
            kafka_broker_kind="tansu",
            database_url=db_url,
            # 10:00 on TODAY, one clock shared by every process of the run: outside quiet hours
            # whatever the hour the benchmark runs at (at night reminders would be deferred).
            # ``today`` too: the generated registries are relative to ``settings.today`` (the
            # processes' clock reads ``now`` first, whose date is TODAY, so the two agree).
            today=TODAY,
            now=BENCH_NOW,
            now_epoch=time.time(),
            # No scheduler runs in the throughput benchmarks: reminders go out at once.
            renewal_settle_s=0,
            # Explicitly empty: the worker uses the sandbox notifier, never Twilio.
            twilio_account_sid="",
            twilio_auth_token="",
            twilio_from="",
            twilio_api_base="",
            metrics_host="127.0.0.1",
            relay_metrics_port=free_port(),
            stream_metrics_port=free_port(),
            worker_metrics_port=free_port(),
        )
        create_topics(
            settings.kafka_bootstrap,
            settings.topics,
            settings.kafka_partitions,
            topic_configs=topic_configs(settings),
        )
        yield BenchEnv(settings, tmp, tansu)
        ok = True
    finally:
        # Each step on its own: one failing clean-up must not skip the others.
        if settings is not None:
            _attempt(f"delete RabbitMQ namespace {settings.namespace}", delete_namespace, settings)
        if db_url is not None:
            _attempt(
                f"drop database {db_url.rsplit('/', 1)[1]}", drop_database, PG_ADMIN_URL, db_url
            )
        if tansu is not None:
            _attempt(f"stop Tansu pid {tansu.pid}", stop_pid, tansu.pid)
        if ok:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"  [{name}] logs kept in {tmp}", file=sys.stderr)


def _attempt(what: str, fn: Callable[..., object], *args: object) -> None:
    try:
        fn(*args)
    except Exception as exc:
        print(f"  clean-up failed: {what}: {type(exc).__name__}: {exc}", file=sys.stderr)


def child_env(settings: Settings) -> dict[str, str]:
    """Environment for a component process: this one's, minus govnotify/metrics overrides."""
    dropped = ("GOVNOTIFY_", "PROMETHEUS_MULTIPROC_DIR", "dramatiq_prom_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(dropped)}
    return {**env, **settings.env(), "PYTHONUNBUFFERED": "1"}


def pipeline_now(settings: Settings) -> dt.datetime:
    """The instant every component process of the run reads now (``infra.clock.Clock``: the
    pinned ``GOVNOTIFY_NOW`` plus the wall time since ``GOVNOTIFY_NOW_EPOCH``), aware, UTC.

    Anything the harness stamps or compares with the processes' rows (an event's
    ``occurred_at``, a ``created_at`` or ``sent_at``) must be read on this clock, never on
    ``datetime.now()`` (days apart) or a monotonic origin of the harness's own (seconds apart).
    """
    return Clock.from_settings(settings).utcnow()


def on_pipeline_clock(settings: Settings, wall: dt.datetime) -> dt.datetime:
    """A wall-clock instant (a fake server's ``received_wall``) on the processes' clock."""
    assert settings.now is not None and settings.now_epoch is not None
    epoch_wall = dt.datetime.fromtimestamp(settings.now_epoch, dt.UTC)
    return (settings.now + (wall - epoch_wall)).astimezone(dt.UTC)


def deadline_loop(timeout: float, what: str) -> Callable[[], None]:
    """A check to call inside a loop: raises BenchError once ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout

    def check() -> None:
        if time.monotonic() > deadline:
            raise BenchError(f"{what} did not finish within {timeout:g} s")

    return check


class Every:
    """True at most once every ``seconds`` (the first call included): for a check that costs
    the measured process something (a /metrics scrape), inside a loop that polls often."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._last = -float("inf")

    def __call__(self) -> bool:
        now = time.monotonic()
        if now - self._last < self.seconds:
            return False
        self._last = now
        return True


def purge_queue(settings: Settings, queue: str) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
    try:
        conn.channel().queue_purge(queue)
    finally:
        conn.close()


def take_jobs(settings: Settings, queue: str, timeout: float = 60.0) -> tuple[int, int]:
    """Empty ``queue`` of the dramatiq messages waiting on it: (messages, jobs they carry).

    A message whose argument is a list (a batch actor's, ``schemas.commands.BATCH_ACTORS``)
    carries one job per item; any other, one job. So a check of "every job handed over is on
    the queue" holds whether or not the product groups jobs into messages.
    """
    conn = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
    try:
        channel = conn.channel()
        depth = channel.queue_declare(queue, passive=True).method.message_count
        messages = jobs = 0
        check = deadline_loop(timeout, f"reading the {depth} messages on {queue}")
        if depth:
            for method, _props, body in channel.consume(
                queue, auto_ack=True, inactivity_timeout=1.0
            ):
                if method is None:
                    check()
                    continue
                messages += 1
                args = json.loads(body).get("args") or [None]
                jobs += len(args[0]) if isinstance(args[0], list) else 1
                if messages >= depth:
                    break
            channel.cancel()
        return messages, jobs
    finally:
        if conn.is_open:
            conn.close()


def _fmt(value: float) -> str:
    if value != value:  # NaN
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.1f}"


def print_table(rows: list[Row], failures: list[str] | None = None) -> None:
    """The results: measured vs baseline, and the ratio measured/baseline."""
    header = ("benchmark", "metric", "measured", "value", "baseline", "value", "ratio")
    lines = [
        (
            r.bench,
            r.metric,
            r.measured_label,
            _fmt(r.measured),
            r.baseline_label,
            _fmt(r.baseline),
            f"{r.ratio:.2f}" if r.ratio == r.ratio else "-",
        )
        for r in rows
    ]
    widths = [max([len(h), *(len(line[i]) for line in lines)]) for i, h in enumerate(header)]
    right = {3, 5, 6}

    def fmt(cells: tuple[str, ...]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    print()
    print(fmt(header))
    print("  ".join("-" * w for w in widths))
    for line in lines:
        print(fmt(line))
    for failure in failures or []:
        print(f"FAILED {failure}")
    print("ratio = measured / baseline, both measured in this run on this machine.")


def run_main(benchmarks: list[tuple[str, Callable[[list[Row]], list[Row]]]]) -> int:
    """Run ``benchmarks`` in order (each gets the rows so far), print one table, exit code."""
    rows: list[Row] = []
    failures: list[str] = []
    started = time.monotonic()
    for name, bench in benchmarks:
        print(f"[{name}] running ...", flush=True)
        t0 = time.monotonic()
        try:
            rows.extend(bench(rows))
        except Exception as exc:
            traceback.print_exc()
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
        print(f"[{name}] done in {time.monotonic() - t0:.1f}s", flush=True)
    print_table(rows, failures)
    print(f"total wall time {time.monotonic() - started:.1f}s")
    return 1 if failures else 0
