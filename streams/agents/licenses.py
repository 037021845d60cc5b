"""License registry and renewal reminders (无感续证).

The registry table holds the latest state of every license (keyed by license id, co-partitioned
with the licenses topic). Each event updates it and sends what is due today; a timer sends what
becomes due as days pass. Jobs carry idempotency keys, so replays and rescans never send twice.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import faust

from infra.metrics import JOBS_ENQUEUED, STREAM_EVENTS
from schemas.errors import EventRejected
from schemas.events import parse_event
from streams.app import use_event
from streams.pruning import (
    PARTITION,
    owned_partitions,
    prunable_license,
    prune,
    record_entries,
    stamp,
)
from streams.rules import apply_license_event, due_renewal_jobs, state_job

if TYPE_CHECKING:
    from schemas.commands import RenewalJob
    from streams.app import StreamContext

__all__ = ["attach"]

log = logging.getLogger("govnotify.streams.licenses")


def _send_jobs(state_jobs: list[dict[str, Any]], jobs: list[RenewalJob]) -> None:
    """Blocking: publish to RabbitMQ with confirms (runs on the context's sender thread)."""
    from workers.reminders import add_call_list_entry, record_licenses, send_renewal_reminder

    if state_jobs:
        record_licenses.send(state_jobs)
        JOBS_ENQUEUED.labels(kind="license_states").inc()
    for job in jobs:
        payload = job.model_dump(mode="json")
        if job.kind == "sms":
            send_renewal_reminder.send(payload)
        else:
            add_call_list_entry.send(payload)
        JOBS_ENQUEUED.labels(kind=f"renewal_{job.kind}").inc()


def attach(app: faust.App, ctx: StreamContext) -> None:
    settings = ctx.settings
    topic = app.topic(settings.topic("licenses"), key_serializer="raw", value_serializer="raw")
    registry = app.Table(
        "license-registry",
        default=None,
        # No key_type/value_type: the app's JSON serializer gives str keys and dict values.
        # (value_type=dict breaks changelog recovery: faust calls dict.from_data.)
        partitions=settings.kafka_partitions,
    )
    scan_state: dict[str, Any] = {"last_day": None}

    def due(state: dict[str, Any]) -> list[RenewalJob]:
        return due_renewal_jobs(
            state,
            ctx.clock.today(),
            settings.renewal_sms_offsets,
            settings.renewal_call_offsets,
        )

    async def dispatch(state_jobs: list[dict[str, Any]], jobs: list[RenewalJob]) -> None:
        """Hand jobs to RabbitMQ; retry until it works.

        faust acknowledges a batch once the agent moves on, so giving up here would lose the
        jobs. Stalling the partition while RabbitMQ is down is the correct back-pressure; jobs
        sent twice by a retry are harmless (idempotency keys).
        """
        if not (state_jobs or jobs):
            return
        loop = asyncio.get_running_loop()
        delay = 0.5
        while True:
            try:
                await loop.run_in_executor(ctx.executor, _send_jobs, state_jobs, jobs)
                return
            except Exception:
                log.exception(
                    "handing %d jobs to RabbitMQ failed; retrying in %.1fs",
                    len(state_jobs) + len(jobs),
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    @app.agent(topic, name=f"{settings.namespace}-licenses")
    async def process_licenses(stream: faust.StreamT) -> None:
        # Batches: one hand-over to RabbitMQ per batch instead of per event.
        async for batch in stream.take_events(200, within=0.05):
            state_jobs: list[dict[str, Any]] = []
            jobs: list[RenewalJob] = []
            for record in batch:
                use_event(record)  # table writes go to this record's partition
                raw = record.value
                try:
                    event = parse_event(raw, max_bytes=settings.max_event_bytes)
                except EventRejected as exc:
                    # The relay validated it; a bad record here means a foreign producer wrote to
                    # our topic. Count and skip: one bad record must not stop the partition.
                    STREAM_EVENTS.labels(event_type="unknown", outcome="invalid").inc()
                    log.error("invalid record on %s: %s", topic.get_topic_name(), exc.reason)
                    continue
                payload = event.payload.model_dump(mode="json")
                key = event.key
                new_state = apply_license_event(
                    registry.get(key), event.event_type, payload, event.envelope.occurred_at
                )
                if new_state is None:
                    STREAM_EVENTS.labels(event_type=event.event_type, outcome="stale").inc()
                    continue
                registry[key] = stamp(new_state, record.message.partition)
                STREAM_EVENTS.labels(event_type=event.event_type, outcome="applied").inc()
                state_jobs.append(state_job(new_state).model_dump(mode="json"))
                jobs.extend(due(new_state))
            await dispatch(state_jobs, jobs)
            record_entries(registry)

    @app.timer(interval=settings.stream_scan_interval_s)
    async def daily_scan() -> None:
        """Once per local day, send what became due because time passed, then forget the
        licenses long expired."""
        today = ctx.clock.today()
        if not app.tables.recovery.completed.is_set():
            return
        record_entries(registry)  # also when no event came since the tables were recovered
        if scan_state["last_day"] == today:
            return
        # Only partitions this worker owns: the store keeps those a rebalance took away.
        owned = owned_partitions(app, topic.get_topic_name())
        jobs = [
            job
            for state in list(registry.values())
            if state and state.get(PARTITION) in owned
            for job in due(state)
        ]
        await dispatch([], jobs)
        pruned = prune(
            registry,
            owned,
            lambda state: prunable_license(state, today, settings.stream_state_keep_days),
        )
        scan_state["last_day"] = today
        log.info(
            "daily scan for %s: %d reminders due, %d expired licenses forgotten",
            today,
            len(jobs),
            pruned,
        )
