"""Live satisfaction rates per department and service point, over two tumbling windows.

Evaluations are re-keyed onto the ratings topic by ``department:<name>`` and
``service_point:<id>`` (see ``cases``), so each key's counts live in one partition and one
worker. Windows are kept as table keys aligned to *local* midnight: faust's own windowed tables
align to UTC, which would make a Chang'an "day" start at 08:00.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import TYPE_CHECKING, Any

import faust
from prometheus_client import Gauge

from streams.satisfaction import SATISFIED_FROM, window_key, window_start

if TYPE_CHECKING:
    from streams.app import StreamContext

__all__ = ["RATE", "attach"]

log = logging.getLogger("govnotify.streams.ratings")

RATE = Gauge(
    "govnotify_satisfaction_rate",
    "Share of ratings 3-5 in the current window, by department or service point.",
    ["window", "dimension", "key"],
)
COUNT = Gauge(
    "govnotify_satisfaction_ratings",
    "Ratings in the current window, by department or service point.",
    ["window", "dimension", "key"],
)
#: How many past windows of each kind a key keeps in the table.
KEEP_WINDOWS = 3


def attach(app: faust.App, ctx: StreamContext) -> None:
    settings = ctx.settings
    windows = {"day": 86400, "short": settings.satisfaction_window_s}
    topic = app.topic(settings.topic("ratings"), key_serializer="raw", value_serializer="raw")
    counts = app.Table("satisfaction", default=None, partitions=settings.kafka_partitions)
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

    @app.timer(interval=10.0)
    async def roll_windows() -> None:
        """At a window boundary the gauges start again from the new window's counts."""
        now = ctx.clock.now()
        for dim_value in list(latest):
            dimension, value = dim_value.split("|", 1)
            for window, length in windows.items():
                export(dimension, value, window, window_start(now, length, settings.tz))
