"""The dramatiq broker on RabbitMQ, with the middleware every worker process runs.

Importing this module sets the global dramatiq broker from the settings (dramatiq's own
convention), so actor modules can be declared against it.
"""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.middleware import CurrentMessage
from dramatiq.middleware.prometheus import Prometheus

from infra.settings import get_settings

__all__ = ["broker", "settings"]

settings = get_settings()

#: confirm_delivery: a job the stream hands over is on disk before the stream commits its offset.
broker = RabbitmqBroker(url=settings.amqp_url, confirm_delivery=True)
broker.add_middleware(CurrentMessage())
# Not on by default in dramatiq 2.x; it serves every worker process's metrics, ours included
# (PROMETHEUS_MULTIPROC_DIR is set by `govnotify worker` before anything imports prometheus_client).
broker.add_middleware(Prometheus())
dramatiq.set_broker(broker)
