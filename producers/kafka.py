"""A blocking facade over aiokafka's producer, for the relay's synchronous AMQP loop.

The producer lives on its own event-loop thread; ``send_batch`` hands a batch over and returns
only when Kafka has acknowledged every record (acks=all), or raises.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.producer.message_accumulator import BatchBuilder

__all__ = ["KafkaSink"]

Record = tuple[str, bytes, bytes]  # topic, key, value
#: Kafka record headers: (name, value) pairs.
Headers = list[tuple[str, bytes]]
#: How AIOKafkaProducer.send picks a keyed record's partition.
_PARTITIONER = DefaultPartitioner()


class KafkaSink:
    """Sends batches of records to Kafka and waits for their acknowledgements."""

    def __init__(self, bootstrap: str, *, timeout_s: float = 30.0) -> None:
        self.timeout_s = timeout_s
        self._bootstrap = bootstrap
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

    async def _send(self, records: Sequence[Record], headers: Headers | None) -> None:
        # Whole batches per partition (create_batch/send_batch), not one send() per record:
        # each send() is a coroutine, a future and a trip through the accumulator, ~15% of the
        # relay's time. The partition is the one send() would pick (DefaultPartitioner on the
        # key, partitions sorted by id), so a key's records keep their partition and order.
        producer = self._producer
        partitions: dict[str, list[int]] = {}
        open_batches: dict[tuple[str, int], BatchBuilder] = {}
        futures: list[asyncio.Future[object]] = []
        extra = headers or []
        for topic, key, value in records:
            ids = partitions.get(topic)
            if ids is None:
                ids = partitions[topic] = sorted(await producer.partitions_for(topic))
            partition = _PARTITIONER(key, ids, ids)
            batch = open_batches.get((topic, partition))
            if batch is None:
                batch = open_batches[topic, partition] = producer.create_batch()
            if batch.append(key=key, value=value, timestamp=None, headers=extra) is None:
                # Full: it goes now, before the next one of its partition.
                futures.append(await producer.send_batch(batch, topic, partition=partition))
                batch = open_batches[topic, partition] = producer.create_batch()
                if batch.append(key=key, value=value, timestamp=None, headers=extra) is None:
                    raise ValueError(f"a record of {len(value)} bytes is larger than a batch")
        for (topic, partition), batch in open_batches.items():
            futures.append(await producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*futures)

    def send_batch(self, records: Sequence[Record], *, headers: Headers | None = None) -> None:
        """Write ``records`` in order per key, each with ``headers``; raises if any is not
        acknowledged."""
        if records:
            self._call(self._send(records, headers))

    # ---- the epoch marker ---------------------------------------------------------------
    async def _read_last(self, topic: str) -> bytes | None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap,
            enable_auto_commit=False,
            group_id=None,
            request_timeout_ms=int(self.timeout_s * 1000),
        )
        await consumer.start()
        try:
            tp = TopicPartition(topic, 0)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            end = (await consumer.end_offsets([tp]))[tp]
            last: bytes | None = None
            deadline = asyncio.get_running_loop().time() + self.timeout_s
            while await consumer.position(tp) < end:
                if asyncio.get_running_loop().time() > deadline:
                    raise TimeoutError(f"reading {topic} did not reach offset {end}")
                batch = await consumer.getmany(tp, timeout_ms=500)
                for record in batch.get(tp, []):
                    last = record.value
            return last
        finally:
            await consumer.stop()

    def read_last(self, topic: str) -> bytes | None:
        """The value of the last record on partition 0 of ``topic``; None when it is empty.

        Each marker is written as its own batch, so the end offset Tansu reports for it (the
        first offset of the last batch, plus one) is exact here.
        """
        return self._call(self._read_last(topic))

    async def _write_marker(self, topic: str, value: bytes) -> None:
        await self._producer.send_and_wait(topic, value=value, key=b"epoch", partition=0)

    def write_marker(self, topic: str, value: bytes) -> None:
        """Write ``value`` to partition 0 of ``topic``; returns once Kafka acknowledged it."""
        self._call(self._write_marker(topic, value))

    def close(self) -> None:
        try:
            self._call(self._producer.stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._loop.close()
