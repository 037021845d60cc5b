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
- **Peak RSS per process** (issue 12: ≤ 250 MB per process with a million licenses
  registered): each long-running component while it works on that state. Beside the stream's
  first run (which applies the cases) run ``govnotify relay`` (it relays
  ``LICENSE_EVENTS`` license events, which the stream records and the worker upserts into the
  registry), ``govnotify worker`` (it also sends the reminders of the scheduler's scan),
  ``govnotify api`` (answering ``/readyz``) and ``govnotify scheduler``, which runs the daily scan
  at its start (checkpoint: yesterday); a second scheduler runs the first scan ever (no
  checkpoint). Also measured: the stream through its restart (the case table's recovery) and
  each ``govnotify renewals scan`` of the scan figures. The peak is the kernel's (``VmHWM``,
  read from /proc on a thread, and once more before a component is stopped; every 10 ms for a
  command that runs to its end); for the worker, every process of the dramatiq tree: the
  largest one, and the sum of their peaks (an upper bound: pages shared since the fork count
  in each; the highest summed PSS is printed beside it). Baseline: the peak RSS of an
  interpreter that imported the CLI with every command group (what ``govnotify --help``
  loads; each component loads its own group only since session 14), in the same run. Each row
  says whether the process stayed within 250 MiB.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pika
import psycopg
from sqlalchemy import delete

from benchmarks.bench_pipeline import is_ready, ready_on
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
from infra.journal import get_checkpoint, set_checkpoint
from infra.metrics import sample_sum, scrape
from infra.processes import Child, ProcessGroup
from infra.services import free_port
from infra.settings import Settings, env_name
from producers.generator import generate_registry
from producers.kafka import KafkaSink
from producers.rabbitmq import Publisher
from schemas.events import make_event
from schemas.models import Checkpoint
from workers.observability import holds_jobs
from workers.renewal_rules import scan_windows

__all__ = ["RssWatch", "bench", "load_registry"]

#: Five-year licenses: expiry dates spread over this many days from today.
SPREAD_DAYS = 1826
STREAM_DEADLINE_S = 180.0
SCAN_DEADLINE_S = 300.0
#: The renewal scan's checkpoint (``workers.reminders.SCAN_CHECKPOINT``; that module builds
#: the worker's broker from the settings as it is imported, so it is not imported here).
SCAN_CHECKPOINT = "renewal_scan"
#: License events published through the relay beside the stream's first run (new licenses,
#: upserted by the worker into the registry of a million).
LICENSE_EVENTS = 2000
COMPONENTS_DEADLINE_S = 240.0


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


def _scan(env: BenchEnv, *, since: dt.date | None) -> tuple[float, int, int]:
    """Seconds until every job of one scan is confirmed on the queue, how many, and the peak
    RSS of the command in KiB."""
    s = env.settings
    reminders = s.queue("reminders")
    args = [sys.executable, "-m", "infra.cli", "renewals", "scan"]
    if since is not None:
        args += ["--since", since.isoformat()]
    out, elapsed, peak_kib = _run_to_end(args, child_env(s), SCAN_DEADLINE_S)
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
    return elapsed, handed, peak_kib


def _publish_floor(env: BenchEnv, n: int, size: int) -> float:
    """Seconds to publish ``n`` persistent messages of ``size`` bytes with pipelined confirms."""
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


def scan_rows(env: BenchEnv, n: int, peaks: list[Peak]) -> list[Row]:
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
        elapsed, handed, peak_kib = _scan(env, since=since)
        command = f"`govnotify renewals scan`{' --since' if since else ''}, {handed:,} jobs"
        peaks.append(Peak(f"renewals scan CLI, {label}", command, peak_kib, peak_kib, 1))
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


# ---- peak RSS of the processes ---------------------------------------------------------------
#: Issue 12: every process at most this much resident memory with a million licenses registered.
RSS_GOAL_MIB = 250
#: How often the watch thread reads /proc (VmHWM is the kernel's own peak: the interval only
#: matters for processes that come and go, such as dramatiq's forks).
RSS_SAMPLE_S = 0.25


@dataclass(frozen=True)
class Peak:
    """The peak RSS of one component process, or of its process tree (dramatiq's)."""

    process: str
    command: str
    largest_kib: int
    total_kib: int
    procs: int
    #: A tree's highest sum of its processes' PSS in one look (pages shared by a fork counted
    #: once, not in each process as in ``total_kib``); 0 for one process.
    pss_kib: int = 0

    @property
    def largest_mib(self) -> float:
        return self.largest_kib / 1024

    @property
    def total_mib(self) -> float:
        return self.total_kib / 1024


def _vm_hwm_kib(pid: int) -> int | None:
    """The peak resident set of ``pid`` so far (``VmHWM`` in /proc), None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None  # a zombie has no memory lines


def _pss_kib(pid: int) -> int:
    """The proportional set size of ``pid`` (its share of each page it maps), 0 if gone."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return 0
    return 0


def _group_members(pgids: set[int]) -> dict[int, list[int]]:
    """The live pids of each process group in ``pgids`` (a component and what it forked)."""
    members: dict[int, list[int]] = {pgid: [] for pgid in pgids}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        pgid = int(fields[2])  # state, ppid, pgrp, ...
        if pgid in members:
            members[pgid].append(int(entry.name))
    return members


class RssWatch:
    """Peak RSS of component processes and every process of their group, while they work.

    Each child of a :class:`ProcessGroup` leads its own process group, so the group is the
    component's whole tree (dramatiq's main, worker and fork processes). A thread reads every
    member's ``VmHWM`` every :data:`RSS_SAMPLE_S` s and keeps each pid's highest; :meth:`peak`
    reads once more and is called before the component is stopped.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watched: dict[str, tuple[int, str]] = {}  # process label -> (pgid, command)
        self._hwm: dict[str, dict[int, int]] = {}  # process label -> pid -> KiB
        self._pss: dict[str, int] = {}  # process label -> highest sum of PSS, KiB
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-watch", daemon=True)

    def __enter__(self) -> RssWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def watch(self, process: str, child: Child, command: str) -> Child:
        with self._lock:
            self._watched[process] = (child.pid, command)
            self._hwm[process] = {}
            self._pss[process] = 0
        self._sample()
        return child

    def peak(self, process: str) -> Peak:
        """The peak so far of ``process`` (its largest member and the sum of the members'
        peaks), and no more sampling of it."""
        self._sample()
        with self._lock:
            _, command = self._watched.pop(process)
            hwm = self._hwm.pop(process)
            pss = self._pss.pop(process)
        if not hwm:
            raise BenchError(f"no RSS read of {process}: it was gone before it was measured")
        return Peak(process, command, max(hwm.values()), sum(hwm.values()), len(hwm), pss)

    def _run(self) -> None:
        while not self._stop.wait(RSS_SAMPLE_S):
            self._sample()

    def _sample(self) -> None:
        with self._lock:
            watched = {process: pgid for process, (pgid, _) in self._watched.items()}
        if not watched:
            return
        members = _group_members(set(watched.values()))
        read = {
            process: {pid: kib for pid in members[pgid] if (kib := _vm_hwm_kib(pid)) is not None}
            for process, pgid in watched.items()
        }
        # A tree's PSS, summed in one look (smaps_rollup walks the page tables: trees only).
        pss = {
            process: sum(_pss_kib(pid) for pid in members[pgid])
            for process, pgid in watched.items()
            if len(members[pgid]) > 1
        }
        with self._lock:
            for process, kibs in read.items():
                hwm = self._hwm.get(process)
                if hwm is None:
                    continue  # measured meanwhile
                for pid, kib in kibs.items():
                    hwm[pid] = max(hwm.get(pid, 0), kib)
                self._pss[process] = max(self._pss[process], pss.get(process, 0))


#: How often the peak of a command that runs to its end is read (it must be read before the
#: process exits: a zombie has no memory; ``wait4``'s ``ru_maxrss`` would not do, as Linux
#: counts in it the peak of the memory the child was forked from, this harness's).
COMMAND_SAMPLE_S = 0.01


def _sample_until(pid: int, stop: threading.Event, peak: list[int]) -> None:
    while not stop.is_set():
        kib = _vm_hwm_kib(pid)
        if kib is None:
            return
        peak[0] = max(peak[0], kib)
        stop.wait(COMMAND_SAMPLE_S)


def _run_to_end(
    args: list[str], env: dict[str, str], timeout: float
) -> tuple[subprocess.CompletedProcess[str], float, int]:
    """``subprocess.run(args, capture_output=True, text=True, timeout=timeout)``, the seconds it
    took, and the command's peak RSS in KiB (its ``VmHWM``, read every
    :data:`COMMAND_SAMPLE_S` s on a thread until it exits)."""
    started = time.monotonic()
    with subprocess.Popen(
        args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        stop, peak = threading.Event(), [0]
        sampler = threading.Thread(
            target=_sample_until, args=(proc.pid, stop, peak), name="rss-command", daemon=True
        )
        sampler.start()
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except BaseException:
            proc.kill()
            proc.wait(10)
            raise
        finally:
            stop.set()
            sampler.join(5)
    elapsed = time.monotonic() - started
    return subprocess.CompletedProcess(args, proc.returncode, stdout, stderr), elapsed, peak[0]


#: The baseline: an interpreter that imports the CLI with every command group (as every
#: component did up to session 14, so the ratios compare across sessions), then prints its peak.
_BASELINE = (
    "import infra.cli, pathlib\n"
    "infra.cli.build_parser()\n"
    "print([l for l in pathlib.Path('/proc/self/status').read_text().splitlines()"
    " if l.startswith('VmHWM:')][0].split()[1])"
)


#: How the rows name the baseline.
BASELINE_LABEL = "the CLI, every command group imported"


def baseline_rss_kib(env: BenchEnv) -> int:
    """Peak RSS of the CLI with every command group imported (the ``VmHWM`` it reads then)."""
    out = subprocess.run(
        [sys.executable, "-c", _BASELINE],
        env=child_env(env.settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    if out.returncode != 0:
        raise BenchError(f"the baseline interpreter failed: {out.stdout}{out.stderr}")
    return int(out.stdout.split()[-1])


_BARE_APP = textwrap.dedent(
    """
    import os, sys, time, faust
    started = time.monotonic()
    name, broker, topic_name, datadir, report, session = sys.argv[1:7]
    sys.argv = [sys.argv[0], "worker", "-l", "warn", "--without-web"]
    # The stream's group timeouts (streams.app): a join waits about half the session's.
    app = faust.App(name, broker=broker, broker_session_timeout=float(session),
                    broker_rebalance_timeout=10, broker_heartbeat_interval=float(session) / 3,
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
                str(s.stream_session_timeout_s),
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


# ---- the other components at work beside the stream --------------------------------------------
@dataclass
class AtWork:
    """relay, worker, api and a scheduler, started beside the stream's first run."""

    relay: Child
    worker: Child
    api: Child
    scheduler: Child
    api_metrics_port: int
    events: int

    @property
    def children(self) -> list[Child]:
        return [self.relay, self.worker, self.api, self.scheduler]


def component_env(s: Settings) -> tuple[dict[str, str], int]:
    """The children's environment, with free ports for the scheduler's and the api's listeners
    (``bench_env`` gives free ones to relay, stream and worker only); and the api's metrics
    port."""
    api_metrics = free_port()
    extra = {
        env_name("scheduler_metrics_port"): str(free_port()),
        env_name("api_port"): str(free_port()),
        env_name("api_metrics_port"): str(api_metrics),
    }
    return {**child_env(s), **extra}, api_metrics


def _scan_checkpoint(s: Settings) -> str | None:
    with session(s) as db:
        return get_checkpoint(db, SCAN_CHECKPOINT)


def _check_alive(children: list[Child], what: str) -> None:
    for child in children:
        if not child.alive():
            raise BenchError(f"{child.name} exited while {what}:\n{child.log_tail()}")


def _ready_work_messages(s: Settings) -> int:
    """Messages ready on the work queues and their delay queues (dead letters not counted)."""
    return ready_on(s, [q for q in s.work_queues if not q.endswith(".XQ")])


def _scrape(port: int) -> dict[str, float] | None:
    try:
        return scrape(port, timeout=1.0)
    except OSError:
        return None


def _worker_done(s: Settings) -> float | None:
    """The worker's messages processed when it is idle with nothing left for it (nothing
    ready, nothing in progress, at least as many messages as the stream sent it jobs), else
    None."""
    worker, stream = _scrape(s.worker_metrics_port), _scrape(s.stream_metrics_port)
    if worker is None or stream is None:
        return None
    processed = sample_sum(worker, "dramatiq_messages_total")
    if not processed or processed < sample_sum(stream, "govnotify_jobs_enqueued_total"):
        return None
    if holds_jobs(worker):
        return None
    return processed if _ready_work_messages(s) == 0 else None


def _stopping(children: list[Child]) -> list[threading.Thread]:
    """Stop ``children`` side by side (each SIGTERM, wait, SIGKILL the rest of its group), on
    threads: join them. ``ProcessGroup.stop_all`` still stops each on every exit path."""
    threads = [threading.Thread(target=c.stop, name=f"stop-{c.name}") for c in children]
    for thread in threads:
        thread.start()
    return threads


def _scan_handed(child: Child) -> str:
    """The jobs a scheduler's scan handed over, from its log line."""
    match = re.search(r"renewal scan for \S+: (\d+) reminders handed", child.log_tail(200))
    return f"{int(match.group(1)):,}" if match else "?"


def start_at_work(
    env: BenchEnv, group: ProcessGroup, watch: RssWatch, api_metrics_port: int
) -> AtWork:
    """relay, worker, api and a scheduler whose start runs the daily scan (checkpoint
    yesterday); ``LICENSE_EVENTS`` license events published for the relay."""
    s = env.settings
    with session(s) as db:
        set_checkpoint(db, SCAN_CHECKPOINT, (TODAY - dt.timedelta(days=1)).isoformat())
    events = generate_registry(LICENSE_EVENTS, TODAY, prefix="LICRSS").events
    relay = group.start("relay", "relay")
    watch.watch("relay", relay, f"`govnotify relay`, {len(events):,} license events")
    worker = group.start("worker", "worker")
    watch.watch("worker", worker, "`govnotify worker` (dramatiq)")
    api = group.start("api", "api")
    watch.watch("api", api, "`govnotify api`, answering /readyz")
    scheduler = group.start("scheduler-daily", "scheduler")
    watch.watch("scheduler, daily scan", scheduler, "`govnotify scheduler`, daily scan")
    # Declares the relay's queue too: the events wait there for the relay to start.
    with Publisher.from_settings(s) as publisher:
        outcomes = publisher.publish_many(
            [(e.to_json_bytes(), e.event_type, e.event_id) for e in events]
        )
    failed = [why for ok, why in outcomes if not ok]
    if failed:
        raise BenchError(f"{len(failed)} of {len(events)} license events refused: {failed[:1]}")
    return AtWork(relay, worker, api, scheduler, api_metrics_port, len(events))


def finish_at_work(
    env: BenchEnv, group: ProcessGroup, watch: RssWatch, work: AtWork, stream: Child
) -> list[Peak]:
    """Once the daily scan is done and the worker has nothing left: their peaks; then a
    scheduler for the first scan ever, and its peak. Every one of them stopped."""
    s = env.settings
    today = TODAY.isoformat()
    started = time.monotonic()
    deadline = started + COMPONENTS_DEADLINE_S
    last: float | None = None
    while True:
        _check_alive([*work.children, stream], "at work on the registry")
        # Twice in a row with the same count: nothing was in flight between the two looks.
        done = _worker_done(s) if _scan_checkpoint(s) == today else None
        if done is not None and done == last and is_ready(work.api_metrics_port):
            break
        last = done
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {c.name}:\n{c.log_tail(10)}" for c in work.children)
            raise BenchError(f"the daily scan's reminders were not all handled:\n{tails}")
        time.sleep(0.25)
    idle = time.monotonic() - started
    samples = _scrape(s.worker_metrics_port) or {}
    errors = sample_sum(samples, "dramatiq_message_errors_total")
    daily = _scan_handed(work.scheduler)
    print(
        f"  at work: scheduler's daily scan handed {daily} jobs; worker processed {last:,.0f} "
        f"messages ({errors:,.0f} failed), all done {idle:.1f}s after the stream's first run",
        flush=True,
    )
    peaks = [watch.peak("relay"), watch.peak("worker"), watch.peak("api")]
    daily_peak = watch.peak("scheduler, daily scan")
    peaks.append(
        Peak(
            daily_peak.process,
            f"{daily_peak.command} ({daily} jobs)",
            daily_peak.largest_kib,
            daily_peak.total_kib,
            daily_peak.procs,
        )
    )
    # The daily scan's scheduler first: the next one's scan must be its first. The others stop
    # meanwhile: the worker takes no more messages long before a new scheduler has started.
    work.scheduler.stop()
    stopping = _stopping([work.relay, work.worker, work.api])
    # No checkpoint: the next scheduler's scan is the first scan ever (30 days looked back).
    with session(s) as db:
        db.execute(delete(Checkpoint).where(Checkpoint.name == SCAN_CHECKPOINT))
        db.commit()
    scheduler = group.start("scheduler-first", "scheduler")
    watch.watch("scheduler, first scan ever", scheduler, "`govnotify scheduler`, first scan")
    while _scan_checkpoint(s) != today:
        _check_alive([scheduler], "running the first scan ever")
        if time.monotonic() > deadline:
            raise BenchError(f"the scheduler's first scan did not end:\n{scheduler.log_tail()}")
        time.sleep(0.1)
    first = watch.peak("scheduler, first scan ever")
    handed = _scan_handed(scheduler)
    scheduler.stop()
    for thread in stopping:
        thread.join()
    # No worker runs any more: what the scan handed over is not for this run.
    purge_queue(s, s.queue("reminders"))
    peaks.append(
        Peak(
            first.process,
            f"{first.command} ({handed} jobs)",
            first.largest_kib,
            first.total_kib,
            first.procs,
        )
    )
    return peaks


def stream_rows(env: BenchEnv, n_cases: int, n_licenses: int, peaks: list[Peak]) -> list[Row]:
    """Restart-to-first-event of the stream with a case table of ``n_cases`` entries; beside
    its first run the other components at work on the registry (their peak RSS in ``peaks``)."""
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
    children_env, api_metrics_port = component_env(s)
    group = ProcessGroup(env=children_env, log_dir=env.tmp / "logs")
    with RssWatch() as watch:
        try:
            first_run = time.monotonic()
            stream = group.start("stream", "stream")
            watch.watch(
                "stream", stream, f"`govnotify stream`, first run: {n_cases:,} cases + licenses"
            )
            work = start_at_work(env, group, watch, api_metrics_port)
            n_events = n_cases + work.events
            deadline = time.monotonic() + STREAM_DEADLINE_S + n_events / 200
            while _stream_events(s.stream_metrics_port) < n_events:
                if not stream.alive() or time.monotonic() > deadline:
                    raise BenchError(f"the stream did not apply the cases:\n{stream.log_tail()}")
                time.sleep(0.5)
            applied = time.monotonic()
            print(
                f"  stream's first run: {n_events:,} events applied in {applied - first_run:.1f}s",
                flush=True,
            )
            peaks += finish_at_work(env, group, watch, work, stream)
            peaks.append(watch.peak("stream"))
            print(
                f"  at work: {time.monotonic() - applied:.1f}s after the stream's first run "
                f"applied its {n_events:,} events",
                flush=True,
            )
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
                    raise BenchError(
                        f"the restarted stream processed nothing:\n{stream.log_tail()}"
                    )
                time.sleep(0.05)
            restart = time.monotonic() - started
            # Read after the timing, and before its stop: the recovery is behind it.
            watch.watch(
                "stream, restarted",
                stream,
                f"`govnotify stream` restarted: {n_cases:,}-case table recovered, first event",
            )
            peaks.append(watch.peak("stream, restarted"))
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


#: The order of the rows: as the pipeline runs, then the scans, then the api.
RSS_ORDER = [
    "relay",
    "stream",
    "stream, restarted",
    "worker",
    "scheduler, daily scan",
    "scheduler, first scan ever",
    "renewals scan CLI, daily scan",
    "renewals scan CLI, first scan ever",
    "api",
]


def rss_rows(peaks: list[Peak], baseline_mib: float, n_licenses: int) -> list[Row]:
    """A row per process: its peak RSS against a bare interpreter's, and the goal's verdict."""
    measured: list[tuple[str, str, float]] = []
    for peak in sorted(peaks, key=lambda p: RSS_ORDER.index(p.process)):
        if peak.procs == 1:
            measured.append((peak.process, peak.command, peak.largest_mib))
        else:
            measured.append((f"{peak.process}, largest process", peak.command, peak.largest_mib))
            measured.append(
                (
                    f"{peak.process}, tree of {peak.procs} processes (sum of their peaks)",
                    f"{peak.command}, highest summed PSS {peak.pss_kib / 1024:.0f} MiB",
                    peak.total_mib,
                )
            )
    rows = []
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"  peak RSS (goal ≤ {RSS_GOAL_MIB} MiB per process; load average {load}):")
    print(f"    baseline {BASELINE_LABEL}: {baseline_mib:.0f} MiB")
    for process, command, mib in measured:
        verdict = "yes" if mib <= RSS_GOAL_MIB else "NO"
        print(f"    {process}: {mib:.0f} MiB, ≤ {RSS_GOAL_MIB}: {verdict}  ({command})")
        rows.append(
            Row(
                "recovery",
                f"peak RSS MiB, {process}, {n_licenses:,} licenses registered",
                f"{command}; ≤ {RSS_GOAL_MIB}: {verdict}",
                mib,
                BASELINE_LABEL,
                baseline_mib,
            )
        )
    return rows


def bench(_rows: list[Row], n_licenses: int = 1_000_000, n_cases: int = 20_000) -> list[Row]:
    with bench_env("recovery") as env:
        started = time.monotonic()
        load_registry(env, n_licenses)
        print(f"  registry of {n_licenses:,} loaded in {time.monotonic() - started:.1f}s")
        peaks: list[Peak] = []
        rows = scan_rows(env, n_licenses, peaks)
        rows += stream_rows(env, n_cases, n_licenses, peaks)
        rows += rss_rows(peaks, baseline_rss_kib(env) / 1024, n_licenses)
        return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--licenses", type=int, default=1_000_000)
    parser.add_argument("--cases", type=int, default=20_000)
    args = parser.parse_args()
    return run_main([("recovery", lambda rows: bench(rows, args.licenses, args.cases))])


if __name__ == "__main__":
    sys.exit(main())
