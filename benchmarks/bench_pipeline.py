"""End to end: publish → relay → Kafka → stream → RabbitMQ → worker → sandbox SMS.

relay, stream and worker run as real processes (``infra.processes.ProcessGroup``) with the
benchmark's settings: PostgreSQL database, ``GOVNOTIFY_NOW`` pinned to 10:00 of a fixed day (so
quiet hours never hold reminders, whatever the hour), no Twilio credentials (so the worker uses
the sandbox notifier, which no send rate paces). One relay, one stream and one worker process
(``worker_threads`` threads); ``start_pipeline(worker_processes=, streams=)``,
``Pipeline.start_worker`` and ``Pipeline.start_stream`` also serve the scaling benchmark
(``bench_scaling``). After one warm-up event has gone all the way through
(the stream's consumer group has joined and the worker answers), ``generate_registry(6000,
today)`` is published with ``Publisher.publish_many`` (pipelined confirms, as ``govnotify
publish`` does) and the clock runs from the first publish until the pipeline has drained:

* the streams' ``govnotify_stream_events_total`` went up by the number of events,
* the worker's ``dramatiq_messages_total`` went up by at least the streams'
  ``govnotify_jobs_enqueued_total``, and nothing is in progress,
* every license of the batch is in the registry (``license_record``),
* no notification row is left in ``created`` or ``sending``, and the work queues the load
  reaches (registry, reminders, delivery) hold no ready message;

all twice in a row, 0.3 s apart (a reminder job the worker sent itself, taken between two
readings, would make a new pending row).

Baseline: raw pika publishing the same event bodies with pipelined publisher confirms (a
``SelectConnection``, the same window as ``publish_many``, persistent) to a throwaway durable
queue, measured in the same environment before the components start (median of three runs;
it takes a fraction of a second): the rate at which
RabbitMQ here takes these messages at all. Also reported: peak RSS (VmHWM) of the stream and of
the worker's process tree against the relay's.

    python -m benchmarks.bench_pipeline [--licenses N]
"""

from __future__ import annotations

import argparse
import collections
import datetime as dt
import statistics
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pika
from sqlalchemy import func, select

from benchmarks.common import (
    BenchEnv,
    BenchError,
    Every,
    Row,
    bench_env,
    child_env,
    run_main,
)
from infra.amqp import DEFAULT_WINDOW
from infra.db import session
from infra.metrics import sample_sum, scrape
from infra.processes import Child, ProcessGroup
from infra.services import free_port
from infra.settings import Settings
from producers.generator import generate_registry, license_event
from producers.rabbitmq import Publisher, queue_depths
from schemas.models import LicenseRecord, Notification
from workers.observability import holds_jobs

#: Big enough for the steady state: at 6,000 licenses a run lasted ~3 s, and the start of each
#: stage (first batches, first hand-over, first claims) and the drain moved the figure by a
#: quarter run to run (1,716-2,263 events/s); at 30,000 a run lasts ~12 s.
N_LICENSES = 30_000
#: The raw pika baseline is short (a fraction of a second): its median of this many runs.
BASELINE_RUNS = 3
#: From the first publish until drained; the run fails clearly after this.
SETTLE_DEADLINE_S = 120.0
#: Start-up: metrics ports answering, the stream's group joined, the warm-up event through.
STARTUP_DEADLINE_S = 90.0
#: The raw pika baseline must finish within this.
BASELINE_DEADLINE_S = 60.0
POLL_S = 0.1
PENDING = ("created", "sending")
#: Work queues the pipeline's load reaches (short names, ``Settings.queue``).
LOAD_QUEUES = ("registry", "reminders", "delivery")


# ---- reading the pipeline's state ------------------------------------------------------------
def _scrape_sum(port: int, name: str) -> float | None:
    try:
        return sample_sum(scrape(port, timeout=2.0), name)
    except OSError:
        return None


def _ports(s: Settings, ports: list[int] | None) -> list[int]:
    return ports if ports else [s.stream_metrics_port]


def stream_events(s: Settings, ports: list[int] | None = None) -> float:
    """govnotify_stream_events_total summed over the stream processes (``ports``)."""
    return sum(_scrape_sum(p, "govnotify_stream_events_total") or 0.0 for p in _ports(s, ports))


def jobs_counts(s: Settings, ports: list[int] | None = None) -> tuple[float, float] | None:
    """(jobs enqueued by the streams, messages processed by the worker), None if one is down."""
    enqueued = 0.0
    for port in _ports(s, ports):
        value = _scrape_sum(port, "govnotify_jobs_enqueued_total")
        if value is None:
            return None
        enqueued += value
    processed = _scrape_sum(s.worker_metrics_port, "dramatiq_messages_total")
    if processed is None:
        return None
    return enqueued, processed


def pending_rows(s: Settings) -> tuple[int, int]:
    """(notification rows in created/sending, all notification rows)."""
    with session(s) as db:
        pending = db.execute(
            select(func.count()).select_from(Notification).where(Notification.status.in_(PENDING))
        ).scalar_one()
        total = db.execute(select(func.count()).select_from(Notification)).scalar_one()
    return pending, total


def settled(s: Settings, n_events: int) -> bool:
    """``govnotify demo``'s test (one stream; totals since the processes started)."""
    if stream_events(s) < n_events:
        return False
    counts = jobs_counts(s)
    if counts is None or counts[1] < counts[0]:
        return False
    return pending_rows(s)[0] == 0


def registry_rows(s: Settings, prefix: str) -> int:
    """Licenses whose id starts with ``prefix`` in the registry (written by the worker)."""
    with session(s) as db:
        return db.execute(
            select(func.count())
            .select_from(LicenseRecord)
            .where(LicenseRecord.license_id.startswith(prefix))
        ).scalar_one()


def ready_messages(s: Settings, queues: tuple[str, ...] = LOAD_QUEUES) -> int:
    """Messages ready on the namespace's ``queues`` and their delay queues (``.DQ``: retries
    waiting), 0 for a queue not declared yet."""
    return ready_on(s, [q for name in queues for q in (s.queue(name), f"{s.queue(name)}.DQ")])


def ready_on(s: Settings, queues: list[str]) -> int:
    """Messages ready on these queues (full names), 0 for a queue not declared yet."""
    return sum(queue_depths(s, queues).values())


def worker_holds_jobs(s: Settings) -> bool:
    """Whether the worker holds a job, from one scrape of its /metrics (False when it does not
    answer: the queues and rows then decide)."""
    try:
        return holds_jobs(scrape(s.worker_metrics_port, timeout=2.0))
    except OSError:
        return False


def worker_errors(s: Settings) -> float:
    """Messages the worker failed (each retry counts): a run with any is no measurement."""
    return _scrape_sum(s.worker_metrics_port, "dramatiq_message_errors_total") or 0.0


@dataclass
class Marks:
    """The counters when a batch started: a batch is judged on what moved since."""

    events: float
    enqueued: float
    processed: float
    errors: float


def marks(s: Settings, ports: list[int]) -> Marks:
    counts = jobs_counts(s, ports)
    if counts is None:
        raise BenchError("a component's /metrics did not answer")
    return Marks(stream_events(s, ports), *counts, worker_errors(s))


def check_worker_errors(s: Settings, worker: Child | None, since: float = 0.0) -> None:
    """BenchError, with the end of ``worker``'s log, once it failed a message after ``since``
    errors (a run with any is no measurement)."""
    errors = worker_errors(s) - since
    if errors > 0:
        tail = worker.log_tail(15) if worker else ""
        raise BenchError(f"the worker failed {errors:.0f} messages; its log ends:\n{tail}")


def drained_once(
    pipe: Pipeline, base: Marks, n_events: int, batch: Batch, errors_due: Every | None = None
) -> bool:
    """Every event of ``batch`` through, every job done, nothing pending (see the module's
    docstring); BenchError once the worker failed a message.

    The database first: a /metrics scrape costs the measured process a few ms of its GIL (the
    worker's multiprocess collector reads every process's files), so until the rows say done
    the worker's error count is read only when ``errors_due`` says so (every call without it),
    and the other counters not at all.
    """
    s, ports = pipe.env.settings, pipe.stream_ports
    if registry_rows(s, batch.prefix) < batch.licenses or pending_rows(s)[0]:
        if errors_due is None or errors_due():
            check_worker_errors(s, pipe.worker, base.errors)
        return False
    check_worker_errors(s, pipe.worker, base.errors)
    if stream_events(s, ports) - base.events < n_events:
        return False
    counts = jobs_counts(s, ports)
    if counts is None or counts[1] - base.processed < counts[0] - base.enqueued:
        return False
    if worker_holds_jobs(s):
        return False
    return ready_messages(s) == 0


# ---- processes -------------------------------------------------------------------------------
def _group_pids(pgid: int) -> list[int]:
    """Every live process whose process group is ``pgid`` (a child and what it forked)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid:  # state, ppid, pgrp, ...
            pids.append(int(entry.name))
    return pids


def peak_rss_mib(child: Child) -> tuple[float, int]:
    """(sum of VmHWM over the child's process group in MiB, number of processes)."""
    total_kib = 0
    pids = _group_pids(child.pid)
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total_kib += int(line.split()[1])
        except OSError:
            continue
    return total_kib / 1024, len(pids)


def _wait(
    what: str,
    predicate,  # type: ignore[no-untyped-def]
    deadline: float,
    children: list[Child],
    interval: float = POLL_S,
) -> None:
    """Poll ``predicate`` every ``interval`` s until true; BenchError at ``deadline`` or when a
    component died."""
    while True:
        _check_alive(children, what)
        if predicate():
            return
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {c.name}:\n{c.log_tail(10)}" for c in children)
            raise BenchError(f"{what}: not reached in time\n{tails}")
        time.sleep(interval)


def _check_alive(children: list[Child], what: str) -> None:
    for child in children:
        if not child.alive():
            raise BenchError(
                f"{child.name} (pid {child.pid}) exited with {child.popen.returncode} while "
                f"waiting for {what}; last lines of {child.log_path}:\n{child.log_tail()}"
            )


def _answers(port: int) -> bool:
    try:
        scrape(port, timeout=1.0)
    except OSError:
        return False
    return True


def is_ready(port: int) -> bool:
    """``/readyz`` answers 200 (a stream: partitions assigned, tables recovered, no rebalance)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1.0) as r:
            return r.status == 200
    except (OSError, urllib.error.HTTPError):
        return False


@dataclass
class Pipeline:
    """The running components of one benchmark environment."""

    env: BenchEnv
    group: ProcessGroup
    relay: Child | None = None
    streams: list[Child] = field(default_factory=list)
    stream_ports: list[int] = field(default_factory=list)
    worker: Child | None = None
    worker_processes: int = 1

    @property
    def children(self) -> list[Child]:
        return [c for c in (self.relay, *self.streams, self.worker) if c is not None]

    def start_stream(self) -> Child:
        """One more ``govnotify stream`` (its own metrics port after the first)."""
        s = self.env.settings
        if not self.streams:
            child, port = self.group.start("stream", "stream"), s.stream_metrics_port
        else:
            port = free_port()
            extra = ProcessGroup(
                env={**self.group.env, "GOVNOTIFY_STREAM_METRICS_PORT": str(port)},
                log_dir=self.group.log_dir,
            )
            child = extra.start(f"stream{len(self.streams) + 1}", "stream")
            # Stopped with every other child of the run, on every exit path.
            self.group.children.append(child)
        self.streams.append(child)
        self.stream_ports.append(port)
        return child

    def start_worker(self, processes: int) -> Child:
        """``govnotify worker --processes N`` (``worker_threads`` threads each), replacing the
        running one."""
        if self.worker is not None:
            self.worker.stop()
            self.group.children.remove(self.worker)
            self.worker = None
        self.worker = self.group.start(
            f"worker-{processes}p", "worker", "--processes", str(processes)
        )
        self.worker_processes = processes
        return self.worker

    def wait_ready(self, deadline: float) -> None:
        """Metrics answering everywhere, every stream ready; then one warm-up event all the way
        through (the group has joined, the worker consumes)."""
        s = self.env.settings
        ports = [s.relay_metrics_port, *self.stream_ports, s.worker_metrics_port]
        _wait("metrics endpoints", lambda: all(_answers(p) for p in ports), deadline, self.children)
        _wait(
            "every stream ready (partitions assigned, no rebalance)",
            lambda: all(is_ready(p) for p in self.stream_ports),
            deadline,
            self.children,
        )
        warm_up(self, deadline)


_WARM_UPS = collections.Counter[str]()


def warm_up(pipe: Pipeline, deadline: float) -> None:
    """One license event through relay, stream and worker, and drained."""
    s = pipe.env.settings
    _WARM_UPS[s.namespace] += 1
    prefix = f"LICWARM{_WARM_UPS[s.namespace]:03d}"
    event = license_event(
        "license.issued",
        f"{prefix}-000001",
        category="food_business",
        issued_on=s.today - dt.timedelta(days=65),
        expires_on=s.today + dt.timedelta(days=300),
        occurred_at=dt.datetime.combine(s.today, dt.time(1), tzinfo=dt.UTC),
    )
    base = marks(s, pipe.stream_ports)
    with Publisher.from_settings(s) as p:
        p.publish(event)
    batch = Batch(prefix, licenses=1, events=[])
    _wait(
        "warm-up event drained",
        lambda: drained_once(pipe, base, 1, batch),
        deadline,
        pipe.children,
    )


def start_pipeline(
    env: BenchEnv, group: ProcessGroup, *, worker_processes: int = 1, streams: int = 1
) -> Pipeline:
    """relay, ``streams`` streams and a worker of ``worker_processes`` processes, warmed up."""
    deadline = time.monotonic() + STARTUP_DEADLINE_S
    pipe = Pipeline(env, group)
    pipe.relay = group.start("relay", "relay")
    for _ in range(streams):
        pipe.start_stream()
    pipe.start_worker(worker_processes)
    pipe.wait_ready(deadline)
    return pipe


# ---- the load --------------------------------------------------------------------------------
@dataclass
class Batch:
    """Generated license events: ``licenses`` licenses whose ids start with ``prefix``."""

    prefix: str
    licenses: int
    events: list  # producers.generator events

    @property
    def messages(self) -> list[tuple[bytes, str, str]]:
        return [(e.to_json_bytes(), e.event_type, e.event_id) for e in self.events]


def make_batch(s: Settings, n_licenses: int, prefix: str) -> Batch:
    registry = generate_registry(n_licenses, s.today, prefix=prefix)
    licenses = len({e.key for e in registry.events})
    return Batch(prefix, licenses, registry.events)


@dataclass
class Drained:
    """One batch through the pipeline."""

    events: int
    publish_s: float
    stream_s: float
    elapsed_s: float

    @property
    def rate(self) -> float:
        return self.events / self.elapsed_s


def push(pipe: Pipeline, batch: Batch, deadline_s: float = SETTLE_DEADLINE_S) -> Drained:
    """Publish ``batch`` with ``publish_many`` and wait until the pipeline drained it."""
    s = pipe.env.settings
    ports = pipe.stream_ports
    messages = batch.messages
    base = marks(s, ports)
    t0 = time.monotonic()
    deadline = t0 + deadline_s
    with Publisher(s.amqp_url, s.exchange) as publisher:
        outcomes = publisher.publish_many(messages, window=DEFAULT_WINDOW)
    publish_s = time.monotonic() - t0
    failed = [why for ok, why in outcomes if not ok]
    if len(outcomes) != len(messages) or failed:
        raise BenchError(f"publish_many: {len(failed)} of {len(messages)} failed: {failed[:1]}")
    n = len(messages)
    _wait(
        f"streams processed {n} events",
        lambda: stream_events(s, ports) - base.events >= n,
        deadline,
        pipe.children,
    )
    stream_s = time.monotonic() - t0
    errors_due = Every(1.0)
    while True:
        _wait(
            "pipeline drained",
            lambda: drained_once(pipe, base, n, batch, errors_due),
            deadline,
            pipe.children,
        )
        elapsed = time.monotonic() - t0
        time.sleep(0.3)  # the same again a moment later: nothing was in flight between checks
        if drained_once(pipe, base, n, batch):
            return Drained(n, publish_s, stream_s, elapsed)


# ---- the baseline ----------------------------------------------------------------------------
class _RawConfirms:
    """pika alone: persistent publishes to ``queue`` through a SelectConnection, at most
    ``window`` unconfirmed, until RabbitMQ confirmed every one."""

    def __init__(self, url: str, queue: str, bodies: list[tuple[bytes, str]], window: int):
        self.params = pika.URLParameters(url)
        self.queue = queue
        self.bodies = bodies
        self.window = window
        self.sent = 0
        self.unconfirmed: collections.deque[int] = collections.deque()
        self.confirmed = 0
        self.error: str | None = None
        self.elapsed: float | None = None
        self.channel = None

    def run(self, timeout: float) -> float:
        self.t0 = time.perf_counter()
        self.conn = pika.SelectConnection(
            self.params,
            on_open_callback=lambda c: c.channel(on_open_callback=self._on_channel),
            on_open_error_callback=lambda _c, exc: self._fail(f"connect: {exc!r}"),
            on_close_callback=lambda _c, _exc: self.conn.ioloop.stop(),
        )
        self.conn.ioloop.call_later(timeout, lambda: self._fail(f"not done in {timeout:g} s"))
        self.conn.ioloop.start()
        if self.error or self.elapsed is None:
            raise BenchError(f"raw pika pipelined publish: {self.error or 'stopped early'}")
        return self.elapsed

    def _fail(self, why: str) -> None:
        self.error = self.error or why
        self._close()

    def _close(self) -> None:
        if self.conn.is_open:
            self.conn.close()
        elif self.conn.is_closed:
            self.conn.ioloop.stop()

    def _on_channel(self, channel) -> None:  # type: ignore[no-untyped-def]
        self.channel = channel
        channel.confirm_delivery(self._on_confirm, callback=lambda _f: self._pump())

    def _pump(self) -> None:
        while self.sent < len(self.bodies) and len(self.unconfirmed) < self.window:
            body, message_id = self.bodies[self.sent]
            self.channel.basic_publish(
                exchange="",
                routing_key=self.queue,
                body=body,
                properties=pika.BasicProperties(
                    delivery_mode=pika.DeliveryMode.Persistent,
                    content_type="application/json",
                    message_id=message_id,
                ),
            )
            self.sent += 1
            self.unconfirmed.append(self.sent)

    def _on_confirm(self, frame) -> None:  # type: ignore[no-untyped-def]
        method = frame.method
        if isinstance(method, pika.spec.Basic.Nack):
            self._fail(f"nack for tag {method.delivery_tag}")
            return
        tag = method.delivery_tag
        if method.multiple:
            while self.unconfirmed and self.unconfirmed[0] <= tag:
                self.unconfirmed.popleft()
                self.confirmed += 1
        else:
            self.unconfirmed.remove(tag)
            self.confirmed += 1
        if self.confirmed == len(self.bodies):
            self.elapsed = time.perf_counter() - self.t0
            self._close()
            return
        self._pump()


def raw_pika_seconds(s: Settings, batch: Batch, window: int = DEFAULT_WINDOW) -> float:
    """Seconds for raw pika to publish ``batch``'s bodies with pipelined confirms to a throwaway
    durable queue (deleted afterwards; it expires on its own should the deletion fail)."""
    queue = f"{s.namespace}.bench-raw-confirms"
    conn = pika.BlockingConnection(pika.URLParameters(s.amqp_url))
    try:
        conn.channel().queue_declare(queue, durable=True, arguments={"x-expires": 300_000})
        bodies = [(body, message_id) for body, _key, message_id in batch.messages]
        elapsed = _RawConfirms(s.amqp_url, queue, bodies, window).run(BASELINE_DEADLINE_S)
        depth = conn.channel().queue_declare(queue, passive=True).method.message_count
        if depth != len(bodies):
            raise BenchError(f"raw pika: the queue holds {depth} messages, {len(bodies)} sent")
        return elapsed
    finally:
        try:
            conn.channel().queue_delete(queue)
        finally:
            conn.close()


# ---- the benchmark ---------------------------------------------------------------------------
def settings_label(s: Settings, pipe: Pipeline) -> str:
    return (
        f"1 relay, {len(pipe.streams)} stream(s), {pipe.worker_processes} worker proc(s) x "
        f"{s.worker_threads} thr, {s.kafka_partitions} partitions, sends unpaced"
    )


def run(
    env: BenchEnv, n_licenses: int = N_LICENSES, relay_baseline: float | None = None
) -> list[Row]:
    s = env.settings
    batch = make_batch(s, n_licenses, "LICE2E")
    n_events = len(batch.events)
    raw_s = statistics.median(raw_pika_seconds(s, batch) for _ in range(BASELINE_RUNS))
    group = ProcessGroup(env=child_env(s), log_dir=env.tmp / "logs")
    try:
        t_start = time.monotonic()
        pipe = start_pipeline(env, group)
        startup_s = time.monotonic() - t_start
        base_jobs = jobs_counts(s) or (0.0, 0.0)
        result = push(pipe, batch)
        enqueued, processed = jobs_counts(s) or (0.0, 0.0)
        pending, rows = pending_rows(s)
        assert pipe.relay is not None and pipe.worker is not None
        relay_mib, _ = peak_rss_mib(pipe.relay)
        stream_mib, stream_procs = peak_rss_mib(pipe.streams[0])
        worker_mib, worker_procs = peak_rss_mib(pipe.worker)
        label = settings_label(s, pipe)
    finally:
        group.stop_all()

    raw_rate = n_events / raw_s
    print(
        f"  pipeline: raw pika pipelined confirms (window {DEFAULT_WINDOW}) {n_events} events in "
        f"{raw_s:.2f}s, median of {BASELINE_RUNS} ({raw_rate:,.0f}/s); start-up (processes, "
        f"group join, warm-up) {startup_s:.1f}s"
    )
    print(
        f"  pipeline: {n_events} events published with publish_many in {result.publish_s:.1f}s "
        f"({n_events / result.publish_s:,.0f}/s), stream done at {result.stream_s:.1f}s, "
        f"drained at {result.elapsed_s:.1f}s; {label}"
    )
    print(
        f"  pipeline: {enqueued - base_jobs[0]:.0f} jobs enqueued by the stream, "
        f"{processed - base_jobs[1]:.0f} dramatiq messages processed, {rows} notification rows "
        f"({pending} pending); peak RSS relay {relay_mib:.0f} MiB, stream {stream_mib:.0f} MiB "
        f"({stream_procs} proc), worker {worker_mib:.0f} MiB ({worker_procs} procs, summed)"
    )
    metric = f"events/s (N={n_events})"
    out = [
        Row(
            "pipeline",
            metric,
            f"end to end, drained ({label})",
            result.rate,
            f"raw pika pipelined confirms w={DEFAULT_WINDOW}",
            raw_rate,
        ),
    ]
    if relay_baseline is not None:
        out.append(
            Row(
                "pipeline", metric, "end to end, drained", result.rate, "relay only", relay_baseline
            )
        )
    out += [
        Row("pipeline", "peak RSS MiB", "stream process", stream_mib, "relay", relay_mib),
        Row(
            "pipeline",
            "peak RSS MiB",
            f"worker tree ({worker_procs} procs)",
            worker_mib,
            "relay",
            relay_mib,
        ),
    ]
    return out


def relay_rate(rows: list[Row]) -> float | None:
    """The relay-only events/s already measured in this run (by bench_relay), if any."""
    for row in rows:
        if row.bench == "relay" and row.metric.startswith("events/s"):
            return row.measured
    return None


def bench(rows: list[Row], n_licenses: int = N_LICENSES) -> list[Row]:
    with bench_env("pipeline") as env:
        return run(env, n_licenses, relay_rate(rows))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--licenses", type=int, default=N_LICENSES)
    args = p.parse_args()
    return run_main([("pipeline", lambda rows: bench(rows, args.licenses))])


if __name__ == "__main__":
    sys.exit(main())
