"""Quiet hours: a daily window of local wall-clock time in which non-critical messages wait.

A value type with no I/O and no clock, on the ground floor so that the settings can validate
``GOVNOTIFY_QUIET_HOURS`` with the very parser the workers use (:mod:`workers.policy` decides
with it). All datetimes are timezone-aware local times; a naive one is refused, because a naive
UTC time would silently put quiet hours eight hours off.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

__all__ = ["QuietHours", "at_wall_clock", "require_aware"]

_QUIET_FORM = re.compile(r"^(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})$")
_EXPECTED_FORM = "'HH:MM-HH:MM' (e.g. '21:00-08:00'), or 'off' / '' to disable"


def require_aware(value: dt.datetime, name: str) -> None:
    """Refuse a naive ``value`` (``name`` is the argument the error names)."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware local datetime")


def at_wall_clock(day: dt.date, clock: dt.time, like: dt.datetime) -> dt.datetime:
    """``day`` at wall-clock ``clock`` in ``like``'s zone (wall clock, not elapsed hours)."""
    return dt.datetime.combine(day, clock, tzinfo=like.tzinfo)


@dataclass(frozen=True)
class QuietHours:
    """A daily window [start, end) of local time in which non-critical messages wait.

    ``start > end`` is a window crossing midnight (21:00–08:00); ``start < end`` one that does not
    (12:00–14:00). ``start == end`` is refused: it could mean "never" or "always", and "never" is
    spelled ``None`` (see :meth:`parse`).
    """

    start: dt.time = dt.time(21, 0)
    end: dt.time = dt.time(8, 0)

    def __post_init__(self) -> None:
        if self.start.tzinfo is not None or self.end.tzinfo is not None:
            raise ValueError("quiet hours are local wall-clock times; give naive times")
        if self.start == self.end:
            raise ValueError("quiet hours start and end are equal; use None (or 'off') to disable")

    @property
    def crosses_midnight(self) -> bool:
        return self.start > self.end

    def contains(self, local: dt.datetime) -> bool:
        """Whether ``local`` falls in the window: start inclusive, end exclusive."""
        require_aware(local, "local")
        now = local.time()
        if self.crosses_midnight:
            return now >= self.start or now < self.end
        return self.start <= now < self.end

    def next_allowed(self, local: dt.datetime) -> dt.datetime:
        """``local`` itself if outside the window, else the window's end (same day or next)."""
        if not self.contains(local):
            return local
        day = local.date()
        if self.crosses_midnight and local.time() >= self.start:
            # The evening part of the window ends tomorrow morning.
            day += dt.timedelta(days=1)
        return at_wall_clock(day, self.end, local)

    @classmethod
    def parse(cls, text: str) -> QuietHours | None:
        """``"21:00-08:00"`` → a window; ``""`` or ``"off"`` → ``None`` (no quiet hours)."""
        cleaned = text.strip()
        if cleaned.lower() in ("", "off"):
            return None
        match = _QUIET_FORM.match(cleaned)
        if match is None:
            raise ValueError(f"quiet hours must look like {_EXPECTED_FORM}; got {text!r}")
        h1, m1, h2, m2 = (int(g) for g in match.groups())
        try:
            return cls(dt.time(h1, m1), dt.time(h2, m2))
        except ValueError as exc:
            raise ValueError(
                f"quiet hours must look like {_EXPECTED_FORM}; got {text!r} ({exc})"
            ) from None
