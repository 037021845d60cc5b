"""The dramatiq broker on RabbitMQ, with the middleware every worker process runs.

Importing this module sets the global dramatiq broker from the settings (dramatiq's own
convention), so actor modules can be declared against it.
"""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.middleware import CurrentMessage, Retries

from infra.settings import get_settings
from workers.middleware import DeadLetters
from workers.observability import WorkerPrometheus

__all__ = ["broker", "make_broker", "settings"]

settings = get_settings()


def make_broker(amqp_url: str) -> RabbitmqBroker:
    """A RabbitMQ broker that declares queues exactly as the workers do.

    Whoever enqueues directly (``govnotify dead-letters replay``) uses this too: a queue
    declared with other arguments (a ``max_priority``) would be refused by RabbitMQ.

    confirm_delivery: a job the stream hands over is on disk before the stream commits its
    offset.
    """
    return RabbitmqBroker(url=amqp_url, confirm_delivery=True)


broker = make_broker(settings.amqp_url)
broker.add_middleware(CurrentMessage())
# A job out of retries becomes a dead letter. dramatiq runs after_* hooks in reverse order of
# the list, so "before Retries" here means its after_process_message runs after Retries' one,
# whose verdict (message.failed) it reads.
broker.add_middleware(DeadLetters(settings), before=Retries)
# dramatiq's Prometheus middleware (not on by default in 2.x), whose exposition server also
# answers /healthz and /readyz. It serves every worker process's metrics, ours included
# (PROMETHEUS_MULTIPROC_DIR is set by `govnotify worker` before anything imports prometheus_client).
broker.add_middleware(WorkerPrometheus())
dramatiq.set_broker(broker)
