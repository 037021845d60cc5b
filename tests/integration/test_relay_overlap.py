"""The relay writes one batch while it validates the next; a failed write loses and reorders
nothing: the failed batch and every message delivered after it go back to the queue in order.

An in-process relay against the real RabbitMQ, PostgreSQL and Tansu; its Kafka sink refuses one
batch (Kafka unavailable for a moment) while two more are delivered behind it.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterator, Sequence

import pika
import pytest

from infra.settings import Settings
from producers.generator import license_event
from producers.kafka import Headers, KafkaSink, Record
from producers.rabbitmq import Publisher, declare_topology, queue_depth
from producers.relay import Relay
from schemas.events import Event
from schemas.models import IngestEvent
from tests.support import count_rows, wait_until

pytestmark = pytest.mark.integration

T0 = dt.datetime(2026, 11, 20, 9, 0, tzinfo=dt.UTC)
N_LICENSES = 10
N_EACH = 150  # 1,500 events: three relay batches of 500, all within the prefetch


class RefusesOneBatch(KafkaSink):
    """The real sink, except that its ``fail_on``-th batch is refused before Kafka sees it."""

    def __init__(self, bootstrap: str, fail_on: int) -> None:
        super().__init__(bootstrap)
        self.fail_on = fail_on
        self.calls = 0
        self.written: list[Record] = []

    def send_batch(self, records: Sequence[Record], *, headers: Headers | None = None) -> None:
        self.calls += 1
        if self.calls == self.fail_on:
            raise ConnectionError("Kafka unavailable (test)")
        super().send_batch(records, headers=headers)
        self.written.extend(records)


def renewals() -> list[Event]:
    """Each license renewed N_EACH times, a minute apart, interleaved across licenses."""
    return [
        license_event(
            "license.renewed",
            f"LIC-{n:02d}",
            category="food_business",
            issued_on=dt.date(2025, 1, 1),
            expires_on=dt.date(2030, 1, 1) + dt.timedelta(days=i),
            occurred_at=T0 + dt.timedelta(minutes=i),
        )
        for i in range(N_EACH)
        for n in range(N_LICENSES)
    ]


@pytest.fixture
def relay_thread(settings: Settings) -> Iterator[tuple[Relay, RefusesOneBatch]]:
    sink = RefusesOneBatch(settings.kafka_bootstrap, fail_on=2)
    relay = Relay(settings, sink=sink)
    stop = threading.Event()
    thread = threading.Thread(target=relay.run, args=(stop,), name="test-relay", daemon=True)
    thread.start()
    try:
        yield relay, sink
    finally:
        stop.set()
        thread.join(30)
        assert not thread.is_alive(), "the relay did not stop"


def test_a_failed_batch_and_those_behind_it_are_requeued_in_order_and_each_event_relayed_once(
    settings: Settings, relay_thread: tuple[Relay, RefusesOneBatch]
) -> None:
    # Given 1,500 renewals of 10 licenses, queued before the relay takes them
    _relay, sink = relay_thread
    events = renewals()
    s = settings
    connection = pika.BlockingConnection(pika.URLParameters(s.amqp_url))
    try:
        declare_topology(connection.channel(), s.exchange, s.relay_queue, s.dead_letter_queue)
    finally:
        connection.close()

    # When they are published, and Kafka refuses the relay's second batch
    with Publisher.from_settings(settings) as publisher:
        outcomes = publisher.publish_many(
            (e.to_json_bytes(), e.event_type, e.event_id) for e in events
        )
    assert all(ok for ok, _reason in outcomes)

    # Then every event is journaled and relayed, and none is left on the queue
    wait_until(
        lambda: (
            count_rows(settings, IngestEvent, IngestEvent.relayed_at.is_not(None)) == len(events)
        ),
        120,
        message=lambda: f"{len(sink.written)} written, {sink.calls} batches tried",
    )
    wait_until(lambda: queue_depth(settings, settings.relay_queue) == 0, 30)
    assert sink.calls > 2, "the refused batch was never tried again"
    # Each event reached Kafka exactly once (the refused batch wrote nothing)
    written = [json.loads(value) for _topic, _key, value in sink.written]
    assert sorted(w["event_id"] for w in written) == sorted(e.event_id for e in events)
    # ... and each license's renewals in the order they were published
    for n in range(N_LICENSES):
        key = f"LIC-{n:02d}"
        times = [w["occurred_at"] for w in written if w["payload"]["license_id"] == key]
        assert times == sorted(times), f"{key}'s renewals reached Kafka out of order"
