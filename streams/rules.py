"""Pure renewal rule of the stream: a license event as a job for the license registry.

The registry itself (every license's latest state, for years) is in PostgreSQL, written by the
workers' ``record_licenses``: a newer event wins there and an older or replayed one changes
nothing, so the stream keeps no license state and needs none to order events.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from schemas.commands import LicenseStateJob

__all__ = ["license_state_job"]


def license_state_job(
    event_type: str,
    payload: dict[str, Any],
    occurred_at: dt.datetime,
    *,
    event_id: str | None = None,
    source: str | None = None,
) -> LicenseStateJob:
    """The registry job of one license event (``payload`` as JSON-mode dict); ``event_id`` and
    ``source`` are the envelope's, carried on to the reminders that state causes."""
    at = occurred_at.astimezone(dt.UTC)
    caused = {"event_id": event_id, "event_source": source}
    if event_type in ("license.issued", "license.renewed"):
        return LicenseStateJob(
            license_id=payload["license_id"],
            status="live",
            category=payload["category"],
            holder_name=payload["holder_name"],
            holder_mobile=payload["holder_mobile"],
            issuing_department=payload["issuing_department"],
            issued_on=payload["issued_on"],
            expires_on=payload["expires_on"],
            state_at=at,
            **caused,
        )
    if event_type == "license.revoked":
        return LicenseStateJob(
            license_id=payload["license_id"],
            status="revoked",
            expires_on=payload["revoked_on"],
            state_at=at,
            **caused,
        )
    raise ValueError(f"not a license event: {event_type}")
