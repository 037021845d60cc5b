"""Case flows: green-channel alerts, follow-up callbacks, surveys, evaluations.

One agent reads the cases and evaluations topics together: both are keyed by case id, so a
case's events and its rating meet in the same partition and the same table entry (which is how
"no survey once rated" holds even when the rating comes first).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from typing import TYPE_CHECKING, Any

import faust

from infra.metrics import JOBS_ENQUEUED, STREAM_EVENTS
from schemas.errors import EventRejected
from schemas.events import parse_event
from streams.app import use_event
from streams.case_rules import Job, apply_case_event
from streams.pruning import owned_partitions, prunable_case, prune, record_entries, stamp

if TYPE_CHECKING:
    from streams.app import StreamContext

__all__ = ["attach"]

log = logging.getLogger("govnotify.streams.cases")


def _send_jobs(jobs: list[Job]) -> None:
    """Blocking: publish to RabbitMQ with confirms (runs on the context's sender thread)."""
    import dramatiq

    from workers import actors  # noqa: F401  (declares every actor on the broker)

    broker = dramatiq.get_broker()
    for actor_name, payload in jobs:
        broker.get_actor(actor_name).send(payload)
        JOBS_ENQUEUED.labels(kind=actor_name).inc()


def _latest(previous: dict[str, Any] | None, occurred_at: dt.datetime) -> str:
    """The later of the case's last event and this one (a replay does not make a case young)."""
    at = occurred_at.astimezone(dt.UTC)
    last = (previous or {}).get("last_event_at")
    if last and dt.datetime.fromisoformat(last) > at:
        return str(last)
    return at.isoformat()


async def _forward_rating(ratings: faust.TopicT, payload: dict[str, Any]) -> None:
    """Re-key an evaluation by department and by service point for the satisfaction rates.

    A replayed evaluation already in the case's state is not forwarded, so not counted twice.
    """
    for dimension, value in (
        ("department", payload["department"]),
        ("service_point", payload["service_point_id"]),
    ):
        body = {
            "dimension": dimension,
            "key": value,
            "rating": payload["rating"],
            "evaluated_at": payload["evaluated_at"],
        }
        await ratings.send(key=f"{dimension}:{value}".encode(), value=json.dumps(body).encode())


def attach(app: faust.App, ctx: StreamContext) -> None:
    settings = ctx.settings
    topic = app.topic(
        settings.topic("cases"),
        settings.topic("evaluations"),
        key_serializer="raw",
        value_serializer="raw",
    )
    cases = app.Table("case-state", default=None, partitions=settings.kafka_partitions)
    ratings = app.topic(settings.topic("ratings"), key_serializer="raw", value_serializer="raw")

    async def dispatch(jobs: list[Job]) -> None:
        """Hand jobs to RabbitMQ, retrying until it works (see licenses.dispatch for why)."""
        if not jobs:
            return
        loop = asyncio.get_running_loop()
        delay = 0.5
        while True:
            try:
                await loop.run_in_executor(ctx.executor, _send_jobs, jobs)
                return
            except Exception:
                log.exception(
                    "handing %d jobs to RabbitMQ failed; retrying in %.1fs", len(jobs), delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    @app.agent(topic, name=f"{settings.namespace}-cases")
    async def process_cases(stream: faust.StreamT) -> None:
        async for batch in stream.take_events(200, within=0.02):
            jobs: list[Job] = []
            for record in batch:
                use_event(record)  # table writes go to this record's partition
                try:
                    event = parse_event(record.value, max_bytes=settings.max_event_bytes)
                except EventRejected as exc:
                    STREAM_EVENTS.labels(event_type="unknown", outcome="invalid").inc()
                    log.error("invalid record on the case topics: %s", exc.reason)
                    continue
                payload: dict[str, Any] = event.payload.model_dump(mode="json")
                previous = cases.get(event.key)
                state, new_jobs = apply_case_event(
                    previous,
                    event.event_type,
                    payload,
                    elderly_age=settings.elderly_age,
                    source=event.envelope.source,
                )
                cases[event.key] = stamp(
                    {**state, "last_event_at": _latest(previous, event.envelope.occurred_at)},
                    record.message.partition,
                )
                if event.event_type == "evaluation.submitted" and payload["evaluation_id"] not in (
                    (previous or {}).get("evaluation_ids") or []
                ):
                    await _forward_rating(ratings, payload)
                STREAM_EVENTS.labels(event_type=event.event_type, outcome="applied").inc()
                jobs.extend(new_jobs)
            await dispatch(jobs)
            record_entries(cases)

    prune_state: dict[str, Any] = {"last_day": None}

    @app.timer(interval=settings.stream_scan_interval_s)
    async def daily_prune() -> None:
        """Once per local day, forget the cases with no event for ``stream_state_keep_days``."""
        today = ctx.clock.today()
        if not app.tables.recovery.completed.is_set():
            return
        record_entries(cases)  # also when no event came since the tables were recovered
        if prune_state["last_day"] == today:
            return
        now = ctx.clock.utcnow()
        prune(
            cases,
            owned_partitions(app, settings.topic("cases")),
            lambda state: prunable_case(state, now, settings.stream_state_keep_days),
        )
        prune_state["last_day"] = today
