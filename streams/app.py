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
newer epoch than the one it started in exits (status :data:`streams.context.EXIT_NEW_EPOCH`):
its positions and table state belong to a log that is gone, and its supervisor starts it
afresh, reading the new log from the start. Case state it no longer has is rebuilt from the
journal when a case is next seen; the satisfaction windows are rebuilt from the evaluations in
PostgreSQL.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from typing import TYPE_CHECKING

import faust

from infra.db import session
from infra.health import NotReady
from infra.journal import current_epoch
from streams import lag
from streams.agents import cases, licenses, ratings
from streams.context import StreamContext
from streams.transport import Transport

if TYPE_CHECKING:
    from infra.health import ReadyCheck
    from infra.settings import Settings

__all__ = ["app_id", "create_app", "ready_check"]

log = logging.getLogger("govnotify.streams")


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
        # A group join waits ~half the session timeout (GOVNOTIFY_KAFKA_SESSION_TIMEOUT_S: 4 s
        # on Tansu, where a restarted stream also waits for its former member's session).
        broker_session_timeout=settings.stream_session_timeout_s,
        broker_rebalance_timeout=10,
        broker_heartbeat_interval=settings.stream_session_timeout_s / 3,
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
    # Before any topic or agent: they reach the consumer through app.transport.
    app.transport = Transport(
        app.conf.broker_consumer, app, fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms
    )
    licenses.attach(app, ctx)
    cases.attach(app, ctx)
    ratings.attach(app, ctx)

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
    recovered = _RECOVERED.setdefault(app, threading.Event())

    def check() -> None:
        if not recovered.is_set():
            raise NotReady("waiting for partitions and table recovery")
        if app.rebalancing:
            raise NotReady("rebalancing")
        if app.in_recovery:
            raise NotReady("recovering tables")

    return check
