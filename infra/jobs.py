"""Handing jobs to the work queues by name, from any floor: the broker class and the sender.

dramatiq's RabbitMQ broker declares each queue with a ``.DQ`` (delays, retries) and a ``.XQ``
(dead letters). :class:`QueueTypeBroker` declares them all of ``GOVNOTIFY_RABBITMQ_QUEUE_TYPE``
(``classic`` or ``quorum``); every process that declares a work queue uses it, or RabbitMQ
refuses the second declaration (406, inequivalent arguments).

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

:class:`JobSender` hands jobs over by actor name (:data:`schemas.commands.JOB_QUEUES` names
each actor's queue), in dramatiq's message format, with pipelined publisher confirms
(:class:`infra.amqp.ConfirmPipeline`): the stream, the relay's fast path and the scheduler
send without importing the workers, and thousands of jobs a second instead of one confirm
round trip per job. A job is handed over once RabbitMQ confirmed it (persistent, on disk);
a failure raises :class:`JobSendError` for the caller to retry (jobs are keyed downstream, so
one sent twice is harmless).

A job dramatiq gave up on is kept as a dead letter (stage ``job``, by
:class:`workers.middleware.DeadLetters`) as :func:`job_raw` encodes it; :func:`replay_job`, the
stage's replayer (registered with :mod:`infra.deadletters` as this module is imported), puts it
back on its queue with :func:`enqueue_message`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import dramatiq
import pika
from dramatiq.brokers.rabbitmq import DEAD_MESSAGE_TTL, RabbitmqBroker
from dramatiq.common import q_name, xq_name
from dramatiq.errors import DecodeError
from dramatiq.message import Message

from infra.amqp import (
    DEFAULT_CONFIRM_TIMEOUT_S,
    DEFAULT_WINDOW,
    QUEUE_TYPES,
    KeptConnection,
    Outcome,
    publish_kept,
)
from infra.deadletters import DeadLetterError, register_replayer
from schemas.commands import BATCH_ACTORS, JOB_QUEUES
from schemas.models import DeadLetter

if TYPE_CHECKING:
    from dramatiq.broker import MessageProxy

    from infra.settings import Settings

__all__ = [
    "JOB_OPTIONS_DROPPED",
    "QUEUE_TYPES",
    "JobSendError",
    "JobSender",
    "QueueTypeBroker",
    "batched",
    "enqueue_message",
    "job_raw",
    "make_broker",
    "replay_job",
]


#: Options dramatiq adds while handling a message; none is part of the job. Dropping them
#: resets the retries for a replay, keeps the (unmasked) traceback out of the table, and makes
#: the same job failing again after a replay the same fingerprint: one row, count 2.
JOB_OPTIONS_DROPPED = frozenset({"retries", "traceback", "requeue_timestamp", "eta"})


class JobSendError(Exception):
    """Raised when RabbitMQ did not confirm every job handed over."""


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


def enqueue_message(settings: Settings, message: Message[Any]) -> None:
    """Put one dramatiq message on its queue, declared as the workers declare it (a replay)."""
    broker = make_broker(settings.amqp_url, queue_type=settings.rabbitmq_queue_type)
    try:
        broker.enqueue(message)
    finally:
        broker.close()


def batched(jobs: Iterable[tuple[str, Any]], size: int) -> list[tuple[str, Any]]:
    """``jobs`` with those of a batch actor's single form grouped, ``size`` payloads to a job
    of the batch actor (in their order, after the others); ``size`` 1 changes nothing."""
    out: list[tuple[str, Any]] = []
    groups: dict[str, list[Any]] = {}
    for actor_name, payload in jobs:
        if size > 1 and actor_name in BATCH_ACTORS:
            groups.setdefault(BATCH_ACTORS[actor_name], []).append(payload)
        else:
            out.append((actor_name, payload))
    for batch_actor, payloads in groups.items():
        out.extend((batch_actor, payloads[i : i + size]) for i in range(0, len(payloads), size))
    return out


class JobSender:
    """Sends jobs by actor name to ``settings``' work queues; safe to share between threads.

    Each :meth:`send_many` runs one :class:`~infra.amqp.ConfirmPipeline` (in the calling thread,
    one call at a time) on a connection the sender keeps open between calls
    (:class:`~infra.amqp.KeptConnection`); the queues are declared once per process, as the
    workers declare them.
    """

    def __init__(self, settings: Settings, *, confirm_timeout: float = DEFAULT_CONFIRM_TIMEOUT_S):
        self.settings = settings
        self.confirm_timeout = confirm_timeout
        self._declared: set[str] = set()
        self._lock = threading.Lock()
        #: Serialises the pipelines on the kept connection (pika's are not thread-safe).
        self._sending = threading.Lock()
        self._kept = KeptConnection(pika.URLParameters(settings.amqp_url))
        self._broker: QueueTypeBroker | None = None

    def queue_of(self, actor_name: str) -> str:
        """The full queue name of ``actor_name``'s jobs.

        Raises:
          KeyError: for an actor :data:`~schemas.commands.JOB_QUEUES` does not know.
        """
        try:
            return self.settings.queue(JOB_QUEUES[actor_name])
        except KeyError:
            raise KeyError(f"no queue known for actor {actor_name!r}") from None

    def send(self, actor_name: str, payload: Any) -> None:
        """Hand one job over: ``actor_name(payload)``."""
        self.send_many([(actor_name, payload)])

    def send_many(self, jobs: Iterable[tuple[str, Any]]) -> int:
        """Hand ``(actor name, payload)`` jobs over, each the actor's one argument; returns how
        many messages. Raises :class:`JobSendError` unless RabbitMQ confirmed every one.

        Jobs of an actor in :data:`~schemas.commands.BATCH_ACTORS` travel together,
        ``settings.job_batch_size`` to a message of its batch actor."""
        messages = []
        for actor_name, payload in batched(jobs, self.settings.job_batch_size):
            queue = self.queue_of(actor_name)
            message = dramatiq.Message(
                queue_name=queue, actor_name=actor_name, args=(payload,), kwargs={}, options={}
            )
            messages.append((message.encode(), queue, message.message_id))
        if not messages:
            return 0
        self._declare({queue for _body, queue, _id in messages})
        with self._sending:
            outcomes = self._publish(messages)
        failed = [reason for ok, reason in outcomes if not ok]
        if failed:
            # A queue deleted behind our back is unroutable: declare again next time.
            with self._lock:
                self._declared.clear()
            raise JobSendError(f"{len(failed)} of {len(messages)} jobs not confirmed: {failed[0]}")
        return len(messages)

    def _publish(self, messages: list[tuple[bytes, str, str]]) -> list[Outcome]:
        return publish_kept(
            self._kept, "", messages, window=DEFAULT_WINDOW, confirm_timeout=self.confirm_timeout
        )

    def _declare(self, queues: set[str]) -> None:
        with self._lock:
            missing = queues - self._declared
            if not missing:
                return
            if self._broker is None:
                self._broker = make_broker(
                    self.settings.amqp_url, queue_type=self.settings.rabbitmq_queue_type
                )
            for queue in sorted(missing):
                self._broker.declare_queue(queue, ensure=True)
            self._declared |= missing

    def close(self) -> None:
        with self._lock:
            if self._broker is not None:
                self._broker.close()
                self._broker = None
        with self._sending:
            self._kept.close()


# ---- dead letters of stage ``job`` ---------------------------------------------------------------
def job_raw(message: Message[Any] | MessageProxy) -> bytes:
    """The message as it was first enqueued, encoded: what a replay sends again."""
    original = Message(
        # A retried message comes back from its delay queue (``.DQ``); it belongs on the queue.
        queue_name=q_name(message.queue_name),
        actor_name=message.actor_name,
        args=tuple(message.args),
        kwargs=dict(message.kwargs),
        options={k: v for k, v in message.options.items() if k not in JOB_OPTIONS_DROPPED},
        message_id=message.message_id,
        message_timestamp=message.message_timestamp,
    )
    return original.encode()


def replay_job(settings: Settings, letter: DeadLetter) -> str:
    """Enqueue the dramatiq message again on its queue, retries reset.

    The job runs again from the start; its own idempotency (notification keys, the ``sent_at``
    of an alert) makes a job that had in fact done its work a no-op.
    """
    try:
        message = Message.decode(bytes(letter.raw))
    except DecodeError as exc:
        raise DeadLetterError("the job is not a dramatiq message; it cannot be replayed") from exc
    if not message.queue_name.startswith(settings.namespace + "."):
        raise DeadLetterError(
            f"the job belongs to queue {message.queue_name}, not to namespace {settings.namespace}"
        )
    # Recorded without them already; stripped again for letters written by older versions.
    message = message.copy(options={})
    for option in JOB_OPTIONS_DROPPED:
        message.options.pop(option, None)
    enqueue_message(settings, message)
    return f"{message.actor_name} re-enqueued on {message.queue_name}"


register_replayer("job", replay_job)
