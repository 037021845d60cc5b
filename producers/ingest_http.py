"""HTTP ingest: ``POST /events`` on ``govnotify api``, for upstream systems that cannot speak AMQP.

A request carries one event (a JSON object) or a batch (a JSON array of at most
:data:`MAX_BATCH_EVENTS` events, ``GOVNOTIFY_API_MAX_BODY_BYTES`` in all, default 1 MiB) and a
bearer token (``Authorization: Bearer <token>``) that names one registered source
(:mod:`infra.sources`).

Each event is validated from its own bytes exactly as the relay validates an AMQP message
(:func:`schemas.events.parse_event`), then checked against the token's source: an event whose
``source`` is not the token's, or whose type the source may not send, is rejected
``unauthorised``. The accepted events are published to the ingest exchange with publisher
confirms (:class:`infra.amqp.ConfirmPipeline`), as govnotify's own AMQP user and with the header
``govnotify-http-source: <source name>``: the relay trusts that header only from govnotify's own
user, and then validates, journals and dead-letters the event as it does any other.

Answers (always JSON ``{"accepted": n, "rejected": m, "results": [...]}`` once the body was
read; one result per event, in order: ``index`` (its position in the batch, from 0),
``event_id`` when readable, ``accepted``, and for a rejection ``reason`` (one of
:data:`schemas.errors.REJECT_REASONS`, or ``not_confirmed``) and ``detail``):

- 200: every event accepted, i.e. confirmed by RabbitMQ (durable on its disk);
- 207: a batch in which some (or all) events were rejected: read the results;
- 422: a single event (an object, not an array) that was rejected;
- 401: no token, or one that names no enabled source (the same answer for both);
- 400: a body that is not JSON, not an object or a non-empty array, or not ``application/json``;
- 413: a body over ``GOVNOTIFY_API_MAX_BODY_BYTES`` or a batch over :data:`MAX_BATCH_EVENTS`;
- 503: RabbitMQ did not confirm every accepted event: only the events marked accepted in the
  results are durable; sending the whole request again is safe (the journal keeps each
  ``event_id`` once).
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import pika
from pika.exceptions import AMQPError
from prometheus_client import Counter
from sqlalchemy.exc import SQLAlchemyError

from infra.amqp import KeptConnectionPool, Message, Outcome, publish_kept
from infra.clock import Clock, event_horizon
from infra.sources import HTTP_SOURCE_HEADER, authenticate_token, types_of
from producers.http_guards import Refusal, content_type, printable, read_body, split_json_events
from producers.rabbitmq import declare_topology
from schemas.errors import EventRejected
from schemas.events import parse_event

if TYPE_CHECKING:
    from infra.settings import Settings
    from schemas.events import Event
    from schemas.models import Source

__all__ = [
    "HTTP_INGEST_EVENTS",
    "HTTP_INGEST_REQUESTS",
    "INGEST_PATH",
    "MAX_BATCH_EVENTS",
    "Authenticate",
    "EventResult",
    "HttpIngest",
    "Publish",
    "bearer_source",
    "close_connections",
    "connections",
    "publish_events",
]

log = logging.getLogger("govnotify.api.ingest")

INGEST_PATH = "/events"
#: Most events in one request: a batch answers within a second or two (one pipelined round of
#: confirms), and an upstream with more sends several requests.
MAX_BATCH_EVENTS = 500
#: A token is random bytes in URL-safe base64 or hex; anything else is not looked up at all.
_TOKEN = re.compile(r"[A-Za-z0-9._~+/=-]{16,256}")
#: How long RabbitMQ may take to confirm a request's events before it is answered 503.
CONFIRM_TIMEOUT_S = 10.0
#: Reason of an event RabbitMQ did not confirm (the publisher's word for it, too).
NOT_CONFIRMED = "not_confirmed"
_NOT_CONFIRMED_DETAIL = "RabbitMQ did not confirm it; send it again (a repeat is harmless)"

HTTP_INGEST_EVENTS = Counter(
    "govnotify_http_ingest_events_total",
    "Events received over HTTP ingest, by source and result (accepted, or the reject reason).",
    ["source", "result"],
)
#: Counted by the api for every request to ``/events``, refused ones included.
HTTP_INGEST_REQUESTS = Counter(
    "govnotify_http_ingest_requests_total",
    "HTTP ingest requests by HTTP status.",
    ["status"],
)


#: ``authenticate(settings, token)``: the enabled source the token belongs to, or None
#: (:func:`infra.sources.authenticate_token`).
Authenticate = Callable[["Settings", str], "Source | None"]
#: ``publish(settings, source name, events)``: one outcome per event, in order.
Publish = Callable[["Settings", str, "list[Event]"], "list[Outcome]"]


@dataclass(frozen=True)
class EventResult:
    """What became of one event of a request."""

    index: int
    accepted: bool
    event_id: str | None = None
    reason: str = ""
    detail: str = ""

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        if self.accepted:
            del data["reason"], data["detail"]
        return data


class HttpIngest:
    """The ``POST /events`` handler: authenticate, split, validate, authorise, publish, answer."""

    def __init__(
        self,
        settings: Settings,
        authenticate: Authenticate = authenticate_token,
        publish: Publish | None = None,
    ) -> None:
        self.settings = settings
        self.authenticate = authenticate
        self.publish = publish or publish_events
        self.clock = Clock.from_settings(settings)

    def handle(self, environ: dict[str, Any]) -> tuple[int, bytes, str]:
        """Answer one request: (HTTP status, JSON body, content type).

        Raises:
          Refusal: 401, 400 or 413 before any event is looked at.
        """
        source = self._source(environ.get("HTTP_AUTHORIZATION"))
        if content_type(environ) != "application/json":
            raise Refusal(400, "malformed", "Content-Type must be application/json")
        # 500 events of ~2 KiB by default; larger is refused (413) before it is read.
        raw = read_body(environ, self.settings.api_max_body_bytes)
        chunks, batch = split_json_events(raw, max_events=MAX_BATCH_EVENTS)
        results: list[EventResult | None] = []
        valid: list[tuple[int, Event]] = []
        now = event_horizon(self.clock)
        for index, chunk in enumerate(chunks):
            try:
                # As the relay will judge it: answering "accepted" for an event the relay then
                # dead-letters would tell the sender the wrong thing.
                event = parse_event(
                    chunk,
                    max_bytes=self.settings.max_event_bytes,
                    now=now,
                    max_skew=self.settings.max_clock_skew_s,
                )
            except EventRejected as exc:
                results.append(EventResult(index, False, exc.event_id, exc.reason, exc.detail))
                continue
            refusal = _unauthorised(source, event)
            if refusal:
                results.append(EventResult(index, False, event.event_id, "unauthorised", refusal))
                continue
            results.append(None)
            valid.append((index, event))
        confirmed = True
        if valid:
            outcomes = self.publish(self.settings, source.name, [event for _, event in valid])
            for (index, event), (ok, why) in zip(valid, outcomes, strict=True):
                if ok:
                    results[index] = EventResult(index, True, event.event_id)
                    continue
                if confirmed:
                    # The broker's own words stay here: they name hosts the sender need not see.
                    log.error("http ingest: RabbitMQ did not confirm: %s", printable(why, 300))
                confirmed = False
                results[index] = EventResult(
                    index, False, event.event_id, NOT_CONFIRMED, _NOT_CONFIRMED_DETAIL
                )
        final = [r for r in results if r is not None]
        status = _status(final, batch=batch, confirmed=confirmed)
        self._count(source.name, final, status)
        body = {
            "accepted": sum(r.accepted for r in final),
            "rejected": sum(not r.accepted for r in final),
            "results": [r.as_json() for r in final],
        }
        return status, json.dumps(body, ensure_ascii=False).encode("utf-8"), "application/json"

    def _source(self, authorization: object) -> Source:
        return bearer_source(self.settings, self.authenticate, authorization)

    def _count(self, source: str, results: list[EventResult], status: int) -> None:
        reasons: dict[str, int] = {}
        for r in results:
            result = "accepted" if r.accepted else r.reason
            HTTP_INGEST_EVENTS.labels(source, result).inc()
            reasons[result] = reasons.get(result, 0) + 1
        summary = ", ".join(f"{n} {why}" for why, n in sorted(reasons.items()))
        level = logging.INFO if status == 200 else logging.WARNING
        log.log(level, "http ingest from %s answered %d: %s", printable(source), status, summary)


def bearer_source(settings: Settings, authenticate: Authenticate, authorization: object) -> Source:
    """The source the ``Authorization: Bearer <token>`` header names (every api route that
    answers a source uses this one check).

    Raises:
      Refusal: 401 alike for every way of not having one; 503 when the database fails.
    """
    scheme, _, token = str(authorization or "").strip().partition(" ")
    token = token.strip()
    source = None
    if scheme.lower() == "bearer" and _TOKEN.fullmatch(token):
        try:
            source = authenticate(settings, token)
        except SQLAlchemyError as exc:
            raise Refusal(503, "error", f"database: {type(exc).__name__}") from None
    if source is None or source.disabled_at is not None:
        # No detail on which (absent, malformed, unknown, disabled): nothing to probe with.
        raise Refusal(401, "unauthorised", "no valid bearer token")
    return source


def _unauthorised(source: Source, event: Event) -> str:
    """Why ``source`` may not send ``event`` ("" when it may); names no attacker text."""
    if event.envelope.source != source.name:
        return "the event's source is not the token's source"
    if event.event_type not in types_of(source):
        return f"source {source.name} may not send {event.event_type}"
    return ""


def _status(results: list[EventResult], *, batch: bool, confirmed: bool) -> int:
    if not confirmed:
        return 503
    if all(r.accepted for r in results):
        return 200
    return 207 if batch else 422


# ---- publishing --------------------------------------------------------------------------------
_declared: set[tuple[str, str]] = set()
_declared_lock = threading.Lock()
#: amqp_url -> the kept connections HTTP ingest publishes on (:func:`connections`).
_pools: dict[str, KeptConnectionPool] = {}
_pools_lock = threading.Lock()


def publish_events(settings: Settings, source_name: str, events: list[Event]) -> list[Outcome]:
    """Publish ``events`` for HTTP source ``source_name``; one outcome per event, in order.

    As govnotify's own AMQP user (``settings.amqp_url``'s), persistent, mandatory, with
    :data:`HTTP_SOURCE_HEADER`, confirms pipelined on a connection kept between requests
    (:func:`connections`). ``(True, "")`` only for an event RabbitMQ acked and routed; a lost
    connection or a broker that does not confirm within :data:`CONFIRM_TIMEOUT_S` fails the
    rest. The topology is declared once per process, so events posted before the relay ever
    ran wait in its queue.
    """
    try:
        _declare_once(settings)
    except AMQPError as exc:
        why = f"connection to RabbitMQ failed: {type(exc).__name__}"
        return [(False, why) for _ in events]
    messages: list[Message] = [(e.to_json_bytes(), e.event_type, e.event_id) for e in events]
    with connections(settings).connection() as kept:
        return publish_kept(
            kept,
            settings.exchange,
            messages,
            window=len(messages),
            confirm_timeout=CONFIRM_TIMEOUT_S,
            headers={HTTP_SOURCE_HEADER: source_name},
        )


def connections(settings: Settings) -> KeptConnectionPool:
    """This process's RabbitMQ connections for ``settings``' HTTP ingest, kept between requests.

    A connection per request was ~10 round trips before the first publish, and a connection
    opened and closed at RabbitMQ for every POST a sender (or a stranger with a token) made.
    """
    with _pools_lock:
        pool = _pools.get(settings.amqp_url)
        if pool is None:
            pool = _pools[settings.amqp_url] = KeptConnectionPool(
                pika.URLParameters(settings.amqp_url)
            )
        return pool


def close_connections() -> None:
    """Close every kept ingest connection of this process (the api's shutdown)."""
    with _pools_lock:
        pools = list(_pools.values())
    for pool in pools:
        pool.close()


def _declare_once(settings: Settings) -> None:
    key = (settings.amqp_url, settings.exchange)
    with _declared_lock:
        if key in _declared:
            return
        connection = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
        try:
            declare_topology(
                connection.channel(),
                settings.exchange,
                settings.relay_queue,
                settings.dead_letter_queue,
                queue_type=settings.rabbitmq_queue_type,
            )
        finally:
            if connection.is_open:
                connection.close()
        _declared.add(key)
