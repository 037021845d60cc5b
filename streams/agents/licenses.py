"""License events into the license registry (无感续证).

The registry is in PostgreSQL (``license_record``): a license issued today is reminded in one
to five years, far longer than any stream state should be trusted to live. This agent keeps no
state: it reads each event (as the relay wrote it when the journal vouches for its bytes,
:mod:`streams.relayed`; validated again otherwise), skips those the journal says were applied
already, and hands each batch to the workers' ``record_licenses`` as one job. That job records
the licenses (a newer event wins, so order and replays do not matter) and plans the reminders
they make due; the scheduler's daily scan sends what becomes due as days pass.

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
from streams import relayed
from streams.handover import HandOver
from streams.rules import license_state_data

if TYPE_CHECKING:
    from streams.context import StreamContext

__all__ = ["attach", "license_job"]

log = logging.getLogger("govnotify.streams.licenses")

#: Events the agent takes at a time, and the most a ``record_licenses`` job carries.
BATCH_SIZE = 500
#: Parsed batches that may wait for the hand-over before the agent stops reading ahead.
MAX_WAITING_BATCHES = 4

#: A record peeked at, and the job it makes if the journal vouches for it.
Item = tuple[relayed.Peeked, dict[str, Any] | None]


def attach(app: faust.App, ctx: StreamContext) -> None:
    settings = ctx.settings
    topic = app.topic(settings.topic("licenses"), key_serializer="raw", value_serializer="raw")
    topic_name = settings.topic("licenses")

    def send_now(
        items: list[Item], marking: frozenset[str]
    ) -> tuple[list[str], list[str], list[str]]:
        """On the blocking thread: read the records (those the journal vouches for as the relay
        wrote them, the rest validated), skip what the journal says was applied (or what a
        hand-over before this one sent and is still marking), send the rest as
        ``record_licenses`` jobs. (ids read, event types applied, event types skipped)."""
        read_back, seen = ctx.read_relayed_now(
            topic_name, topic_name, [item for item, _job in items]
        )
        ids = [fields.event_id for fields in read_back if isinstance(fields, relayed.Fields)]
        # Applied before, or twice in this batch (a re-driven copy beside its original).
        seen |= marking.intersection(ids)
        applied, duplicates, state_jobs = [], [], []
        for (item, job), fields in zip(items, read_back, strict=True):
            if isinstance(fields, EventRejected):
                # The journal does not vouch for it and it is not valid: a foreign producer
                # wrote to our topic. Count and skip: one bad record must not stop the partition.
                STREAM_EVENTS.labels(event_type="unknown", outcome="invalid").inc()
                log.error("invalid record on %s: %s", topic_name, fields.reason)
                continue
            if fields.event_id in seen:
                duplicates.append(fields.event_type)
                continue
            seen.add(fields.event_id)
            applied.append(fields.event_type)
            # The job built when the record was peeked, if these are the fields peeked then.
            if job is None or fields is not item.fields:
                job = license_job(fields)
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
        return ids, applied, duplicates

    # Ids sent and not yet marked in the journal: the next hand-over's read must see them.
    marking: set[str] = set()
    #: The journal mark under way (at most one, behind the send that follows it).
    mark_running: list[asyncio.Future[None]] = []

    async def mark_then_release(
        records: list[faust.EventT], ids: list[str], applied: list[str], duplicates: list[str]
    ) -> None:
        await ctx.blocking("marking events applied", ctx.mark_now, ids, journal_thread=True)
        marking.difference_update(ids)
        for event_type in applied:
            STREAM_EVENTS.labels(event_type=event_type, outcome="applied").inc()
        for event_type in duplicates:
            STREAM_EVENTS.labels(event_type=event_type, outcome="duplicate").inc()
        ctx.release(records)

    async def settle(records: list[faust.EventT], items: list[Item]) -> None:
        """Send a hand-over's jobs while the one before it is marked in the journal; its own
        mark (then its records' release) runs while the next hand-over is read and sent."""
        ids, applied, duplicates = await ctx.blocking(
            "handing over license events", send_now, items, frozenset(marking)
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
        # journal thread) takes every batch peeked at while the one before it ran; they run one
        # at a time and in order (streams.handover), and each reads the journal knowing what
        # the one before it sent, marked or still being marked.
        hand_over = HandOver(settle, max_waiting=MAX_WAITING_BATCHES)
        async for batch in stream.take_events(BATCH_SIZE, within=0.05):
            ctx.check_epochs(batch)
            # Each record read as the relay would have written it, and its job built, here
            # beside the hand-over; whether that is used or the record validated again is
            # decided on the blocking thread, once the journal has said what it holds.
            items: list[Item] = []
            for record in batch:
                peeked = relayed.peek(record.value, settings.max_event_bytes)
                items.append((peeked, _tentative_job(peeked.fields)))
            await hand_over.put(ctx.hold(batch), items)


def license_job(fields: relayed.Fields) -> dict[str, Any]:
    """The ``record_licenses`` job data of one license event's fields."""
    return license_state_data(
        fields.event_type,
        fields.payload,
        fields.occurred_at,
        event_id=fields.event_id,
        source=fields.source,
    )


def _tentative_job(fields: relayed.Fields | None) -> dict[str, Any] | None:
    """The job of fields not checked yet, or None where they make none (they are then
    validated, and what the validated event makes is used)."""
    if fields is None:
        return None
    try:
        return license_job(fields)
    except (KeyError, TypeError, ValueError):
        return None
