"""The relay: RabbitMQ ingest queue → validated events in the journal and in Kafka topics.

It takes messages in batches, validates each, journals the good ones in PostgreSQL
(``ingest_event``, keyed by ``event_id``), writes them to Kafka keyed by entity id, and
acknowledges RabbitMQ only after both. One batch is written (journal, Kafka) on a writer thread
while the next is validated; batches are acknowledged in order, and a failed one sends back
everything delivered after it too. Bad messages become dead letters (a database row with
reason and raw bytes, plus a copy on the RabbitMQ dead-letter queue) and are acknowledged:
never dropped silently, never a crash, never redelivered forever. An event whose id the
journal already holds is not written again (an upstream publishing it twice); the same id with
other content is a dead letter (``duplicate_event_id``).

Only a registered publisher gets through (:mod:`infra.sources`): the message's AMQP ``user_id``
(checked by RabbitMQ against the login) must own the event's ``source``, the source may send
the event's type, and the routing key must be that type; anything else is a dead letter
``unauthorised`` that never reaches the journal or Kafka. The registry is read at most every
``GOVNOTIFY_SOURCES_CACHE_S`` seconds, not per event. An event dated further ahead of our clock
than ``GOVNOTIFY_MAX_CLOCK_SKEW_S`` is refused (``occurred_in_future``): the registry keeps the
newest state by ``occurred_at``, and one dated 9999 would freeze a license.

Kafka may come back empty (the embedded Tansu keeps nothing across a restart). The relay keeps
an epoch marker in Kafka and checks it every ``kafka_epoch_check_s``; when it is gone, a new
epoch begins (:mod:`producers.epochs`) and every journaled event the stream has not applied
is written again. Every record carries its epoch in a header, so the stream knows when the
log it was reading is gone.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Generic, NamedTuple, TypeVar

import pika
from pika.exceptions import AMQPError
from prometheus_client import Counter, Gauge

from infra.clock import Clock, event_horizon
from infra.db import session
from infra.deadletters import record_dead_letter
from infra.jobs import JobSender
from infra.journal import (
    EPOCH_HEADER,
    Epoch,
    JournalEntry,
    JournalVerdict,
    journal,
    mark_relayed,
)
from infra.metrics import (
    EVENTS_RECEIVED,
    EVENTS_REJECTED,
    EVENTS_RELAYED,
)
from infra.sources import HTTP_SOURCE_HEADER, REPLAY_OF_HEADER, CachedRegistry, SourceRegistry
from producers.epochs import EpochKeeper
from producers.kafka import KafkaSink
from producers.rabbitmq import declare_topology
from schemas.errors import EventRejected
from schemas.events import Event, event_types, parse_event
from streams.case_rules import apply_case_event

if TYPE_CHECKING:
    from infra.settings import Settings

__all__ = [
    "REASON_DUPLICATE_ID",
    "REASON_UNAUTHORISED",
    "Batch",
    "Delivery",
    "Relay",
    "epoch_headers",
    "published_at",
]

log = logging.getLogger("govnotify.relay")

T = TypeVar("T")

RELAY_LAG = Gauge(
    "govnotify_relay_lag_seconds",
    "Age of the oldest event in the relay's last batch when Kafka acknowledged it: from the "
    "publish time (AMQP header timestamp_in_ms, else the timestamp property) or, for messages "
    "published without one, from when the relay took it off the queue. Kept until the next batch.",
)
RELAY_QUEUE_DEPTH = Gauge(
    "govnotify_relay_queue_messages",
    "Events waiting in the relay's ingest queue (ready, not yet delivered to the relay); "
    "read every 5 s.",
)
FAST_PATH = Counter(
    "govnotify_relay_green_channel_fast_path_total",
    "Green-channel jobs the relay sent straight to the alerts queue.",
    ["actor"],
)
DUPLICATES = Counter(
    "govnotify_events_duplicate_total",
    "Events whose id the journal already held with the same content (an upstream repeat): "
    "acknowledged, not written to Kafka again.",
    ["event_type"],
)

#: Dead-letter reason of an event id seen before with other content.
REASON_DUPLICATE_ID = "duplicate_event_id"
#: Dead-letter reason of an event its publisher may not send (see infra.sources).
REASON_UNAUTHORISED = "unauthorised"


class Batch(Generic[T]):
    """Items gathered for one flush: due when full, when the input went quiet, or when the
    first item has waited ``max_age_s`` (times from a monotonic clock the caller reads)."""

    def __init__(self, size: int, max_age_s: float) -> None:
        self.size = size
        self.max_age_s = max_age_s
        self.items: list[T] = []
        self.started = 0.0

    def __bool__(self) -> bool:
        return bool(self.items)

    def add(self, item: T, now: float) -> None:
        if not self.items:
            self.started = now
        self.items.append(item)

    def due(self, now: float, *, idle: bool) -> bool:
        """Whether to flush now; ``idle``: nothing arrived within the linger time."""
        if not self.items:
            return False
        return idle or len(self.items) >= self.size or now - self.started >= self.max_age_s

    def take(self) -> list[T]:
        """The items, leaving the batch empty."""
        items, self.items = self.items, []
        return items


class Rejected(NamedTuple):
    """A message refused at validation: who sent it is kept on its dead letter, so that a
    replay is judged as its first publisher's."""

    body: bytes
    label: str
    why: EventRejected
    publisher: str | None
    http_source: object


class _Written(NamedTuple):
    """A batch handed to the writer thread, and what its acknowledgement needs."""

    deliveries: list[Delivery]
    rejected: list[Rejected]
    future: concurrent.futures.Future[JournalVerdict]


class _Flight:
    """One channel's batches in flight: the one being written, and the last tag delivered."""

    def __init__(self, channel: Any, dlq: Any) -> None:
        self.channel = channel
        self.dlq = dlq
        self.batch: _Written | None = None
        self.last_tag: int | None = None
        #: A batch failed: everything delivered was requeued; consume afresh.
        self.failed = False


class Delivery(NamedTuple):
    """One message taken off the ingest queue, with what the relay needs of its properties."""

    tag: int
    routing_key: str
    body: bytes
    #: When it was published (epoch seconds), for the relay lag.
    published: float
    #: The AMQP ``user_id`` property: the publisher's login, as RabbitMQ checked it.
    user_id: str | None
    #: The ``govnotify-http-source`` header (honoured from govnotify's own user only).
    http_source: object
    #: The ``govnotify-replay-of`` header of a replayed dead letter (own user only, too).
    replay_of: object = None


def delivery(
    method: pika.spec.Basic.Deliver, properties: pika.BasicProperties | None, body: bytes
) -> Delivery:
    """A :class:`Delivery` of what ``channel.consume`` yielded."""
    user_id = properties.user_id if properties is not None else None
    headers = (properties.headers if properties is not None else None) or {}
    return Delivery(
        tag=method.delivery_tag,
        routing_key=method.routing_key,
        body=body,
        published=published_at(properties, time.time()),
        user_id=user_id if isinstance(user_id, str) and user_id else None,
        http_source=headers.get(HTTP_SOURCE_HEADER),
        replay_of=headers.get(REPLAY_OF_HEADER),
    )


def _text(value: object) -> str | None:
    """A header value kept on a dead letter: text of at most 64 characters, else nothing."""
    return value[:64] if isinstance(value, str) and value else None


def green_channel_job(event: Event, elderly_age: int) -> tuple[str, dict[str, object]] | None:
    """(actor, job) for green-channel events: a special-group case.submitted, or its ack."""
    if event.event_type not in ("case.submitted", "greenchannel.acknowledged"):
        return None
    # The same pure rule the stream applies, so both paths send the very same job.
    _state, jobs = apply_case_event(
        None,
        event.event_type,
        event.payload.model_dump(mode="json"),
        elderly_age=elderly_age,
        source=event.envelope.source,
        event_id=event.event_id,
    )
    return jobs[0] if jobs else None


def epoch_headers(epoch: Epoch | None) -> list[tuple[str, bytes]] | None:
    """The Kafka headers of a record written in ``epoch`` (none before the first epoch)."""
    if epoch is None:
        return None
    return [(EPOCH_HEADER, str(epoch.generation).encode())]


def published_at(properties: pika.BasicProperties | None, received: float) -> float:
    """When a message was published (epoch seconds), for the relay lag.

    The ``timestamp_in_ms`` header (milliseconds, as RabbitMQ's message-timestamp plugin and
    our Publisher set it) is preferred, then the AMQP ``timestamp`` property (whole seconds);
    a message with neither counts from ``received``, when the relay took it from the queue.
    """
    if properties is not None:
        headers = properties.headers or {}
        millis = headers.get("timestamp_in_ms")
        if isinstance(millis, int | float) and not isinstance(millis, bool) and millis > 0:
            return float(millis) / 1000
        if isinstance(properties.timestamp, int) and properties.timestamp > 0:
            return float(properties.timestamp)
    return received


class Relay:
    """Moves events from the ingest queue into Kafka; run() until ``stop`` is set."""

    #: Messages taken per Kafka round trip.
    batch_size = 500
    #: The AMQP prefetch, in batches: one being written, one being validated and two arriving.
    #: With two, RabbitMQ stopped delivering until the written batch was acknowledged, and the
    #: consumer then waited for the next messages to cross the wire (~8% of the relay's rate).
    prefetch_batches = 4
    #: How long to wait for more messages before flushing a partial batch.
    linger_s = 0.05
    #: The longest the first message of a batch waits for the batch to fill. Without it a
    #: steady trickle (one message every few ms, never ``linger_s`` apart) fills a batch only at
    #: ``batch_size``: at 900 events/s a green-channel case waited ~0.5 s for 499 others.
    max_batch_age_s = 0.05
    #: How often the ingest queue's depth is read (its own connection and thread).
    depth_interval_s = 5.0

    def __init__(self, settings: Settings, sink: KafkaSink | None = None) -> None:
        self.settings = settings
        self.sink = sink or KafkaSink(settings.kafka_bootstrap)
        self._known_types = set(event_types())
        self.epochs = EpochKeeper(settings, self.sink)
        self.jobs = JobSender(settings)
        #: Who may publish what: read from the database at most every sources_cache_s.
        self.sources = CachedRegistry(settings, ttl_s=settings.sources_cache_s)
        self.clock = Clock.from_settings(settings)
        #: Journal, Kafka and relayed marks of one batch run here while the next is validated.
        self._writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="relay-writer")

    def _type_label(self, routing_key: str) -> str:
        # Bounded label values: whatever a sender puts in the routing key is not a label.
        return routing_key if routing_key in self._known_types else "unknown"

    #: Longest wait between attempts to reach RabbitMQ again.
    reconnect_max_s = 30.0

    def run(self, stop: threading.Event) -> None:
        """Relay until ``stop`` is set, reconnecting when RabbitMQ goes away.

        A lost connection loses nothing: what was not acknowledged is redelivered, and what the
        journal already holds is not written to Kafka twice. A RabbitMQ that is down at start is
        waited for the same way (``/readyz`` says so meanwhile).
        """
        done = threading.Event()
        depth = threading.Thread(
            target=self._watch_depth, args=(stop, done), name="relay-queue-depth", daemon=True
        )
        delay = 1.0
        try:
            while not stop.is_set():
                try:
                    self._consume(stop, depth)
                    return
                except AMQPError as exc:
                    log.warning(
                        "RabbitMQ connection lost (%s); reconnecting in %.0fs",
                        type(exc).__name__,
                        delay,
                    )
                stop.wait(delay)
                delay = min(delay * 2, self.reconnect_max_s)
        finally:
            done.set()
            self._writer.shutdown(wait=True)
            self.sink.close()
            self.jobs.close()
            if depth.is_alive():
                depth.join(5)

    def _consume(self, stop: threading.Event, depth: threading.Thread) -> None:
        """One connection's life: declare, consume and flush batches until ``stop``."""
        s = self.settings
        connection = pika.BlockingConnection(pika.URLParameters(s.amqp_url))
        try:
            channel = connection.channel()
            declare_topology(
                channel,
                s.exchange,
                s.relay_queue,
                s.dead_letter_queue,
                queue_type=s.rabbitmq_queue_type,
            )
            # The next batches are gathered while the last is written, still unacknowledged.
            channel.basic_qos(prefetch_count=self.prefetch_batches * self.batch_size)
            dlq = connection.channel()
            dlq.confirm_delivery()
            log.info("relay consuming %s into Kafka at %s", s.relay_queue, s.kafka_bootstrap)
            if depth.ident is None:
                # Started once the queue is declared, so the first reading finds it.
                depth.start()
            # Kafka's epoch before the first event: a broker that came back empty while we
            # were down gets its missing events re-driven before new ones follow.
            self.epochs.check(keepalive=lambda: connection.process_data_events(0))
            flight = _Flight(channel, dlq)
            try:
                while True:
                    self._consume_batches(stop, connection, flight)
                    # Also what the client holds, not yet handed to us, goes back (rejected).
                    channel.cancel()
                    if not flight.failed or stop.is_set():
                        break
                    # A batch failed and everything delivered was requeued: slow down.
                    stop.wait(1.0)
            finally:
                # Whatever is being written finishes before the connection goes (its ack is
                # lost with a dead connection: redelivered, the journal knows it as relayed).
                if flight.batch is not None:
                    concurrent.futures.wait([flight.batch.future])
        finally:
            try:
                connection.close()
            except AMQPError:
                pass

    def _consume_batches(
        self, stop: threading.Event, connection: pika.BlockingConnection, flight: _Flight
    ) -> None:
        """Gather, validate and hand over batches until ``stop``, or until one fails."""
        flight.failed = False
        pending = Batch[Delivery](self.batch_size, self.max_batch_age_s)
        for method, props, body in flight.channel.consume(
            self.settings.relay_queue, inactivity_timeout=self.linger_s
        ):
            now = time.monotonic()
            if method is not None:
                pending.add(delivery(method, props, body), now)
                flight.last_tag = method.delivery_tag
            if self._settle(flight, pending, wait=False) and pending.due(now, idle=method is None):
                self._dispatch(flight, pending)
            if not flight.failed and self.epochs.due() and not pending:
                # The epoch's re-drive must not overtake a batch still being written.
                if self._settle(flight, pending, wait=True):
                    self.epochs.check(keepalive=lambda: connection.process_data_events(0))
            if flight.failed:
                return
            if stop.is_set():
                # What was handed to us goes now; what the client still holds is rejected.
                if pending:
                    self._dispatch(flight, pending)
                self._settle(flight, pending, wait=True)
                return

    def _watch_depth(self, stop: threading.Event, done: threading.Event) -> None:
        """Set ``govnotify_relay_queue_messages`` every ``depth_interval_s``, off the hot path.

        A passive declare on a connection of its own (pika connections are not thread-safe);
        a failure is logged and retried at the next interval, never stops the relay.
        """
        s = self.settings
        connection = None
        while not (stop.is_set() or done.is_set()):
            try:
                if connection is None or not connection.is_open:
                    connection = pika.BlockingConnection(pika.URLParameters(s.amqp_url))
                    channel = connection.channel()
                ok = channel.queue_declare(s.relay_queue, passive=True)
                RELAY_QUEUE_DEPTH.set(ok.method.message_count)
            except Exception:
                log.warning("reading the depth of %s failed", s.relay_queue, exc_info=True)
                connection = None
            # Wakes at once on shutdown: wait() on the event, not a sleep.
            done.wait(self.depth_interval_s)
        if connection is not None and connection.is_open:
            try:
                connection.close()
            except AMQPError:
                pass

    def _dispatch(self, flight: _Flight, pending: Batch[Delivery]) -> None:
        """Validate the batch ``pending`` holds and hand it to the writer thread.

        The batch before it is settled (acknowledged) first: RabbitMQ's multiple-ack covers
        every earlier tag, so batches are acknowledged strictly in order, and at most one is
        being written while the next is gathered and validated.
        """
        deliveries = pending.take()
        try:
            registry = self.sources.current()
        except Exception:
            log.exception(
                "reading the sources registry failed; batch of %d requeued", len(deliveries)
            )
            # (A failed batch before it requeued this one with it already.)
            if self._settle(flight, pending, wait=True):
                self._requeue(flight, pending)
            return
        entries, rejected = self._validate(deliveries, registry)
        if not self._settle(flight, pending, wait=True):
            return  # the batch before failed: this one was requeued with it
        epoch = self.epochs.current
        oldest = min(message.published for message in deliveries)
        future = self._writer.submit(self._write, entries, epoch, oldest)
        flight.batch = _Written(deliveries, rejected, future)

    def _validate(
        self, deliveries: list[Delivery], registry: SourceRegistry
    ) -> tuple[list[tuple[JournalEntry, Event]], list[Rejected]]:
        """The batch's valid events as journal entries, and its rejected messages."""
        entries: list[tuple[JournalEntry, Event]] = []
        rejected: list[Rejected] = []
        # One clock reading per batch: the skew allowance is minutes, a batch milliseconds.
        horizon = event_horizon(self.clock)
        # Counted once a batch per label, not per message: labels() takes a lock and a lookup.
        received: collections.Counter[str] = collections.Counter()
        try:
            for message in deliveries:
                body = message.body
                label = self._type_label(message.routing_key)
                received[label] += 1
                publisher = registry.publisher_of(message.user_id, message.replay_of)
                # An unknown publisher's bytes are not even parsed.
                refused = registry.check_publisher(publisher)
                if refused is not None:
                    rejected.append(
                        Rejected(
                            body,
                            label,
                            EventRejected(REASON_UNAUTHORISED, refused),
                            publisher,
                            message.http_source,
                        )
                    )
                    continue
                try:
                    event = parse_event(
                        body,
                        max_bytes=self.settings.max_event_bytes,
                        now=horizon,
                        max_skew=self.settings.max_clock_skew_s,
                    )
                except EventRejected as exc:
                    rejected.append(Rejected(body, label, exc, publisher, message.http_source))
                    continue
                refused = registry.authorize(
                    publisher,
                    event.envelope.source,
                    event.event_type,
                    message.routing_key,
                    http_source=message.http_source,
                )
                if refused is not None:
                    rejected.append(
                        Rejected(
                            body,
                            label,
                            EventRejected(
                                REASON_UNAUTHORISED,
                                refused,
                                event_type=event.event_type,
                                event_id=event.event_id,
                            ),
                            publisher,
                            message.http_source,
                        )
                    )
                    continue
                entry = JournalEntry(
                    event_id=event.event_id,
                    event_type=event.event_type,
                    family=event.family,
                    entity_key=event.key,
                    occurred_at=event.envelope.occurred_at,
                    body=event.to_json_bytes(),
                )
                entries.append((entry, event))
        finally:
            for label, count in received.items():
                EVENTS_RECEIVED.labels(event_type=label).inc(count)
        return entries, rejected

    def _write(
        self, entries: list[tuple[JournalEntry, Event]], epoch: Epoch | None, oldest: float
    ) -> JournalVerdict:
        """On the writer thread: journal, the green fast path, Kafka, relayed marks.

        ``oldest``: when the batch's oldest message was published (or received), for the lag.
        """
        # Journal first: once Kafka has an event, the journal must know it, so that a
        # broker that loses it can be given it again.
        with session(self.settings) as s:
            verdict = journal(s, [entry for entry, _event in entries])
        if self.settings.green_fast_path:
            # Once journaled, not after Kafka's acks=all and the relayed marks (a busy
            # pipeline's tens of ms). Should Kafka fail, the batch comes back and the alert is
            # sent again: the worker's idempotency key makes that one alert.
            forwarded = {e.event_id for e in verdict.forward}
            alerts = [
                fast
                for entry, event in entries
                if entry.event_id in forwarded
                and (fast := green_channel_job(event, self.settings.elderly_age)) is not None
            ]
            if alerts:
                self._fast_path(alerts)
        records = [
            (self.settings.topic(e.family), e.entity_key.encode(), e.body) for e in verdict.forward
        ]
        self.sink.send_batch(records, headers=epoch_headers(epoch))
        # Counted as Kafka acknowledges them, before the journal says so.
        RELAY_LAG.set(max(0.0, time.time() - oldest))
        for topic, count in collections.Counter(topic for topic, _key, _value in records).items():
            EVENTS_RELAYED.labels(topic=topic).inc(count)
        with session(self.settings) as s:
            mark_relayed(s, [e.event_id for e in verdict.forward], epoch.generation if epoch else 0)
        return verdict

    def _settle(self, flight: _Flight, pending: Batch[Delivery], *, wait: bool) -> bool:
        """Acknowledge the batch being written once it is durable (journal and Kafka), after
        its dead letters; False when it failed, and then everything delivered is requeued."""
        written = flight.batch
        if written is None:
            return True
        if not wait and not written.future.done():
            return True
        flight.batch = None
        try:
            verdict = written.future.result()
            for letter in written.rejected:
                self._dead_letter(flight.dlq, *letter)
            for entry in verdict.conflicts:
                self._dead_letter(
                    flight.dlq,
                    entry.body,
                    entry.event_type,
                    EventRejected(
                        REASON_DUPLICATE_ID,
                        f"event id {entry.event_id} was accepted before with other content",
                        event_type=entry.event_type,
                        event_id=entry.event_id,
                    ),
                )
        except Exception:
            # Kafka or the database is unavailable: hand the batch back and slow down.
            # Dead letters already written are counted again on redelivery (same fingerprint).
            log.exception("relay batch of %d failed; requeued", len(written.deliveries))
            self._requeue(flight, pending)
            return False
        flight.channel.basic_ack(delivery_tag=written.deliveries[-1].tag, multiple=True)
        for entry in verdict.duplicates:
            DUPLICATES.labels(event_type=entry.event_type).inc()
        if verdict.duplicates:
            log.info("%d repeated events acknowledged, not relayed again", len(verdict.duplicates))
        return True

    def _requeue(self, flight: _Flight, pending: Batch[Delivery]) -> None:
        """Hand back everything delivered and not acknowledged, in order; the consumer starts
        afresh after a pause (:meth:`_consume`), its client-held deliveries rejected too.

        Also the batch gathered after a failed one: relaying it first would put a later event
        of an entity ahead of an earlier one.
        """
        pending.take()
        if flight.last_tag is not None:
            flight.channel.basic_nack(delivery_tag=flight.last_tag, multiple=True, requeue=True)
        flight.failed = True

    def _fast_path(self, jobs: list[tuple[str, dict[str, object]]]) -> None:
        """Green-channel alerts and acks straight to their priority queue, not behind the
        stream's lag (a critical alert must not wait for a backlog of license events).

        The stream sends the same jobs when it gets to the events; their idempotency keys make
        that a no-op, and if this best-effort send fails the stream's path still delivers.
        """
        try:
            self.jobs.send_many(jobs)
        except Exception:
            log.exception("green-channel fast path failed; the stream will still deliver")
            return
        for actor_name, _job in jobs:
            FAST_PATH.labels(actor=actor_name).inc()

    def _dead_letter(  # type: ignore[no-untyped-def]
        self,
        dlq,
        body: bytes,
        label: str,
        exc: EventRejected,
        publisher: str | None = None,
        http_source: object = None,
    ) -> None:
        with session(self.settings) as s:
            record_dead_letter(
                s,
                stage="ingest",
                reason=exc.reason,
                detail=exc.detail,
                raw=body,
                event_type=exc.event_type,
                event_id=exc.event_id,
                publisher=publisher,
                http_source=_text(http_source),
            )
        dlq.basic_publish(
            exchange="",
            routing_key=self.settings.dead_letter_queue,
            body=body,
            properties=pika.BasicProperties(
                delivery_mode=pika.DeliveryMode.Persistent,
                headers={
                    "x-reject-reason": exc.reason,
                    "x-reject-detail": exc.detail[:500],
                    "x-event-type": label,
                },
            ),
        )
        EVENTS_REJECTED.labels(event_type=label, reason=exc.reason).inc()
        log.warning("rejected %s event %s: %s", label, exc.event_id or "-", exc.reason)
