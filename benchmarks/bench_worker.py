"""The worker alone: renewal SMS from a backlog already waiting in RabbitMQ.

One environment (``bench_env``: clock pinned at 10:00 of a fixed day, so quiet hours hold
nothing whatever the hour). For each side, ``--sms`` (then ``--twilio-sms``) live licenses
expiring in 30 days, distinct mobiles, are loaded into the registry (COPY) and the daily scan
hands their reminders to the queues as production does it: ``govnotify renewals scan`` (the
scheduler's daily run; ``workers.reminders.renewal_scan`` → ``JobSender.send_many``, which
groups the jobs into messages however the product groups them). Only then does a worker start
(``govnotify worker``: one process, ``worker_threads`` threads) and runs until every reminder
is sent and nothing is pending or waiting on the queues; the time is the worker's own, from
the first row it made to the last it recorded (``created_at`` / ``updated_at``).

1. sandbox — no SMS provider configured: the sandbox notifier (never paced).
   Baseline: dramatiq alone (``benchmarks.noop_worker``: same broker options, one process,
   the same threads) consuming a copy of the very backlog, message for message, with an actor
   that does nothing: the floor of taking these messages from RabbitMQ here.
2. twilio — the real ``twilio`` client against the loopback fake Twilio
   (``tests/fakes/twilio_server.py``) in keep-alive mode (HTTP/1.1, as real Twilio: the
   client's requests session reuses its connection), served by a process of its own
   (``FakeTwilioProcess``: its HTTP parsing does not share this harness's GIL; with
   ``--fake-in-process``, from this process instead), send rates unpaced
   (``GOVNOTIFY_SEND_RATES`` twilio=0; Twilio's declared 50/s would be the figure otherwise).
   Baseline: the same fake alone, as many ``http.client`` threads as the worker has, each on
   one persistent connection, in another process (``profile_stages.fake_alone``).

A worker that fails a message (``dramatiq_message_errors_total``) fails the benchmark.

    python -m benchmarks.bench_worker [--sms N] [--twilio-sms N] [--skip-twilio]
        [--skip-sandbox] [--fake-in-process]
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pika
import psycopg
from sqlalchemy import delete, func, select

from benchmarks.bench_pipeline import (
    _answers,
    _wait,
    check_worker_errors,
    ready_messages,
    worker_holds_jobs,
)
from benchmarks.common import (
    TODAY,
    BenchEnv,
    BenchError,
    Every,
    Row,
    bench_env,
    child_env,
    run_main,
)
from benchmarks.profile_stages import cpu_seconds, fake_alone
from infra.amqp import DEFAULT_WINDOW, ConfirmPipeline
from infra.db import session
from infra.journal import set_checkpoint
from infra.processes import Child, ProcessGroup
from infra.settings import Settings, load_settings
from schemas.models import LicenseRecord, Notification
from tests.fakes.twilio_server import FakeTwilio, FakeTwilioProcess

N_SANDBOX = 3000
N_TWILIO = 1500
#: Scan, worker start-up, and each side's run must finish within this.
STEP_DEADLINE_S = 120.0
#: How often the run's end is polled (a database count). The figure does not depend on it (the
#: time is read from the rows' own stamps); a shorter one costs PostgreSQL and the worker CPU
#: that the run shares with them.
POLL_S = 0.2
TWILIO_FROM = "+15017122661"
#: Reminders of these licenses are due today: the 30-day SMS (the 7-day one and the 3-day call
#: list come later).
EXPIRES_IN_DAYS = 30
DONE = ("sent", "delivered")


# ---- the backlog -----------------------------------------------------------------------------
def load_due(s: Settings, n: int, prefix: str, first_mobile: int = 0) -> None:
    """``n`` live licenses ``<prefix>-NNNNNNN`` expiring in 30 days, distinct mobiles, by COPY."""
    url = s.resolved_database_url.replace("postgresql+psycopg://", "postgresql://")
    at = dt.datetime(2026, 1, 5, tzinfo=dt.UTC).isoformat()
    expires = TODAY + dt.timedelta(days=EXPIRES_IN_DAYS)
    issued = expires - dt.timedelta(days=365)
    buffer = io.StringIO()
    for i in range(n):
        buffer.write(
            f"{prefix}-{i:07d}\tlive\tfood_business\t长安区市场监督管理局\t持证人{i % 997}"
            f"\t+86139{first_mobile + i:08d}\t{issued}\t{expires}\t{at}\t{at}\n"
        )
    with psycopg.connect(url) as conn, conn.cursor() as cur:
        with cur.copy(
            "COPY license_record (license_id, status, category, issuing_department, holder_name,"
            " holder_mobile, issued_on, expires_on, last_event_at, updated_at) FROM STDIN"
        ) as copy:
            copy.write(buffer.getvalue())
        conn.commit()
        cur.execute("ANALYZE license_record")


def forget_licenses(s: Settings, prefix: str) -> None:
    """Take a side's licenses out of the registry, so the next scan does not find them."""
    with session(s) as db:
        db.execute(delete(LicenseRecord).where(LicenseRecord.license_id.startswith(prefix)))
        db.commit()


def scan(s: Settings, n: int) -> float:
    """``govnotify renewals scan`` with yesterday scanned; checks it handed ``n`` reminders."""
    with session(s) as db:
        set_checkpoint(db, "renewal_scan", (TODAY - dt.timedelta(days=1)).isoformat())
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "infra.cli", "renewals", "scan"],
        env=child_env(s),
        capture_output=True,
        text=True,
        timeout=STEP_DEADLINE_S,
    )
    elapsed = time.monotonic() - started
    if out.returncode != 0:
        raise BenchError(f"renewals scan failed: {out.stdout}{out.stderr}")
    match = re.search(r"^(\d+) reminders handed", out.stdout, re.MULTILINE)
    if match is None or int(match.group(1)) != n:
        raise BenchError(f"renewals scan: {n} reminders expected, it said: {out.stdout.strip()}")
    return elapsed


def copy_backlog(s: Settings) -> list[bytes]:
    """The bodies of every message waiting on the reminders queue, left in place: each is
    taken unacknowledged, and closing the channel puts them all back."""
    conn = pika.BlockingConnection(pika.URLParameters(s.amqp_url))
    bodies = []
    try:
        channel = conn.channel()
        while True:
            method, _props, body = channel.basic_get(s.queue("reminders"), auto_ack=False)
            if method is None:
                break
            bodies.append(body)
        channel.close()  # unacknowledged: every message goes back on the queue
    finally:
        conn.close()
    return bodies


# ---- reading the worker ----------------------------------------------------------------------
def statuses(s: Settings, prefix: str) -> Counter[str]:
    with session(s) as db:
        rows = db.execute(
            select(Notification.status, func.count())
            .where(Notification.subject_id.startswith(prefix))
            .group_by(Notification.status)
        ).all()
    return Counter({status: n for status, n in rows})


def _done(s: Settings, n: int, prefix: str, worker: Child, errors_due: Every) -> bool:
    """Every reminder of ``prefix`` recorded and nothing left on the queues or in flight.

    The database first: a /metrics scrape costs the measured worker a few ms of its GIL (its
    multiprocess collector reads every process's files), so its error count is read at most
    once a second until the rows say done, then every time.
    """
    status = statuses(s, prefix)
    if status["created"] + status["sending"] or sum(status[k] for k in DONE) < n:
        if errors_due():
            check_worker_errors(s, worker)
        return False
    check_worker_errors(s, worker)
    if worker_holds_jobs(s):
        return False
    return ready_messages(s) == 0


def _busy_seconds(s: Settings, prefix: str) -> float:
    """From the first of ``prefix``'s rows made to the last one recorded, on the worker's own
    stamps: the worker's time on them, whatever the polling (a first message is counted only
    once its whole batch is done, so a clock started on it misses up to a batch per thread)."""
    with session(s) as db:
        first, last = db.execute(
            select(func.min(Notification.created_at), func.max(Notification.updated_at)).where(
                Notification.subject_id.startswith(prefix)
            )
        ).one()
    return (last - first).total_seconds()


def run_worker(
    s: Settings, group: ProcessGroup, n: int, prefix: str
) -> tuple[float, Counter[str], float]:
    """Start ``govnotify worker`` on the waiting backlog and wait until all ``n`` reminders of
    ``prefix`` are sent and nothing is left; the seconds it worked on them (:func:`_busy_seconds`),
    the statuses, and the CPU seconds its processes used after start-up."""
    worker = group.start(f"worker-{prefix}", "worker")
    try:
        deadline = time.monotonic() + STEP_DEADLINE_S
        _wait("worker metrics", lambda: _answers(s.worker_metrics_port), deadline, [worker], 0.05)
        c0 = cpu_seconds(worker)
        errors_due = Every(1.0)
        while True:
            sent = lambda: _done(s, n, prefix, worker, errors_due)  # noqa: E731
            _wait(f"{n} reminders sent", sent, deadline, [worker], POLL_S)
            cpu = cpu_seconds(worker) - c0
            time.sleep(0.3)  # the same a moment later: nothing was in flight between checks
            if _done(s, n, prefix, worker, errors_due):
                break
        elapsed = _busy_seconds(s, prefix)
        return elapsed, statuses(s, prefix), cpu
    finally:
        worker.stop()
        group.children.remove(worker)


def noop_seconds(env: BenchEnv, bodies: list[bytes]) -> float:
    """dramatiq with a do-nothing actor on a copy of ``bodies`` (each re-addressed to it):
    seconds from its first message to its last (counted by the actor's file)."""
    s = env.settings
    queue = f"{s.namespace}.bench-noop"
    count_file = env.tmp / "noop.count"
    count_file.write_bytes(b"")
    messages = []
    for body in bodies:
        message = json.loads(body)
        message.update(queue_name=queue, actor_name="bench_noop")
        messages.append((json.dumps(message).encode(), queue, message.get("message_id")))
    conn = pika.BlockingConnection(pika.URLParameters(s.amqp_url))
    log_path = env.tmp / "logs" / "noop-worker.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    child: Child | None = None
    try:
        # Declared as dramatiq declares it, so the worker's own declaration matches.
        conn.channel().queue_declare(
            queue,
            durable=True,
            arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": f"{queue}.XQ"},
        )
        outcomes = ConfirmPipeline(
            pika.URLParameters(s.amqp_url), "", messages, window=DEFAULT_WINDOW, confirm_timeout=30
        ).run()
        if not all(ok for ok, _why in outcomes):
            raise BenchError("loading the no-op backlog failed")
        with log_path.open("ab") as log:
            popen = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "dramatiq",
                    "benchmarks.noop_worker",
                    "--processes",
                    "1",
                    "--threads",
                    str(s.worker_threads),
                ],
                env={
                    **child_env(s),
                    "BENCH_AMQP_URL": s.amqp_url,
                    "BENCH_NOOP_QUEUE": queue,
                    "BENCH_NOOP_FILE": str(count_file),
                },
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        child = Child("noop-worker", popen, log_path)
        deadline = time.monotonic() + STEP_DEADLINE_S
        _wait(
            "no-op worker's first message",
            lambda: count_file.stat().st_size > 0,
            deadline,
            [child],
            0.005,
        )
        t0 = time.monotonic()
        _wait(
            "no-op worker done",
            lambda: count_file.stat().st_size >= len(bodies),
            t0 + STEP_DEADLINE_S,
            [child],
            0.005,
        )
        return time.monotonic() - t0
    finally:
        if child is not None:
            child.stop()
        try:
            channel = conn.channel()
            for name in (queue, f"{queue}.DQ", f"{queue}.XQ"):
                channel.queue_delete(name)
        finally:
            conn.close()


# ---- the sides -------------------------------------------------------------------------------
def sandbox_rows(env: BenchEnv, n: int) -> list[Row]:
    s = env.settings
    prefix = "WRKSBX"
    group = ProcessGroup(env=child_env(s), log_dir=env.tmp / "logs")
    try:
        load_due(s, n, prefix)
        scan_s = scan(s, n)
        backlog = copy_backlog(s)
        noop_s = noop_seconds(env, backlog)
        elapsed, status, cpu = run_worker(s, group, n, prefix)
    finally:
        group.stop_all()
    forget_licenses(s, prefix)
    sent = sum(status[k] for k in DONE)
    print(
        f"  worker sandbox: backlog of {n} reminders in {len(backlog)} messages (scan "
        f"{scan_s:.1f}s); {sent} SMS in {elapsed:.2f}s ({dict(status)}), worker CPU "
        f"{cpu:.2f}s; no-op dramatiq "
        f"{len(backlog)} messages in {noop_s:.2f}s"
    )
    return [
        Row(
            "worker",
            f"SMS/s (N={n}, {len(backlog)} msgs)",
            f"sandbox, from backlog, 1 proc x {s.worker_threads} thr",
            sent / elapsed,
            "dramatiq no-op actor, same msgs",
            n / noop_s,
        )
    ]


def _pid_cpu(pid: int | None) -> float:
    """utime + stime of one live process, in seconds (0 when ``pid`` is None)."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:13]) / os.sysconf("SC_CLK_TCK")


def twilio_rows(
    env: BenchEnv, n: int, fake_in_process: bool = False, processes: int = 1
) -> list[Row]:
    s = env.settings
    prefix = f"WRKTW{'XY'[processes - 1]}"
    twilio: FakeTwilio | FakeTwilioProcess = (
        FakeTwilio(keep_alive=True) if fake_in_process else FakeTwilioProcess(keep_alive=True)
    )
    where = "this process" if fake_in_process else "own process"
    twilio.start()
    try:
        tw = load_settings(
            **{
                **s.model_dump(),
                "twilio_account_sid": twilio.account_sid,
                "twilio_auth_token": twilio.auth_token,
                "twilio_from": TWILIO_FROM,
                "twilio_api_base": twilio.base_url,
                # The worker's speed, not Twilio's declared 50 a second (notifiers.pacing).
                "send_rates": {"twilio": 0},
                "worker_processes": processes,
            }
        )
        group = ProcessGroup(env=child_env(tw), log_dir=env.tmp / f"logs-twilio-{processes}")
        try:
            load_due(s, n, prefix, first_mobile=50_000_000 + processes * 1_000_000)
            scan(tw, n)
            fake_rate = fake_alone(twilio, n, threads=s.worker_threads)
            twilio.clear()
            before = twilio.stats()
            fake_pid = getattr(twilio, "pid", None)
            fake_cpu0 = _pid_cpu(fake_pid)
            load0 = os.getloadavg()[0]
            elapsed, status, cpu = run_worker(tw, group, n, prefix)
            fake_cpu = _pid_cpu(fake_pid) - fake_cpu0
            load1 = os.getloadavg()[0]
        finally:
            group.stop_all()
        after = twilio.stats()
        at_fake = after["messages"]
    finally:
        twilio.stop()
    forget_licenses(s, prefix)
    sent = sum(status[k] for k in DONE)
    if at_fake != n:
        raise BenchError(f"the fake Twilio took {at_fake} messages, {n} reminders were due")
    # Less our own stats request, when the fake answered it over HTTP (own process).
    conns = after["connections"] - before["connections"] - (fake_pid is not None)
    fake_cpu_text = "" if fake_pid is None else f", fake CPU {fake_cpu:.2f}s"
    print(
        f"  worker twilio ({processes} proc): {sent} SMS in {elapsed:.2f}s ({dict(status)}), "
        f"{at_fake} at the fake "
        f"(keep-alive, {where}) over {conns} connections; worker CPU {cpu:.2f}s{fake_cpu_text}; "
        f"load {load0:.2f} -> {load1:.2f}; fake alone ({s.worker_threads} keep-alive "
        f"http.client threads) {fake_rate:,.0f}/s"
    )
    return [
        Row(
            "worker",
            f"SMS/s (N={n})",
            f"twilio client -> keep-alive fake ({where}), {processes} proc x {s.worker_threads} "
            "thr, unpaced",
            sent / elapsed,
            f"fake alone, {s.worker_threads} keep-alive threads",
            fake_rate,
        )
    ]


def run(
    env: BenchEnv,
    n_sandbox: int = N_SANDBOX,
    n_twilio: int = N_TWILIO,
    fake_in_process: bool = False,
) -> list[Row]:
    rows = sandbox_rows(env, n_sandbox) if n_sandbox else []
    if n_twilio:
        # One worker process is CPU-bound on the HTTP client; a second one shows what another
        # core buys.
        for processes in (1, 2):
            rows += twilio_rows(env, n_twilio, fake_in_process, processes)
    return rows


def bench(
    _rows: list[Row],
    n_sandbox: int = N_SANDBOX,
    n_twilio: int = N_TWILIO,
    fake_in_process: bool = False,
) -> list[Row]:
    with bench_env("worker") as env:
        return run(env, n_sandbox, n_twilio, fake_in_process)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sms", type=int, default=N_SANDBOX)
    p.add_argument("--twilio-sms", type=int, default=N_TWILIO)
    p.add_argument("--skip-twilio", action="store_true")
    p.add_argument("--skip-sandbox", action="store_true")
    p.add_argument(
        "--fake-in-process",
        action="store_true",
        help="serve the fake Twilio from this process (default: a process of its own)",
    )
    args = p.parse_args()
    n_sandbox = 0 if args.skip_sandbox else args.sms
    n_twilio = 0 if args.skip_twilio else args.twilio_sms
    return run_main(
        [("worker", lambda rows: bench(rows, n_sandbox, n_twilio, args.fake_in_process))]
    )


if __name__ == "__main__":
    sys.exit(main())
