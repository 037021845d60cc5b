"""What the stream's agents share: settings, clock, job hand-over, the journal, epochs.

A :class:`StreamContext` is built once by :func:`streams.app.create_app` and passed to each
agent's ``attach``; the agents and the app both import it from here, so neither imports the
other's module to reach it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import weakref
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

import faust
from faust.streams import _current_event
from prometheus_client import Counter

from infra.clock import Clock
from infra.db import session
from infra.jobs import JobSender
from infra.journal import (
    EPOCH_HEADER,
    Journaled,
    applied_ids,
    current_epoch,
    journaled,
    mark_applied,
)
from infra.metrics import JOBS_ENQUEUED
from schemas.errors import EventRejected
from streams import relayed

if TYPE_CHECKING:
    from infra.settings import Settings

__all__ = ["EXIT_NEW_EPOCH", "StreamContext", "changelog_configs", "event_epoch", "use_event"]

log = logging.getLogger("govnotify.streams")

#: Exit status of a stream that met a newer Kafka epoch (EX_TEMPFAIL): restart it.
EXIT_NEW_EPOCH = 75


def _exit_now(status: int) -> None:
    # Not sys.exit: that unwinds through faust, which would commit the offsets of the records
    # this batch did not handle. Nothing of this batch was handed on yet.
    os._exit(status)


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
    """What the agents share: settings, clock, the Kafka epoch, and the threads for blocking
    calls: one for job sends and the journal, one for the license agent's journal marks."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.clock = Clock.from_settings(settings)
        # pika, dramatiq's send() and the database block; run them off the event loop, in
        # order, on one thread.
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="job-sender")
        # The license agent marks a hand-over applied here while its next one is read and sent
        # on the thread above (streams.agents.licenses).
        self.journal_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal")
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

    async def blocking(
        self, what: str, fn: Callable[..., T], *args: Any, journal_thread: bool = False
    ) -> T:
        """``fn(*args)`` on the blocking thread (or the journal's), retried until it works.

        faust acknowledges a batch once the agent moves on, so giving up here would lose its
        effects. Stalling the partition while RabbitMQ or PostgreSQL is down is the correct
        back-pressure; whatever a retry repeats is harmless (idempotency keys).
        """
        loop = asyncio.get_running_loop()
        delay = 0.5
        while True:
            try:
                executor = self.journal_executor if journal_thread else self.executor
                return await loop.run_in_executor(executor, fn, *args)
            except Exception:
                log.exception("%s failed; retrying in %.1fs", what, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    async def send_jobs(self, jobs: list[tuple[str, Any]]) -> None:
        """Hand ``(actor, payload)`` jobs to RabbitMQ (confirmed), retrying until it works."""
        if jobs:
            await self.blocking(f"handing {len(jobs)} jobs to RabbitMQ", self.send_now, jobs)

    def send_now(self, jobs: list[tuple[str, Any]]) -> None:
        """:meth:`send_jobs` once, on the calling thread (the blocking one)."""
        if not jobs:
            return
        self.jobs.send_many(jobs)
        for actor_name, _payload in jobs:
            JOBS_ENQUEUED.labels(kind=actor_name).inc()

    def applied_now(self, topic: str, event_ids: list[str]) -> set[str]:
        """Those of ``event_ids`` the journal says were applied (Kafka delivers again), on the
        calling thread (the blocking one)."""
        if not event_ids:
            return set()
        with session(self.settings) as s:
            found = applied_ids(s, event_ids)
        if found:
            SKIPPED_APPLIED.labels(topic=topic).inc(len(found))
        return found

    def journaled_now(self, topic: str, event_ids: list[str]) -> dict[str, Journaled]:
        """What the journal holds of ``event_ids`` (fingerprint, applied), on the calling thread
        (the blocking one); :meth:`applied_now` with the fingerprints besides."""
        if not event_ids:
            return {}
        with session(self.settings) as s:
            found = journaled(s, event_ids)
        applied = sum(entry.applied for entry in found.values())
        if applied:
            SKIPPED_APPLIED.labels(topic=topic).inc(applied)
        return found

    def read_relayed_now(
        self, label: str, topics: str | Sequence[str], peeked: Sequence[relayed.Peeked]
    ) -> tuple[list[relayed.Fields | EventRejected], set[str]]:
        """On the calling thread (the blocking one): each peeked record's fields, in order
        (:func:`streams.relayed.read`: as the relay wrote them where the journal vouches for
        their bytes, else validated again, or the rejection), and the ids among them the journal
        says were applied. ``topics``: the records' topic, or each record's; ``label``: the topic
        the skip counter names."""
        asked = [record.event_id for record in peeked if record.event_id is not None]
        journal = self.journaled_now(label, asked)
        read_back = relayed.read(topics, peeked, journal, max_bytes=self.settings.max_event_bytes)
        seen = {event_id for event_id, entry in journal.items() if entry.applied}
        # A validated record whose id the peek did not see was not asked about yet.
        seen |= self.applied_now(label, relayed.unasked(read_back, set(asked)))
        return read_back, seen

    async def mark_applied(self, event_ids: list[str]) -> None:
        """Record in the journal that these events' effects are handed on."""
        if event_ids:
            await self.blocking("marking events applied", self.mark_now, event_ids)

    def mark_now(self, event_ids: list[str]) -> None:
        """:meth:`mark_applied` once, on the calling thread (the blocking one)."""
        if event_ids:
            with session(self.settings) as s:
                mark_applied(s, event_ids)

    @staticmethod
    def hold(records: list[faust.EventT]) -> list[faust.EventT]:
        """Keep faust from acknowledging ``records`` until :meth:`release`.

        ``take_events`` acknowledges a batch when the agent asks for the next one, and faust
        commits acknowledged offsets: an agent that hands a batch over while it reads the next
        holds it, so no offset is committed before the batch's effects are durable. (One more
        reference on each message: faust's ack then leaves it unacknowledged.)
        """
        for record in records:
            record.message.incref()
        return records

    @staticmethod
    def release(records: list[faust.EventT]) -> None:
        """Let faust commit ``records`` (held by :meth:`hold`), in the event loop's thread."""
        for record in records:
            if record.ack():  # the last reference: the offset may be committed now
                message = record.message
                record.app.sensors.on_message_out(message.tp, message.offset, message)


def changelog_configs(settings: Settings) -> dict[str, str]:
    """Topic configs of a table's changelog: ``min.insync.replicas`` as for every topic (faust
    has no app-wide setting for it; the replication factor is ``topic_replication_factor``)."""
    return {"min.insync.replicas": str(settings.topic_min_insync_replicas)}
