"""License events into the license registry (无感续证).

The registry is in PostgreSQL (``license_record``): a license issued today is reminded in one
to five years, far longer than any stream state should be trusted to live. This agent keeps no
state: it validates each event, skips those the journal says were applied already, and hands
each batch to the workers' ``record_licenses`` as one job. That job records the licenses (a
newer event wins, so order and replays do not matter) and plans the reminders they make due;
the scheduler's daily scan sends what becomes due as days pass.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import faust

from infra.metrics import STREAM_EVENTS
from schemas.errors import EventRejected
from schemas.events import parse_event
from streams.rules import license_state_job

if TYPE_CHECKING:
    from streams.context import StreamContext

__all__ = ["attach"]

log = logging.getLogger("govnotify.streams.licenses")


def attach(app: faust.App, ctx: StreamContext) -> None:
    settings = ctx.settings
    topic = app.topic(settings.topic("licenses"), key_serializer="raw", value_serializer="raw")
    topic_name = settings.topic("licenses")

    @app.agent(topic, name=f"{settings.namespace}-licenses")
    async def process_licenses(stream: faust.StreamT) -> None:
        # Batches: one job, one journal read and one journal write per batch, not per event.
        async for batch in stream.take_events(500, within=0.05):
            ctx.check_epochs(batch)
            events = []
            for record in batch:
                try:
                    events.append(parse_event(record.value, max_bytes=settings.max_event_bytes))
                except EventRejected as exc:
                    # The relay validated it; a bad record here means a foreign producer wrote
                    # to our topic. Count and skip: one bad record must not stop the partition.
                    STREAM_EVENTS.labels(event_type="unknown", outcome="invalid").inc()
                    log.error("invalid record on %s: %s", topic_name, exc.reason)
            ids = [event.event_id for event in events]
            applied = await ctx.already_applied(topic_name, ids)
            state_jobs = []
            # Applied before, or twice in this batch (a re-driven copy beside its original).
            seen = set(applied)
            for event in events:
                if event.event_id in seen:
                    STREAM_EVENTS.labels(event_type=event.event_type, outcome="duplicate").inc()
                    continue
                seen.add(event.event_id)
                job = license_state_job(
                    event.event_type,
                    event.payload.model_dump(mode="json"),
                    event.envelope.occurred_at,
                    event_id=event.event_id,
                    source=event.envelope.source,
                )
                state_jobs.append(job.model_dump(mode="json"))
                STREAM_EVENTS.labels(event_type=event.event_type, outcome="applied").inc()
            if state_jobs:
                # One job per batch: the registry records the whole batch in one transaction.
                await ctx.send_jobs([("record_licenses", state_jobs)])
            await ctx.mark_applied(ids)
