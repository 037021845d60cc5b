"""``govnotify top``: a live terminal view of the running pipeline, for the SRE on call.

Built from what production exposes anyway, so it shows what Prometheus would: each component's
``/metrics`` and ``/readyz`` (ports from the settings), the work queues' depths (one AMQP
connection, passive declares) and the latest dead letters (five rows from the database: stage,
reason, event type, count; never their bytes or detail). Rates are differences between two
successive scrapes over the time between them; ``--once`` scrapes twice, ``--interval`` apart,
prints one frame and exits. Anything that does not answer is shown as ``down``, never a crash;
``--once`` then exits 3 (:data:`infra.cli.exits.UNREACHABLE`), and ``--once --json`` prints the
frame's state as one JSON document instead of the tables.
"""

from __future__ import annotations

import argparse
import json
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from rich import box
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from infra.cli import exits
from infra.cli.output import add_json_flag, print_json
from infra.deadletters import latest_letters
from infra.metrics import Samples, parse_samples
from infra.settings import Settings, get_settings
from producers.rabbitmq import queue_depths

__all__ = ["Component", "Frame", "TopView", "cmd_top", "register", "render"]

#: How long one HTTP scrape or probe may take.
SCRAPE_TIMEOUT_S = 3.0
#: Work queues whose jobs each carry many items (a batch of reminders, of license records):
#: their depths count jobs, which the table says.
BATCH_QUEUES = ("reminders", "registry")
#: Outcomes of a provider request that count against the provider (the circuit's view);
#: a permanent error is the recipient's fault (invalid number), not the provider's.
PROVIDER_FAILURES = ("transient", "timeout", "error", "misconfigured")


@dataclass
class Component:
    """One long-running process as seen over HTTP."""

    name: str
    port: int
    up: bool = False
    #: True/False from /readyz; None when it could not tell (down, or no /readyz).
    ready: bool | None = None
    #: Failing readiness checks, "check: why".
    problems: list[str] = field(default_factory=list)
    samples: Samples = field(default_factory=dict)

    def total(self, name: str, **match: str) -> float | None:
        """Sum of ``name``'s samples whose labels include ``match``; None when down."""
        if not self.up:
            return None
        return sum(
            value
            for labels, value in self.samples.get(name, {}).items()
            if all((k, v) in labels for k, v in match.items())
        )

    def by(self, name: str, *keys: str, **match: str) -> dict[tuple[str, ...], float]:
        """``name``'s samples summed by the label values ``keys``."""
        out: dict[tuple[str, ...], float] = defaultdict(float)
        for labels, value in self.samples.get(name, {}).items():
            d = dict(labels)
            if all(d.get(k) == v for k, v in match.items()):
                out[tuple(d.get(k, "") for k in keys)] += value
        return dict(out)


@dataclass
class Frame:
    """Everything one refresh read, at one instant."""

    at: float
    components: dict[str, Component]
    #: queue → ready messages; None when RabbitMQ did not answer (then ``queues_error``).
    queues: dict[str, int | None]
    queues_error: str = ""
    dead_letters: list[tuple[Any, ...]] = field(default_factory=list)
    dead_letters_error: str = ""


def _get(host: str, port: int, path: str) -> tuple[int, str]:
    try:
        url = f"http://{host}:{port}{path}"
        with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT_S) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:  # 503 from /readyz carries the checks
        return exc.code, exc.read().decode(errors="replace")


def probe(name: str, host: str, port: int) -> Component:
    """Scrape ``/metrics`` and ask ``/readyz`` of the component on ``host:port``."""
    component = Component(name, port)
    try:
        status, text = _get(host, port, "/metrics")
    except (OSError, ValueError):
        return component
    component.up = status == 200
    component.samples = parse_samples(text) if component.up else {}
    try:
        status, text = _get(host, port, "/readyz")
        answer = json.loads(text)
        checks = answer["checks"]
    except (OSError, ValueError, KeyError, TypeError):
        return component  # an older server without /readyz: readiness unknown
    component.ready = status == 200
    component.problems = [f"{k}: {v}" for k, v in checks.items() if v != "ok"]
    return component


class TopView:
    """Reads frames and renders the last one with rates against the one before."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        s = settings
        self.endpoints = {
            "relay": s.relay_metrics_port,
            "stream": s.stream_metrics_port,
            "worker": s.worker_metrics_port,
            "scheduler": s.scheduler_metrics_port,
            "api": s.api_metrics_port,
        }
        self.queues = [s.relay_queue, s.dead_letter_queue, *s.work_queues]
        self.previous: Frame | None = None
        self.current: Frame | None = None

    def sample(self) -> Frame:
        s = self.settings
        with ThreadPoolExecutor(max_workers=len(self.endpoints) + 2) as pool:
            futures = {
                name: pool.submit(probe, name, s.metrics_host, port)
                for name, port in self.endpoints.items()
            }
            depths = pool.submit(queue_depths, s, self.queues, timeout=SCRAPE_TIMEOUT_S)
            letters = pool.submit(latest_letters, s)
            components = {name: f.result() for name, f in futures.items()}
            frame = Frame(time.monotonic(), components, {})
            try:
                frame.queues = depths.result()
            except Exception as exc:  # RabbitMQ down or refusing: shown, not raised
                frame.queues = dict.fromkeys(self.queues)
                frame.queues_error = f"RabbitMQ down ({type(exc).__name__})"
            try:
                frame.dead_letters = letters.result()
            except Exception as exc:
                frame.dead_letters_error = f"database down ({type(exc).__name__})"
        self.previous, self.current = self.current, frame
        return frame

    def down(self) -> list[str]:
        """What did not answer in the last frame: components, RabbitMQ, the database."""
        assert self.current is not None, "sample() first"
        frame = self.current
        out = [name for name, c in frame.components.items() if not c.up]
        if frame.queues_error:
            out.append("rabbitmq")
        if frame.dead_letters_error:
            out.append("database")
        return out

    def as_json(self) -> dict[str, object]:
        """The last frame's state (readiness, queue depths, what is down) for ``--json``."""
        assert self.current is not None, "sample() first"
        frame = self.current
        return {
            "components": {
                name: {"port": c.port, "up": c.up, "ready": c.ready, "problems": c.problems}
                for name, c in frame.components.items()
            },
            "queues": frame.queues,
            "queues_error": frame.queues_error or None,
            "dead_letters_error": frame.dead_letters_error or None,
            "down": self.down(),
        }

    def rate(self, component: str, name: str, **match: str) -> float | None:
        """Per-second increase of a counter between the last two frames."""
        if self.previous is None or self.current is None:
            return None
        before = self.previous.components[component].total(name, **match)
        after = self.current.components[component].total(name, **match)
        elapsed = self.current.at - self.previous.at
        if before is None or after is None or elapsed <= 0:
            return None
        # A restarted component starts its counters again from 0.
        return max(0.0, after - before) / elapsed

    def rates_by(
        self, component: str, name: str, *keys: str, **match: str
    ) -> dict[tuple[str, ...], float | None]:
        if self.current is None:
            return {}
        now = self.current.components[component].by(name, *keys, **match)
        if self.previous is None or not self.previous.components[component].up:
            return dict.fromkeys(now)
        before = self.previous.components[component].by(name, *keys, **match)
        elapsed = self.current.at - self.previous.at
        return {
            k: max(0.0, v - before.get(k, 0.0)) / elapsed if elapsed > 0 else None
            for k, v in now.items()
        }

    def render(self) -> Group:
        assert self.current is not None, "sample() first"
        return render(self)


# ---- rendering -------------------------------------------------------------------------------
def _num(value: float | None, fmt: str = "{:,.0f}") -> str:
    return "-" if value is None else fmt.format(value)


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}/s"


def _table(title: str, *headers: str) -> Table:
    table = Table(
        title=title,
        box=box.SIMPLE_HEAD,
        title_justify="left",
        pad_edge=False,
        # A title is never wrapped inside a narrow table.
        min_width=len(title) + 2,
    )
    for i, header in enumerate(headers):
        table.add_column(header, justify="left" if i == 0 else "right")
    return table


def _components(view: TopView) -> Table:
    frame = view.current
    assert frame is not None
    table = _table("components", "component", "endpoint", "state", "ready", "detail")
    for name, c in frame.components.items():
        state = Text("up", style="green") if c.up else Text("down", style="red")
        if not c.up:
            ready = Text("-")
        elif c.ready is None:
            ready = Text("?")
        else:
            ready = Text("yes", style="green") if c.ready else Text("no", style="red")
        detail = "; ".join(c.problems)[:70]
        table.add_row(name, f":{c.port}", state, ready, detail)
    return table


def _events(view: TopView) -> Table:
    frame = view.current
    assert frame is not None
    table = _table("events", "measure", "total", "rate")
    for label, component, metric in (
        ("received by the relay", "relay", "govnotify_events_received_total"),
        ("rejected (dead letters)", "relay", "govnotify_events_rejected_total"),
        ("written to Kafka", "relay", "govnotify_events_relayed_total"),
        ("processed by the stream", "stream", "govnotify_stream_events_total"),
    ):
        scraped = frame.components[component]
        table.add_row(label, _num(scraped.total(metric)), _rate(view.rate(component, metric)))
    relay = frame.components["relay"]
    table.add_row("relay lag", _num(relay.total("govnotify_relay_lag_seconds"), "{:,.2f} s"), "")
    table.add_row("relay queue (ready)", _num(relay.total("govnotify_relay_queue_messages")), "")
    return table


def _consumer_lag(view: TopView) -> Table:
    frame = view.current
    assert frame is not None
    stream = frame.components["stream"]
    trust = stream.total("govnotify_kafka_consumer_lag_trustworthy")
    note = "" if not stream.up or trust else " (Tansu: end offsets are approximate)"
    table = _table(f"kafka consumer lag{note}", "topic", "lag", "partitions", "worst partition")
    lags = stream.by("govnotify_kafka_consumer_lag_messages", "topic", "partition")
    per_topic: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for (topic, partition), lag in lags.items():
        per_topic[topic].append((lag, partition))
    if not stream.up:
        table.add_row("(stream down)", "-", "-", "-")
    for topic in sorted(per_topic):
        values = per_topic[topic]
        worst = max(values)
        table.add_row(topic, _num(sum(v for v, _ in values)), str(len(values)), f"#{worst[1]}")
    return table


def _queues(view: TopView) -> Table:
    frame = view.current
    assert frame is not None
    s = view.settings
    title = "queues" + (f" ({frame.queues_error})" if frame.queues_error else "")
    table = _table(title, "queue", "ready", "delayed (.DQ)", "dead (.XQ)")
    q = frame.queues
    table.add_row(s.relay_queue, _num(q.get(s.relay_queue)), "", "")
    table.add_row(s.dead_letter_queue, _num(q.get(s.dead_letter_queue)), "", "")
    bases = [name for name in s.work_queues if not name.endswith((".DQ", ".XQ"))]
    batched = {s.queue(name) for name in BATCH_QUEUES}
    for base in bases:
        # A job there carries many items (reminders, license records): say it is jobs counted.
        label = f"{base} (jobs)" if base in batched else base
        depths = (q.get(base), q.get(f"{base}.DQ"), q.get(f"{base}.XQ"))
        table.add_row(label, *(_num(depth) for depth in depths))
    return table


def _notifications(view: TopView) -> Table:
    frame = view.current
    assert frame is not None
    worker = frame.components["worker"]
    table = _table("notifications", "flow", "status", "total", "rate")
    totals = worker.by("govnotify_notifications_total", "flow", "status")
    rates = view.rates_by("worker", "govnotify_notifications_total", "flow", "status")
    if not worker.up:
        table.add_row("(worker down)", "", "-", "-")
    for flow, status in sorted(totals):
        table.add_row(flow, status, _num(totals[(flow, status)]), _rate(rates.get((flow, status))))
    scheduler = frame.components["scheduler"]
    pending = scheduler.by("govnotify_notifications_pending", "status")
    oldest = scheduler.by("govnotify_notifications_oldest_pending_seconds", "status")
    for (status,), count in sorted(pending.items()):
        age = oldest.get((status,))
        table.add_row(
            "(pending)", status, _num(count), f"oldest {_num(age, '{:,.0f} s')}" if count else ""
        )
    return table


def _providers(view: TopView) -> Table:
    frame = view.current
    assert frame is not None
    worker = frame.components["worker"]
    table = _table("providers", "provider", "requests", "failed", "error rate", "circuit")
    name = "govnotify_provider_request_duration_seconds_count"
    totals = worker.by(name, "provider")
    requests = view.rates_by("worker", name, "provider")
    requests_known = view.previous is not None and view.previous.components["worker"].up
    circuits = worker.by("govnotify_provider_circuit_open", "provider")
    providers = sorted({p for (p,) in totals} | {p for (p,) in circuits})
    if not worker.up:
        table.add_row("(worker down)", "-", "-", "-", "-")
    for provider in providers:
        failed = 0.0
        failed_known = True
        for outcome in PROVIDER_FAILURES:
            r = view.rates_by("worker", name, "provider", outcome=outcome).get((provider,), 0.0)
            if r is None:
                failed_known = False
            else:
                failed += r
        # A provider known only from its circuit gauge made no request in the interval.
        total_rate = requests.get((provider,), 0.0 if requests_known else None)
        if total_rate is None or not failed_known:
            error_rate = "-"
            failed_text = "-"
        else:
            error_rate = f"{failed / total_rate:.0%}" if total_rate else "0%"
            failed_text = _rate(failed)
        is_open = circuits.get((provider,), 0.0) >= 1
        circuit = Text("open", style="red") if is_open else Text("closed", style="green")
        table.add_row(provider, _rate(total_rate), failed_text, error_rate, circuit)
    return table


def _centre(view: TopView) -> Table:
    frame = view.current
    assert frame is not None
    sch = frame.components["scheduler"]
    table = _table("service centre (from the database, via the scheduler)", "measure", "now")
    rows: list[tuple[str, str]] = [
        (
            "green-channel alerts unacknowledged",
            _num(sch.total("govnotify_green_channel_alerts_unacknowledged")),
        ),
        (
            "  oldest waiting",
            _num(sch.total("govnotify_green_channel_oldest_unacknowledged_seconds"), "{:,.0f} s"),
        ),
        ("rectification tickets open", _num(sch.total("govnotify_rectification_tickets_open"))),
        (
            "rectification tickets overdue",
            _num(sch.total("govnotify_rectification_tickets_overdue")),
        ),
        ("callback tasks overdue", _num(sch.total("govnotify_callback_tasks_overdue"))),
        ("dead letters open", _num(sch.total("govnotify_dead_letters_open"))),
    ]
    for label, value in rows:
        table.add_row(label, value)
    if sch.up and not sch.total("govnotify_database_gauges_up"):
        table.add_row("(database gauges stale: the scheduler cannot read the database)", "")
    return table


def _dead_letters(view: TopView) -> Table:
    frame = view.current
    assert frame is not None
    title = "latest dead letters" + (
        f" ({frame.dead_letters_error})" if frame.dead_letters_error else ""
    )
    table = _table(title, "last seen", "stage", "reason", "event type", "count", "status")
    tz = view.settings.tz
    for last_seen, stage, reason, event_type, count, status in frame.dead_letters:
        when = last_seen.astimezone(tz).strftime("%m-%d %H:%M:%S") if last_seen else "-"
        table.add_row(when, stage, reason, event_type or "-", str(count), status)
    return table


SECTIONS: list[Callable[[TopView], Table]] = [
    _components,
    _events,
    _consumer_lag,
    _queues,
    _notifications,
    _providers,
    _centre,
    _dead_letters,
]


def render(view: TopView) -> Group:
    """One frame: every section, top to bottom."""
    frame = view.current
    assert frame is not None
    elapsed = frame.at - view.previous.at if view.previous else 0.0
    header = Text(
        f"govnotify top — namespace {view.settings.namespace}, "
        + (f"rates over {elapsed:.1f} s" if view.previous else "no rates yet (one scrape)"),
        style="bold",
    )
    return Group(header, *(section(view) for section in SECTIONS))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("top", help="live terminal view of the running pipeline, from its metrics")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    p.add_argument(
        "--once", action="store_true", help="print one frame and exit (3 when anything is down)"
    )
    add_json_flag(p)
    p.set_defaults(func=cmd_top)


def cmd_top(args: argparse.Namespace) -> int:
    """``govnotify top [--interval S] [--once]``."""
    settings = get_settings()
    interval = max(0.0, float(args.interval))
    view = TopView(settings)
    if args.json and not args.once:
        raise exits.CommandError("--json needs --once", exits.USAGE)
    if args.once:
        console = Console(width=120, soft_wrap=False)
        view.sample()
        if interval > 0:
            # Rates need two readings: the second one interval later (not a test's sleep: the
            # measuring window itself).
            time.sleep(interval)
            view.sample()
        if args.json:
            print_json(view.as_json())
        else:
            console.print(view.render())
        return exits.UNREACHABLE if view.down() else exits.OK
    view.sample()
    try:
        with Live(view.render(), auto_refresh=False, screen=False) as live:
            while True:
                time.sleep(max(0.2, interval))
                view.sample()
                live.update(view.render(), refresh=True)
    except KeyboardInterrupt:
        return exits.OK
