"""Green-channel alert latency: a special-group applicant's ``case.submitted`` → staff webhook.

Latency of one probe = from the moment the probe's publish returned (RabbitMQ confirmed it) to
the moment the ``green_channel_alert`` POST for that case arrived at a loopback
``tests.fakes.webhook_server.FakeWebhook`` (its ``received_at``, the same monotonic clock). Each
probe is an elderly applicant at SC-CHANGAN with its own case id; the alert is found by
``data.case_id`` in the body, because the benchmark's copy of the staff directory points every
robot at the fake in our ``json`` format (the WeCom body carries no case id).

relay, stream, worker and scheduler run as real processes (``infra.processes.ProcessGroup``) with
``GOVNOTIFY_NOW`` pinned to Thursday 2026-11-26 10:00 +08:00 (no quiet hours),
``GOVNOTIFY_GREEN_ESCALATE_AFTER_S=3600`` (no escalations), ``GOVNOTIFY_SURVEY_DELAY_S=0``
(surveys go out during the run) and no Twilio settings (sandbox SMS). Two pipelines, each in its
own ``bench_env`` (Tansu, namespace, database), started the same way:

1. fast path on (the default): 20 probes on the idle pipeline, one at a time (publish, wait for
   its webhook, next) → the baseline; then, on the same pipeline, the load: ~4,200 license
   events (``generate_registry(4000, today)``, many due for reminders) merged with a case day
   (``generate_case_day(1000, at=pipeline now)``, ~2,700 events: surveys, ratings, its own
   special-group alerts) published as fast as confirms allow, with one probe after every
   ~1/21 of it (same publisher, inline) → probes do not wait for each other here.
2. ``GOVNOTIFY_GREEN_FAST_PATH=false`` (alerts only via the Faust stream): a fresh pipeline,
   20 idle probes (shown for reference), then the same load with the same interleaved probes.

Figures: p50/p95 (nearest rank over 20) in ms, as ratios against the idle fast-path baseline of
the same run. Per load run it also prints where the probes were waiting: the relay queue's
ready messages and the stream's backlog (events published minus events the stream applied) at
each probe's publish, and the median split of the latency at ``staff_alert.created_at``
(written by the worker when it starts on the alert): publish → worker, worker → webhook. The
split is read on the one clock every process reads (``benchmarks.common.pipeline_now``: pinned
``GOVNOTIFY_NOW`` + wall time since ``GOVNOTIFY_NOW_EPOCH``); the fake's wall-clock arrival is
moved onto it, never compared with a pinned stamp as it is.
Every wait has a deadline; a probe not alerted within PROBE_DEADLINE_S fails the run naming it.

    python -m benchmarks.bench_green_channel
"""

from __future__ import annotations

import datetime as dt
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select

from benchmarks.bench_pipeline import _answers, _wait, stream_events
from benchmarks.common import (
    TODAY,
    BenchEnv,
    BenchError,
    Row,
    bench_env,
    child_env,
    on_pipeline_clock,
    pipeline_now,
    queue_depth,
    run_main,
)
from infra.db import session
from infra.metrics import sample_sum, scrape
from infra.processes import Child, ProcessGroup
from infra.services import free_port
from infra.settings import Settings, load_settings
from producers.generator import generate_case_day, generate_registry, license_event
from producers.rabbitmq import Publisher
from schemas.events import Event, make_event
from schemas.models import StaffAlert
from tests.fakes.webhook_server import FakeWebhook

CST = dt.timezone(dt.timedelta(hours=8))
#: A weekday morning: outside quiet hours.
NOW = dt.datetime.combine(TODAY, dt.time(10, 0), tzinfo=CST)
N_PROBES = 20
N_LICENSES = 4000
N_CASES = 1000
#: A probe whose alert has not arrived this long after its publish fails the run.
PROBE_DEADLINE_S = 60.0
#: Processes up, metrics answering, stream group joined, warm-up alert delivered.
STARTUP_DEADLINE_S = 90.0
#: Publishing the whole background load (with its probes).
LOAD_PUBLISH_DEADLINE_S = 90.0
POLL_S = 0.01
BUNDLED_DIRECTORY = Path(__file__).parents[1] / "schemas" / "data" / "staff_directory.json"
PROBE_POINT = ("SC-CHANGAN", "长安区政务服务中心", "service_centre")


# ---- set-up ----------------------------------------------------------------------------------
def write_directory(fake: FakeWebhook, path: Path) -> Path:
    """The bundled staff directory with every robot at ``fake`` in the ``json`` format."""
    directory = json.loads(BUNDLED_DIRECTORY.read_text(encoding="utf-8"))
    for name, hook in directory["webhooks"].items():
        hook["url"] = fake.url(f"/hooks/{name}")
        hook["format"] = "json"
        hook.pop("secret", None)
    path.write_text(json.dumps(directory, ensure_ascii=False), encoding="utf-8")
    return path


def bench_settings(env: BenchEnv, directory: Path, *, fast_path: bool) -> Settings:
    return load_settings(
        **{
            **env.settings.model_dump(),
            "now": NOW,
            "green_fast_path": fast_path,
            "green_escalate_after_s": 3600,
            "survey_delay_s": 0,
            "staff_directory": directory,
            "scheduler_metrics_port": free_port(),
        }
    )


def probe_event(case_id: str, at: dt.datetime, n: int) -> Event:
    """An elderly applicant's case.submitted at the service centre (on duty: hall-robot)."""
    return make_event(
        "case.submitted",
        {
            "case_id": case_id,
            "service_item": "居民身份证换领",
            "department": "公安分局",
            "service_point": {
                "id": PROBE_POINT[0],
                "name": PROBE_POINT[1],
                "level": PROBE_POINT[2],
            },
            "applicant": {
                "kind": "citizen",
                "name": "王秀英",
                "mobile": f"139{n:08d}",
                "age": 82,
                "special_groups": ["elderly"],
            },
            "key_project": False,
            "submitted_at": at.isoformat(),
        },
        source="case-system",
        occurred_at=at,
    )


class Arrivals:
    """First arrival (monotonic) of each green-channel alert at the fake, by case id."""

    def __init__(self, fake: FakeWebhook) -> None:
        self.fake = fake
        self.seen: dict[str, float] = {}
        self.seen_wall: dict[str, dt.datetime] = {}
        self._read = 0

    def update(self) -> None:
        requests = self.fake.requests  # appended to under the fake's lock; we only read
        while self._read < len(requests):
            r = requests[self._read]
            self._read += 1
            body = r.body if isinstance(r.body, dict) else {}
            case_id = (body.get("data") or {}).get("case_id")
            if body.get("kind") == "green_channel_alert" and case_id:
                self.seen.setdefault(case_id, r.received_at)
                self.seen_wall.setdefault(case_id, r.received_wall)

    def wait(self, case_ids: dict[str, float], children: list[Child]) -> dict[str, float]:
        """Latency in s of each probe (case id → publish-confirmed time); deadline per probe."""
        pending = set(case_ids)
        while pending:
            self.update()
            pending -= self.seen.keys()
            if not pending:
                break
            for child in children:
                if not child.alive():
                    raise BenchError(
                        f"{child.name} (pid {child.pid}) exited with {child.popen.returncode}; "
                        f"last lines of {child.log_path}:\n{child.log_tail()}"
                    )
            late = [c for c in pending if time.monotonic() > case_ids[c] + PROBE_DEADLINE_S]
            if late:
                tails = "\n".join(f"--- {c.name}:\n{c.log_tail(8)}" for c in children)
                raise BenchError(
                    f"{len(late)} probe alert(s) not at the webhook within {PROBE_DEADLINE_S:g} s "
                    f"of publishing (e.g. {sorted(late)[0]}); "
                    f"{len(case_ids) - len(pending)}/{len(case_ids)} arrived\n{tails}"
                )
            time.sleep(POLL_S)
        return {c: self.seen[c] - t0 for c, t0 in case_ids.items()}


@dataclass
class Pipeline:
    settings: Settings
    group: ProcessGroup
    fake: FakeWebhook
    arrivals: Arrivals
    children: list[Child] = field(default_factory=list)
    started: float = 0.0
    #: Publish-confirmed time of each probe on the pipeline's clock, for the split below.
    sent_clock: dict[str, dt.datetime] = field(default_factory=dict)

    def split(self, prefix: str) -> tuple[float, float]:
        """Medians in ms of (publish → the worker starts the alert, worker → webhook POST).

        The worker writes ``staff_alert.created_at`` on its clock (the pinned one) when it
        starts on the alert; the fake records the POST's wall-clock arrival, moved onto the
        pinned clock here; the publish is stamped on it too. One clock: a negative part is a
        bug, not jitter, and fails the run.
        """
        ids = [c for c in self.sent_clock if c.startswith(prefix)]
        with session(self.settings) as db:
            created = dict(
                db.execute(
                    select(StaffAlert.case_id, StaffAlert.created_at).where(
                        StaffAlert.case_id.in_(ids)
                    )
                ).all()
            )
        to_worker, in_worker = [], []
        for c in ids:
            if c not in created or c not in self.arrivals.seen_wall:
                continue
            at = created[c] if created[c].tzinfo else created[c].replace(tzinfo=dt.UTC)
            arrived = on_pipeline_clock(self.settings, self.arrivals.seen_wall[c])
            to_worker.append((at - self.sent_clock[c]).total_seconds() * 1000)
            in_worker.append((arrived - at).total_seconds() * 1000)
        if not to_worker:
            return float("nan"), float("nan")
        # On one clock a part is never negative beyond a few ms of jitter; half a second or more
        # (days, with a wall-clock stamp against a pinned one) means two clocks.
        if min(to_worker) < -500 or min(in_worker) < -500:
            raise BenchError(
                f"latency split negative (min {min(to_worker):.0f} / {min(in_worker):.0f} ms): "
                "the stamps are not on one clock"
            )
        return statistics.median(to_worker), statistics.median(in_worker)

    def now(self) -> dt.datetime:
        """The pipeline's clock, exactly as its processes read it (not a monotonic origin of
        this process's own, which starts seconds after GOVNOTIFY_NOW_EPOCH)."""
        return pipeline_now(self.settings)


def start(env: BenchEnv, fake: FakeWebhook, *, fast_path: bool) -> Pipeline:
    directory = write_directory(fake, env.tmp / "staff_directory.json")
    s = bench_settings(env, directory, fast_path=fast_path)
    group = ProcessGroup(env=child_env(s), log_dir=env.tmp / "logs")
    p = Pipeline(s, group, fake, Arrivals(fake), started=time.monotonic())
    try:
        _start_and_warm_up(p)
    except BaseException:
        group.stop_all()
        raise
    return p


def _start_and_warm_up(p: Pipeline) -> None:
    s, group = p.settings, p.group
    deadline = p.started + STARTUP_DEADLINE_S
    p.children = [
        group.start("relay", "relay"),
        group.start("stream", "stream"),
        group.start("worker", "worker"),
        group.start("scheduler", "scheduler"),
    ]
    ports = (
        s.relay_metrics_port,
        s.stream_metrics_port,
        s.worker_metrics_port,
        s.scheduler_metrics_port,
    )
    _wait("metrics endpoints", lambda: all(_answers(x) for x in ports), deadline, p.children)
    # A license event and a probe all the way through: the stream's group has joined (it
    # applied both), the worker sends alerts to the fake.
    warm_license = license_event(
        "license.issued",
        "LIC-WARMUP-000001",
        category="food_business",
        issued_on=s.today - dt.timedelta(days=65),
        expires_on=s.today + dt.timedelta(days=300),
        occurred_at=dt.datetime.combine(s.today, dt.time(1), tzinfo=dt.UTC),
    )
    with Publisher.from_settings(s) as pub:
        pub.publish(warm_license)
        pub.publish(probe_event("WARMUP-PROBE", p.now(), 0))
    _wait("warm-up through the stream", lambda: stream_events(s) >= 2, deadline, p.children)
    _wait(
        "warm-up alert at the webhook",
        lambda: p.arrivals.update() or "WARMUP-PROBE" in p.arrivals.seen,
        deadline,
        p.children,
    )


# ---- scenarios -------------------------------------------------------------------------------
def idle_probes(p: Pipeline, label: str) -> list[float]:
    """N_PROBES one at a time on the idle pipeline; latencies in s."""
    s = p.settings
    out = []
    with Publisher(s.amqp_url, s.exchange) as pub:
        for i in range(N_PROBES):
            case_id = f"PROBE-{label}-{i:03d}"
            pub.publish(probe_event(case_id, p.now(), 1000 + i))
            t0 = time.monotonic()
            p.sent_clock[case_id] = p.now()
            out.append(p.arrivals.wait({case_id: t0}, p.children)[case_id])
    return out


def merge(a: list[Event], b: list[Event]) -> list[Event]:
    """``a`` and ``b`` interleaved in proportion, each in its own order."""
    out, i, j = [], 0, 0
    while i < len(a) or j < len(b):
        if j >= len(b) or (i < len(a) and i * len(b) <= j * len(a)):
            out.append(a[i])
            i += 1
        else:
            out.append(b[j])
            j += 1
    return out


@dataclass
class LoadResult:
    latencies: list[float]
    n_background: int
    publish_s: float
    relay_ready: list[int]
    stream_backlog: list[float]
    fast_path_sends: float


def loaded_probes(p: Pipeline, label: str, licenses: list[Event]) -> LoadResult:
    """The background load with a probe after every 1/(N_PROBES+1) of it; latencies in s."""
    s = p.settings
    day = generate_case_day(N_CASES, p.now(), prefix=f"CASE-{label}")
    background = merge(licenses, day.events)
    every = len(background) // (N_PROBES + 1)
    sent: dict[str, float] = {}
    relay_ready: list[int] = []
    stream_backlog: list[float] = []
    published = 2  # the warm-up events
    t_start = time.monotonic()
    deadline = t_start + LOAD_PUBLISH_DEADLINE_S
    with Publisher(s.amqp_url, s.exchange) as pub:
        for n, event in enumerate(background, start=1):
            pub.publish(event)
            published += 1
            if n % every == 0 and len(sent) < N_PROBES:
                case_id = f"PROBE-{label}-{len(sent):03d}"
                # Where the probe will wait: behind the relay queue, behind the stream's lag.
                relay_ready.append(queue_depth(s, s.relay_queue))
                stream_backlog.append(published - stream_events(s))
                pub.publish(probe_event(case_id, p.now(), 2000 + len(sent)))
                sent[case_id] = time.monotonic()
                p.sent_clock[case_id] = p.now()
                published += 1
                p.arrivals.update()
            if n % 256 == 0 and time.monotonic() > deadline:
                raise BenchError(
                    f"publishing the load did not finish within {LOAD_PUBLISH_DEADLINE_S:g} s"
                )
    publish_s = time.monotonic() - t_start
    latencies = p.arrivals.wait(sent, p.children)
    try:
        fast = sample_sum(
            scrape(s.relay_metrics_port, timeout=2.0),
            "govnotify_relay_green_channel_fast_path_total",
        )
    except OSError:
        fast = float("nan")
    return LoadResult(
        [latencies[c] for c in sent],
        len(background),
        publish_s,
        relay_ready,
        stream_backlog,
        fast or 0.0,
    )


# ---- figures ---------------------------------------------------------------------------------
def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0..100) in ms."""
    ordered = sorted(values)
    return 1000 * ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def describe(name: str, lat: list[float]) -> str:
    ms = [1000 * x for x in lat]
    return (
        f"  {name}: n={len(ms)} min {min(ms):.0f} p50 {pct(lat, 50):.0f} "
        f"p95 {pct(lat, 95):.0f} max {max(ms):.0f} ms"
    )


def describe_load(name: str, r: LoadResult) -> str:
    ms = ", ".join(f"{1000 * x:.0f}" for x in r.latencies)
    return (
        f"  {name}: {r.n_background} background events + {len(r.latencies)} probes published "
        f"in {r.publish_s:.1f}s ({r.n_background / r.publish_s:,.0f}/s with confirms); "
        f"at the probes: relay queue ready median {statistics.median(r.relay_ready):.0f} "
        f"max {max(r.relay_ready)}, stream backlog median "
        f"{statistics.median(r.stream_backlog):.0f} max {max(r.stream_backlog):.0f} events; "
        f"relay fast-path sends {r.fast_path_sends:.0f}\n"
        f"    probe latencies in publish order (ms): {ms}"
    )


def split_text(p: Pipeline, prefix: str) -> str:
    to_worker, in_worker = p.split(prefix)
    return (
        f"; medians: publish → worker starts {to_worker:.0f} ms, "
        f"worker → webhook POST {in_worker:.0f} ms"
    )


def scenario(fast_path: bool, licenses: list[Event]) -> tuple[list[float], LoadResult]:
    label = "fast" if fast_path else "stream"
    with bench_env(f"green-{label}") as env, FakeWebhook() as fake:
        p = start(env, fake, fast_path=fast_path)
        try:
            startup = time.monotonic() - p.started
            print(f"  [{label}] pipeline up (4 processes, warm-up alert) in {startup:.1f}s")
            idle = idle_probes(p, f"{label}-idle")
            print(describe(f"[{label}] idle", idle) + split_text(p, f"PROBE-{label}-idle"))
            load = loaded_probes(p, f"{label}-load", licenses)
            print(
                describe(f"[{label}] under load", load.latencies)
                + split_text(p, f"PROBE-{label}-load")
            )
            print(describe_load(f"[{label}] load", load))
        finally:
            p.group.stop_all()
    return idle, load


def bench(_rows: list[Row]) -> list[Row]:
    licenses = generate_registry(N_LICENSES, TODAY, prefix="LICGREEN").events
    base, fast = scenario(True, licenses)
    stream_idle, stream = scenario(False, licenses)
    b50, b95 = pct(base, 50), pct(base, 95)
    baseline = "idle, fast path"
    rows = []
    for label, lat in (
        ("under load, fast path", fast.latencies),
        ("under load, stream only", stream.latencies),
        ("idle, stream only", stream_idle),
    ):
        rows.append(Row("green_channel", "alert p50 ms", label, pct(lat, 50), baseline, b50))
        rows.append(Row("green_channel", "alert p95 ms", label, pct(lat, 95), baseline, b95))
    return rows


def main() -> int:
    return run_main([("green_channel", bench)])


if __name__ == "__main__":
    sys.exit(main())
