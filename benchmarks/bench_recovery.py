"""Recovery with a city's registry: the daily renewal scan and a stream restart, 1,000,000 licenses.

``python -m benchmarks.bench_recovery [--licenses N] [--cases N]``

The registry (``license_record``) is loaded with COPY: the load through the pipeline is the
throughput benchmarks' business; here it is the size that matters. Expiry dates are spread
over five years, as five-year licenses issued every day would be, so about 1/1826 of the
registry reaches each reminder date on a given day.

- **Daily scan**: ``govnotify renewals scan`` with yesterday scanned (the scheduler's daily
  run), and the first scan ever (no checkpoint: it looks back as far as the largest offset,
  30 days). Measured from the command's start until every reminder job is confirmed by
  RabbitMQ (checked on the queue). Baseline: pipelined publishing of the same number of jobs of
  the same size, with no database (the floor of handing those jobs over). Goal: ≤ 10 s.
- **Stream restart**: the time from starting ``govnotify stream`` (its group and topics exist,
  the case table holds ``--cases`` cases in its changelog, the registry is a million licenses)
  to its first processed event. Baseline: a bare Faust app with the same broker settings and
  no table, started the same way. Goal: ≤ 30 s.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import re
import subprocess
import sys
import textwrap
import time

import psycopg

from benchmarks.common import (
    TODAY,
    BenchEnv,
    BenchError,
    Row,
    bench_env,
    child_env,
    purge_queue,
    run_main,
    take_jobs,
)
from infra.amqp import ConfirmPipeline
from infra.db import session
from infra.journal import set_checkpoint
from infra.metrics import sample_sum, scrape
from infra.processes import ProcessGroup
from producers.kafka import KafkaSink
from schemas.events import make_event
from workers.renewal_rules import scan_windows

__all__ = ["bench", "load_registry"]

#: Five-year licenses: expiry dates spread over this many days from today.
SPREAD_DAYS = 1826
STREAM_DEADLINE_S = 180.0
SCAN_DEADLINE_S = 300.0


def load_registry(env: BenchEnv, n: int) -> None:
    """``n`` live licenses with expiries spread over five years, by COPY."""
    url = env.settings.resolved_database_url.replace("postgresql+psycopg://", "postgresql://")
    at = dt.datetime(2026, 1, 5, tzinfo=dt.UTC).isoformat()
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        with cur.copy(
            "COPY license_record (license_id, status, category, issuing_department, holder_name,"
            " holder_mobile, issued_on, expires_on, last_event_at, updated_at) FROM STDIN"
        ) as copy:
            buffer = io.StringIO()
            for i in range(n):
                expires = TODAY + dt.timedelta(days=1 + i % SPREAD_DAYS)
                issued = expires - dt.timedelta(days=SPREAD_DAYS)
                buffer.write(
                    f"LIC-{i:08d}\tlive\tfood_business\t长安区市场监督管理局\t持证人{i % 997}"
                    f"\t+86138{i % 100_000_000:08d}\t{issued}\t{expires}\t{at}\t{at}\n"
                )
                if i % 50_000 == 49_999:
                    copy.write(buffer.getvalue())
                    buffer = io.StringIO()
            copy.write(buffer.getvalue())
        conn.commit()
        cur.execute("ANALYZE license_record")


def due_on(n: int, first: dt.date, offsets: list[int]) -> int:
    """Licenses of the loaded registry in the scan's windows (each gets one job per channel
    whose offset it reached; with the default offsets 30, 7 / 3 the windows tell)."""
    count = 0
    for low, high in scan_windows(first, TODAY, offsets):
        for days in range((low - TODAY).days, (high - TODAY).days + 1):
            if 1 <= days <= SPREAD_DAYS:
                count += n // SPREAD_DAYS + (1 if (days - 1) < n % SPREAD_DAYS else 0)
    return count


def _scan(env: BenchEnv, *, since: dt.date | None) -> tuple[float, int]:
    """Seconds until every job of one scan is confirmed on the queue, and how many."""
    s = env.settings
    reminders = s.queue("reminders")
    args = [sys.executable, "-m", "infra.cli", "renewals", "scan"]
    if since is not None:
        args += ["--since", since.isoformat()]
    started = time.monotonic()
    out = subprocess.run(
        args, env=child_env(s), capture_output=True, text=True, timeout=SCAN_DEADLINE_S
    )
    elapsed = time.monotonic() - started
    if out.returncode != 0:
        raise BenchError(f"renewals scan failed: {out.stdout}{out.stderr}")
    match = re.search(r"^(\d+) reminders handed", out.stdout, re.MULTILINE)
    if match is None:
        raise BenchError(f"renewals scan printed no count: {out.stdout}")
    handed = int(match.group(1))
    # Counted in the messages, not as messages: the product may group jobs into one message.
    messages, jobs = take_jobs(s, reminders)
    if jobs != handed:
        raise BenchError(f"the scan said {handed} jobs, the queue holds {jobs} ({messages} msgs)")
    purge_queue(s, reminders)
    return elapsed, handed


def _publish_floor(env: BenchEnv, n: int, size: int) -> float:
    """Seconds to publish ``n`` persistent messages of ``size`` bytes with pipelined confirms."""
    import pika

    s = env.settings
    queue = f"{s.namespace}.floor"
    conn = pika.BlockingConnection(pika.URLParameters(s.amqp_url))
    conn.channel().queue_declare(queue, durable=True)
    body = b"x" * size
    started = time.monotonic()
    outcomes = ConfirmPipeline(
        pika.URLParameters(s.amqp_url),
        "",
        ((body, queue, None) for _ in range(n)),
        window=1000,
        confirm_timeout=30,
    ).run()
    elapsed = time.monotonic() - started
    conn.channel().queue_delete(queue)
    conn.close()
    if not all(ok for ok, _ in outcomes):
        raise BenchError("the baseline publish lost messages")
    return elapsed


def scan_rows(env: BenchEnv, n: int) -> list[Row]:
    s = env.settings
    offsets = [*s.renewal_sms_offsets, *s.renewal_call_offsets]
    rows = []
    yesterday = TODAY - dt.timedelta(days=1)
    for label, first, checkpoint in (
        ("daily scan", TODAY, yesterday),
        ("first scan ever", TODAY - dt.timedelta(days=max(offsets)), None),
    ):
        with session(s) as db:
            if checkpoint is not None:
                set_checkpoint(db, "renewal_scan", checkpoint.isoformat())
        since = None if checkpoint is not None else first
        elapsed, handed = _scan(env, since=since)
        expected = due_on(n, first, offsets)
        if handed < expected:
            raise BenchError(f"{label}: {handed} jobs handed, {expected} licenses due")
        # A reminder job is about this big (JSON of a RenewalJob in a dramatiq message).
        floor = _publish_floor(env, handed, 900)
        print(f"  {label}: {handed:,} jobs in {elapsed:.2f}s (floor {floor:.2f}s)", flush=True)
        rows.append(
            Row(
                "recovery",
                f"{label}, s ({handed:,} jobs, {n:,} licenses)",
                "`govnotify renewals scan`",
                elapsed,
                "pipelined publish, no DB",
                floor,
            )
        )
    return rows


_BARE_APP = textwrap.dedent(
    """
    import os, sys, time, faust
    started = time.monotonic()
    name, broker, topic_name, datadir, report = sys.argv[1:6]
    sys.argv = [sys.argv[0], "worker", "-l", "warn", "--without-web"]
    app = faust.App(name, broker=broker, broker_session_timeout=10,
                    broker_rebalance_timeout=10, broker_heartbeat_interval=3,
                    producer_max_batch_size=1, web_enabled=False, datadir=datadir)
    topic = app.topic(topic_name, value_serializer="raw")

    @app.agent(topic)
    async def first(stream):
        async for _ in stream:
            # faust redirects stdout to its log: report in a file, then stop at once
            with open(report, "w") as out:
                out.write(f"{time.monotonic() - started:.3f}")
            os._exit(0)

    app.main()
    """
)


def _bare_restart(env: BenchEnv) -> float:
    """Seconds from starting a bare Faust app to its first event (a record already waits)."""
    s = env.settings
    topic = f"{s.namespace}.bare"
    sink = KafkaSink(s.kafka_bootstrap)
    try:
        sink.send_batch([(topic, b"k", b"v")])
    finally:
        sink.close()
    report = env.tmp / "bare.first"
    started = time.monotonic()
    with (env.tmp / "bare.log").open("w") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _BARE_APP,
                f"{s.namespace}-bare",
                s.faust_broker,
                topic,
                str(env.tmp / "bare"),
                str(report),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        while not report.exists() or not report.read_text():
            if proc.poll() is not None or time.monotonic() - started > STREAM_DEADLINE_S:
                raise BenchError(
                    f"the bare Faust app processed nothing; see {env.tmp / 'bare.log'}"
                )
            time.sleep(0.05)
        return time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def _stream_events(port: int) -> float:
    try:
        return sample_sum(scrape(port, timeout=1.0), "govnotify_stream_events_total") or 0.0
    except OSError:
        return 0.0


def _case_event(i: int) -> bytes:
    at = dt.datetime(2026, 11, 20, 9, 0, tzinfo=dt.UTC)
    event = make_event(
        "case.submitted",
        {
            "case_id": f"C-{i:07d}",
            "service_item": "食品经营许可证核发",
            "department": "市场监督管理局",
            "service_point": {
                "id": "SC-CHANGAN",
                "name": "长安区政务服务中心",
                "level": "service_centre",
            },
            "applicant": {"kind": "citizen", "name": "王秀英", "mobile": "13900000001"},
            "key_project": False,
            "submitted_at": at.isoformat(),
        },
        source="case-system",
        occurred_at=at,
    )
    return event.to_json_bytes()


def stream_rows(env: BenchEnv, n_cases: int, n_licenses: int) -> list[Row]:
    """Restart-to-first-event of the stream with a case table of ``n_cases`` entries."""
    s = env.settings
    cases = s.topic("cases")
    sink = KafkaSink(s.kafka_bootstrap)
    try:
        for start in range(0, n_cases, 5000):
            sink.send_batch(
                [
                    (cases, f"C-{i:07d}".encode(), _case_event(i))
                    for i in range(start, min(n_cases, start + 5000))
                ]
            )
    finally:
        sink.close()
    group = ProcessGroup(env=child_env(s), log_dir=env.tmp / "logs")
    try:
        stream = group.start("stream", "stream")
        deadline = time.monotonic() + STREAM_DEADLINE_S + n_cases / 200
        while _stream_events(s.stream_metrics_port) < n_cases:
            if not stream.alive() or time.monotonic() > deadline:
                raise BenchError(f"the stream did not apply the cases:\n{stream.log_tail()}")
            time.sleep(0.5)
        stream.stop()
        # Restarted: it recovers the case table from its changelog, then takes the next event.
        sink = KafkaSink(s.kafka_bootstrap)
        try:
            sink.send_batch([(cases, b"C-NEXT", _case_event(n_cases))])
        finally:
            sink.close()
        started = time.monotonic()
        stream = group.start("stream-restarted", "stream")
        while _stream_events(s.stream_metrics_port) < 1:
            if not stream.alive() or time.monotonic() - started > STREAM_DEADLINE_S:
                raise BenchError(f"the restarted stream processed nothing:\n{stream.log_tail()}")
            time.sleep(0.05)
        restart = time.monotonic() - started
    finally:
        group.stop_all()
    bare = _bare_restart(env)
    print(f"  stream restart: {restart:.2f}s (bare Faust app {bare:.2f}s)", flush=True)
    return [
        Row(
            "recovery",
            f"stream restart to first event, s ({n_cases:,} cases, {n_licenses:,} licenses)",
            "`govnotify stream`",
            restart,
            "bare Faust app",
            bare,
        )
    ]


def bench(_rows: list[Row], n_licenses: int = 1_000_000, n_cases: int = 20_000) -> list[Row]:
    with bench_env("recovery") as env:
        started = time.monotonic()
        load_registry(env, n_licenses)
        print(f"  registry of {n_licenses:,} loaded in {time.monotonic() - started:.1f}s")
        rows = scan_rows(env, n_licenses)
        rows += stream_rows(env, n_cases, n_licenses)
        return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--licenses", type=int, default=1_000_000)
    parser.add_argument("--cases", type=int, default=20_000)
    args = parser.parse_args()
    return run_main([("recovery", lambda rows: bench(rows, args.licenses, args.cases))])


if __name__ == "__main__":
    sys.exit(main())
