"""The Faust application: topics, tables and agents, built from the settings.

Kafka carries the events and Faust shapes them: ordering per key, short-lived case state, the
satisfaction windows. Nothing that must outlive a broker lives only here. The license registry
is in PostgreSQL; every event is in the ingest journal until the stream marks it applied (after
its jobs are confirmed by RabbitMQ), and an event the journal says was applied is skipped when
Kafka delivers it again. Processing is at-least-once (Tansu has no transactional producer, and
a worker crash replays), so every effect leaving the stream carries a deterministic idempotency
key and the workers make it exactly-once.

When the relay finds that Kafka lost its data it begins a new epoch (``producers.epochs``) and
writes every unapplied event again, each record tagged with the epoch. A stream that meets a
newer epoch than the one it started in exits (status :data:`EXIT_NEW_EPOCH`): its positions
and table state belong to a log that is gone, and its supervisor starts it afresh, reading the
new log from the start. Case state it no longer has is rebuilt from the journal when a case
is next seen; the satisfaction windows are rebuilt from the evaluations in PostgreSQL.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

import faust
from faust.streams import _current_event
from prometheus_client import Counter

from infra.clock import Clock
from infra.db import session
from infra.jobs import JobSender
from infra.journal import EPOCH_HEADER, applied_ids, current_epoch, mark_applied
from infra.metrics import JOBS_ENQUEUED

if TYPE_CHECKING:
    from infra.health import ReadyCheck
    from infra.settings import Settings

__all__ = [
    "EXIT_NEW_EPOCH",
    "StreamContext",
    "app_id",
    "changelog_configs",
    "create_app",
    "event_epoch",
    "ready_check",
    "use_event",
]

log = logging.getLogger("govnotify.streams")

#: Exit status of a stream that met a newer Kafka epoch (EX_TEMPFAIL): restart it.
EXIT_NEW_EPOCH = 75

SKIPPED_APPLIED = Counter(
    "govnotify_stream_events_already_applied_total",
    "Events Kafka delivered again that the journal says were applied: skipped.",
    ["topic"],
)

T = TypeVar("T")


def event_epoch(event: faust.EventT) -> int | None:
    """The Kafka epoch a record was written in (its header), or None if it carries none."""
    headers = event.message.headers
    if not headers:
        return None
    items = headers.items() if hasattr(headers, "items") else headers
    for name, value in items:
        if name == EPOCH_HEADER:
            try:
                return int(value)
            except (TypeError, ValueError):
                return None
    return None


def use_event(event: faust.EventT) -> None:
    """Make ``event`` the current event of this task, for table writes made while handling it.

    A table writes its changelog to the partition of the current event. ``take_events`` does
    not set it per record, so batch handlers must. Only the context variable is set: setting
    the stream's ``current_event`` attribute (``Stream._set_current_event``) races with
    take_events' background buffering, which reads that attribute, and pairs values with the
    wrong events: we measured 5 of 1,394 evaluations lost and 4 processed twice that way.
    """
    _current_event.set(weakref.ref(event))


class StreamContext:
    """What the agents share: settings, clock, the Kafka epoch, and one thread for blocking
    calls (job sends, the journal)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.clock = Clock.from_settings(settings)
        # pika, dramatiq's send() and the database block; run them off the event loop, in
        # order, on one thread.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="job-sender")
        #: Jobs go to the work queues by actor name: the stream never imports the workers.
        self.jobs = JobSender(settings)
        #: The epoch this process started in (1 before the relay first wrote one).
        self.epoch = 1
        #: How a newer epoch ends this process (replaced in tests).
        self.exit: Callable[[int], object] = _exit_now

    def load_epoch(self) -> None:
        """The current epoch from the database, at start (1 if none yet, or unreadable: the
        relay's first epoch is 1)."""
        try:
            with session(self.settings) as s:
                epoch = current_epoch(s)
        except Exception:
            log.warning("could not read the Kafka epoch; taking the first")
            return
        self.epoch = epoch.generation if epoch else 1

    def check_epochs(self, events: Iterable[faust.EventT]) -> None:
        """Exit before handling ``events`` if one was written in a newer epoch than ours."""
        newest = max((g for e in events if (g := event_epoch(e)) is not None), default=None)
        self.check_generation(newest)

    def check_generation(self, generation: int | None) -> None:
        if generation is None or generation <= self.epoch:
            return
        log.critical(
            "Kafka epoch %d began (this stream started in %d): the log it read is gone; "
            "exiting to start afresh in the new one",
            generation,
            self.epoch,
        )
        for handler in logging.getLogger().handlers:
            handler.flush()
        self.exit(EXIT_NEW_EPOCH)

    async def blocking(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the blocking thread, retried until it works.

        faust acknowledges a batch once the agent moves on, so giving up here would lose its
        effects. Stalling the partition while RabbitMQ or PostgreSQL is down is the correct
        back-pressure; whatever a retry repeats is harmless (idempotency keys).
        """
        loop = asyncio.get_running_loop()
        delay = 0.5
        while True:
            try:
                return await loop.run_in_executor(self.executor, fn, *args)
            except Exception:
                log.exception("%s failed; retrying in %.1fs", what, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def send_jobs(self, jobs: list[tuple[str, Any]]) -> None:
        """Hand ``(actor, payload)`` jobs to RabbitMQ (confirmed), retrying until it works."""
        if jobs:
            await self.blocking(f"handing {len(jobs)} jobs to RabbitMQ", self._send, jobs)

    def _send(self, jobs: list[tuple[str, Any]]) -> None:
        self.jobs.send_many(jobs)
        for actor_name, _payload in jobs:
            JOBS_ENQUEUED.labels(kind=actor_name).inc()

    async def already_applied(self, topic: str, event_ids: list[str]) -> set[str]:
        """Those of ``event_ids`` the journal says were applied (Kafka delivers again)."""
        if not event_ids:
            return set()
        found = await self.blocking("reading the journal", self._applied, event_ids)
        if found:
            SKIPPED_APPLIED.labels(topic=topic).inc(len(found))
        return found

    async def mark_applied(self, event_ids: list[str]) -> None:
        """Record in the journal that these events' effects are handed on."""
        if event_ids:
            await self.blocking("marking events applied", self._mark, event_ids)

    def _applied(self, event_ids: list[str]) -> set[str]:
        with session(self.settings) as s:
            return applied_ids(s, event_ids)

    def _mark(self, event_ids: list[str]) -> int:
        with session(self.settings) as s:
            return mark_applied(s, event_ids)


def changelog_configs(settings: Settings) -> dict[str, str]:
    """Topic configs of a table's changelog: ``min.insync.replicas`` as for every topic (faust
    has no app-wide setting for it; the replication factor is ``topic_replication_factor``)."""
    return {"min.insync.replicas": str(settings.topic_min_insync_replicas)}


def _exit_now(status: int) -> None:
    # Not sys.exit: that unwinds through faust, which would commit the offsets of the records
    # this batch did not handle. Nothing of this batch was handed on yet.
    os._exit(status)


def app_id(settings: Settings, generation: int) -> str:
    """The Faust app id (consumer group, changelog topic prefix) in Kafka epoch ``generation``.

    A new epoch gets a new group: the offsets a stream of the lost epoch committed into the
    broker that came back (it reads the new, empty topics at its old positions for a moment
    before it notices) would otherwise make the new stream skip the start of the new log.
    Epoch 1 keeps the plain name.
    """
    base = f"{settings.namespace}-streams"
    return base if generation <= 1 else f"{base}-e{generation}"


def create_app(settings: Settings) -> faust.App:
    """A Faust app for ``settings``; agents are attached by ``streams.agents``."""
    tansu = settings.kafka_broker_kind == "tansu"
    datadir = (settings.data_dir / "faust" / settings.namespace).resolve()
    # faust creates datadir itself but not its parents.
    datadir.parent.mkdir(parents=True, exist_ok=True)
    ctx = StreamContext(settings)
    ctx.load_epoch()
    app = faust.App(
        app_id(settings, ctx.epoch),
        broker=settings.faust_broker,
        # Table keys and values (and so their changelogs) are JSON; source topics carry raw bytes
        # (validated JSON from the relay) that agents parse themselves.
        value_serializer="json",
        key_serializer="json",
        # Changelog topics must have the source topics' partition count (co-partitioning).
        topic_partitions=settings.kafka_partitions,
        topic_replication_factor=settings.topic_replication_factor,
        # Group joins take ~half the rebalance timeout; 10 s makes a worker ready in ~8 s.
        broker_session_timeout=10,
        broker_rebalance_timeout=10,
        broker_heartbeat_interval=3,
        # Tansu answers ListOffsets "latest" with first-offset-of-last-batch + 1, so Faust stops
        # table recovery early unless every changelog batch holds exactly one record.
        producer_max_batch_size=1 if tansu else 16384,
        # A standby copy would be scanned too by the daily sweep: keep state in one place.
        table_standby_replicas=0,
        store="memory://",
        datadir=str(datadir),
        web_enabled=False,
        topic_allow_declare=True,
    )
    from streams.agents import cases, licenses, ratings

    licenses.attach(app, ctx)
    cases.attach(app, ctx)
    ratings.attach(app, ctx)

    from streams import lag

    lag.attach(app, settings)
    _track_first_recovery(app)
    _watch_epoch(app, ctx)
    return app


def _watch_epoch(app: faust.App, ctx: StreamContext) -> None:
    """Exit as soon as the database knows a newer epoch, before any record of it arrives: a
    stream positioned in the lost log could otherwise skip the start of the new one."""

    def newest() -> int | None:
        with session(ctx.settings) as s:
            epoch = current_epoch(s)
        return epoch.generation if epoch else None

    @app.timer(interval=ctx.settings.kafka_epoch_check_s, name="watch-kafka-epoch")
    async def watch_kafka_epoch() -> None:
        loop = asyncio.get_running_loop()
        try:
            generation = await loop.run_in_executor(ctx.executor, newest)
        except Exception:
            log.warning("could not read the Kafka epoch; trying again", exc_info=True)
            return
        ctx.check_generation(generation)


#: Set once an app has had its first partitions assigned and its tables recovered.
_RECOVERED: weakref.WeakKeyDictionary[faust.App, threading.Event] = weakref.WeakKeyDictionary()


def _track_first_recovery(app: faust.App) -> None:
    recovered = _RECOVERED.setdefault(app, threading.Event())

    @app.task
    async def note_first_recovery() -> None:
        # Faust sets this after the first assignment's table recovery, and never clears it.
        await app.tables.recovery.completed.wait()
        recovered.set()


def ready_check(app: faust.App) -> ReadyCheck:
    """Readiness of the stream itself, for ``/readyz`` next to the Kafka and RabbitMQ checks.

    Not ready until the group gave this process its partitions and the tables are recovered
    (~8 s after start on Tansu), nor while a rebalance or a recovery is under way: the stream
    does not process events then. Called from the HTTP thread: it only reads flags.
    """
    from infra.health import NotReady

    recovered = _RECOVERED.setdefault(app, threading.Event())

    def check() -> None:
        if not recovered.is_set():
            raise NotReady("waiting for partitions and table recovery")
        if app.rebalancing:
            raise NotReady("rebalancing")
        if app.in_recovery:
            raise NotReady("recovering tables")

    return check
