"""dramatiq middleware of every govnotify worker: jobs dramatiq gave up on become dead letters,
and the heap a worker process starts with is kept out of the garbage collector's walks.

dramatiq's :class:`~dramatiq.middleware.Retries` marks a message failed (``message.fail()``) in
its ``after_process_message`` when the retries ran out, or at once when the actor ``throws`` the
exception; AgeLimit fails a message and raises ``SkipMessage`` (``after_skip_message``). A
failed message is nacked onto ``<queue>.XQ``, where RabbitMQ keeps it for 7 days and nobody
looks. :class:`DeadLetters` runs right after Retries' verdict and records such a job in the
``dead_letter`` table (stage ``job``), next to ingest rejections and delivery failures, where
``govnotify dead-letters`` lists and replays it (the message kept is :func:`infra.jobs.job_raw`;
the replay is :func:`infra.jobs.replay_job`).

An exception the actor declares in ``throws`` (a :class:`~notifiers.errors.PermanentDeliveryError`)
is a dead letter too, at once, unless the actor says it ``records_own_failures``: a delivery
actor did its work (the notification row keeps the permanent failure and the number is
suppressed; replaying it could only fail the same way), but a staff alert refused for good by a
robot is recorded nowhere else, and must be seen and replayed once the robot is fixed.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from dramatiq.common import q_name
from dramatiq.errors import ActorNotFound
from dramatiq.middleware import Middleware

from infra.db import session
from infra.deadletters import record_dead_letter
from infra.heap import freeze_startup_heap
from infra.jobs import job_raw

if TYPE_CHECKING:
    from dramatiq.broker import Broker, MessageProxy
    from dramatiq.worker import Worker

    from infra.settings import Settings

__all__ = ["DeadLetters", "FrozenStartupHeap"]

log = logging.getLogger("govnotify.deadletters")


class DeadLetters(Middleware):
    """Records every job dramatiq gives up on as a dead letter (stage ``job``).

    Its hooks must run after those of :class:`~dramatiq.middleware.Retries`, whose verdict
    (``message.failed``) they read: dramatiq calls ``after_*`` hooks in reverse order of the
    middleware list, so add it ``before=Retries``. It never raises: if the database is down,
    the message is still on ``<queue>.XQ``.
    """

    #: Set on an actor whose permanent failures (``throws``) are recorded where they matter.
    actor_options = frozenset({"records_own_failures"})

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def after_process_message(
        self,
        broker: Broker,
        message: MessageProxy,
        *,
        result: object = None,
        exception: BaseException | None = None,
    ) -> None:
        if exception is None or not message.failed:
            return  # done, or handed back to the queue for another try
        try:
            actor_options = broker.get_actor(message.actor_name).options
        except ActorNotFound:
            actor_options = {}
        throws = message.options.get("throws") or actor_options.get("throws")
        thrown = bool(throws) and isinstance(exception, throws)
        if thrown and actor_options.get("records_own_failures"):
            return  # a declared permanent outcome, recorded by the job itself
        retries = message.options.get("retries", 0)
        verdict = "failed for good" if thrown else f"gave up after {retries} attempt(s)"
        self._record(
            message,
            reason=type(exception).__name__,
            detail=(
                f"{message.actor_name} on {q_name(message.queue_name)} {verdict}: "
                f"{type(exception).__name__}: {exception}"
            ),
        )

    def after_skip_message(self, broker: Broker, message: MessageProxy) -> None:
        if not message.failed:
            return
        self._record(
            message,
            reason="skipped",
            detail=f"{message.actor_name} on {q_name(message.queue_name)} was skipped "
            f"(age limit) and rejected",
        )

    def _record(self, message: MessageProxy, *, reason: str, detail: str) -> None:
        try:
            with session(self.settings) as s:
                record_dead_letter(
                    s,
                    stage="job",
                    reason=reason,
                    detail=detail,
                    raw=job_raw(message),
                    event_type=message.actor_name,
                    event_id=message.message_id,
                )
        except Exception:
            # The message is still rejected onto <queue>.XQ: kept, only not in the table.
            log.exception("could not record dead letter for job %s", message.message_id)
            return
        log.warning("job %s (%s) dead-lettered: %s", message.message_id, message.actor_name, reason)


class FrozenStartupHeap(Middleware):
    """Freezes what a worker process holds once it has booted (:mod:`infra.heap`): actors,
    models, the broker and its connections are never garbage, and need not be walked by every
    full collection while the process sends."""

    def after_worker_boot(self, broker: Broker, worker: Worker) -> None:
        freeze_startup_heap()
