"""A dramatiq app whose one actor does nothing: the worker benchmark's baseline.

``python -m dramatiq benchmarks.noop_worker --processes 1 --threads 8`` with
``BENCH_AMQP_URL``, ``BENCH_NOOP_QUEUE`` and ``BENCH_NOOP_FILE`` set: each message on the
queue is taken, its actor appends one byte to the file (so the harness counts what was
processed by the file's size, from another process) and dramatiq acks it. Same broker class
and options as the product's workers (RabbitMQ, publisher confirms), dramatiq's default
middleware but Prometheus (no exposition port to collide with anyone's).
"""

from __future__ import annotations

import os
from typing import Any

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.middleware import default_middleware

try:  # dramatiq's Prometheus middleware, when its extra is installed
    from dramatiq.middleware.prometheus import Prometheus
except ImportError:  # pragma: no cover
    Prometheus = None  # type: ignore[assignment,misc]

QUEUE = os.environ["BENCH_NOOP_QUEUE"]
ACTOR = "bench_noop"

broker = RabbitmqBroker(
    url=os.environ["BENCH_AMQP_URL"],
    confirm_delivery=True,
    middleware=[m() for m in default_middleware if Prometheus is None or m is not Prometheus],
)
dramatiq.set_broker(broker)

_fd = os.open(os.environ["BENCH_NOOP_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)


@dramatiq.actor(actor_name=ACTOR, queue_name=QUEUE, max_retries=0)
def bench_noop(*_args: Any, **_kwargs: Any) -> None:
    os.write(_fd, b".")
