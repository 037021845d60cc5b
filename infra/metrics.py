"""Every govnotify metric, defined once, with bounded label values.

Labels never carry a phone number, case id or citizen id. In dramatiq worker processes
``PROMETHEUS_MULTIPROC_DIR`` is set before this module is imported, so the same definitions
write to the shared multi-process files that dramatiq's exposition server reads.
"""

from __future__ import annotations

import re
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Mapping
from threading import Thread
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, make_wsgi_app

from infra.health import Readiness, health_app, serve_http

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client.registry import CollectorRegistry

__all__ = [
    "CALLBACK_REQUESTS",
    "CALL_LIST_ENTRIES",
    "DEAD_LETTERS",
    "DEFERRED",
    "EVENTS_RECEIVED",
    "EVENTS_REJECTED",
    "EVENTS_RELAYED",
    "EVENT_TO_SEND",
    "FAILOVERS",
    "JOBS_ENQUEUED",
    "NOTIFICATIONS",
    "OUTCOME_POSTS",
    "PACE_WAIT",
    "PROVIDER_CIRCUIT_OPEN",
    "PROVIDER_DURATION",
    "RATE_LIMITED",
    "RETENTION_PURGED",
    "STATUS_CALLBACKS_APPLIED",
    "STREAM_EVENTS",
    "SUPPRESSIONS",
    "Labels",
    "Samples",
    "parse_samples",
    "sample_sum",
    "scrape",
    "scrape_text",
    "serve_metrics",
]

EVENTS_RECEIVED = Counter(
    "govnotify_events_received_total", "Events taken from the ingest queue.", ["event_type"]
)
EVENTS_REJECTED = Counter(
    "govnotify_events_rejected_total",
    "Events refused at ingest, by reason; each is kept as a dead letter.",
    ["event_type", "reason"],
)
EVENTS_RELAYED = Counter(
    "govnotify_events_relayed_total", "Events written to Kafka by the relay.", ["topic"]
)
STREAM_EVENTS = Counter(
    "govnotify_stream_events_total",
    "Events processed by the stream rules, by outcome (applied; duplicate: applied before, "
    "delivered again; invalid).",
    ["event_type", "outcome"],
)
JOBS_ENQUEUED = Counter(
    "govnotify_jobs_enqueued_total", "Jobs sent from the stream rules to the work queues.", ["kind"]
)
NOTIFICATIONS = Counter(
    "govnotify_notifications_total",
    "Notifications reaching a status, by flow, channel, provider and status.",
    ["flow", "channel", "provider", "status"],
)
PROVIDER_DURATION = Histogram(
    "govnotify_provider_request_duration_seconds",
    "Time spent in one provider request.",
    ["provider", "outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
EVENT_TO_SEND = Histogram(
    "govnotify_event_to_send_seconds",
    "Time from the triggering event to the provider accepting the message, by flow.",
    ["flow"],
    buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 86400),
)
CALL_LIST_ENTRIES = Counter(
    "govnotify_call_list_entries_total",
    "Staff call-list entries created, by category.",
    ["category"],
)
DEFERRED = Counter(
    "govnotify_notifications_deferred_total",
    "Citizen messages deferred, by flow and reason (quiet hours, daily cap, the carrier's "
    "daily limit per number).",
    ["flow", "reason"],
)
DEAD_LETTERS = Counter(
    "govnotify_dead_letters_total",
    "Dead-letter records written, by stage and reason.",
    ["stage", "reason"],
)

# ---- issue 4: delivery you can trust ---------------------------------------------------------
CALLBACK_REQUESTS = Counter(
    "govnotify_callback_requests_total",
    "Provider status callbacks received by the api, by provider and outcome "
    "(accepted, unsigned, forged, malformed, too_large, unconfigured, error).",
    ["provider", "outcome"],
)
STATUS_CALLBACKS_APPLIED = Counter(
    "govnotify_status_callbacks_total",
    "Provider statuses applied to notifications, by provider and result "
    "(advanced, ignored: not forward, duplicate: seen before).",
    ["provider", "result"],
)
FAILOVERS = Counter(
    "govnotify_provider_failovers_total",
    "Sends moved from one provider to the next after a transient failure or an open circuit.",
    ["flow", "from_provider", "to_provider", "reason"],
)
RATE_LIMITED = Counter(
    "govnotify_provider_rate_limited_total",
    "Sends a provider refused as over a rate limit: scope provider (our account or robot) or "
    "recipient (the carrier's limit on one number); each waits and goes to the same provider.",
    ["provider", "scope"],
)
PACE_WAIT = Histogram(
    "govnotify_send_pace_wait_seconds",
    "Time a send waited for its slot of the sender's shared rate (notifiers.pacing).",
    ["sender"],
    buckets=(0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
PROVIDER_CIRCUIT_OPEN = Gauge(
    "govnotify_provider_circuit_open",
    "1 while a provider is out of rotation (error rate over the threshold), else 0.",
    ["provider"],
    multiprocess_mode="max",
)
SUPPRESSIONS = Counter(
    "govnotify_suppressions_total",
    "Numbers suppressed for a category after a permanent failure, by category and reason.",
    ["category", "reason"],
)
OUTCOME_POSTS = Counter(
    "govnotify_outcome_posts_total",
    "Outcome webhook POSTs to upstream sources, by result (reported: answered 2xx; failed: "
    "tried again later; dead: out of attempts, kept as a dead letter; dropped: the source has "
    "no outcome URL any more).",
    ["result"],
)
RETENTION_PURGED = Counter(
    "govnotify_retention_purged_total",
    "Rows whose personal data the retention purge removed, by table.",
    ["table"],
)

# ---- issue 5: the SRE's view ------------------------------------------------------------------
# The relay's and the stream's gauges live in producers/relay.py and streams/lag.py: defined
# here, every worker process (multiprocess mode) would export them too, as zeros labelled by pid.


def scrape_text(port: int, host: str = "127.0.0.1", timeout: float = 5.0) -> str:
    """A component's /metrics over HTTP, in the Prometheus text format."""
    url = f"http://{host}:{port}/metrics"
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode()


def scrape(port: int, host: str = "127.0.0.1", timeout: float = 5.0) -> dict[str, float]:
    """Read a component's /metrics over HTTP as ``{'name{labels}': value}``."""
    text = scrape_text(port, host, timeout)
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

Labels = tuple[tuple[str, str], ...]
Samples = dict[str, dict[Labels, float]]


def parse_samples(text: str) -> Samples:
    """Prometheus text format → {metric name: {sorted label pairs: value}}."""
    out: Samples = defaultdict(dict)
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, brace, rest = head.partition("{")
        labels: Labels = ()
        if brace:
            pairs = _LABEL.findall(rest.rsplit("}", 1)[0])
            labels = tuple(
                sorted(
                    (k, v.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\"))
                    for k, v in pairs
                )
            )
        try:
            out[name][labels] = float(value)
        except ValueError:
            continue
    return dict(out)


def sample_sum(samples: dict[str, float], name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include all of ``labels``."""
    total = 0.0
    for key, value in samples.items():
        metric_name, _, rest = key.partition("{")
        if metric_name == name and all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += value
    return total


def serve_metrics(
    port: int,
    host: str = "127.0.0.1",
    *,
    ready_checks: Mapping[str, Callable[[], None]] | None = None,
    registry: CollectorRegistry = REGISTRY,
) -> tuple[WSGIServer, Thread]:
    """Serve ``/metrics``, ``/healthz`` and ``/readyz`` on ``host:port`` from a daemon thread.

    ``ready_checks`` name the process's dependencies (see :mod:`infra.health` for factories and
    :func:`infra.health.component_checks` for each component's set); a check raises to say "not
    ready". Without checks ``/readyz`` answers 200 as soon as the process serves.
    """
    app = health_app(make_wsgi_app(registry), Readiness(ready_checks))
    server, thread = serve_http(port, host, app)
    assert thread is not None  # background=True
    return server, thread
