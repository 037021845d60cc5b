"""Publisher for upstream systems: persistent messages with publisher confirms.

Upstream systems publish to the durable topic exchange ``<namespace>.events`` with the event
type as routing key. ``publish`` returns only when RabbitMQ has confirmed the message; a nack or
an unroutable message raises :class:`PublishError`, never a silent drop.

Bulk loads (``govnotify publish`` of a whole registry) go through ``publish_many``: the same
messages and the same guarantees, but confirms are pipelined (up to ``window`` messages
unconfirmed at once) instead of one round trip per message, which is what limits the
per-message path to about a thousand messages a second.

Every message carries the AMQP ``user_id`` of the connection's login (RabbitMQ checks it; the
relay authorises on it). An upstream user may only write to the exchange (no configure
permission, see :mod:`infra.sources`): where declaring is refused, the publisher checks that
the exchange exists instead and publishes to it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pika
from pika.exceptions import AMQPError, ChannelClosedByBroker, NackError, UnroutableError

from infra.amqp import (
    DEFAULT_CONFIRM_TIMEOUT_S,
    DEFAULT_WINDOW,
    QUEUE_TYPES,
    REASON_NACK,
    SEQ_HEADER,
    ConfirmPipeline,
    Message,
    Outcome,
    PublishError,
    amqp_user,
    queue_arguments,
    reason_unroutable,
)
from infra.amqp import properties as amqp_properties
from schemas.errors import EventRejected
from schemas.events import Event, parse_event

if TYPE_CHECKING:
    from infra.settings import Settings

__all__ = [
    "DEFAULT_CONFIRM_TIMEOUT_S",
    "DEFAULT_WINDOW",
    "QUEUE_TYPES",
    "REASON_NACK",
    "SEQ_HEADER",
    "Message",
    "Outcome",
    "PublishError",
    "PublishResult",
    "Publisher",
    "declare_topology",
    "delete_namespace",
    "queue_arguments",
    "queue_depth",
    "queue_depths",
    "routing_key_of",
]

log = logging.getLogger("govnotify.publisher")

#: The pipeline class, under the name tests patch.
_ConfirmPipeline = ConfirmPipeline


@dataclass(frozen=True)
class PublishResult:
    """Outcome of one line or message: accepted, or rejected with a reason."""

    index: int
    accepted: bool
    reason: str = ""
    detail: str = ""
    event_id: str | None = None


def declare_topology(
    channel: pika.adapters.blocking_connection.BlockingChannel,
    exchange: str,
    relay_queue: str,
    dead_letter_queue: str,
    *,
    queue_type: str = "classic",
) -> None:
    """The ingest exchange, the relay's queue bound to every event type, and the DLQ.

    Both queues are of ``queue_type`` (see :func:`queue_arguments`); every declarer of a
    namespace must pass the same one (``settings.rabbitmq_queue_type``).
    """
    arguments = queue_arguments(queue_type) or None
    channel.exchange_declare(exchange=exchange, exchange_type="topic", durable=True)
    channel.queue_declare(queue=relay_queue, durable=True, arguments=arguments)
    channel.queue_bind(queue=relay_queue, exchange=exchange, routing_key="#")
    channel.queue_declare(queue=dead_letter_queue, durable=True, arguments=arguments)


def delete_namespace(settings: Settings) -> None:
    """Delete every queue and the exchange of ``settings.namespace`` (demo and test clean-up)."""
    connection = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
    try:
        channel = connection.channel()
        for queue in [settings.relay_queue, settings.dead_letter_queue, *settings.work_queues]:
            channel.queue_delete(queue)
        channel.exchange_delete(settings.exchange)
    finally:
        connection.close()


def queue_depth(settings: Settings, queue: str) -> int:
    """Messages ready on ``queue`` (not those being processed); 0 while it does not exist."""
    return queue_depths(settings, [queue])[queue]


def queue_depths(
    settings: Settings, queues: Iterable[str], *, timeout: float | None = None
) -> dict[str, int]:
    """Messages ready on each of ``queues`` (0 for one that does not exist), on one connection.

    ``timeout``: one attempt to connect, and each step given up after that many seconds (a
    dashboard that must not hang on a broker that does not answer); pika's defaults without.
    """
    params = pika.URLParameters(settings.amqp_url)
    if timeout is not None:
        params.connection_attempts = 1
        params.socket_timeout = timeout
        params.stack_timeout = timeout
        params.blocked_connection_timeout = timeout
    connection = pika.BlockingConnection(params)
    depths: dict[str, int] = {}
    try:
        channel = connection.channel()
        for queue in queues:
            try:
                depths[queue] = channel.queue_declare(queue, passive=True).method.message_count
            except pika.exceptions.ChannelClosedByBroker as exc:
                if exc.reply_code != 404:
                    raise
                depths[queue] = 0
                channel = connection.channel()  # the broker closed the one that asked
    finally:
        if connection.is_open:
            connection.close()
    return depths


class Publisher:
    """A blocking publisher with confirms; one per thread (pika connections are not shared)."""

    def __init__(
        self,
        amqp_url: str,
        exchange: str,
        *,
        topology: tuple[str, str] | None = None,
        queue_type: str = "classic",
    ):
        """Connect; with ``topology=(relay_queue, dead_letter_queue)`` declare them as well,
        as ``queue_type`` queues."""
        self.exchange = exchange
        self._parameters = pika.URLParameters(amqp_url)
        self._user_id = amqp_user(self._parameters)
        self._connection = pika.BlockingConnection(self._parameters)
        self._channel = self._connection.channel()
        try:
            self._declare(exchange, topology, queue_type)
        except BaseException:
            self.close()
            raise
        self._channel.confirm_delivery()

    def _declare(self, exchange: str, topology: tuple[str, str] | None, queue_type: str) -> None:
        """Declare the topology (``topology``) or make sure the exchange is there.

        An upstream user may write to the exchange but not declare anything (govnotify's
        relay owns the topology): a refused declare (403) falls back to checking that the
        exchange exists. Without ``topology`` the check comes first, so a publisher of an
        existing exchange never asks for what it may not do.
        """
        if topology is None:
            try:
                self._channel.exchange_declare(exchange=exchange, passive=True)
                return
            except ChannelClosedByBroker as exc:
                if exc.reply_code != 404:
                    raise
            self._channel = self._connection.channel()
        try:
            if topology:
                declare_topology(self._channel, exchange, *topology, queue_type=queue_type)
            else:
                self._channel.exchange_declare(
                    exchange=exchange, exchange_type="topic", durable=True
                )
            return
        except ChannelClosedByBroker as exc:
            if exc.reply_code != 403:
                raise
        self._channel = self._connection.channel()
        try:
            self._channel.exchange_declare(exchange=exchange, passive=True)
        except ChannelClosedByBroker as missing:
            raise PublishError(
                f"exchange {exchange!r} does not exist and this user may not declare it; "
                "start the relay (it declares the topology) first"
            ) from missing

    @classmethod
    def from_settings(cls, settings: Settings) -> Publisher:
        """A publisher to ``settings``' exchange, declaring the relay's queue and the DLQ too
        (of ``settings.rabbitmq_queue_type``)."""
        return cls(
            settings.amqp_url,
            settings.exchange,
            topology=(settings.relay_queue, settings.dead_letter_queue),
            queue_type=settings.rabbitmq_queue_type,
        )

    def publish_raw(
        self,
        body: bytes,
        routing_key: str,
        *,
        message_id: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Publish bytes as they are (persistent, mandatory) and wait for the confirm.

        The publish time rides along (AMQP ``timestamp`` in seconds, and milliseconds in a
        header) so the relay can report how long events waited in the queue, and so does the
        connection's user (``user_id``); ``headers`` are added to the message's headers.
        """
        try:
            self._channel.basic_publish(
                exchange=self.exchange,
                routing_key=routing_key,
                body=body,
                properties=amqp_properties(
                    message_id, time.time(), user_id=self._user_id, headers=headers
                ),
                mandatory=True,
            )
        except UnroutableError as exc:
            raise PublishError(reason_unroutable(routing_key)) from exc
        except NackError as exc:
            raise PublishError(REASON_NACK) from exc
        except AMQPError as exc:
            raise PublishError(f"connection to RabbitMQ failed: {type(exc).__name__}") from exc

    def publish(self, event: Event) -> None:
        """Publish one validated event, routing key = its type."""
        self.publish_raw(event.to_json_bytes(), event.event_type, message_id=event.event_id)

    def publish_many(
        self,
        messages: Iterable[Message],
        *,
        window: int = DEFAULT_WINDOW,
        confirm_timeout: float = DEFAULT_CONFIRM_TIMEOUT_S,
        headers: Mapping[str, str] | None = None,
    ) -> list[Outcome]:
        """Publish ``(body, routing key, message id)`` triples with pipelined confirms.

        Each message goes out exactly as :meth:`publish_raw` sends it (persistent, mandatory,
        same properties) plus a ``publish_seq`` header, and gets one outcome, in input order:
        ``(True, "")`` only if RabbitMQ acked it and did not return it, else ``(False, reason)``
        with the reason :meth:`publish_raw`'s :class:`PublishError` carries (a lost connection
        also names pika's detail). Instead of a round trip per confirm, up to ``window``
        messages are in flight: that is what makes a bulk load about ten times faster.
        ``headers`` are added to every message (HTTP ingest names its source so).

        ``messages`` is consumed lazily, so a generator over a huge file keeps at most
        ``window`` messages in memory. The publishing runs on its own ``SelectConnection`` in
        the calling thread (no thread is started). If the connection or channel is lost, or
        nothing is confirmed for ``confirm_timeout`` seconds, every message without a confirm
        and every one not yet sent fails with "connection to RabbitMQ failed: …"; the call
        always returns. An exception raised by ``messages`` itself propagates (after the
        connection is closed).
        """
        if window < 1:
            raise ValueError(f"window must be at least 1, not {window}")
        if confirm_timeout <= 0:
            raise ValueError(f"confirm_timeout must be positive, not {confirm_timeout}")
        pipeline = ConfirmPipeline(
            self._parameters,
            self.exchange,
            messages,
            window=window,
            confirm_timeout=confirm_timeout,
            keepalive=self._keepalive,
            headers=headers,
        )
        return pipeline.run()

    def _keepalive(self) -> None:
        """Let the blocking connection answer heartbeats while ``publish_many`` runs.

        A BlockingConnection only does I/O when called; a bulk load longer than the heartbeat
        timeout would otherwise get it closed by RabbitMQ under the caller's feet.
        """
        try:
            if self._connection.is_open:
                self._connection.process_data_events(time_limit=0)
        except AMQPError:
            log.debug("blocking connection lost during publish_many")

    def publish_lines(
        self, lines: Iterable[bytes], *, validate: bool = True, window: int = DEFAULT_WINDOW
    ) -> list[PublishResult]:
        """Publish JSON lines; each is validated first (unless ``validate=False``) and reported.

        A line that fails validation is reported with its reason and never sent; the others
        go through :meth:`publish_many` (confirms pipelined, ``window`` at a time) and are
        reported accepted only once RabbitMQ confirmed them, else ``not_confirmed``. One
        result per non-blank line, in line order, ``index`` counting from 1 over all lines.
        """
        # Per non-blank line: its rejection, or (index, event id) of a message sent.
        slots: list[PublishResult | tuple[int, str | None]] = []

        def outgoing() -> Iterator[Message]:
            for index, raw in enumerate(lines, start=1):
                line = raw.strip()
                if not line:
                    continue
                if not validate:
                    slots.append((index, None))
                    yield line, routing_key_of(line), None
                    continue
                try:
                    event = parse_event(line)
                except EventRejected as exc:
                    slots.append(PublishResult(index, False, exc.reason, exc.detail, exc.event_id))
                    continue
                slots.append((index, event.event_id))
                yield event.to_json_bytes(), event.event_type, event.event_id

        outcomes = iter(self.publish_many(outgoing(), window=window))
        results = []
        for slot in slots:
            if isinstance(slot, PublishResult):
                results.append(slot)
                continue
            index, event_id = slot
            accepted, reason = next(outcomes)
            if accepted:
                results.append(PublishResult(index, True, event_id=event_id))
            else:
                results.append(PublishResult(index, False, "not_confirmed", reason))
        return results

    def close(self) -> None:
        try:
            self._connection.close()
        except AMQPError:
            log.debug("connection already closed")

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def routing_key_of(line: bytes) -> str:
    """Best-effort routing key for unvalidated input: the event type, or ``invalid``."""
    import json

    try:
        value = json.loads(line)
        event_type = value.get("event_type") if isinstance(value, dict) else None
    except ValueError:
        event_type = None
    if isinstance(event_type, str) and 0 < len(event_type) <= 64:
        return event_type
    return "invalid"
