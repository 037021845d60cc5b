"""Status callbacks: ``govnotify api`` applying signed Twilio callbacks vs a trivial waitress app.

``govnotify api`` runs as a real process (``python -m infra.cli api``) with the benchmark's
settings (PostgreSQL database migrated by ``bench_env``, Twilio credentials set, free ports for
the api and its /metrics, ``GOVNOTIFY_PUBLIC_BASE_URL`` = the api's loopback URL, which is what
the signatures cover). N notification rows in ``sent`` with provider ``twilio`` and distinct
``SM…`` references are inserted first (plus a few warm-up rows); then a pool of 4 client threads,
one ``requests.Session`` each, POSTs one signed ``delivered`` callback per row (bodies and
signatures computed before the clock starts) and the clock runs until the last answer. Each
answer must be 204; afterwards exactly N rows must be ``delivered``, N history rows applied,
and the api's ``govnotify_callback_requests_total{outcome="accepted"}`` must have counted them.

Then a forged-signature flood: the same clients post M ``undelivered`` callbacks for the same
references signed with another token. Each must be refused with 403, the api's
``govnotify_callback_requests_total{outcome="forged"}`` must rise by exactly M and no row may
change.

Baseline, measured in the same run after the api has stopped: the same clients and the same
request bytes against a separate process serving, with ``producers.api.make_server`` (so the same
waitress settings: threads, body limit, ident), a trivial WSGI app that reads the body and
answers 204 (``python -m benchmarks.bench_callbacks --baseline-server PORT``).

Figures: callbacks/s and refusals/s against the baseline's requests/s; p50 and p95 latency per
request (nearest rank, ms) against the baseline's; and, for the flood, the server process's CPU
time per request (utime + stime from /proc) against the baseline's: on a small machine the flood
runs about as fast as the clients can send, so its rate alone hides what a refusal costs.

    python -m benchmarks.bench_callbacks
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from sqlalchemy import func, select
from twilio.request_validator import RequestValidator

from benchmarks.bench_pipeline import _answers, _wait
from benchmarks.common import (
    BenchEnv,
    BenchError,
    Row,
    bench_env,
    child_env,
    pipeline_now,
    run_main,
)
from infra.db import session
from infra.metrics import sample_sum, scrape
from infra.processes import Child, ProcessGroup
from infra.services import free_port
from infra.settings import Settings, load_settings
from producers.api import TWILIO_STATUS_PATH
from schemas.models import Notification, NotificationStatusEvent

#: Signed ``delivered`` callbacks measured (one per notification row).
N_CALLBACKS = 2000
#: Forged callbacks in the flood.
N_FORGED = 2000
#: Requests before each server's clock starts: connections open, lazy imports and pools warm.
N_WARMUP = 40
#: Concurrent clients, one requests.Session (one keep-alive connection) each.
CLIENTS = 4
#: Each phase (N requests from the pool) must finish within this.
PHASE_DEADLINE_S = 60.0
#: A server process must answer within this after it was started.
STARTUP_DEADLINE_S = 30.0
#: Per request (connect, read): a hung server fails the phase, it does not hang it.
REQUEST_TIMEOUT_S = 10.0

TWILIO_FROM = "+15017122661"
BODY = "【长安政务】您的办件回访已安排，工作人员将与您联系。"
#: The benchmark's own rows carry this subject; warm-up rows another.
SUBJECT = "CB-BENCH"
WARMUP_SUBJECT = "CB-WARMUP"
ROOT = Path(__file__).resolve().parents[1]


# ---- the requests ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Callback:
    """One status callback as it goes on the wire: the form body and its signature."""

    body: bytes
    signature: str


def sid(kind: str, i: int) -> str:
    """A distinct Twilio-like message sid: ``SM`` + 32 hex digits, ``kind`` one hex digit."""
    return f"SM{kind}{i:031x}"


def mobile(i: int) -> str:
    return f"+86138{i:08d}"


def callback(
    url: str, account_sid: str, token: str, message_sid: str, i: int, status: str, **extra: str
) -> Callback:
    """A callback like Twilio's (the parameters its status callbacks carry), signed with
    ``token`` for ``url`` as Twilio signs it."""
    params = {
        "MessageSid": message_sid,
        "SmsSid": message_sid,
        "MessageStatus": status,
        "SmsStatus": status,
        "AccountSid": account_sid,
        "ApiVersion": "2010-04-01",
        "To": mobile(i),
        "From": TWILIO_FROM,
        **extra,
    }
    signature = RequestValidator(token).compute_signature(url, params)
    return Callback(urllib.parse.urlencode(params).encode(), signature)


@dataclass
class Phase:
    """What the client pool saw (wall time of the whole phase, each request's latency, the
    answers) and the CPU time the server process used meanwhile."""

    elapsed_s: float
    latencies_ms: list[float]
    statuses: Counter[int]
    server_cpu_s: float

    @property
    def rate(self) -> float:
        return len(self.latencies_ms) / self.elapsed_s

    @property
    def cpu_ms_per_request(self) -> float:
        return self.server_cpu_s * 1000 / len(self.latencies_ms)

    def expect(self, status: int, what: str) -> None:
        if set(self.statuses) != {status}:
            raise BenchError(f"{what}: expected only HTTP {status}, got {dict(self.statuses)}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the command: state is field 3 of stat(5), utime 14 and stime 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0-100) of ``values``."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


@dataclass
class _Pool:
    """The clients' shared work: the next request to send, and what came back."""

    requests: list[Callback]
    url: str
    deadline: float
    barrier: threading.Barrier
    lock: threading.Lock = field(default_factory=threading.Lock)
    next_index: itertools.count[int] = field(default_factory=itertools.count)
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    def take(self) -> int:
        with self.lock:
            return next(self.next_index)

    def client(self) -> None:
        latencies: list[float] = []
        statuses: Counter[int] = Counter()
        with requests.Session() as http:
            try:
                self.barrier.wait(REQUEST_TIMEOUT_S)
                while (i := self.take()) < len(self.requests):
                    if time.monotonic() > self.deadline:
                        raise BenchError(f"deadline passed after {i} requests")
                    cb = self.requests[i]
                    t0 = time.perf_counter()
                    response = http.post(
                        self.url,
                        data=cb.body,
                        headers={
                            "Content-Type": "application/x-www-form-urlencoded",
                            "X-Twilio-Signature": cb.signature,
                        },
                        timeout=REQUEST_TIMEOUT_S,
                    )
                    latencies.append((time.perf_counter() - t0) * 1000)
                    statuses[response.status_code] += 1
            except Exception as exc:
                with self.lock:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
                self.barrier.abort()
        with self.lock:
            self.latencies_ms.extend(latencies)
            self.statuses.update(statuses)


def drive(url: str, callbacks: list[Callback], what: str, server: Child) -> Phase:
    """POST every callback to ``url`` from CLIENTS threads; the clock covers all of them."""
    pool = _Pool(
        callbacks,
        url,
        deadline=time.monotonic() + PHASE_DEADLINE_S,
        barrier=threading.Barrier(CLIENTS + 1),
    )
    threads = [
        threading.Thread(target=pool.client, name=f"bench-client-{k}", daemon=True)
        for k in range(CLIENTS)
    ]
    for t in threads:
        t.start()
    cpu0 = cpu_seconds(server.pid)
    try:
        # Sessions exist, threads are parked: the clock starts when all are released at once.
        pool.barrier.wait(REQUEST_TIMEOUT_S)
    except threading.BrokenBarrierError:
        pass
    t0 = time.perf_counter()
    for t in threads:
        t.join(max(0.0, pool.deadline - time.monotonic()) + REQUEST_TIMEOUT_S)
    elapsed = time.perf_counter() - t0
    cpu = cpu_seconds(server.pid) - cpu0
    if any(t.is_alive() for t in threads):
        raise BenchError(f"{what}: client threads still running after the deadline")
    if pool.errors:
        raise BenchError(f"{what}: {pool.errors[0]} ({len(pool.errors)} client(s) failed)")
    if len(pool.latencies_ms) != len(callbacks):
        raise BenchError(f"{what}: {len(pool.latencies_ms)} answers for {len(callbacks)} requests")
    return Phase(elapsed, pool.latencies_ms, pool.statuses, cpu)


# ---- the api's side ----------------------------------------------------------------------------
def api_settings(env: BenchEnv) -> Settings:
    """The benchmark's settings plus Twilio credentials and the api's own ports."""
    port = free_port()
    return load_settings(
        **{
            **env.settings.model_dump(),
            "twilio_account_sid": "AC" + secrets.token_hex(16),
            "twilio_auth_token": secrets.token_hex(16),
            "twilio_from": TWILIO_FROM,
            "api_host": "127.0.0.1",
            "api_port": port,
            "api_metrics_port": free_port(),
            # What Twilio was given, and so what it signs; the api validates against it.
            "public_base_url": f"http://127.0.0.1:{port}",
        }
    )


def insert_rows(s: Settings, kind: str, subject: str, n: int) -> list[str]:
    """``n`` notifications as the worker leaves them after Twilio took them; their sids."""
    # Stamped on the clock the api reads (pinned), not this process's wall clock, days away.
    now = pipeline_now(s)
    sids = [sid(kind, i) for i in range(n)]
    rows = [
        Notification(
            idempotency_key=f"bench-callback:{ref}",
            flow="callback_notice",
            channel="sms",
            subject_id=subject,
            recipient=mobile(i),
            body=BODY,
            segments=1,
            status="sent",
            provider="twilio",
            provider_ref=ref,
            category="callbacks",
            critical=True,
            attempts=1,
            claimed_at=now,
            sent_at=now,
        )
        for i, ref in enumerate(sids)
    ]
    with session(s) as db:
        db.add_all(rows)
        db.commit()
    return sids


def row_counts(s: Settings, subject: str, kind: str) -> tuple[dict[str, int], int, int]:
    """(notification rows of ``subject`` by status, history rows for its sids, applied ones)."""
    like = f"SM{kind}%"
    with session(s) as db:
        statuses = dict(
            db.execute(
                select(Notification.status, func.count())
                .where(Notification.subject_id == subject)
                .group_by(Notification.status)
            ).all()
        )
        history = db.execute(
            select(func.count())
            .select_from(NotificationStatusEvent)
            .where(NotificationStatusEvent.provider_ref.like(like))
        ).scalar_one()
        applied = db.execute(
            select(func.count())
            .select_from(NotificationStatusEvent)
            .where(
                NotificationStatusEvent.provider_ref.like(like),
                NotificationStatusEvent.applied.is_(True),
                NotificationStatusEvent.status == "delivered",
            )
        ).scalar_one()
    return statuses, history, applied


def expect_delivered(s: Settings, subject: str, kind: str, n: int, when: str) -> None:
    statuses, history, applied = row_counts(s, subject, kind)
    if statuses != {"delivered": n} or history != n or applied != n:
        raise BenchError(
            f"{when}: expected {n} rows delivered and {n} applied history rows; rows by status "
            f"{statuses}, {history} history rows ({applied} applied as delivered)"
        )


def callback_count(s: Settings, outcome: str) -> float:
    return sample_sum(
        scrape(s.api_metrics_port, timeout=5.0),
        "govnotify_callback_requests_total",
        provider="twilio",
        outcome=outcome,
    )


def _listens(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


@dataclass
class Measured:
    signed: Phase
    forged: Phase


def measure_api(env: BenchEnv, s: Settings, n: int, n_forged: int) -> Measured:
    url = s.api_public_url + TWILIO_STATUS_PATH
    sid_, token = s.twilio_account_sid, s.twilio_auth_token
    warm_sids = insert_rows(s, "f", WARMUP_SUBJECT, N_WARMUP)
    sids = insert_rows(s, "0", SUBJECT, n)
    warm = [callback(url, sid_, token, ref, i, "delivered") for i, ref in enumerate(warm_sids)]
    signed = [callback(url, sid_, token, ref, i, "delivered") for i, ref in enumerate(sids)]
    # A captured callback turned round: same references, "undelivered", another token.
    attacker = secrets.token_hex(16)
    forged = [
        callback(url, sid_, attacker, sids[i % n], i, "undelivered", ErrorCode="30005")
        for i in range(n_forged)
    ]

    group = ProcessGroup(env=child_env(s), log_dir=env.tmp / "logs")
    try:
        api = group.start("api", "api")
        _wait(
            "api listening and /metrics answering",
            lambda: _listens(s.api_port) and _answers(s.api_metrics_port),
            time.monotonic() + STARTUP_DEADLINE_S,
            [api],
        )
        drive(url, warm, "api warm-up", api).expect(204, "api warm-up")
        expect_delivered(s, WARMUP_SUBJECT, "f", N_WARMUP, "after the warm-up")

        signed_phase = drive(url, signed, "signed callbacks", api)
        signed_phase.expect(204, "signed callbacks")
        expect_delivered(s, SUBJECT, "0", n, "after the signed callbacks")
        accepted = callback_count(s, "accepted")
        if accepted != n + N_WARMUP:
            raise BenchError(f"the api counted {accepted:.0f} accepted callbacks, not {n}+warm-up")

        forged_before = callback_count(s, "forged")
        forged_phase = drive(url, forged, "forged callbacks", api)
        forged_phase.expect(403, "forged callbacks")
        refused = callback_count(s, "forged") - forged_before
        if refused != n_forged:
            raise BenchError(f"the api counted {refused:.0f} forged callbacks, {n_forged} sent")
        expect_delivered(s, SUBJECT, "0", n, "after the forged flood")
        if not api.alive():
            raise BenchError(f"the api exited: {api.log_tail()}")
    finally:
        group.stop_all()
    return Measured(signed_phase, forged_phase)


# ---- the baseline: a trivial WSGI app on the api's waitress settings ---------------------------
def trivial_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    """Read the body, answer 204: what is left of a callback without validation and database."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    if length > 0:
        environ["wsgi.input"].read(length)
    start_response("204 No Content", [("Content-Type", "text/plain"), ("Content-Length", "0")])
    return [b""]


def serve_baseline(port: int) -> int:
    """``--baseline-server PORT``: ``trivial_app`` via ``producers.api.make_server`` until
    SIGTERM."""
    from producers.api import make_server

    settings = load_settings(api_host="127.0.0.1", api_port=port)
    server = make_server(settings, trivial_app)  # type: ignore[arg-type]

    def _stop(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        server.run()
    finally:
        server.close()
    return 0


def start_baseline(group: ProcessGroup, port: int) -> Child:
    """The baseline server as a session leader in ``group`` (so stop_all stops it by pid)."""
    group.log_dir.mkdir(parents=True, exist_ok=True)
    log_path = group.log_dir / "baseline.log"
    with log_path.open("ab") as log:
        popen = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.bench_callbacks", "--baseline-server", str(port)],
            cwd=ROOT,
            env=group.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    child = Child("baseline", popen, log_path)
    group.children.append(child)
    return child


def measure_baseline(env: BenchEnv, s: Settings, n: int, n_forged: int) -> Measured:
    """The same request bytes (signed, then forged) against the trivial app."""
    port = free_port()
    url = f"http://127.0.0.1:{port}{TWILIO_STATUS_PATH}"
    # Signed for the api's URL: the trivial app never looks, and the bytes match the api's run.
    api_url = s.api_public_url + TWILIO_STATUS_PATH
    sid_, token = s.twilio_account_sid, s.twilio_auth_token
    attacker = secrets.token_hex(16)
    sids = [sid("0", i) for i in range(n)]
    warm = [callback(api_url, sid_, token, sid("f", i), i, "delivered") for i in range(N_WARMUP)]
    signed = [callback(api_url, sid_, token, ref, i, "delivered") for i, ref in enumerate(sids)]
    forged = [
        callback(api_url, sid_, attacker, sids[i % n], i, "undelivered", ErrorCode="30005")
        for i in range(n_forged)
    ]
    group = ProcessGroup(env=child_env(s), log_dir=env.tmp / "logs")
    try:
        server = start_baseline(group, port)
        _wait(
            "baseline server listening",
            lambda: _listens(port),
            time.monotonic() + STARTUP_DEADLINE_S,
            [server],
        )
        drive(url, warm, "baseline warm-up", server).expect(204, "baseline warm-up")
        signed_phase = drive(url, signed, "baseline, signed bodies", server)
        signed_phase.expect(204, "baseline, signed bodies")
        forged_phase = drive(url, forged, "baseline, forged bodies", server)
        forged_phase.expect(204, "baseline, forged bodies")
        if not server.alive():
            raise BenchError(f"the baseline server exited: {server.log_tail()}")
    finally:
        group.stop_all()
    return Measured(signed_phase, forged_phase)


# ---- the benchmark -----------------------------------------------------------------------------
def run(env: BenchEnv, n: int = N_CALLBACKS, n_forged: int = N_FORGED) -> list[Row]:
    s = api_settings(env)
    api = measure_api(env, s, n, n_forged)
    base = measure_baseline(env, s, n, n_forged)

    def p(phase: Phase, q: float) -> float:
        return percentile(phase.latencies_ms, q)

    print(
        f"  callbacks: {CLIENTS} clients; api applied {n} signed callbacks in "
        f"{api.signed.elapsed_s:.2f}s (p50 {p(api.signed, 50):.1f} ms, "
        f"p95 {p(api.signed, 95):.1f} ms, max {max(api.signed.latencies_ms):.1f} ms), "
        f"refused {n_forged} forged in {api.forged.elapsed_s:.2f}s; api process CPU "
        f"{api.signed.cpu_ms_per_request:.2f} ms/callback, {api.forged.cpu_ms_per_request:.2f} "
        f"ms/refusal (PostgreSQL's own CPU not included)"
    )
    print(
        f"  callbacks: trivial waitress app {n} requests in {base.signed.elapsed_s:.2f}s "
        f"(p50 {p(base.signed, 50):.1f} ms, p95 {p(base.signed, 95):.1f} ms), "
        f"{n_forged} in {base.forged.elapsed_s:.2f}s, CPU {base.signed.cpu_ms_per_request:.2f} "
        f"ms/request; {n} rows delivered, {n} history rows"
    )
    return [
        Row(
            "callbacks",
            f"callbacks/s (N={n})",
            "api, signed + applied",
            api.signed.rate,
            "trivial waitress 204",
            base.signed.rate,
        ),
        Row(
            "callbacks",
            "latency p50 ms",
            "api, signed + applied",
            p(api.signed, 50),
            "trivial waitress 204",
            p(base.signed, 50),
        ),
        Row(
            "callbacks",
            "latency p95 ms",
            "api, signed + applied",
            p(api.signed, 95),
            "trivial waitress 204",
            p(base.signed, 95),
        ),
        Row(
            "callbacks",
            f"refusals/s (N={n_forged})",
            "api, forged → 403",
            api.forged.rate,
            "trivial waitress 204",
            base.forged.rate,
        ),
        # The flood's rate is close to what 4 requests clients in one process can send at all;
        # the server's CPU per request says what a refusal costs when the clients are faster.
        Row(
            "callbacks",
            "server CPU ms/request",
            "api, forged → 403",
            api.forged.cpu_ms_per_request,
            "trivial waitress 204",
            base.forged.cpu_ms_per_request,
        ),
    ]


def bench(_rows: list[Row]) -> list[Row]:
    with bench_env("callbacks") as env:
        return run(env)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_callbacks")
    parser.add_argument(
        "--baseline-server",
        type=int,
        metavar="PORT",
        help="serve the trivial baseline app on PORT (started by the benchmark itself)",
    )
    args = parser.parse_args(argv)
    if args.baseline_server is not None:
        return serve_baseline(args.baseline_server)
    return run_main([("callbacks", bench)])


if __name__ == "__main__":
    sys.exit(main())
