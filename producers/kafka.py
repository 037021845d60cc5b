"""A blocking facade over aiokafka's producer, for the relay's synchronous AMQP loop.

The producer lives on its own event-loop thread; ``send_batch`` hands a batch over and returns
only when Kafka has acknowledged every record (acks=all), or raises.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer

__all__ = ["KafkaSink"]

Record = tuple[str, bytes, bytes]  # topic, key, value


class KafkaSink:
    """Sends batches of records to Kafka and waits for their acknowledgements."""

    def __init__(self, bootstrap: str, *, timeout_s: float = 30.0) -> None:
        self.timeout_s = timeout_s
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="kafka-sink", daemon=True
        )
        self._thread.start()
        self._producer = self._call(self._start(bootstrap))

    async def _start(self, bootstrap: str) -> AIOKafkaProducer:
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            acks="all",
            linger_ms=5,
            # No idempotent producer on Tansu; duplicates are made harmless downstream by keys.
            enable_idempotence=False,
            request_timeout_ms=int(self.timeout_s * 1000),
        )
        await producer.start()
        return producer

    def _call(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(self.timeout_s + 5)

    async def _send(self, records: Sequence[Record]) -> None:
        futures = [
            await self._producer.send(topic, value=value, key=key) for topic, key, value in records
        ]
        await asyncio.gather(*futures)

    def send_batch(self, records: Sequence[Record]) -> None:
        """Write ``records`` in order per key; raises if any is not acknowledged."""
        if records:
            self._call(self._send(records))

    def close(self) -> None:
        try:
            self._call(self._producer.stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._loop.close()
