"""Pure renewal rules: which reminders a registry entry has due on a day.

No I/O, so every rule is unit-tested directly; ``record_licenses`` applies them to the licenses
an event just changed, and the scheduler's daily scan to those that time brought due.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Protocol

from schemas.commands import RenewalJob, renewal_key

__all__ = ["LicenseState", "due_renewal_jobs", "scan_windows"]


class LicenseState(Protocol):
    """What the rules read of a registry entry (``schemas.models.LicenseRecord``)."""

    license_id: str
    status: str
    category: str
    holder_name: str
    holder_mobile: str
    issuing_department: str
    expires_on: dt.date
    last_event_at: dt.datetime
    last_event_id: str | None
    last_event_source: str | None


def _latest_applicable(offsets: Iterable[int], expires_on: dt.date, today: dt.date) -> int | None:
    """The smallest offset whose send date has come: later reminders supersede earlier ones.

    A license first seen 5 days before expiry gets the 7-day reminder, not a late 30-day one.
    """
    reached = [o for o in offsets if expires_on - dt.timedelta(days=o) <= today]
    return min(reached) if reached else None


def due_renewal_jobs(
    state: LicenseState,
    today: dt.date,
    sms_offsets: Iterable[int],
    call_offsets: Iterable[int],
) -> list[RenewalJob]:
    """The reminders due on ``today`` for one registry entry (at most one per channel)."""
    if state.status != "live" or not state.holder_mobile:
        return []
    expires_on = state.expires_on
    if expires_on <= today:
        return []
    jobs: list[RenewalJob] = []
    for kind, offsets in (("sms", sms_offsets), ("call_list", call_offsets)):
        offset = _latest_applicable(offsets, expires_on, today)
        if offset is None:
            continue
        jobs.append(
            RenewalJob(
                kind=kind,  # type: ignore[arg-type]
                idempotency_key=renewal_key(state.license_id, expires_on, offset, kind),
                license_id=state.license_id,
                category=state.category,
                holder_name=state.holder_name,
                holder_mobile=state.holder_mobile,
                issuing_department=state.issuing_department,
                expires_on=expires_on,
                offset_days=offset,
                due_on=expires_on - dt.timedelta(days=offset),
                state_at=state.last_event_at,
                # A reminder is what the license's latest event caused (the scan only found
                # that its day had come): an upstream asking after its license.issued or
                # license.renewed finds the reminders of the state that event set.
                event_id=state.last_event_id,
                event_source=state.last_event_source,
            )
        )
    return jobs


def scan_windows(
    first_day: dt.date, today: dt.date, offsets: Iterable[int]
) -> list[tuple[dt.date, dt.date]]:
    """Expiry ranges whose reminders came due on a day from ``first_day`` to ``today``.

    A reminder ``o`` days before expiry comes due on ``expires_on - o``; for the days
    ``first_day … today`` that is ``expires_on`` in ``[first_day + o, today + o]``. Overlapping
    ranges are merged, so the scan reads each license once.
    """
    ranges = sorted(
        (first_day + dt.timedelta(days=o), today + dt.timedelta(days=o)) for o in set(offsets)
    )
    merged: list[tuple[dt.date, dt.date]] = []
    for start, end in ranges:
        if merged and start <= merged[-1][1] + dt.timedelta(days=1):
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged
