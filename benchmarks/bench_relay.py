"""Relay throughput: RabbitMQ relay queue → validate → Kafka, vs raw aiokafka producing.

N valid events are first loaded onto the relay queue (plain publishes, then the queue depth is
waited for). ``producers.relay.Relay(settings).run(stop)`` then runs in a thread until its
in-process ``govnotify_events_relayed_total`` counter (incremented only after Kafka acknowledged
and RabbitMQ was acked) reaches N. The baseline is aiokafka alone producing the same N values,
keys and topic to the same broker with the relay's producer settings (acks=all, linger 5 ms).

A second baseline is the transport alone: the same N messages consumed from the relay queue
with the relay's prefetch and batch size and handed to the relay's own ``KafkaSink``, each batch
acknowledged once Kafka has it; no validation, journal, authorisation or metrics. What separates
the Relay from it is the work a relay must do besides moving bytes; what separates it from raw
aiokafka is pika's consumption, which any relay from RabbitMQ pays.

Neither timing includes a start: the baseline's producer is started before its clock, and so
are the relay's producer and the benchmark namespace's first Kafka epoch (created once in a
deployment's life: topics and marker, ~0.5 s). As ``govnotify relay`` does, the heap is frozen
before the relay runs (:mod:`infra.heap`); here that also keeps the benchmark's own copies of
the events out of the collector's walks, which a relay process does not hold.

    python -m benchmarks.bench_relay
"""

from __future__ import annotations

import asyncio
import resource
import sys
import threading
import time
from collections.abc import Callable

import pika
from aiokafka import AIOKafkaProducer

from benchmarks.common import (
    BenchEnv,
    BenchError,
    Row,
    bench_env,
    deadline_loop,
    queue_depth,
    run_main,
)
from infra.amqp import amqp_user
from infra.heap import freeze_startup_heap
from infra.metrics import EVENTS_RELAYED
from infra.processes import wait_until
from infra.settings import Settings
from producers.generator import generate_registry
from producers.kafka import KafkaSink
from producers.rabbitmq import declare_topology
from producers.relay import Relay

N_EVENTS = 20_000
#: Loading, relaying and the baseline must each finish within this.
STEP_TIMEOUT_S = 60.0

Record = tuple[str, bytes, bytes]  # topic, key, value


async def _produce(bootstrap: str, records: list[Record]) -> float:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=5,
        enable_idempotence=False,
        request_timeout_ms=30_000,
    )
    await producer.start()
    try:
        t0 = time.perf_counter()
        futures = [await producer.send(t, value=v, key=k) for t, k, v in records]
        await asyncio.wait_for(asyncio.gather(*futures), STEP_TIMEOUT_S)
        return time.perf_counter() - t0
    finally:
        await producer.stop()


def raw_kafka_seconds(settings: Settings, records: list[Record]) -> float:
    """Seconds for aiokafka to produce ``records`` and get every acknowledgement (baseline)."""
    return asyncio.run(_produce(settings.kafka_bootstrap, records))


def preload(settings: Settings, bodies: list[tuple[bytes, str]]) -> None:
    """Put ``bodies`` on the relay queue (no confirms) and wait until all are there."""
    s = settings
    check = deadline_loop(STEP_TIMEOUT_S, "loading the relay queue")
    conn = pika.BlockingConnection(pika.URLParameters(s.amqp_url))
    try:
        channel = conn.channel()
        declare_topology(channel, s.exchange, s.relay_queue, s.dead_letter_queue)
        for i, (body, key) in enumerate(bodies):
            channel.basic_publish(
                exchange=s.exchange,
                routing_key=key,
                body=body,
                properties=pika.BasicProperties(
                    delivery_mode=pika.DeliveryMode.Persistent, user_id=amqp_user(s.amqp_url)
                ),
            )
            if i % 256 == 0:
                check()
    finally:
        conn.close()
    wait_until(
        lambda: queue_depth(s, s.relay_queue) >= len(bodies),
        STEP_TIMEOUT_S,
        interval=0.1,
        message=f"relay queue did not reach {len(bodies)} messages",
    )


def relayed(settings: Settings) -> float:
    """This process's govnotify_events_relayed_total over the namespace's topics.

    Read from the one counter, not the whole registry: collecting every metric of the process
    (its gc and process collectors included) every few milliseconds took 14% of the GIL from
    the relay it measures.
    """
    topics = set(settings.stream_topics)
    return sum(
        sample.value
        for metric in EVENTS_RELAYED.collect()
        for sample in metric.samples
        if sample.name.endswith("_total") and sample.labels.get("topic") in topics
    )


def relay_seconds(settings: Settings, n: int) -> float:
    """Seconds for an in-process Relay to move ``n`` queued events into Kafka."""
    relay = Relay(settings)  # connects its Kafka producer: not part of the timing
    relay.epochs.check()  # the namespace's first epoch, once in its life: not either
    freeze_startup_heap()  # as govnotify relay does before it runs
    stop = threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            relay.run(stop)
        except BaseException as exc:
            errors.append(exc)

    before = relayed(settings)
    thread = threading.Thread(target=target, name="bench-relay", daemon=True)
    t0 = time.perf_counter()
    thread.start()
    try:
        wait_until(
            lambda: relayed(settings) - before >= n or not thread.is_alive(),
            STEP_TIMEOUT_S,
            interval=0.02,
            message=f"the relay did not move {n} events within {STEP_TIMEOUT_S:g} s",
        )
        elapsed = time.perf_counter() - t0
    finally:
        stop.set()
        thread.join(15)
    if errors:
        raise BenchError(f"relay failed: {errors[0]!r}") from errors[0]
    if thread.is_alive():
        raise BenchError("relay thread did not stop within 15 s")
    done = relayed(settings) - before
    if done != n:
        raise BenchError(f"relay moved {done:.0f} events, {n} expected")
    left = queue_depth(settings, settings.relay_queue)
    if left:
        raise BenchError(f"{left} messages left on the relay queue")
    return elapsed


def transport_seconds(settings: Settings, n: int) -> float:
    """Seconds to move ``n`` queued messages into Kafka as they are, in the Relay's batches
    (the transport baseline: no validation, no journal)."""
    s = settings
    check = deadline_loop(STEP_TIMEOUT_S, "the transport baseline")
    sink = KafkaSink(s.kafka_bootstrap)  # started before the clock, as the Relay's
    connection = pika.BlockingConnection(pika.URLParameters(s.amqp_url))
    try:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=Relay.prefetch_batches * Relay.batch_size)
        topic = s.topic("license")
        moved = 0
        batch: list[tuple[int, bytes]] = []
        t0 = time.perf_counter()
        for method, _props, body in channel.consume(s.relay_queue, inactivity_timeout=0.05):
            check()
            if method is not None:
                batch.append((method.delivery_tag, body))
            if batch and (len(batch) >= Relay.batch_size or method is None):
                sink.send_batch([(topic, b"%d" % tag, value) for tag, value in batch])
                channel.basic_ack(delivery_tag=batch[-1][0], multiple=True)
                moved += len(batch)
                batch = []
                if moved >= n:
                    break
        elapsed = time.perf_counter() - t0
        channel.cancel()
    finally:
        connection.close()
        sink.close()
    return elapsed


def _cpu_s() -> float:
    """CPU seconds this process has used, every thread together (user + system)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(env: BenchEnv, n: int = N_EVENTS) -> tuple[float, float, float]:
    """(relay, raw aiokafka, transport baseline) events/s for ``n`` events."""
    s = env.settings
    events = generate_registry(n, s.today, prefix="LICREL").events[:n]
    if len(events) < n:
        raise BenchError(f"generator gave {len(events)} events, {n} wanted")
    records = [(s.topic(e.family), e.key.encode(), e.to_json_bytes()) for e in events]
    # The relay queue gets the very bytes the baseline produces (serialised once).
    bodies = [(record[2], e.event_type) for record, e in zip(records, events, strict=True)]

    cpu_us: dict[str, float] = {}  # this process's CPU per event, µs (the broker's is not)

    def timed(name: str, run: Callable[[], float]) -> float:
        c0 = _cpu_s()
        seconds = run()
        cpu_us[name] = (_cpu_s() - c0) / n * 1e6
        return seconds

    baseline_s = timed("raw aiokafka", lambda: raw_kafka_seconds(s, records))
    # The same messages twice: the transport baseline journals nothing, so the Relay after it
    # finds every event new.
    preload(s, bodies)
    transport_s = timed("transport alone", lambda: transport_seconds(s, n))
    preload(s, bodies)
    relay_s = timed("Relay", lambda: relay_seconds(s, n))
    print(
        f"  relay: {n} events; Relay {relay_s:.2f}s, transport alone (pika consume + the "
        f"Relay's KafkaSink) {transport_s:.2f}s, raw aiokafka (acks=all, linger 5 ms) "
        f"{baseline_s:.2f}s: the transport alone is {baseline_s / transport_s:.2f} of raw "
        "aiokafka"
    )
    # One process, one GIL: at half of raw aiokafka's rate a relay has this much time per
    # event for everything, its transport included.
    budget_us = 2 * baseline_s / n * 1e6
    print(
        "  relay: process CPU per event (µs): "
        + ", ".join(f"{name} {us:.0f}" for name, us in cpu_us.items())
        + f"; half of raw aiokafka's rate leaves {budget_us:.0f} µs per event, "
        f"{budget_us - cpu_us['transport alone']:.0f} beyond the transport's CPU"
    )
    return n / relay_s, n / baseline_s, n / transport_s


def run(env: BenchEnv, n: int = N_EVENTS) -> list[Row]:
    relay_rate, kafka_rate, transport_rate = measure(env, n)
    return [
        Row(
            "relay",
            f"events/s (N={n})",
            "Relay rabbit->kafka",
            relay_rate,
            "raw aiokafka acks=all",
            kafka_rate,
        ),
        Row(
            "relay",
            f"events/s (N={n})",
            "Relay rabbit->kafka",
            relay_rate,
            "transport alone: pika consume + KafkaSink, no validation or journal",
            transport_rate,
        ),
    ]


def main() -> int:
    def bench(_rows: list[Row]) -> list[Row]:
        with bench_env("relay") as env:
            return run(env)

    return run_main([("relay", bench)])


if __name__ == "__main__":
    sys.exit(main())
