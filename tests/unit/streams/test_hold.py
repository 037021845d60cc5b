"""Holding a batch's acknowledgements until its hand-over is durable (``StreamContext.hold``).

The license agent hands a batch over while ``take_events`` moves on to the next one, and
``take_events`` acknowledges a batch as it moves on. These tests hold faust's own message and
event classes to what the agent relies on: a held record is not acknowledged to the consumer
(so its offset cannot be committed) until it is released, and then exactly once, in order.
"""

from __future__ import annotations

from collections.abc import Iterator

import faust
import pytest
from faust.events import Event
from faust.types.tuples import ConsumerMessage

from streams.context import StreamContext


class RecordingConsumer:
    """Stands in for the Kafka consumer: records which offsets were acknowledged to it, and
    marks the message acknowledged as faust's ``Consumer.ack`` does."""

    def __init__(self) -> None:
        self.acked: list[int] = []

    def ack(self, message: ConsumerMessage) -> bool:
        if message.acked:
            return False
        message.acked = True
        self.acked.append(message.offset)
        return True


@pytest.fixture
def app() -> Iterator[faust.App]:
    app = faust.App("hold-test", broker="kafka://127.0.0.1:1", web_enabled=False)
    app.consumer = RecordingConsumer()  # type: ignore[assignment]
    yield app


def batch(app: faust.App, n: int) -> list[Event]:
    """``n`` records as the conductor hands them to one agent (one reference each)."""
    events = []
    for offset in range(n):
        message = ConsumerMessage("t.licenses", 0, offset, 0.0, 0, None, b"k", b"v", None)
        message.incref()
        events.append(Event(app, b"k", b"v", None, message))
    return events


def test_take_events_acks_a_record_that_is_not_held(app: faust.App) -> None:
    # Given a batch nobody holds
    records = batch(app, 3)

    # When take_events acknowledges it (moving on to the next batch)
    for record in records:
        record.ack()

    # Then its offsets may be committed at once
    assert app.consumer.acked == [0, 1, 2]


def test_a_held_batch_is_acknowledged_only_when_released_and_then_once(app: faust.App) -> None:
    # Given a batch held while it is handed over
    records = StreamContext.hold(batch(app, 3))

    # When take_events acknowledges it (moving on to the next batch)
    for record in records:
        record.ack()

    # Then nothing of it may be committed yet
    assert app.consumer.acked == []

    # When its hand-over is durable and it is released (twice, by mistake)
    StreamContext.release(records)
    StreamContext.release(records)

    # Then each record is acknowledged once, in order
    assert app.consumer.acked == [0, 1, 2]
