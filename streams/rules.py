"""Pure renewal rules: how a license event changes the registry, and which reminders are due.

No I/O here, so every rule is unit-tested directly; the Faust agent only wires these to topics,
tables and the job queue.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

from schemas.commands import LicenseStateJob, RenewalJob, renewal_key

__all__ = ["apply_license_event", "due_renewal_jobs", "state_job"]

LicenseState = dict[str, Any]


def apply_license_event(
    state: LicenseState | None, event_type: str, payload: dict[str, Any], occurred_at: dt.datetime
) -> LicenseState | None:
    """The registry entry after ``event``, or None when the event is older than what we hold.

    Events for one license arrive in order on one partition, but upstream systems may publish
    late or replay: ``occurred_at`` decides, so a replayed ``license.issued`` never undoes a
    later renewal or revocation.
    """
    at = occurred_at.astimezone(dt.UTC).isoformat()
    if state is not None and state["state_at"] >= at:
        return None
    if event_type in ("license.issued", "license.renewed"):
        return {
            "license_id": payload["license_id"],
            "status": "live",
            "category": payload["category"],
            "holder_name": payload["holder_name"],
            "holder_mobile": payload["holder_mobile"],
            "issuing_department": payload["issuing_department"],
            "issued_on": str(payload["issued_on"]),
            "expires_on": str(payload["expires_on"]),
            "state_at": at,
        }
    if event_type == "license.revoked":
        if state is None:
            # Revocation of a license we never saw: remember it, so a late "issued" stays dead.
            state = {
                "license_id": payload["license_id"],
                "category": "",
                "holder_name": "",
                "holder_mobile": "",
                "issuing_department": "",
                "issued_on": "",
                "expires_on": str(payload.get("revoked_on", "")),
            }
        return {**state, "status": "revoked", "state_at": at}
    raise ValueError(f"not a license event: {event_type}")


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
    if state.get("status") != "live":
        return []
    expires_on = dt.date.fromisoformat(state["expires_on"])
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
                idempotency_key=renewal_key(state["license_id"], expires_on, offset, kind),
                license_id=state["license_id"],
                category=state["category"],
                holder_name=state["holder_name"],
                holder_mobile=state["holder_mobile"],
                issuing_department=state["issuing_department"],
                expires_on=expires_on,
                offset_days=offset,
                due_on=expires_on - dt.timedelta(days=offset),
                state_at=dt.datetime.fromisoformat(state["state_at"]),
            )
        )
    return jobs


def state_job(state: LicenseState) -> LicenseStateJob:
    """The registry entry as a job for the workers' license record."""
    return LicenseStateJob(
        license_id=state["license_id"],
        status=state["status"],
        category=state["category"],
        issuing_department=state["issuing_department"],
        expires_on=dt.date.fromisoformat(state["expires_on"]),
        state_at=dt.datetime.fromisoformat(state["state_at"]),
    )
