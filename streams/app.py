"""The Faust application: topics, tables and agents, built from the settings.

Kafka is the durable, replayable event log and the home of stream state. Processing is
at-least-once (Tansu has no transactional producer, and a worker crash replays), so every effect
leaving the stream carries a deterministic idempotency key and the workers make it exactly-once.
"""

from __future__ import annotations

import logging
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import faust
from faust.streams import _current_event

from infra.clock import Clock

if TYPE_CHECKING:
    from infra.health import ReadyCheck
    from infra.settings import Settings

__all__ = ["StreamContext", "create_app", "ready_check", "use_event"]

log = logging.getLogger("govnotify.streams")


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
    """What the agents share: settings, clock, and one thread for blocking job sends."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.clock = Clock.from_settings(settings)
        # pika and dramatiq's send() block; run them off the event loop, in order, on one thread.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="job-sender")


def create_app(settings: Settings) -> faust.App:
    """A Faust app for ``settings``; agents are attached by ``streams.agents``."""
    tansu = settings.kafka_broker_kind == "tansu"
    datadir = (settings.data_dir / "faust" / settings.namespace).resolve()
    # faust creates datadir itself but not its parents.
    datadir.parent.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        f"{settings.namespace}-streams",
        broker=settings.faust_broker,
        # Table keys and values (and so their changelogs) are JSON; source topics carry raw bytes
        # (validated JSON from the relay) that agents parse themselves.
        value_serializer="json",
        key_serializer="json",
        # Changelog topics must have the source topics' partition count (co-partitioning).
        topic_partitions=settings.kafka_partitions,
        topic_replication_factor=1 if tansu else settings.kafka_replication_factor,
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
    ctx = StreamContext(settings)
    from streams.agents import cases, licenses, ratings

    licenses.attach(app, ctx)
    cases.attach(app, ctx)
    ratings.attach(app, ctx)

    from streams import lag

    lag.attach(app, settings)
    _track_first_recovery(app)
    return app


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
