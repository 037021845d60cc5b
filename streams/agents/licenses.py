"""License events into the license registry (无感续证).

The registry is in PostgreSQL (``license_record``): a license issued today is reminded in one
to five years, far longer than any stream state should be trusted to live. This agent keeps no
state: it validates each event, skips those the journal says were applied already, and hands
each batch to the workers' ``record_licenses`` as one job. That job records the licenses (a
newer event wins, so order and replays do not matter) and plans the reminders they make due;
the scheduler's daily scan sends what becomes due as days pass.

Batches are handed over while faust fetches and this agent parses the next ones, each
hand-over taking every batch waiting (:mod:`streams.handover`): the journal read and the
confirmed job on the blocking thread, then the journal mark on the journal thread while the
next hand-over is read and sent. That next read also skips what was sent and is still being
marked, so a re-driven copy is applied once however the two fall. A batch's records stay
unacknowledged until its mark is done (``StreamContext.hold``), so no offset is committed
before its effects are.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import faust

from infra.metrics import STREAM_EVENTS
from schemas.errors import EventRejected
from schemas.events import Event, parse_event
from streams.handover import HandOver
from streams.rules import license_state_data

if TYPE_CHECKING:
    from streams.context import StreamContext

__all__ = ["attach"]

log = logging.getLogger("govnotify.streams.licenses")

#: Events the agent takes at a time, and the most a ``record_licenses`` job carries.
BATCH_SIZE = 500
#: Parsed batches that may wait for the hand-over before the agent stops reading ahead.
MAX_WAITING_BATCHES = 4


def attach(app: faust.App, ctx: StreamContext) -> None:
    settings = ctx.settings
    topic = app.topic(settings.topic("licenses"), key_serializer="raw", value_serializer="raw")
    topic_name = settings.topic("licenses")

    def send_now(
        jobs: list[tuple[Event, dict[str, Any]]], ids: list[str], marking: frozenset[str]
    ) -> tuple[list[Event], list[Event]]:
        """On the blocking thread: skip what the journal says was applied (or what a hand-over
        before this one sent and is still marking), send the rest as ``record_licenses`` jobs.
        (applied, duplicates)."""
        # Applied before, or twice in this batch (a re-driven copy beside its original).
        seen = ctx.applied_now(topic_name, ids) | marking.intersection(ids)
        applied, duplicates, state_jobs = [], [], []
        for event, job in jobs:
            if event.event_id in seen:
                duplicates.append(event)
                continue
            seen.add(event.event_id)
            applied.append(event)
            state_jobs.append(job)
        if state_jobs:
            # A job per batch: the registry records each in one transaction. (A hand-over may
            # take several batches; the job stays the size of one.)
            ctx.send_now(
                [
                    ("record_licenses", state_jobs[i : i + BATCH_SIZE])
                    for i in range(0, len(state_jobs), BATCH_SIZE)
                ]
            )
        return applied, duplicates

    # Ids sent and not yet marked in the journal: the next hand-over's read must see them.
    marking: set[str] = set()
    #: The journal mark under way (at most one, behind the send that follows it).
    mark_running: list[asyncio.Future[None]] = []

    async def mark_then_release(
        records: list[faust.EventT], ids: list[str], applied: list[Event], duplicates: list[Event]
    ) -> None:
        await ctx.blocking("marking events applied", ctx.mark_now, ids, journal_thread=True)
        marking.difference_update(ids)
        for event in applied:
            STREAM_EVENTS.labels(event_type=event.event_type, outcome="applied").inc()
        for event in duplicates:
            STREAM_EVENTS.labels(event_type=event.event_type, outcome="duplicate").inc()
        ctx.release(records)

    async def settle(records: list[faust.EventT], jobs: list[tuple[Event, dict[str, Any]]]) -> None:
        """Send a hand-over's jobs while the one before it is marked in the journal; its own
        mark (then its records' release) runs while the next hand-over is read and sent."""
        ids = [event.event_id for event, _job in jobs]
        applied, duplicates = await ctx.blocking(
            "handing over license events", send_now, jobs, ids, frozenset(marking)
        )
        marking.update(ids)
        if mark_running:
            await mark_running.pop()  # marks one at a time, in order
        mark_running.append(
            asyncio.ensure_future(mark_then_release(records, ids, applied, duplicates))
        )

    @app.agent(topic, name=f"{settings.namespace}-licenses")
    async def process_licenses(stream: faust.StreamT) -> None:
        # One job, one journal read and one journal write per hand-over, not per event. The
        # hand-over (journal read and job on the blocking thread, then the journal mark on the
        # journal thread) takes every batch parsed while the one before it ran; they run one at
        # a time and in order (streams.handover), and each reads the journal knowing what the
        # one before it sent, marked or still being marked.
        hand_over = HandOver(settle, max_waiting=MAX_WAITING_BATCHES)
        async for batch in stream.take_events(BATCH_SIZE, within=0.05):
            ctx.check_epochs(batch)
            jobs = []
            for record in batch:
                try:
                    event = parse_event(record.value, max_bytes=settings.max_event_bytes)
                except EventRejected as exc:
                    # The relay validated it; a bad record here means a foreign producer wrote
                    # to our topic. Count and skip: one bad record must not stop the partition.
                    STREAM_EVENTS.labels(event_type="unknown", outcome="invalid").inc()
                    log.error("invalid record on %s: %s", topic_name, exc.reason)
                    continue
                job = license_state_data(
                    event.event_type,
                    event.envelope.payload,  # the payload as JSON data already (parse_event)
                    event.envelope.occurred_at,
                    event_id=event.event_id,
                    source=event.envelope.source,
                )
                jobs.append((event, job))
            await hand_over.put(ctx.hold(batch), jobs)
