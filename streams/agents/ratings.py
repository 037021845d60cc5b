"""Live satisfaction rates per department and service point, over two tumbling windows.

Evaluations are re-keyed onto the ratings topic by ``department:<name>`` and
``service_point:<id>`` (see ``cases``), so each key's counts live in one partition and one
worker. Windows are kept as table keys aligned to *local* midnight: faust's own windowed tables
align to UTC, which would make a Chang'an "day" start at 08:00.

The counts' changelog is in Kafka. When Kafka lost its data (a new epoch, see
``streams.app``), the first stream to start in the new epoch rebuilds the current windows from
the evaluations recorded in PostgreSQL, by forwarding them to the ratings topic again: the
agent counts them as it counts any rating, so each lands in its own partition.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import TYPE_CHECKING, Any

import faust
from prometheus_client import Gauge
from sqlalchemy import select

from infra.db import session
from infra.journal import current_epoch, get_checkpoint, set_checkpoint
from schemas.models import EvaluationRecord
from streams.context import changelog_configs
from streams.satisfaction import (
    COUNT_METRIC,
    RATE_METRIC,
    SATISFIED_FROM,
    rating_records,
    window_key,
    window_start,
)

if TYPE_CHECKING:
    from streams.context import StreamContext

__all__ = ["RATE", "REBUILD_CHECKPOINT", "attach", "claim_rebuild"]

log = logging.getLogger("govnotify.streams.ratings")

RATE = Gauge(
    RATE_METRIC,
    "Share of ratings 3-5 in the current window, by department or service point.",
    ["window", "dimension", "key"],
)
COUNT = Gauge(
    COUNT_METRIC,
    "Ratings in the current window, by department or service point.",
    ["window", "dimension", "key"],
)
#: How many past windows of each kind a key keeps in the table.
KEEP_WINDOWS = 3
#: Checkpoint holding the Kafka epoch the satisfaction windows were last built in.
REBUILD_CHECKPOINT = "satisfaction_epoch"


def claim_rebuild(settings: Any, since: dt.datetime) -> list[tuple[bytes, bytes]]:
    """The ratings records to forward again if the windows must be rebuilt, else none.

    Rebuilt once per new epoch, by whichever stream process claims it first (a compare-and-set
    on the checkpoint). The first start ever (no checkpoint) rebuilds nothing: there is either
    nothing to count or an intact changelog (an upgrade).
    """
    with session(settings) as s:
        epoch = current_epoch(s)
        generation = str(epoch.generation if epoch else 0)
        built = get_checkpoint(s, REBUILD_CHECKPOINT)
        if built is None:
            set_checkpoint(s, REBUILD_CHECKPOINT, generation, only_if="")
            return []
        if int(built) >= int(generation):
            return []
        if not set_checkpoint(s, REBUILD_CHECKPOINT, generation, only_if=built):
            return []  # another stream process claimed it
        rows = s.execute(
            select(
                EvaluationRecord.department,
                EvaluationRecord.service_point_id,
                EvaluationRecord.rating,
                EvaluationRecord.evaluated_at,
            ).where(EvaluationRecord.evaluated_at >= since)
        ).all()
    log.warning(
        "Kafka epoch %s: rebuilding the satisfaction windows from %d evaluations",
        generation,
        len(rows),
    )
    return [
        record
        for department, point, rating, at in rows
        for record in rating_records(department, point, rating, at.isoformat())
    ]


def attach(app: faust.App, ctx: StreamContext) -> None:
    settings = ctx.settings
    windows = {"day": 86400, "short": settings.satisfaction_window_s}
    topic = app.topic(settings.topic("ratings"), key_serializer="raw", value_serializer="raw")
    counts = app.Table(
        "satisfaction",
        default=None,
        partitions=settings.kafka_partitions,
        extra_topic_configs=changelog_configs(settings),
    )
    #: dimension|value → latest window start seen per window name (to export and to prune).
    latest: dict[str, dict[str, str]] = {}

    def export(dimension: str, value: str, window: str, start: dt.datetime) -> None:
        data = counts.get(window_key(dimension, value, window, start)) or {"n": 0, "ok": 0}
        COUNT.labels(window, dimension, value).set(data["n"])
        if data["n"]:
            RATE.labels(window, dimension, value).set(data["ok"] / data["n"])

    @app.agent(topic, name=f"{settings.namespace}-ratings")
    async def process_ratings(stream: faust.StreamT) -> None:
        async for record in stream.events():
            rating: dict[str, Any] = json.loads(record.value)
            dimension, value = rating["dimension"], rating["key"]
            at = dt.datetime.fromisoformat(rating["evaluated_at"])
            for window, length in windows.items():
                start = window_start(at, length, settings.tz)
                key = window_key(dimension, value, window, start)
                data = counts.get(key) or {"n": 0, "ok": 0}
                counts[key] = {
                    "n": data["n"] + 1,
                    "ok": data["ok"] + (1 if rating["rating"] >= SATISFIED_FROM else 0),
                }
                seen = latest.setdefault(f"{dimension}|{value}", {})
                if seen.get(window, "") < start.isoformat():
                    seen[window] = start.isoformat()
                    old = start - dt.timedelta(seconds=length * KEEP_WINDOWS)
                    counts.pop(window_key(dimension, value, window, old), None)
                if seen[window] == start.isoformat():
                    export(dimension, value, window, start)

    @app.task
    async def rebuild_windows() -> None:
        """After the first recovery: rebuild the current windows if Kafka lost them."""
        await app.tables.recovery.completed.wait()
        now = ctx.clock.now()
        since = min(window_start(now, length, settings.tz) for length in windows.values())
        records = await ctx.blocking(
            "reading evaluations to rebuild the satisfaction windows",
            claim_rebuild,
            settings,
            since,
        )
        for key, value in records:
            await topic.send(key=key, value=value)

    @app.timer(interval=10.0)
    async def roll_windows() -> None:
        """At a window boundary the gauges start again from the new window's counts."""
        now = ctx.clock.now()
        for dim_value in list(latest):
            dimension, value = dim_value.split("|", 1)
            for window, length in windows.items():
                export(dimension, value, window, window_start(now, length, settings.tz))
