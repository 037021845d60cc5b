"""The stream alone: license events already in Kafka → applied, vs a bare consumer of them.

N license events (``generate_registry``) are put on the relay queue and moved into Kafka by an
in-process :class:`producers.relay.Relay` (so the journal holds them, as the stream expects).
Then ``govnotify stream`` starts as a real process, with no worker running (the jobs it hands
over wait on RabbitMQ). It is timed from the first event it counts (its group has joined, its
partitions are assigned) until ``govnotify_stream_events_total`` has all N: per event it
validates the record again, reads the journal for events applied before, hands the batch to
the workers as one confirmed job and marks the events applied. The figure is the events counted
in that window over its seconds.

The baseline is aiokafka alone, in this process, reading the same N records from the start of
the same topic (every partition assigned, no group, nothing done with them): what fetching the
records costs without any of the stream's work.

    python -m benchmarks.bench_stream [--events N]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

from aiokafka import AIOKafkaConsumer, TopicPartition

from benchmarks import bench_relay
from benchmarks.bench_pipeline import _wait, stream_events
from benchmarks.common import BenchEnv, BenchError, Row, bench_env, child_env, run_main
from infra.processes import ProcessGroup
from infra.settings import Settings
from producers.generator import generate_registry

N_EVENTS = 20_000
#: Each step (start-up, the drain, the baseline) must finish within this.
STEP_TIMEOUT_S = 120.0
POLL_S = 0.05


async def _consume(bootstrap: str, topic: str, n: int) -> float:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None
    )
    await consumer.start()
    try:
        await consumer.topics()  # metadata, so that the topic's partitions are known
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            raise BenchError(f"topic {topic} has no partitions")
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        t0 = time.perf_counter()
        got = 0
        while got < n:
            if time.perf_counter() - t0 > STEP_TIMEOUT_S:
                raise BenchError(f"the bare consumer read {got} of {n} records")
            batch = await consumer.getmany(timeout_ms=1000, max_records=5000)
            got += sum(len(records) for records in batch.values())
        return time.perf_counter() - t0
    finally:
        await consumer.stop()


def raw_consume_seconds(settings: Settings, n: int) -> float:
    """Seconds for aiokafka to read ``n`` records of the licenses topic (baseline)."""
    return asyncio.run(_consume(settings.kafka_bootstrap, settings.topic("licenses"), n))


def stream_rate(env: BenchEnv, n: int) -> tuple[float, int, float]:
    """(events/s, events counted in the window, seconds) of the stream draining ``n`` events."""
    s = env.settings
    group = ProcessGroup(env=child_env(s), log_dir=env.tmp / "logs")
    try:
        stream = group.start("stream", "stream")
        deadline = time.monotonic() + STEP_TIMEOUT_S
        _wait("the stream's first event", lambda: stream_events(s) > 0, deadline, [stream], POLL_S)
        t0 = time.monotonic()
        first = stream_events(s)
        deadline = t0 + STEP_TIMEOUT_S
        _wait(f"the stream applied {n}", lambda: stream_events(s) >= n, deadline, [stream], POLL_S)
        elapsed = time.monotonic() - t0
    finally:
        group.stop_all()
    counted = int(n - first)
    if counted <= 0:
        raise BenchError("the stream counted every event in its first scrape: use more events")
    return counted / elapsed, counted, elapsed


def run(env: BenchEnv, n: int = N_EVENTS) -> list[Row]:
    s = env.settings
    events = generate_registry(n, s.today, prefix="LICSTR").events[:n]
    if len(events) < n:
        raise BenchError(f"generator gave {len(events)} events, {n} wanted")
    bench_relay.preload(s, [(e.to_json_bytes(), e.event_type) for e in events])
    bench_relay.relay_seconds(s, n)
    baseline_s = raw_consume_seconds(s, n)
    rate, counted, elapsed = stream_rate(env, n)
    print(
        f"  stream: {n} license events in Kafka; the stream applied {counted} in {elapsed:.2f}s "
        f"after its first ({rate:,.0f}/s, no worker); bare aiokafka read all {n} in "
        f"{baseline_s:.2f}s"
    )
    return [
        Row(
            "stream",
            f"events/s (N={n})",
            "stream alone, license events from Kafka",
            rate,
            "aiokafka consumer, same records",
            n / baseline_s,
        )
    ]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--events", type=int, default=N_EVENTS)
    args = p.parse_args()

    def bench(_rows: list[Row]) -> list[Row]:
        with bench_env("stream") as env:
            return run(env, args.events)

    return run_main([("stream", bench)])


if __name__ == "__main__":
    sys.exit(main())
