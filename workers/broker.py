"""The dramatiq broker on RabbitMQ, with the middleware every worker process runs.

Importing this module builds the process's :class:`workers.context.WorkerContext` from the
environment and sets the global dramatiq broker from its settings (dramatiq's own convention),
so actor modules can be declared against it. Tests bind the actors to a ``StubBroker`` and run
them in a context of their own instead (see :mod:`workers.context`).

Queue types, and how alerts keep their priority under quorum queues: see :mod:`infra.jobs`.
"""

from __future__ import annotations

import dramatiq
from dramatiq.middleware import CurrentMessage, Retries

from infra.clock import install_clock
from infra.jobs import QUEUE_TYPES, QueueTypeBroker, make_broker
from infra.settings import get_settings
from workers.context import WorkerContext, install
from workers.middleware import DeadLetters, FrozenStartupHeap
from workers.observability import WorkerPrometheus

__all__ = ["QUEUE_TYPES", "QueueTypeBroker", "broker", "context", "make_broker"]

#: Built once at start; every actor reads it through ``workers.context.current()``.
context = install(WorkerContext(get_settings()))
settings = context.settings
# Worker processes are started by dramatiq, not through the CLI: install the clock here.
install_clock(settings)


broker = make_broker(settings.amqp_url, queue_type=settings.rabbitmq_queue_type)
broker.add_middleware(CurrentMessage())
# A job out of retries becomes a dead letter. dramatiq runs after_* hooks in reverse order of
# the list, so "before Retries" here means its after_process_message runs after Retries' one,
# whose verdict (message.failed) it reads.
broker.add_middleware(DeadLetters(settings), before=Retries)
# dramatiq's Prometheus middleware (not on by default in 2.x), whose exposition server also
# answers /healthz and /readyz. It serves every worker process's metrics, ours included
# (PROMETHEUS_MULTIPROC_DIR is set by `govnotify worker` before anything imports prometheus_client).
broker.add_middleware(WorkerPrometheus())
broker.add_middleware(FrozenStartupHeap())
dramatiq.set_broker(broker)
