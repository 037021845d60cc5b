"""Case flows: green-channel alerts, follow-up callbacks, surveys, evaluations.

One agent reads the cases and evaluations topics together: both are keyed by case id, so a
case's events and its rating meet in the same partition and the same table entry (which is how
"no survey once rated" holds even when the rating comes first).

The case table is short-lived state, and it may be gone: a broker that lost its data took the
changelog with it, and a case older than ``stream_state_keep_days`` was pruned. A case first
met without state is rebuilt from its applied events in the journal (the same pure rules,
their jobs discarded: they were handed on when those events were applied), one query per
batch for all such cases. Events the journal says were applied already are skipped, so a
rating Kafka delivers twice is forwarded to the satisfaction windows once. Records whose bytes
the journal vouches for are read as the relay wrote them (:mod:`streams.relayed`); the rest are
validated again.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import TYPE_CHECKING, Any

import faust
from prometheus_client import Counter

from infra.db import session
from infra.journal import history
from infra.metrics import STREAM_EVENTS
from schemas.errors import EventRejected
from schemas.events import parse_event
from streams import relayed
from streams.case_rules import Job, apply_case_event
from streams.context import changelog_configs, use_event
from streams.pruning import owned_partitions, prunable_case, prune, record_entries, stamp
from streams.satisfaction import rating_records

if TYPE_CHECKING:
    from streams.context import StreamContext

__all__ = ["attach", "rebuild_case"]

#: The journal's families whose events make up a case's state.
CASE_FAMILIES = ("cases", "evaluations")

log = logging.getLogger("govnotify.streams.cases")

REBUILT = Counter(
    "govnotify_stream_cases_rebuilt_total",
    "Case states rebuilt from the journal because the case table no longer had them.",
)


def _latest(previous: dict[str, Any] | None, occurred_at: dt.datetime) -> str:
    """The later of the case's last event and this one (a replay does not make a case young)."""
    at = occurred_at.astimezone(dt.UTC)
    last = (previous or {}).get("last_event_at")
    if last and dt.datetime.fromisoformat(last) > at:
        return str(last)
    return at.isoformat()


def rebuild_case(events: list[tuple[str, bytes]], elderly_age: int) -> dict[str, Any] | None:
    """A case's state from its applied events, oldest first (their jobs are discarded)."""
    state: dict[str, Any] | None = None
    for _event_type, body in events:
        try:
            event = parse_event(body)
        except EventRejected:
            continue  # journaled by an older contract: skip rather than guess
        previous = state
        state, _jobs = apply_case_event(
            previous,
            event.event_type,
            event.payload.model_dump(mode="json"),
            elderly_age=elderly_age,
            source=event.envelope.source,
        )
        state["last_event_at"] = _latest(previous, event.envelope.occurred_at)
    return state


async def _forward_rating(ratings: faust.TopicT, payload: dict[str, Any]) -> None:
    """Re-key an evaluation by department and by service point for the satisfaction rates.

    A replayed evaluation already in the case's state is not forwarded, so not counted twice.
    """
    for key, value in rating_records(
        payload["department"],
        payload["service_point_id"],
        payload["rating"],
        payload["evaluated_at"],
    ):
        await ratings.send(key=key, value=value)


def attach(app: faust.App, ctx: StreamContext) -> None:
    settings = ctx.settings
    topic = app.topic(
        settings.topic("cases"),
        settings.topic("evaluations"),
        key_serializer="raw",
        value_serializer="raw",
    )
    cases = app.Table(
        "case-state",
        default=None,
        partitions=settings.kafka_partitions,
        extra_topic_configs=changelog_configs(settings),
    )
    ratings = app.topic(settings.topic("ratings"), key_serializer="raw", value_serializer="raw")

    def load_history(keys: list[str]) -> dict[str, list[tuple[str, bytes]]]:
        with session(settings) as s:
            return history(s, CASE_FAMILIES, keys)

    async def restore(batch: list[tuple[faust.EventT, relayed.Fields]]) -> None:
        """Rebuild, from the journal, the state of cases this batch meets without one."""
        missing: dict[str, faust.EventT] = {}
        for record, fields in batch:
            if fields.key not in missing and cases.get(fields.key) is None:
                missing[fields.key] = record
        if not missing:
            return
        found = await ctx.blocking("reading case history", load_history, list(missing))
        for key, events in found.items():
            state = rebuild_case(events, settings.elderly_age)
            if state is None:
                continue
            record = missing[key]
            use_event(record)
            cases[key] = stamp(state, record.message.partition)
            REBUILT.inc()

    @app.agent(topic, name=f"{settings.namespace}-cases")
    async def process_cases(stream: faust.StreamT) -> None:
        async for batch in stream.take_events(200, within=0.02):
            ctx.check_epochs(batch)
            # Records the journal vouches for are read as the relay wrote them (streams.relayed);
            # the rest are validated again, and the invalid ones skipped.
            peeked = [relayed.peek(record.value, settings.max_event_bytes) for record in batch]
            read_back, seen = await ctx.blocking(
                "reading the journal",
                ctx.read_relayed_now,
                "cases",
                [record.message.topic for record in batch],
                peeked,
            )
            parsed: list[tuple[faust.EventT, relayed.Fields]] = []
            for record, fields in zip(batch, read_back, strict=True):
                if isinstance(fields, EventRejected):
                    STREAM_EVENTS.labels(event_type="unknown", outcome="invalid").inc()
                    log.error("invalid record on the case topics: %s", fields.reason)
                    continue
                parsed.append((record, fields))
            ids = [fields.event_id for _record, fields in parsed]
            # Applied before (``seen``), or twice in this batch (a re-driven copy beside its
            # original).
            fresh = []
            for record, fields in parsed:
                if fields.event_id in seen:
                    STREAM_EVENTS.labels(event_type=fields.event_type, outcome="duplicate").inc()
                    continue
                fresh.append((record, fields))
                seen.add(fields.event_id)
            await restore(fresh)
            jobs: list[Job] = []
            for record, fields in fresh:
                use_event(record)  # table writes go to this record's partition
                payload: dict[str, Any] = fields.payload
                previous = cases.get(fields.key)
                state, new_jobs = apply_case_event(
                    previous,
                    fields.event_type,
                    payload,
                    elderly_age=settings.elderly_age,
                    source=fields.source,
                    event_id=fields.event_id,
                )
                cases[fields.key] = stamp(
                    {**state, "last_event_at": _latest(previous, fields.occurred_at)},
                    record.message.partition,
                )
                if fields.event_type == "evaluation.submitted" and payload["evaluation_id"] not in (
                    (previous or {}).get("evaluation_ids") or []
                ):
                    await _forward_rating(ratings, payload)
                STREAM_EVENTS.labels(event_type=fields.event_type, outcome="applied").inc()
                jobs.extend(new_jobs)
            await ctx.send_jobs(jobs)
            await ctx.mark_applied(ids)
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
