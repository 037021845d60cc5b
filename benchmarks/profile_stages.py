"""Where the time goes: each stage under load with py-spy attached, and the SQL it sends.

One isolated environment (``bench_env``): relay, stream and worker run as real processes, each
stage alone against a backlog, then all together (docs/perf/where-the-time-goes.md):

1. relay   — ``--licenses`` registry events plus ``--sms`` licenses due a reminder today are
   preloaded on the relay queue (plain publishes); the relay starts with py-spy attached and is
   profiled until its ``govnotify_events_relayed_total`` reaches them all.
2. stream  — started once the relay is done (the topics hold the backlog); profiled from its
   first counted event until ``govnotify_stream_events_total`` has them all. No worker runs,
   so the jobs wait on RabbitMQ.
3. worker, sandbox — started on the queued jobs; py-spy (``--subprocesses``: dramatiq's worker
   process is a child) from its first row until nothing is pending and every job is consumed.
4. worker, twilio — ``--twilio-sms`` more due licenses through relay and stream (worker
   stopped), then a worker whose SMS go through the real ``twilio`` client to the loopback fake
   (``tests/fakes/twilio_server.py``, keep-alive as real Twilio, served from this process:
   py-spy looks at the worker, and the fake's records are read directly). The fake alone (8
   keep-alive ``http.client`` threads in another process, no worker) is measured first.
5. pipeline — relay, stream and a sandbox worker all running, ``generate_registry(--pipeline)``
   published with ``Publisher.publish_many`` (as ``bench_pipeline``), every process profiled.

Profiles are py-spy ``--format raw --idle --threads --full-filenames`` (wall clock: a thread
waiting on PostgreSQL counts as time spent on PostgreSQL); with ``--gil``, py-spy's ``--gil``
instead of ``--idle`` (only the thread holding the GIL: where the Python CPU goes). ``analyse`` puts
each sample in the bucket of its innermost recognised frame (psycopg, SQLAlchemy, logging, pika,
aiokafka, faust, …) and in the phase of the innermost of a few named hot-path functions
(``PHASES``), per view (``VIEWS``: the threads that do the stage's work), into
``DIR/tables.md``. SQL is counted in every component process by
``benchmarks/sqlcount/sitecustomize.py`` and, server side, from ``pg_stat_database`` of the
run's own database; CPU seconds from ``/proc``; all in ``DIR/facts.json``.

    python -m benchmarks.profile_stages [--licenses 20000] [--sms 3000] [--twilio-sms 1500]
        [--pipeline 3000] [--rate 50] [--gil] [--skip-twilio] [--skip-pipeline] [--out DIR]
    python -m benchmarks.profile_stages --analyse --out DIR    # re-read DIR's profiles
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

from sqlalchemy import func, select, text

from benchmarks import bench_pipeline, bench_relay
from benchmarks.common import PG_ADMIN_URL, BenchEnv, BenchError, bench_env, child_env
from infra.db import session
from infra.metrics import sample_sum, scrape
from infra.processes import Child, ProcessGroup
from infra.settings import Settings, load_settings
from producers.generator import generate_registry, license_event
from producers.rabbitmq import Publisher
from schemas.models import Notification
from tests.fakes.twilio_server import FakeTwilio, FakeTwilioProcess

ROOT = Path(__file__).resolve().parent.parent
SQLCOUNT = Path(__file__).resolve().parent / "sqlcount"
PY_SPY = Path(sys.executable).with_name("py-spy")
DEADLINE_S = 240.0
TWILIO_FROM = "+15017122661"


# ---- py-spy --------------------------------------------------------------------------------
class Spy:
    """``py-spy record`` attached to a pid until stop() (SIGINT: it writes its file)."""

    #: "--idle": wall clock, every thread (waits included); "--gil": only the thread holding
    #: the GIL, i.e. where the process's Python CPU goes (set by --gil on the command line).
    mode = "--idle"

    def __init__(self, pid: int, out: Path, rate: int, subprocesses: bool = False) -> None:
        self.out = out
        self.t0 = time.monotonic()
        self.popen: subprocess.Popen[bytes] | None = None
        if rate <= 0:  # --rate 0: the same run without a profiler (rates, CPU and SQL only)
            return
        argv = [
            str(PY_SPY),
            "record",
            "--pid",
            str(pid),
            "--format",
            "raw",
            self.mode,
            "--threads",
            "--full-filenames",
            "--rate",
            str(rate),
            "-o",
            str(out),
        ]
        if subprocesses:
            argv.append("--subprocesses")
        self.log = out.with_suffix(".log").open("wb")
        self.popen = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)
        self.t0 = time.monotonic()

    def stop(self) -> float:
        elapsed = time.monotonic() - self.t0
        if self.popen is None:
            return elapsed
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self.log.close()
        return elapsed


# ---- buckets -------------------------------------------------------------------------------
#: (bucket, pattern on "function (file:line)"), first match from the innermost frame outwards.
BUCKETS: list[tuple[str, re.Pattern[str]]] = [
    (b, re.compile(p))
    for b, p in [
        ("py-spy/sqlcount hook", r"benchmarks/sqlcount/"),
        ("logging (+ masking filter)", r"/logging/__init__\.py|infra/logging\.py"),
        ("PostgreSQL: psycopg (round trip + driver)", r"/psycopg(_c|_binary)?/"),
        ("SQLAlchemy / SQLModel (Python)", r"/sqlalchemy/|/sqlmodel/"),
        ("twilio client (non-HTTP)", r"/twilio/"),
        ("HTTP: requests/urllib3/http.client", r"/requests/|/urllib3/|/http/client\.py"),
        ("pydantic validation", r"/pydantic(_core)?/"),
        ("JSON encode/decode", r"/json/|orjson"),
        ("prometheus_client", r"/prometheus_client/"),
        ("pika (AMQP)", r"/pika/"),
        ("aiokafka (Kafka client)", r"/aiokafka/|/kafka/"),
        ("dramatiq (broker, workers, middleware)", r"/dramatiq/"),
        ("faust / mode internals", r"/faust/|/mode/"),
        ("asyncio event loop", r"/asyncio/|/selectors\.py"),
        ("threading / queue (waits)", r"/threading\.py|/queue\.py"),
        ("ours: schemas", re.escape(f"{ROOT}/schemas/")),
        ("ours: producers", re.escape(f"{ROOT}/producers/")),
        ("ours: streams", re.escape(f"{ROOT}/streams/")),
        ("ours: workers", re.escape(f"{ROOT}/workers/")),
        ("ours: notifiers", re.escape(f"{ROOT}/notifiers/")),
        ("ours: infra", re.escape(f"{ROOT}/infra/")),
        ("other stdlib / libraries", r"."),
    ]
]

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>.*?)(:(?P<line>\d+))?\)$")


def bucket_of(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, pattern in BUCKETS[:-1]:
            if pattern.search(frame):
                return name
    return BUCKETS[-1][0]


def parse_raw(path: Path) -> list[tuple[str, str, list[str], int]]:
    """(process, thread, frames root→leaf, count) per line of a py-spy raw profile.

    With ``--subprocesses`` a line starts with one ``process PID:"cmdline"`` frame per level
    (the dramatiq worker is a child of the main process); the innermost one names the process.
    """
    out = []
    if not path.exists():
        return out
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        parts = stack.split(";")
        process = ""
        while parts and parts[0].startswith("process "):
            process = parts.pop(0).split(":", 1)[0]
        thread = parts.pop(0) if parts and parts[0].startswith("thread ") else "?"
        out.append((process, thread, parts, int(count)))
    return out


def thread_kind(thread: str) -> str:
    """A readable name for a thread: its Python name (py-spy prints it after the id)."""
    name = thread.split(":", 1)[1].strip() if ":" in thread else thread
    return re.sub(r"\d+", "N", name)


def summarise(path: Path, *, threads: str | None = None, top: int = 12) -> dict[str, object]:
    """Buckets of ``path``'s samples, over threads whose name matches ``threads``."""
    rows = parse_raw(path)
    per_thread: Counter[str] = Counter()
    buckets: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    pattern = re.compile(threads) if threads else None
    for process, thread, frames, count in rows:
        kind = thread_kind(thread)
        per_thread[f"{process} {kind}".strip()] += count
        # A view selects threads by name or by what they run (dramatiq's worker threads are
        # plain Thread-N: they are the ones with _WorkerThread in their stack).
        if pattern and not pattern.search(kind + ";" + ";".join(frames)):
            continue
        buckets[bucket_of(frames)] += count
        leaf = frames[-1] if frames else "?"
        m = _FRAME.match(leaf)
        if m:
            leaf = f"{m.group('func')} ({m.group('file').replace(str(ROOT) + '/', '')})"
        leaves[re.sub(r"/.*?site-packages/", "", leaf)] += count
    total = sum(buckets.values())
    return {
        "samples": total,
        "buckets": [(b, n, 100.0 * n / total if total else 0.0) for b, n in buckets.most_common()],
        "leaves": [
            (leaf, n, 100.0 * n / total if total else 0.0) for leaf, n in leaves.most_common(top)
        ],
        "threads": per_thread.most_common(),
    }


#: Phases of each stage's hot path: a sample counts for the innermost of these functions on its
#: stack (inclusive of what they call), "(outside these)" otherwise.
PHASES = {
    "relay": [
        ("parse_event (validation)", r"^parse_event \("),
        ("journal (INSERT … ON CONFLICT RETURNING)", r"^journal \(.*infra/journal"),
        ("KafkaSink.send_batch (wait for acks)", r"send_batch \("),
        ("mark_relayed (UPDATE … IN)", r"^mark_relayed \("),
        (
            "sources registry / authorize",
            r"CachedRegistry|authorize \(|publisher_of|check_publisher",
        ),
        ("basic_ack", r"basic_ack \("),
        ("epoch check (EpochKeeper, KafkaSink.read_last)", r"EpochKeeper\."),
        ("other batch work (entries, acks)", r"Relay\._(dispatch|validate|settle|write) \("),
        ("consume: waiting for / reading deliveries (pika)", r"consume \(.*pika"),
    ],
    "stream": [
        ("idle: event loop waiting (select)", r"selectors\.py"),
        ("idle: executor thread waiting for work", r"_worker \(.*concurrent/futures"),
        ("parse_event (re-validation)", r"^parse_event \("),
        ("already_applied (journal read)", r"already_applied \("),
        ("send_jobs (jobs to RabbitMQ, confirmed)", r"send_jobs \(|_send \(.*streams/context"),
        ("mark_applied (journal write)", r"mark_applied \(|_mark \(.*streams/context"),
        ("license_state_job / model_dump", r"license_state_job|model_dump"),
        ("process_licenses (other)", r"process_licenses"),
        ("faust consumer / fetch / commit", r"/faust/|/mode/"),
        ("aiokafka", r"/aiokafka/"),
    ],
    "worker": [
        ("idle: waiting for a message (work queue)", r"get \(.*/queue\.py"),
        ("session checkout: pre-ping SELECT 1", r"do_ping|_do_ping|pre_ping|_checkout"),
        ("COMMIT", r"Session\.commit|do_commit|_commit_impl"),
        (
            "notifier.send → provider (HTTP / sandbox file)",
            r"Notifier\.send \(|RoutingNotifier\.send",
        ),
        ("claim_many_for_send (lock, opt-out, suppression, claim)", r"claim_many_for_send \("),
        ("stale checks (license_record reads)", r"_stale \(|_stale_after_claim"),
        (
            "create_from_template (INSERT + get_by_key)",
            r"create_from_template \(|create_notification",
        ),
        ("ledger.advance (sent/delivered)", r"advance \(.*workers/ledger"),
        ("apply_pending (status callbacks waiting)", r"apply_pending \("),
        ("record_licenses (registry batch)", r"record_licenses \("),
        ("logging", r"/logging/__init__\.py|infra/logging\.py"),
        ("dramatiq: fetch / ack / middleware", r"/dramatiq/"),
    ],
}


def phases(path: Path, threads: str | None, kind: str) -> list[tuple[str, int, float]]:
    rules = [(name, re.compile(p)) for name, p in PHASES[kind]]
    pattern = re.compile(threads) if threads else None
    counts: Counter[str] = Counter()
    for _process, thread, frames, count in parse_raw(path):
        if pattern and not pattern.search(thread_kind(thread) + ";" + ";".join(frames)):
            continue
        name = "(outside these)"
        for frame in reversed(frames):
            hit = next((n for n, rx in rules if rx.search(frame)), None)
            if hit:
                name = hit
                break
        counts[name] += count
    total = sum(counts.values())
    return [(n, c, 100.0 * c / total if total else 0.0) for n, c in counts.most_common()]


def print_summary(title: str, summary: dict[str, object], out: Path) -> None:
    lines = [f"## {title}  ({summary['samples']} samples)", ""]
    lines.append("| bucket (innermost recognised frame) | samples | % |")
    lines.append("|---|---:|---:|")
    for b, n, pct in summary["buckets"]:  # type: ignore[attr-defined]
        lines.append(f"| {b} | {n} | {pct:.1f} |")
    lines += ["", "| top leaf frames | samples | % |", "|---|---:|---:|"]
    for leaf, n, pct in summary["leaves"]:  # type: ignore[attr-defined]
        lines.append(f"| `{leaf}` | {n} | {pct:.1f} |")
    lines += ["", "threads (all samples): " + ", ".join(f"{t} {n}" for t, n in summary["threads"])]  # type: ignore[attr-defined]
    textout = "\n".join(lines) + "\n"
    print(textout, flush=True)
    with out.open("a") as f:
        f.write(textout + "\n")


# ---- SQL counts ----------------------------------------------------------------------------
def sql_counts(folder: Path) -> dict[str, Counter[str]]:
    """Counts per component (by argv) summed over its processes."""
    out: dict[str, Counter[str]] = defaultdict(Counter)
    for path in folder.glob("*.json"):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        argv = data.pop("argv", "")
        name = (
            "worker"
            if "dramatiq" in argv
            else "relay"
            if " relay" in argv
            else "stream"
            if " stream" in argv
            else "other"
        )
        out[name].update({k: v for k, v in data.items() if isinstance(v, int)})
    return out


def xact_commits(settings: Settings) -> tuple[int, int]:
    """(xact_commit, xact_rollback) of the run's database, server side."""
    from sqlalchemy import create_engine

    db = settings.database_url.rsplit("/", 1)[1]
    engine = create_engine(PG_ADMIN_URL)
    try:
        with engine.connect() as c:
            c.execute(text("SELECT pg_stat_clear_snapshot()"))
            row = c.execute(
                text("SELECT xact_commit, xact_rollback FROM pg_stat_database WHERE datname = :d"),
                {"d": db},
            ).one()
        return int(row[0]), int(row[1])
    finally:
        engine.dispose()


def diff(after: dict[str, Counter[str]], before: dict[str, Counter[str]]) -> dict[str, Counter]:
    out = {}
    for name, counts in after.items():
        d = Counter(counts)
        d.subtract(before.get(name, Counter()))
        out[name] = Counter({k: v for k, v in d.items() if v})
    return out


# ---- CPU ----------------------------------------------------------------------------------
_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(child: Child) -> float:
    """utime + stime of every live process in ``child``'s process group (its dramatiq forks
    too), plus what its reaped children used (cutime + cstime)."""
    total = 0
    for pid in bench_pipeline._group_pids(child.pid):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return total / _TICK


# ---- load ----------------------------------------------------------------------------------
def due_events(settings: Settings, n: int, prefix: str) -> list:
    """``n`` license.issued events, each due its 30-day reminder today, distinct mobiles."""
    today = settings.today
    at = dt.datetime.combine(today, dt.time(1), tzinfo=dt.UTC)
    return [
        license_event(
            "license.issued",
            f"{prefix}-{i:07d}",
            category="food_business",
            holder_mobile=f"139{i:08d}",
            issued_on=today - dt.timedelta(days=335),
            expires_on=today + dt.timedelta(days=30),
            occurred_at=at,
        )
        for i in range(n)
    ]


def metric(port: int, name: str) -> float:
    try:
        return sample_sum(scrape(port, timeout=2.0), name)
    except OSError:
        return -1.0


def wait(what: str, predicate, children: list[Child], timeout: float = DEADLINE_S) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        for c in children:
            if not c.alive():
                raise BenchError(f"{c.name} exited while waiting for {what}:\n{c.log_tail()}")
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: not reached in {timeout:g}s")
        time.sleep(0.05)


def sms_status(settings: Settings, prefix: str = "") -> Counter[str]:
    """Notification rows by status (of licenses whose id starts with ``prefix``)."""
    query = select(Notification.status, func.count()).group_by(Notification.status)
    if prefix:
        query = query.where(Notification.subject_id.startswith(prefix))
    with session(settings) as db:
        rows = db.execute(query).all()
    return Counter({status: n for status, n in rows})


def no_pending(settings: Settings, want_final: int, prefix: str = "") -> bool:
    c = sms_status(settings, prefix)
    final = sum(v for k, v in c.items() if k not in ("created", "sending"))
    return final >= want_final and c["created"] + c["sending"] == 0


def worker_done(settings: Settings, want_final: int) -> bool:
    """No row pending and every job the stream enqueued consumed by the worker; twice in a row
    0.3 s apart (a job taken between the two readings would make a new pending row)."""
    for attempt in range(2):
        if attempt:
            time.sleep(0.3)
        if not no_pending(settings, want_final):
            return False
        if metric(settings.worker_metrics_port, "dramatiq_messages_total") < metric(
            settings.stream_metrics_port, "govnotify_jobs_enqueued_total"
        ):
            return False
    return True


_FAKE_CLIENT = """
import base64, http.client, json, socket, sys, threading, time, urllib.parse
base, sid, token = sys.argv[1:4]
n, threads = int(sys.argv[4]), int(sys.argv[5])
where = urllib.parse.urlsplit(base)
path = f"/2010-04-01/Accounts/{sid}/Messages.json"
auth = base64.b64encode(f"{sid}:{token}".encode()).decode()
headers = {
    "Authorization": "Basic " + auth,
    "Content-Type": "application/x-www-form-urlencoded",
    "Connection": "keep-alive",
}
body = urllib.parse.urlencode({"To": "+8613900000000", "From": "+15017122661", "Body": "x"})
per = n // threads
opened, failed = [], []
def post():
    conn, fresh = None, 0
    for _ in range(per):
        if conn is None:
            # A persistent connection per thread, TCP_NODELAY as urllib3 sets it.
            conn = http.client.HTTPConnection(where.hostname, where.port, timeout=10)
            conn.connect()
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            fresh += 1
        conn.request("POST", path, body=body, headers=headers)
        r = conn.getresponse()
        r.read()
        if r.status != 201:
            failed.append(r.status)
        if r.will_close:
            conn.close()
            conn = None
    if conn is not None:
        conn.close()
    opened.append(fresh)
ts = [threading.Thread(target=post) for _ in range(threads)]
t0 = time.perf_counter()
for t in ts: t.start()
for t in ts: t.join()
rate = per * threads / (time.perf_counter() - t0)
print(json.dumps({"rate": rate, "connections": sum(opened), "failed": len(failed)}))
"""


def fake_alone(fake: FakeTwilio | FakeTwilioProcess, n: int = 2000, threads: int = 8) -> float:
    """Creates/s the fake answers on its own: plain ``http.client`` clients in another process
    (no worker, no twilio library), as many threads as the worker has, each on one persistent
    connection as the twilio client's requests session keeps it (the fake must be keep-alive).

    Raises:
      BenchError: when a create failed, or the fake closed connections (not keep-alive).
    """
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            _FAKE_CLIENT,
            fake.base_url,
            fake.account_sid,
            fake.auth_token,
            str(n),
            str(threads),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result = json.loads(out.stdout)
    if result["failed"]:
        raise BenchError(f"fake alone: {result['failed']} creates failed")
    if result["connections"] != threads:
        raise BenchError(
            f"fake alone: {result['connections']} connections for {threads} threads: "
            "the fake is not keep-alive"
        )
    return float(result["rate"])


def pg_round_trips(settings: Settings, n: int = 300) -> dict[str, float]:
    """Median ms, on the run's database, of what the worker does ~30 times per SMS: a SELECT 1
    (autocommit), and a one-row UPDATE committed (the commit waits for the WAL flush)."""
    import statistics

    import psycopg

    url = settings.resolved_database_url.replace("postgresql+psycopg://", "postgresql://")
    out: dict[str, float] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        # A logged table (not TEMP): its COMMIT waits for the WAL flush, as the worker's do.
        conn.execute("CREATE TABLE IF NOT EXISTS bench_round_trip (id int primary key, n int)")
        conn.execute("INSERT INTO bench_round_trip VALUES (1, 0) ON CONFLICT DO NOTHING")
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            conn.execute("SELECT 1").fetchone()
            times.append(time.perf_counter() - t0)
        out["SELECT 1, ms"] = 1000 * statistics.median(times)
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            with conn.transaction():
                conn.execute("UPDATE bench_round_trip SET n = n + 1 WHERE id = 1")
            times.append(time.perf_counter() - t0)
        out["BEGIN; UPDATE; COMMIT, ms"] = 1000 * statistics.median(times)
    return out


# ---- the run -------------------------------------------------------------------------------
def run(env: BenchEnv, args: argparse.Namespace) -> None:
    s = env.settings
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sqldir = env.tmp / "sqlcount"
    sqldir.mkdir()
    base_env = child_env(s)
    base_env["PYTHONPATH"] = os.pathsep.join(
        [str(SQLCOUNT), str(ROOT), base_env.get("PYTHONPATH", "")]
    ).rstrip(os.pathsep)
    base_env["GOVNOTIFY_SQLCOUNT_DIR"] = str(sqldir)
    group = ProcessGroup(env=base_env, log_dir=env.tmp / "logs")
    twilio = FakeTwilio(keep_alive=True).start()
    tw_settings = load_settings(
        **{
            **s.model_dump(),
            "twilio_account_sid": twilio.account_sid,
            "twilio_auth_token": twilio.auth_token,
            "twilio_from": TWILIO_FROM,
            "twilio_api_base": twilio.base_url,
            # Profile the worker, not Twilio's declared 50 a second (notifiers.pacing).
            "send_rates": {"twilio": 0},
        }
    )
    tw_env = {**child_env(tw_settings), **{k: base_env[k] for k in ("PYTHONPATH",)}}
    tw_env["GOVNOTIFY_SQLCOUNT_DIR"] = str(sqldir)
    tw_group = ProcessGroup(env=tw_env, log_dir=env.tmp / "logs-twilio")
    load = os.getloadavg()
    facts: dict[str, object] = {"loadavg_start": load, "cpus": os.cpu_count()}
    try:
        # 1. relay ------------------------------------------------------------------------
        registry = generate_registry(args.licenses, s.today, prefix="LICPRF").events
        due = due_events(s, args.sms, "DUEPRF")
        events = registry + due
        n = len(events)
        bench_relay.preload(s, [(e.to_json_bytes(), e.event_type) for e in events])
        before_sql = sql_counts(sqldir)
        x0 = xact_commits(s)
        relay = group.start("relay", "relay")
        wait(
            "relay metrics",
            lambda: metric(s.relay_metrics_port, "govnotify_events_relayed_total") >= 0,
            [relay],
            60,
        )
        spy = Spy(relay.pid, out / "relay.raw", args.rate)
        c0 = cpu_seconds(relay)
        t0 = time.monotonic()
        wait(
            f"relay moved {n}",
            lambda: metric(s.relay_metrics_port, "govnotify_events_relayed_total") >= n,
            [relay],
        )
        relay_s = time.monotonic() - t0
        relay_cpu = cpu_seconds(relay) - c0
        spy.stop()
        time.sleep(1.5)
        x1 = xact_commits(s)
        relay_sql = diff(sql_counts(sqldir), before_sql)
        facts["relay"] = {
            "events": n,
            "seconds (incl. start-up after metrics answer)": relay_s,
            "events/s": n / relay_s,
            "CPU s (relay process)": relay_cpu,
            "sql": dict(relay_sql.get("relay", {})),
            "server xact_commit, xact_rollback delta": (x1[0] - x0[0], x1[1] - x0[1]),
        }
        print(f"relay: {n} events in {relay_s:.1f}s = {n / relay_s:,.0f}/s", flush=True)

        # 2. stream -----------------------------------------------------------------------
        before_sql = sql_counts(sqldir)
        x0 = xact_commits(s)
        stream = group.start("stream", "stream")
        wait(
            "stream first event",
            lambda: metric(s.stream_metrics_port, "govnotify_stream_events_total") > 0,
            [stream],
            90,
        )
        spy = Spy(stream.pid, out / "stream.raw", args.rate)
        c0 = cpu_seconds(stream)
        t0 = time.monotonic()
        first = metric(s.stream_metrics_port, "govnotify_stream_events_total")
        wait(
            f"stream applied {n}",
            lambda: metric(s.stream_metrics_port, "govnotify_stream_events_total") >= n,
            [stream],
        )
        stream_s = time.monotonic() - t0
        stream_cpu = cpu_seconds(stream) - c0
        spy.stop()
        time.sleep(1.5)
        x1 = xact_commits(s)
        jobs = metric(s.stream_metrics_port, "govnotify_jobs_enqueued_total")
        stream_sql = diff(sql_counts(sqldir), before_sql)
        facts["stream"] = {
            "events": n - first,
            "seconds": stream_s,
            "events/s": (n - first) / stream_s,
            "CPU s (stream process)": stream_cpu,
            "jobs enqueued (total)": jobs,
            "sql": dict(stream_sql.get("stream", {})),
            "server xact_commit, xact_rollback delta": (x1[0] - x0[0], x1[1] - x0[1]),
        }
        print(f"stream: {n - first:.0f} events in {stream_s:.1f}s", flush=True)

        # 3. worker, sandbox --------------------------------------------------------------
        before_sql = sql_counts(sqldir)
        x0 = xact_commits(s)
        worker = group.start("worker", "worker")
        # Attached once the first row exists: dramatiq's start (imports, fork) is not the load.
        wait("worker first message", lambda: sum(sms_status(s).values()) > 0, [worker], 60)
        spy = Spy(worker.pid, out / "worker-sandbox.raw", args.rate, subprocesses=True)
        c0 = cpu_seconds(worker)
        t0 = time.monotonic()
        want = args.sms  # at least the due ones (registry adds a few hundred more)
        wait("worker settled", lambda: worker_done(s, want), [worker])
        worker_s = time.monotonic() - t0
        worker_cpu = cpu_seconds(worker) - c0
        spy.stop()
        time.sleep(1.5)
        x1 = xact_commits(s)
        status = sms_status(s)
        sent = status["sent"] + status["delivered"]
        worker_sql = diff(sql_counts(sqldir), before_sql)
        facts["worker_sandbox"] = {
            "statuses": dict(status),
            "seconds (first row → settled)": worker_s,
            "SMS/s": sent / worker_s,
            "CPU s (worker tree)": worker_cpu,
            "dramatiq messages": metric(s.worker_metrics_port, "dramatiq_messages_total"),
            "sql": dict(worker_sql.get("worker", {})),
            "server xact_commit, xact_rollback delta": (x1[0] - x0[0], x1[1] - x0[1]),
        }
        print(f"worker sandbox: {sent} SMS in {worker_s:.1f}s", flush=True)
        worker.stop()
        group.children.remove(worker)

        # 4. worker, real twilio client -> loopback fake ---------------------------------
        if not args.skip_twilio:
            due2 = due_events(s, args.twilio_sms, "DUETWL")
            with Publisher.from_settings(s) as p:
                outcomes = p.publish_many(
                    (e.to_json_bytes(), e.event_type, e.event_id) for e in due2
                )
            if not all(ok for ok, _why in outcomes):
                raise BenchError("publishing the twilio batch failed")
            total = n + len(due2)
            wait(
                "stream applied the twilio batch",
                lambda: metric(s.stream_metrics_port, "govnotify_stream_events_total") >= total,
                [relay, stream],
            )
            fake_rate = fake_alone(twilio)
            twilio.clear()
            before_sql = sql_counts(sqldir)
            x0 = xact_commits(s)
            tworker = tw_group.start("worker", "worker")
            wait("twilio first", lambda: len(twilio.messages) > 0, [tworker], 60)
            spy = Spy(tworker.pid, out / "worker-twilio.raw", args.rate, subprocesses=True)
            c0 = cpu_seconds(tworker)
            t0 = time.monotonic()
            wait("twilio settled", lambda: no_pending(s, len(due2), "DUETWL"), [tworker])
            tw_s = time.monotonic() - t0
            tw_cpu = cpu_seconds(tworker) - c0
            spy.stop()
            time.sleep(1.5)
            x1 = xact_commits(s)
            got = len(twilio.messages)
            tw_sql = diff(sql_counts(sqldir), before_sql)
            facts["worker_twilio"] = {
                "SMS at the fake": got,
                "seconds (first SMS at the fake → settled)": tw_s,
                "SMS/s": got / tw_s,
                "CPU s (worker tree)": tw_cpu,
                "fake alone, creates/s (8 keep-alive http.client threads, no worker)": fake_rate,
                "sql": dict(tw_sql.get("worker", {})),
                "server xact_commit, xact_rollback delta": (x1[0] - x0[0], x1[1] - x0[1]),
            }
            log = (env.tmp / "logs-twilio" / "worker.log").read_text(errors="replace")
            facts["worker_twilio"]["worker log lines"] = log.count("\n")  # type: ignore[index]
            facts["worker_twilio"]["twilio.http_client log lines"] = log.count(  # type: ignore[index]
                "twilio.http_client"
            )
            print(f"worker twilio: {got} SMS in {tw_s:.1f}s; fake alone {fake_rate:,.0f}/s")
            tworker.stop()
            tw_group.children.clear()

        # 5. whole pipeline ---------------------------------------------------------------
        if not args.skip_pipeline:
            worker = group.start("worker", "worker")
            wait(
                "worker answers",
                lambda: metric(s.worker_metrics_port, "dramatiq_messages_total") >= 0,
                [worker],
                60,
            )
            time.sleep(2)
            base_stream = metric(s.stream_metrics_port, "govnotify_stream_events_total")
            pipe = generate_registry(args.pipeline, s.today, prefix="LICPIP").events
            before_sql = sql_counts(sqldir)
            x0 = xact_commits(s)
            spies = [
                Spy(relay.pid, out / "pipeline-relay.raw", args.rate),
                Spy(stream.pid, out / "pipeline-stream.raw", args.rate),
                Spy(worker.pid, out / "pipeline-worker.raw", args.rate, subprocesses=True),
            ]
            c0 = {c.name: cpu_seconds(c) for c in (relay, stream, worker)}
            t0 = time.monotonic()
            with Publisher(s.amqp_url, s.exchange) as publisher:
                outcomes = publisher.publish_many(
                    (e.to_json_bytes(), e.event_type, e.event_id) for e in pipe
                )
            if not all(ok for ok, _why in outcomes):
                raise BenchError("publishing the pipeline batch failed")
            publish_s = time.monotonic() - t0
            target = base_stream + len(pipe)
            wait(
                "pipeline stream",
                lambda: metric(s.stream_metrics_port, "govnotify_stream_events_total") >= target,
                group.children,
            )
            wait(
                "pipeline settled",
                lambda: bench_pipeline.settled(s, int(target)),
                group.children,
            )
            pipe_s = time.monotonic() - t0
            pipe_cpu = {c.name: cpu_seconds(c) - c0[c.name] for c in (relay, stream, worker)}
            for sp in spies:
                sp.stop()
            time.sleep(1.5)
            x1 = xact_commits(s)
            pipe_sql = diff(sql_counts(sqldir), before_sql)
            facts["pipeline"] = {
                "events": len(pipe),
                "publish seconds (publish_many, pipelined confirms)": publish_s,
                "settled seconds": pipe_s,
                "events/s": len(pipe) / pipe_s,
                "CPU s per component": pipe_cpu,
                "sql": {k: dict(v) for k, v in pipe_sql.items()},
                "server xact_commit, xact_rollback delta": (x1[0] - x0[0], x1[1] - x0[1]),
                "statuses": dict(sms_status(s)),
            }
            print(f"pipeline: {len(pipe)} events settled in {pipe_s:.1f}s", flush=True)
        facts["PostgreSQL round trips (baseline)"] = pg_round_trips(s)
    finally:
        facts["loadavg_end"] = os.getloadavg()
        group.stop_all()
        tw_group.stop_all()
        twilio.stop()
        (out / "facts.json").write_text(json.dumps(facts, indent=2, default=str))
        print(json.dumps(facts, indent=2, default=str), flush=True)
    analyse(out)


#: Per profile: which threads are the stage's work (regex on py-spy's thread name).
WORKER_THREADS = r"WorkerThread\.run \("
VIEWS = [
    ("relay.raw", "relay — every thread but the counter", r"^(?!sqlcount)"),
    ("relay.raw", "relay — main thread (consume, validate, journal, Kafka, ack)", "MainThread"),
    ("stream.raw", "stream — main thread (Faust event loop)", "^MainThread"),
    ("stream.raw", "stream — job-sender thread (jobs to RabbitMQ)", "^job-sender"),
    ("worker-sandbox.raw", "worker, sandbox — dramatiq worker threads", WORKER_THREADS),
    ("worker-twilio.raw", "worker, twilio — dramatiq worker threads", WORKER_THREADS),
    ("pipeline-relay.raw", "pipeline — relay main thread", r"MainThread"),
    ("pipeline-stream.raw", "pipeline — stream main thread", "^MainThread"),
    ("pipeline-worker.raw", "pipeline — worker threads", WORKER_THREADS),
]


def analyse(out: Path) -> None:
    report = out / "tables.md"
    report.write_text("")
    for name, title, threads in VIEWS:
        path = out / name
        if path.exists():
            print_summary(title, summarise(path, threads=threads), report)
            kind = next((k for k in PHASES if k in name), None)
            if kind and threads:
                lines = [f"### {title}: phases (inclusive)", "", "| phase | samples | % |"]
                lines.append("|---|---:|---:|")
                lines += [f"| {n} | {c} | {pct:.1f} |" for n, c, pct in phases(path, threads, kind)]
                text = "\n".join(lines) + "\n"
                print(text, flush=True)
                with report.open("a") as f:
                    f.write(text + "\n")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--licenses", type=int, default=20000)
    p.add_argument("--sms", type=int, default=3000)
    p.add_argument("--twilio-sms", type=int, default=1500)
    p.add_argument("--pipeline", type=int, default=3000)
    p.add_argument("--rate", type=int, default=50)
    p.add_argument("--out", default=str(ROOT / ".govnotify" / "profiles"))
    p.add_argument("--skip-twilio", action="store_true")
    p.add_argument("--skip-pipeline", action="store_true")
    p.add_argument("--analyse", action="store_true", help="only re-read the profiles in --out")
    p.add_argument(
        "--gil",
        action="store_true",
        help="sample only the thread holding the GIL (Python CPU), not every thread's wall time",
    )
    args = p.parse_args()
    if args.gil:
        Spy.mode = "--gil"
    if args.analyse:
        analyse(Path(args.out))
        return 0
    with bench_env("profile") as env:
        run(env, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
