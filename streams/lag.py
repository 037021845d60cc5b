"""Kafka consumer lag of the stream: per topic and partition, end offset − committed offset.

The stream's consumer group (the Faust app id) commits the offset of the next record to read;
the partition's end offset is the offset the next record written will get. Their difference is
what the stream still has to process. A partition the group never committed is read from its
beginning (Faust's ``auto_offset_reset`` is ``earliest``), so its lag is end − beginning.

What is and is not trustworthy on Tansu (measured on Tansu 0.6, see STACK-FACTS):

* the committed offsets are exact (OffsetFetch answers what Faust committed);
* the end offset is not: ListOffsets "latest" answers the first offset of the partition's last
  record batch + 1, not the true end. While the stream is behind, the lag shown is too small by
  up to the size of the last batch (the relay writes up to 500 records per batch); once the
  stream has caught up the committed offset passes that answer and the lag shows 0, which is
  then right. So on Tansu the gauge tells "behind" from "caught up" only roughly, and
  ``govnotify_kafka_consumer_lag_trustworthy`` is 0; on a real Kafka it is 1 and exact.

(aiokafka's admin ``list_consumer_group_offsets`` fails against Tansu; a consumer's
``committed()`` for the same group works, and is what this uses. Our consumer never subscribes,
so it never joins the group and never takes a partition from the stream.)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from prometheus_client import Gauge

if TYPE_CHECKING:
    import faust
    from aiokafka import AIOKafkaConsumer

    from infra.settings import Settings

__all__ = ["LAG_INTERVAL_S", "ConsumerLagMonitor", "attach", "partition_lag", "topic_lags"]

CONSUMER_LAG = Gauge(
    "govnotify_kafka_consumer_lag_messages",
    "Messages between the stream's committed offset and the partition's end offset, "
    "measured every 5 s by each stream process for the whole group (aggregate with max). "
    "Tansu reports the end offset low by up to one record batch, so there the lag is too small "
    "while the stream is behind and right once it caught up: trust the number only when "
    "govnotify_kafka_consumer_lag_trustworthy is 1.",
    ["topic", "partition"],
)
CONSUMER_LAG_TRUSTWORTHY = Gauge(
    "govnotify_kafka_consumer_lag_trustworthy",
    "1 when the broker reports end offsets correctly (real Kafka), 0 on Tansu.",
)


log = logging.getLogger("govnotify.streams.lag")

#: How often the stream measures its own lag.
LAG_INTERVAL_S = 5.0

#: (topic, partition)
Partition = tuple[str, int]


def partition_lag(end: int, committed: int | None, beginning: int = 0) -> int:
    """Records between what the group committed and the partition's end; never negative.

    ``committed`` None (the group never committed here) counts from ``beginning``. A committed
    offset past the reported end happens on Tansu (its end offset is low by up to one batch)
    and after a truncation: that is no lag, not a negative one.
    """
    position = beginning if committed is None else max(committed, beginning)
    return max(0, end - position)


def topic_lags(
    ends: Mapping[Partition, int],
    committed: Mapping[Partition, int | None],
    beginnings: Mapping[Partition, int] | None = None,
) -> dict[Partition, int]:
    """The lag of every partition in ``ends``."""
    beginnings = beginnings or {}
    return {
        tp: partition_lag(end, committed.get(tp), beginnings.get(tp, 0))
        for tp, end in sorted(ends.items())
    }


class ConsumerLagMonitor:
    """Measures a consumer group's lag on some topics with its own (non-member) consumer."""

    def __init__(self, bootstrap: str, group_id: str, topics: Iterable[str]) -> None:
        self.bootstrap = bootstrap
        self.group_id = group_id
        self.topics = list(topics)
        self._consumer: AIOKafkaConsumer | None = None

    async def _connect(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            from aiokafka import AIOKafkaConsumer

            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap,
                # The stream's group, to read its committed offsets. Without subscribe() the
                # consumer never joins the group; without auto-commit it never writes to it.
                group_id=self.group_id,
                enable_auto_commit=False,
                client_id=f"{self.group_id}-lag",
                request_timeout_ms=10_000,
            )
            await consumer.start()
            self._consumer = consumer
        return self._consumer

    async def measure(self) -> dict[Partition, int]:
        """{(topic, partition): lag} for every partition of the monitored topics that exists."""
        from aiokafka import TopicPartition

        consumer = await self._connect()
        # topics() refreshes metadata for all topics; naming ours would auto-create them.
        existing = await consumer.topics()
        tps = [
            TopicPartition(topic, p)
            for topic in self.topics
            if topic in existing
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        if not tps:
            return {}
        ends = await consumer.end_offsets(tps)
        committed = {tp: await consumer.committed(tp) for tp in tps}
        never = [tp for tp, offset in committed.items() if offset is None]
        beginnings = await consumer.beginning_offsets(never) if never else {}
        return topic_lags(
            {(tp.topic, tp.partition): end for tp, end in ends.items()},
            {(tp.topic, tp.partition): offset for tp, offset in committed.items()},
            {(tp.topic, tp.partition): offset for tp, offset in beginnings.items()},
        )

    async def update_metrics(self) -> dict[Partition, int]:
        """Measure and set ``govnotify_kafka_consumer_lag_messages``; a failure keeps the last
        values and reconnects next time."""
        try:
            lags = await self.measure()
        except Exception:
            log.warning("measuring the consumer lag of %s failed", self.group_id, exc_info=True)
            await self.close()
            return {}
        for (topic, partition), lag in lags.items():
            CONSUMER_LAG.labels(topic=topic, partition=str(partition)).set(lag)
        return lags

    async def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            try:
                await consumer.stop()
            except Exception:  # a consumer whose broker is gone: nothing left to release
                log.debug("stopping the lag consumer failed", exc_info=True)


def attach(app: faust.App, settings: Settings, interval_s: float = LAG_INTERVAL_S) -> None:
    """Measure the stream's lag every ``interval_s`` seconds in the Faust app's own loop.

    Every stream process reports the lag of the whole group (the same numbers): aggregate with
    ``max by (topic, partition)``, not ``sum``.
    """
    CONSUMER_LAG_TRUSTWORTHY.set(0 if settings.kafka_broker_kind == "tansu" else 1)
    monitor = ConsumerLagMonitor(settings.kafka_bootstrap, app.conf.id, settings.stream_topics)
    state = {"last_log": 0.0}

    @app.timer(interval=interval_s, name=f"{settings.namespace}-consumer-lag")
    async def measure_consumer_lag() -> None:
        lags = await monitor.update_metrics()
        # A line a minute at most: enough to read the lag from the log as well.
        if lags and time.monotonic() - state["last_log"] > 60:
            state["last_log"] = time.monotonic()
            log.info("consumer lag: %d messages on %d partitions", sum(lags.values()), len(lags))

    @app.on_before_shutdown.connect
    async def close_lag_consumer(sender: object, **kwargs: object) -> None:
        await monitor.close()
