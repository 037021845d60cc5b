"""End to end: publish → relay → Kafka → stream → RabbitMQ → worker → sandbox SMS.

relay, stream and worker run as real processes (``infra.processes.ProcessGroup``) with the
benchmark's settings: PostgreSQL database, ``GOVNOTIFY_NOW`` pinned to 10:00 of a fixed day (so
quiet hours never hold reminders, whatever the hour), no Twilio credentials (so the worker uses
the sandbox notifier). After one warm-up event has gone all the way through (the
stream's consumer group has joined and the worker answers), ``generate_registry(3000, today)`` is
published with the product's Publisher and the clock runs until the pipeline has settled, as
``govnotify demo`` decides it:

* the stream's ``govnotify_stream_events_total`` reaches the number of events, and
* the worker's ``dramatiq_messages_total`` >= the stream's ``govnotify_jobs_enqueued_total``, and
* no notification row is left in ``created`` or ``sending``.

Baseline: relay-only throughput from the same run (``bench_relay``, or measured here first when
run alone). Also reported: peak RSS (VmHWM) of the stream and of the worker's process tree
against the relay's.

    python -m benchmarks.bench_pipeline
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from pathlib import Path

from sqlalchemy import func, select

from benchmarks import bench_relay
from benchmarks.common import (
    BenchEnv,
    BenchError,
    Row,
    bench_env,
    child_env,
    run_main,
)
from infra.db import session
from infra.metrics import sample_sum, scrape
from infra.processes import Child, ProcessGroup
from infra.settings import Settings
from producers.generator import generate_registry, license_event
from producers.rabbitmq import Publisher
from schemas.models import Notification

N_LICENSES = 3000
#: From the first publish until settled; the run fails clearly after this.
SETTLE_DEADLINE_S = 120.0
#: Start-up: metrics ports answering, the stream's group joined, the warm-up event through.
STARTUP_DEADLINE_S = 90.0
POLL_S = 0.1
PENDING = ("created", "sending")


# ---- reading the pipeline's state ------------------------------------------------------------
def _scrape_sum(port: int, name: str) -> float | None:
    try:
        return sample_sum(scrape(port, timeout=2.0), name)
    except OSError:
        return None


def stream_events(s: Settings) -> float:
    return _scrape_sum(s.stream_metrics_port, "govnotify_stream_events_total") or 0.0


def jobs_counts(s: Settings) -> tuple[float, float] | None:
    """(jobs enqueued by the stream, messages processed by the worker), None if one is down."""
    enqueued = _scrape_sum(s.stream_metrics_port, "govnotify_jobs_enqueued_total")
    processed = _scrape_sum(s.worker_metrics_port, "dramatiq_messages_total")
    if enqueued is None or processed is None:
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
    if stream_events(s) < n_events:
        return False
    counts = jobs_counts(s)
    if counts is None or counts[1] < counts[0]:
        return False
    return pending_rows(s)[0] == 0


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
) -> None:
    """Poll ``predicate`` until true; BenchError at ``deadline`` or when a component died."""
    while True:
        for child in children:
            if not child.alive():
                raise BenchError(
                    f"{child.name} (pid {child.pid}) exited with {child.popen.returncode} while "
                    f"waiting for {what}; last lines of {child.log_path}:\n{child.log_tail()}"
                )
        if predicate():
            return
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {c.name}:\n{c.log_tail(10)}" for c in children)
            raise BenchError(f"{what}: not reached in time\n{tails}")
        time.sleep(POLL_S)


def _answers(port: int) -> bool:
    try:
        scrape(port, timeout=1.0)
    except OSError:
        return False
    return True


def start_pipeline(env: BenchEnv, group: ProcessGroup) -> list[Child]:
    s = env.settings
    deadline = time.monotonic() + STARTUP_DEADLINE_S
    relay = group.start("relay", "relay")
    stream = group.start("stream", "stream")
    worker = group.start("worker", "worker")
    children = [relay, stream, worker]
    _wait(
        "metrics endpoints",
        lambda: all(
            _answers(p)
            for p in (s.relay_metrics_port, s.stream_metrics_port, s.worker_metrics_port)
        ),
        deadline,
        children,
    )
    # One event all the way through: the stream's group has joined, the worker consumes.
    warm = license_event(
        "license.issued",
        "LIC-WARMUP-000001",
        category="food_business",
        issued_on=s.today - dt.timedelta(days=65),
        expires_on=s.today + dt.timedelta(days=300),
        occurred_at=dt.datetime.combine(s.today, dt.time(1), tzinfo=dt.UTC),
    )
    with Publisher.from_settings(s) as p:
        p.publish(warm)
    _wait("warm-up event through the stream", lambda: stream_events(s) >= 1, deadline, children)
    _wait("warm-up settled", lambda: settled(s, 1), deadline, children)
    return children


# ---- the benchmark ---------------------------------------------------------------------------
def run(env: BenchEnv, relay_baseline: float, n_licenses: int = N_LICENSES) -> list[Row]:
    s = env.settings
    registry = generate_registry(n_licenses, s.today, prefix="LICE2E")
    events = registry.events
    n_events = len(events) + 1  # and the warm-up event
    group = ProcessGroup(env=child_env(s), log_dir=env.tmp / "logs")
    try:
        t_start = time.monotonic()
        children = start_pipeline(env, group)
        relay, stream, worker = children
        startup_s = time.monotonic() - t_start
        base_jobs = jobs_counts(s) or (0.0, 0.0)

        t0 = time.monotonic()
        deadline = t0 + SETTLE_DEADLINE_S
        with Publisher(s.amqp_url, s.exchange) as publisher:
            for i, event in enumerate(events):
                publisher.publish(event)
                if i % 256 == 0 and time.monotonic() > deadline:
                    raise BenchError(f"publishing did not finish within {SETTLE_DEADLINE_S:g} s")
        publish_s = time.monotonic() - t0
        _wait(
            f"stream processed {n_events} events",
            lambda: stream_events(s) >= n_events,
            deadline,
            children,
        )
        stream_s = time.monotonic() - t0
        _wait("pipeline settled", lambda: settled(s, n_events), deadline, children)
        elapsed = time.monotonic() - t0

        enqueued, processed = jobs_counts(s) or (0.0, 0.0)
        pending, rows = pending_rows(s)
        relay_mib, _ = peak_rss_mib(relay)
        stream_mib, stream_procs = peak_rss_mib(stream)
        worker_mib, worker_procs = peak_rss_mib(worker)
    finally:
        group.stop_all()

    rate = len(events) / elapsed
    print(
        f"  pipeline: start-up (processes, group join, warm-up) {startup_s:.1f}s; "
        f"{len(events)} events published in {publish_s:.1f}s "
        f"({len(events) / publish_s:,.0f}/s with confirms), stream done at {stream_s:.1f}s, "
        f"settled at {elapsed:.1f}s"
    )
    print(
        f"  pipeline: {enqueued - base_jobs[0]:.0f} jobs enqueued by the stream, "
        f"{processed - base_jobs[1]:.0f} dramatiq messages processed, {rows} notification rows "
        f"({pending} pending); peak RSS relay {relay_mib:.0f} MiB, stream {stream_mib:.0f} MiB "
        f"({stream_procs} proc), worker {worker_mib:.0f} MiB ({worker_procs} procs, summed)"
    )
    return [
        Row(
            "pipeline",
            f"events/s (N={len(events)})",
            "end to end, settled",
            rate,
            "relay only",
            relay_baseline,
        ),
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


def relay_rate(rows: list[Row]) -> float:
    """The relay-only events/s already measured in this run (by bench_relay)."""
    for row in rows:
        if row.bench == "relay" and row.metric.startswith("events/s"):
            return row.measured
    raise LookupError("no relay figure")


def bench(rows: list[Row]) -> list[Row]:
    """Run after bench_relay (its figure is the baseline), or measure the relay first."""
    try:
        baseline = relay_rate(rows)
    except LookupError:
        with bench_env("relay") as env:
            baseline, _ = bench_relay.measure(env)
    with bench_env("pipeline") as env:
        return run(env, baseline)


def main() -> int:
    return run_main([("pipeline", bench)])


if __name__ == "__main__":
    sys.exit(main())
