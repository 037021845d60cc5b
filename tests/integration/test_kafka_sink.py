"""The relay's Kafka sink writes whole batches per partition: each key lands where
``AIOKafkaProducer.send`` would put it, and a partition keeps the order records were given in."""

from __future__ import annotations

import asyncio
from collections import defaultdict

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from infra.settings import Settings
from producers.kafka import KafkaSink

pytestmark = pytest.mark.integration

#: Enough records of ~1 KB that some partitions fill several batches (16 KB each).
N = 400


async def _read_all(bootstrap: str, topic: str) -> dict[int, list[tuple[bytes, bytes, list]]]:
    """Every record of ``topic`` by partition, in offset order: (key, value, headers)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()  # the cluster's metadata, for partitions_for_topic
        ids = sorted(consumer.partitions_for_topic(topic) or [])
        parts = [TopicPartition(topic, p) for p in ids]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        found: dict[int, list[tuple[bytes, bytes, list]]] = defaultdict(list)
        async with asyncio.timeout(30):
            for tp in parts:
                while await consumer.position(tp) < ends[tp]:
                    for record in (await consumer.getmany(tp, timeout_ms=500)).get(tp, []):
                        found[tp.partition].append((record.key, record.value, list(record.headers)))
        return found
    finally:
        await consumer.stop()


async def _send_one_by_one(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        futures = [await producer.send(topic, key=k, value=v) for k, v in records]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def test_each_key_goes_where_send_would_put_it_in_the_order_given(settings: Settings) -> None:
    # Given keyed records, some keys repeated, large enough to fill several batches
    records = [(f"LIC-{i % 97}".encode(), f"{i:06d}".encode() + b"x" * 1000) for i in range(N)]
    ours, theirs = settings.topic("licenses"), settings.topic("cases")
    sink = KafkaSink(settings.kafka_bootstrap)
    try:
        # When the sink writes them in one call, and aiokafka's send() writes them elsewhere
        sink.send_batch([(ours, k, v) for k, v in records], headers=[("epoch", b"3")])
    finally:
        sink.close()
    asyncio.run(_send_one_by_one(settings.kafka_bootstrap, theirs, records))
    by_sink = asyncio.run(_read_all(settings.kafka_bootstrap, ours))
    by_send = asyncio.run(_read_all(settings.kafka_bootstrap, theirs))

    # Then every record is there once, each key on the partition send() chose, each partition
    # in the order given, every record with the batch's headers
    assert sum(len(v) for v in by_sink.values()) == N
    key_partition = {k: p for p, rs in by_send.items() for k, _v, _h in rs}
    assert {k: p for p, rs in by_sink.items() for k, _v, _h in rs} == key_partition
    for partition, got in by_sink.items():
        expected = [v for k, v in records if key_partition[k] == partition]
        assert [v for _k, v, _h in got] == expected
        assert all(h == [("epoch", b"3")] for _k, _v, h in got)
