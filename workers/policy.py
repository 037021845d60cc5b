"""When a citizen message may go out: quiet hours, the daily cap and opt-out, as pure decisions.

No I/O and no clock: the caller passes the local "now", what was already sent today (counted with
:func:`local_day_bounds`) and the citizen's opt-out state, and gets a :class:`Decision` back. All
datetimes are timezone-aware local times (Asia/Shanghai by default); a naive one is refused,
because a naive UTC time would silently put quiet hours eight hours off.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Literal

from infra.quiet_hours import QuietHours, at_wall_clock, require_aware

__all__ = ["Decision", "QuietHours", "decide", "local_day_bounds"]


@dataclass(frozen=True)
class Decision:
    """What to do with one message now: send it, defer it to ``not_before``, or drop it."""

    #: "skip" is the ledger's answer when another worker claimed the message first; "cancel"
    #: its answer when the flow's check said the message no longer applies.
    action: Literal["send", "defer", "suppress", "skip", "cancel"]
    not_before: dt.datetime | None = None
    reason: str = ""

    def __post_init__(self) -> None:
        if self.action == "defer" and self.not_before is None:
            raise ValueError("a deferral needs not_before")


def local_day_bounds(now_local: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """[start of the local day, start of the next local day), for counting "sent today"."""
    require_aware(now_local, "now_local")
    today = now_local.date()
    return (
        at_wall_clock(today, dt.time(0), now_local),
        at_wall_clock(today + dt.timedelta(days=1), dt.time(0), now_local),
    )


def decide(
    *,
    now_local: dt.datetime,
    critical: bool,
    opted_out: bool,
    sent_today: int,
    suppressed: str | None = None,
    daily_cap: int | None,
    quiet: QuietHours | None,
) -> Decision:
    """Send, defer or suppress one message to one citizen.

    Order: opt-out, then critical, then quiet hours and the daily cap.

    - ``opted_out`` always suppresses, even a critical message. Categories a citizen cannot opt
      out of (green-channel and other staff alerts) are the caller's to know: it passes
      ``opted_out=False`` for them, so this function never has to guess.
    - ``suppressed`` (why the number failed permanently for this category) suppresses likewise:
      the same send would fail the same way.
    - ``critical`` then sends at once, ignoring quiet hours and the cap.
    - Otherwise, inside quiet hours the message waits for the window's end; with the cap reached
      it waits for the next local day's first allowed instant (that day's quiet-hours end, or
      midnight without quiet hours). When both apply it waits for the later instant, which is
      always the cap's, so the reason is "daily cap".
    """
    require_aware(now_local, "now_local")
    if sent_today < 0:
        raise ValueError("sent_today cannot be negative")
    if daily_cap is not None and daily_cap < 0:
        raise ValueError("daily_cap cannot be negative; use None for no cap")

    if opted_out:
        return Decision("suppress", reason="opted out")
    if suppressed:
        return Decision("suppress", reason=f"number suppressed: {suppressed}")
    if critical:
        return Decision("send", reason="critical")

    decision = Decision("send")
    if quiet is not None and quiet.contains(now_local):
        decision = Decision("defer", not_before=quiet.next_allowed(now_local), reason="quiet hours")
    if daily_cap is not None and sent_today >= daily_cap:
        _, tomorrow = local_day_bounds(now_local)
        # Not simply "tomorrow at quiet.end": for a window that does not cross midnight the
        # next day opens at 00:00.
        first = quiet.next_allowed(tomorrow) if quiet is not None else tomorrow
        # ">=": on a tie the cap is named, the constraint that would hold outside quiet hours.
        if decision.not_before is None or first >= decision.not_before:
            decision = Decision("defer", not_before=first, reason="daily cap")
    return decision
