"""Publishing: govnotify's Publisher, a confirm per message and pipelined, vs plain pika.

Three sides publish the same N generated license events (same bytes, same exchange, persistent)
to the namespace's ``<ns>.events`` exchange, whose relay queue receives them: plain pika without
confirms (the baseline), ``Publisher.publish_raw`` (waits for each confirm) and
``Publisher.publish_many`` (confirms pipelined, a window of unconfirmed messages, as
``govnotify publish`` uses it). The queue is checked to hold exactly N after each side and
purged in between.

    python -m benchmarks.bench_publish
"""

from __future__ import annotations

import sys
import time

import pika

from benchmarks.common import (
    BenchEnv,
    BenchError,
    Row,
    bench_env,
    deadline_loop,
    purge_queue,
    queue_depth,
    run_main,
)
from producers.generator import generate_registry
from producers.rabbitmq import DEFAULT_WINDOW, Publisher

N_EVENTS = 3000
#: Each side must finish within this (a confirmed publish runs at ~1k/s on these machines).
SIDE_TIMEOUT_S = 60.0
#: Unconfirmed messages at most in the pipelined side (publish_many's default).
WINDOW = DEFAULT_WINDOW

Message = tuple[bytes, str, str]  # body, routing key, message id


def messages(env: BenchEnv, n: int, prefix: str) -> list[Message]:
    """``n`` generated license events as (body, routing key, message id)."""
    events = generate_registry(n, env.settings.today, prefix=prefix).events[:n]
    if len(events) < n:
        raise BenchError(f"generator gave {len(events)} events, {n} wanted")
    return [(e.to_json_bytes(), e.event_type, e.event_id) for e in events]


def publish_plain(env: BenchEnv, msgs: list[Message]) -> float:
    """Seconds for pika BlockingConnection basic_publish, no confirms (baseline)."""
    s = env.settings
    check = deadline_loop(SIDE_TIMEOUT_S, "plain publish")
    conn = pika.BlockingConnection(pika.URLParameters(s.amqp_url))
    try:
        channel = conn.channel()
        t0 = time.perf_counter()
        for i, (body, key, message_id) in enumerate(msgs):
            channel.basic_publish(
                exchange=s.exchange,
                routing_key=key,
                body=body,
                properties=pika.BasicProperties(
                    delivery_mode=pika.DeliveryMode.Persistent,
                    content_type="application/json",
                    message_id=message_id,
                ),
            )
            if i % 256 == 0:
                check()
        # One synchronous round trip on the same channel: the broker has handled every publish
        # before it answers, so the clock stops when RabbitMQ has them (not just the socket).
        channel.queue_declare(s.relay_queue, passive=True)
        return time.perf_counter() - t0
    finally:
        conn.close()


def publish_confirmed(env: BenchEnv, msgs: list[Message]) -> float:
    """Seconds for producers.rabbitmq.Publisher (persistent, mandatory, confirm per message)."""
    s = env.settings
    check = deadline_loop(SIDE_TIMEOUT_S, "Publisher publish")
    with Publisher(s.amqp_url, s.exchange) as publisher:
        t0 = time.perf_counter()
        for i, (body, key, message_id) in enumerate(msgs):
            publisher.publish_raw(body, key, message_id=message_id)
            if i % 256 == 0:
                check()
        return time.perf_counter() - t0


def publish_pipelined(env: BenchEnv, msgs: list[Message]) -> float:
    """Seconds for Publisher.publish_many (persistent, mandatory, confirms pipelined)."""
    s = env.settings
    with Publisher(s.amqp_url, s.exchange) as publisher:
        t0 = time.perf_counter()
        # publish_many enforces its own deadline (confirm_timeout); the wall clock is checked
        # after, so a slow run still fails the benchmark rather than reporting a figure.
        outcomes = publisher.publish_many(msgs, window=WINDOW)
        elapsed = time.perf_counter() - t0
    if elapsed > SIDE_TIMEOUT_S:
        raise BenchError(f"publish_many did not finish within {SIDE_TIMEOUT_S:g} s")
    failed = [reason for accepted, reason in outcomes if not accepted]
    if len(outcomes) != len(msgs) or failed:
        raise BenchError(
            f"publish_many: {len(outcomes)} outcomes for {len(msgs)} messages, "
            f"{len(failed)} failed (first: {failed[:1]})"
        )
    return elapsed


def _expect_depth(env: BenchEnv, n: int, side: str) -> None:
    depth = queue_depth(env.settings, env.settings.relay_queue)
    if depth != n:
        raise BenchError(f"{side}: relay queue holds {depth} messages, {n} were published")
    purge_queue(env.settings, env.settings.relay_queue)


def run(env: BenchEnv, n: int = N_EVENTS) -> list[Row]:
    s = env.settings
    msgs = messages(env, n, prefix="LICPUB")
    # The exchange, the relay queue bound to it and the DLQ, as upstream systems find them.
    Publisher.from_settings(s).close()

    plain_s = publish_plain(env, msgs)
    _expect_depth(env, n, "pika without confirms")
    confirmed_s = publish_confirmed(env, msgs)
    _expect_depth(env, n, "Publisher")
    pipelined_s = publish_pipelined(env, msgs)
    _expect_depth(env, n, "Publisher.publish_many")

    mib = sum(len(m[0]) for m in msgs) / 2**20
    print(
        f"  publish: {n} events, {mib:.1f} MiB; pika no confirms {plain_s:.2f}s, "
        f"Publisher (confirm each) {confirmed_s:.2f}s, "
        f"Publisher.publish_many (window {WINDOW}) {pipelined_s:.2f}s"
    )
    metric = f"events/s (N={n})"
    return [
        Row(
            "publish",
            metric,
            "Publisher confirm/msg",
            n / confirmed_s,
            "pika no confirms",
            n / plain_s,
        ),
        Row(
            "publish",
            metric,
            f"publish_many w={WINDOW}",
            n / pipelined_s,
            "pika no confirms",
            n / plain_s,
        ),
    ]


def main() -> int:
    def bench(_rows: list[Row]) -> list[Row]:
        with bench_env("publish") as env:
            return run(env)

    return run_main([("publish", bench)])


if __name__ == "__main__":
    sys.exit(main())
