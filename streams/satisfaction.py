"""Pure windowing of satisfaction rates: local-time tumbling windows and their counts."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any
from zoneinfo import ZoneInfo

__all__ = ["SATISFIED_FROM", "rating_records", "window_key", "window_start"]

#: 非常满意 5, 满意 4 and 基本满意 3 count as satisfied; 不满意 2 and 非常不满意 1 do not.
SATISFIED_FROM = 3


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
