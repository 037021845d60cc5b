"""Publisher for upstream systems: persistent messages with publisher confirms.

Upstream systems publish to the durable topic exchange ``<namespace>.events`` with the event
type as routing key. ``publish`` returns only when RabbitMQ has confirmed the message; a nack or
an unroutable message raises :class:`PublishError`, never a silent drop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pika
from pika.exceptions import AMQPError, NackError, UnroutableError

from schemas.errors import EventRejected
from schemas.events import Event, parse_event

if TYPE_CHECKING:
    from infra.settings import Settings

__all__ = [
    "PublishError",
    "PublishResult",
    "Publisher",
    "declare_topology",
    "delete_namespace",
    "queue_depth",
    "routing_key_of",
]

log = logging.getLogger("govnotify.publisher")


class PublishError(Exception):
    """Raised when RabbitMQ did not confirm a message (nacked, unroutable, or connection lost)."""


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
) -> None:
    """The ingest exchange, the relay's queue bound to every event type, and the DLQ."""
    channel.exchange_declare(exchange=exchange, exchange_type="topic", durable=True)
    channel.queue_declare(queue=relay_queue, durable=True)
    channel.queue_bind(queue=relay_queue, exchange=exchange, routing_key="#")
    channel.queue_declare(queue=dead_letter_queue, durable=True)


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
    connection = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
    try:
        return connection.channel().queue_declare(queue, passive=True).method.message_count
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 404:
            return 0
        raise
    finally:
        if connection.is_open:
            connection.close()


class Publisher:
    """A blocking publisher with confirms; one per thread (pika connections are not shared)."""

    def __init__(self, amqp_url: str, exchange: str, *, topology: tuple[str, str] | None = None):
        """Connect; with ``topology=(relay_queue, dead_letter_queue)`` declare them as well."""
        self.exchange = exchange
        self._connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
        self._channel = self._connection.channel()
        if topology:
            declare_topology(self._channel, exchange, *topology)
        else:
            self._channel.exchange_declare(exchange=exchange, exchange_type="topic", durable=True)
        self._channel.confirm_delivery()

    @classmethod
    def from_settings(cls, settings: Settings) -> Publisher:
        """A publisher to ``settings``' exchange, declaring the relay's queue and the DLQ too."""
        return cls(
            settings.amqp_url,
            settings.exchange,
            topology=(settings.relay_queue, settings.dead_letter_queue),
        )

    def publish_raw(self, body: bytes, routing_key: str, *, message_id: str | None = None) -> None:
        """Publish bytes as they are (persistent, mandatory) and wait for the confirm.

        The publish time rides along (AMQP ``timestamp`` in seconds, and milliseconds in a
        header) so the relay can report how long events waited in the queue.
        """
        now = time.time()
        try:
            self._channel.basic_publish(
                exchange=self.exchange,
                routing_key=routing_key,
                body=body,
                properties=pika.BasicProperties(
                    delivery_mode=pika.DeliveryMode.Persistent,
                    content_type="application/json",
                    message_id=message_id,
                    timestamp=int(now),
                    headers={"timestamp_in_ms": int(now * 1000)},
                ),
                mandatory=True,
            )
        except UnroutableError as exc:
            raise PublishError(f"no queue is bound for routing key {routing_key!r}") from exc
        except NackError as exc:
            raise PublishError("RabbitMQ refused the message (nack)") from exc
        except AMQPError as exc:
            raise PublishError(f"connection to RabbitMQ failed: {type(exc).__name__}") from exc

    def publish(self, event: Event) -> None:
        """Publish one validated event, routing key = its type."""
        self.publish_raw(event.to_json_bytes(), event.event_type, message_id=event.event_id)

    def publish_lines(
        self, lines: Iterable[bytes], *, validate: bool = True
    ) -> list[PublishResult]:
        """Publish JSON lines; each is validated first (unless ``validate=False``) and reported."""
        results = []
        for index, line in enumerate(lines, start=1):
            line = line.strip()
            if not line:
                continue
            try:
                if validate:
                    event = parse_event(line)
                    self.publish(event)
                    results.append(PublishResult(index, True, event_id=event.event_id))
                else:
                    self.publish_raw(line, routing_key_of(line))
                    results.append(PublishResult(index, True))
            except EventRejected as exc:
                results.append(PublishResult(index, False, exc.reason, exc.detail, exc.event_id))
            except PublishError as exc:
                results.append(PublishResult(index, False, "not_confirmed", str(exc)))
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
