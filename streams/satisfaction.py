"""Pure windowing of satisfaction rates: local-time tumbling windows and their counts; and the
current rates read back from the stream's gauges."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

if TYPE_CHECKING:
    from infra.metrics import Samples

__all__ = [
    "COUNT_METRIC",
    "RATE_METRIC",
    "SATISFIED_FROM",
    "WindowRate",
    "current_rates",
    "rating_records",
    "window_key",
    "window_start",
]

#: 非常满意 5, 满意 4 and 基本满意 3 count as satisfied; 不满意 2 and 非常不满意 1 do not.
SATISFIED_FROM = 3
#: The stream's gauges (streams.agents.ratings), labelled window, dimension and key.
RATE_METRIC = "govnotify_satisfaction_rate"
COUNT_METRIC = "govnotify_satisfaction_ratings"


def window_start(at: dt.datetime, length_s: int, tz: ZoneInfo) -> dt.datetime:
    """Start of the tumbling window holding ``at``, aligned to local midnight (not UTC's)."""
    local = at.astimezone(tz)
    midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
    if length_s >= 86400:
        days = (local.date() - dt.date(1970, 1, 1)).days
        span = length_s // 86400
        return midnight - dt.timedelta(days=days % span)
    offset = int((local - midnight).total_seconds()) // length_s * length_s
    return midnight + dt.timedelta(seconds=offset)


def window_key(dimension: str, value: str, window: str, start: dt.datetime) -> str:
    """Table key of one window of one department or service point."""
    return f"{dimension}|{value}|{window}|{start.isoformat()}"


def rating_records(
    department: str, service_point_id: str, rating: int, evaluated_at: str
) -> list[tuple[bytes, bytes]]:
    """The ratings-topic records of one evaluation: re-keyed by department and by service
    point, so each key's counts live in one partition (``(key, value)`` bytes)."""
    out = []
    for dimension, value in (("department", department), ("service_point", service_point_id)):
        body: dict[str, Any] = {
            "dimension": dimension,
            "key": value,
            "rating": rating,
            "evaluated_at": evaluated_at,
        }
        out.append((f"{dimension}:{value}".encode(), json.dumps(body).encode()))
    return out


@dataclass(frozen=True)
class WindowRate:
    """One department's or service point's current window."""

    key: str
    ratings: int
    #: Share of ratings counted satisfied; None when the stream exports no rate for the key.
    rate: float | None


def current_rates(samples: Samples, *, window: str, dimension: str) -> list[WindowRate]:
    """The current ``window`` ("day" or "short") per key of ``dimension`` ("department" or
    "service_point"), by key, from a scrape of the stream (:func:`infra.metrics.parse_samples`)."""
    found: dict[str, dict[str, float]] = {}
    for name in (RATE_METRIC, COUNT_METRIC):
        for labels, value in samples.get(name, {}).items():
            label = dict(labels)
            if label.get("window") == window and label.get("dimension") == dimension:
                found.setdefault(label["key"], {})[name] = value
    return [
        WindowRate(key, int(values.get(COUNT_METRIC, 0)), values.get(RATE_METRIC))
        for key, values in sorted(found.items())
    ]
