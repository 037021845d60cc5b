"""The Kafka transport the stream runs on: Faust's aiokafka transport, with the fetch wait ours.

Faust builds its worker consumer with ``fetch_max_wait_ms=1500`` and no setting to change it.
On a real Kafka that only bounds how long a broker holds a fetch that finds nothing (it answers
as soon as a record arrives). Tansu, the embedded broker, holds a fetch over more than one
partition for the whole wait even when a record arrives: a record produced 270 ms into a
fetch reached a bare aiokafka consumer after 1,233 ms (3 ms with one partition), and a stream
that was idle saw each new record ~0.75 s late (a green-channel alert that goes by the stream
alone, a survey, a rating). ``GOVNOTIFY_KAFKA_FETCH_MAX_WAIT_MS`` (100 ms by default) sets it.

The transport is given to the app (``app.transport``) before any topic or agent is made, so the
conductor and the consumer are built from it.
"""

from __future__ import annotations

from typing import Any

import aiokafka
from faust.transport.drivers import aiokafka as faust_aiokafka

__all__ = ["Transport"]


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # Read when the consumer starts (its Fetcher is built in start()), not before.
        consumer._fetch_max_wait_ms = transport.fetch_max_wait_ms
        return consumer


class _Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> faust_aiokafka.AIOKafkaConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(faust_aiokafka.Transport):
    """Faust's aiokafka transport whose worker consumer waits ``fetch_max_wait_ms`` at most."""

    Consumer = _Consumer

    def __init__(self, url: Any, app: Any, *, fetch_max_wait_ms: int, **kwargs: Any) -> None:
        if fetch_max_wait_ms < 1:
            raise ValueError("fetch_max_wait_ms must be at least 1")
        super().__init__(url, app, **kwargs)
        self.fetch_max_wait_ms = fetch_max_wait_ms
