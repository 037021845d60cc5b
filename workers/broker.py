"""The dramatiq broker on RabbitMQ, with the middleware every worker process runs.

Importing this module sets the global dramatiq broker from the settings (dramatiq's own
convention), so actor modules can be declared against it.

Queue types (``GOVNOTIFY_RABBITMQ_QUEUE_TYPE``): every work queue, its ``.DQ`` (delays and
retries) and its ``.XQ`` (dead letters) is ``classic`` or ``quorum``. Priorities are not
affected by the choice: govnotify declares no RabbitMQ-level priority (no ``max_priority``,
so no ``x-max-priority``, and no ``broker_priority`` on any message). An actor's
``priority`` option (``alerts``: 0, the most urgent; ``delivery-retry``: 100) is dramatiq's
own: it orders the messages a worker has already prefetched, in the worker's in-process
priority queue, and never reaches RabbitMQ. What keeps alerts ahead of a backlog is that
they have a queue of their own, consumed by every worker beside the others. So under quorum
queues the alerts queue keeps both: its own queue, and priority 0 inside each worker.
RabbitMQ 3.10 quorum queues refuse ``x-max-priority`` (406 "invalid arg 'x-max-priority' …
of queue type rabbit_quorum_queue"; quorum queues only gained two priority levels in
RabbitMQ 4.0), which is why :class:`QueueTypeBroker` refuses a ``max_priority`` with quorum.
"""

from __future__ import annotations

from typing import Any

import dramatiq
from dramatiq.brokers.rabbitmq import DEAD_MESSAGE_TTL, RabbitmqBroker
from dramatiq.common import xq_name
from dramatiq.middleware import CurrentMessage, Retries

from infra.settings import get_settings
from workers.middleware import DeadLetters
from workers.observability import WorkerPrometheus

__all__ = ["QUEUE_TYPES", "QueueTypeBroker", "broker", "make_broker", "settings"]

settings = get_settings()


#: RabbitMQ queue types a broker can declare its queues with.
QUEUE_TYPES = ("classic", "quorum")


class QueueTypeBroker(RabbitmqBroker):
    """dramatiq's RabbitMQ broker, declaring each queue, ``.DQ`` and ``.XQ`` of ``queue_type``.

    ``classic`` declares exactly what dramatiq declares (queues made before this setting
    still match); ``quorum`` adds ``x-queue-type: quorum`` to dramatiq's own arguments, which
    quorum queues on RabbitMQ 3.10 all support: the queue and ``.DQ`` keep
    ``x-dead-letter-exchange: ""`` and ``x-dead-letter-routing-key: <queue>.XQ``, the ``.XQ``
    keeps ``x-message-ttl`` (7 days). Dead-lettering from a quorum queue is RabbitMQ's
    default at-most-once, as for classic queues; the job's dead letter is recorded in the
    database by :class:`~workers.middleware.DeadLetters` anyway.

    dramatiq builds these arguments in two private methods, ``_build_queue_arguments`` (queue
    and ``.DQ``) and ``_declare_xq_queue`` (``.XQ``, whose arguments are a literal there): a
    dramatiq upgrade that renames them is caught by tests/integration/test_quorum_queues.py.

    Raises:
      ValueError: for an unknown ``queue_type``, or a ``max_priority`` with ``quorum``.
    """

    def __init__(self, *, queue_type: str = "classic", **kwargs: Any) -> None:
        if queue_type not in QUEUE_TYPES:
            raise ValueError(f"queue_type must be one of {QUEUE_TYPES}, not {queue_type!r}")
        if queue_type == "quorum" and kwargs.get("max_priority"):
            raise ValueError("RabbitMQ 3.10 quorum queues do not support x-max-priority")
        super().__init__(**kwargs)
        self.queue_type = queue_type

    def _type_arguments(self) -> dict[str, str]:
        return {"x-queue-type": "quorum"} if self.queue_type == "quorum" else {}

    def _build_queue_arguments(self, queue_name: str) -> dict[str, Any]:
        arguments: dict[str, Any] = super()._build_queue_arguments(queue_name)
        return {**arguments, **self._type_arguments()}

    def _declare_xq_queue(self, queue_name: str) -> Any:
        return self.channel.queue_declare(
            queue=xq_name(queue_name),
            durable=True,
            # dramatiq's literal: a fixed TTL, since RabbitMQ expires messages head first.
            arguments={"x-message-ttl": DEAD_MESSAGE_TTL, **self._type_arguments()},
        )


def make_broker(amqp_url: str, *, queue_type: str = "classic") -> QueueTypeBroker:
    """A RabbitMQ broker that declares queues exactly as the workers do.

    Whoever enqueues directly (``govnotify dead-letters replay``) uses this too, with the same
    ``queue_type`` (``settings.rabbitmq_queue_type``): a queue declared with other arguments
    (another ``x-queue-type``, a ``max_priority``) would be refused by RabbitMQ.

    confirm_delivery: a job the stream hands over is on disk before the stream commits its
    offset.
    """
    return QueueTypeBroker(url=amqp_url, confirm_delivery=True, queue_type=queue_type)


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
dramatiq.set_broker(broker)
