"""Pure renewal rule of the stream: a license event as a job for the license registry.

The registry itself (every license's latest state, for years) is in PostgreSQL, written by the
workers' ``record_licenses``: a newer event wins there and an older or replayed one changes
nothing, so the stream keeps no license state and needs none to order events.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from schemas.commands import LicenseStateJob

__all__ = ["license_state_data", "license_state_job"]


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


def license_state_data(
    event_type: str,
    payload: dict[str, Any],
    occurred_at: dt.datetime,
    *,
    event_id: str | None = None,
    source: str | None = None,
) -> dict[str, Any]:
    """``license_state_job(...).model_dump(mode="json")``, built without validating again.

    The stream's hot path: the event was validated by ``parse_event`` (its payload is JSON data
    already) and the worker validates every job it takes (``record_licenses``); building and
    dumping the model here cost a tenth of the stream's time. The same JSON, key for key
    (tests/unit/workers/test_renewal_rules.py compares them).
    """
    state_at = _json_utc(occurred_at)
    if event_type in ("license.issued", "license.renewed"):
        return {
            "event_id": event_id,
            "event_source": source,
            "license_id": payload["license_id"],
            "status": "live",
            "category": payload["category"],
            "holder_name": payload["holder_name"],
            "holder_mobile": payload["holder_mobile"],
            "issuing_department": payload["issuing_department"],
            "issued_on": payload["issued_on"],
            "expires_on": payload["expires_on"],
            "state_at": state_at,
        }
    if event_type == "license.revoked":
        return {
            "event_id": event_id,
            "event_source": source,
            "license_id": payload["license_id"],
            "status": "revoked",
            "category": "",
            "holder_name": "",
            "holder_mobile": "",
            "issuing_department": "",
            "issued_on": None,
            "expires_on": payload["revoked_on"],
            "state_at": state_at,
        }
    raise ValueError(f"not a license event: {event_type}")


def _json_utc(moment: dt.datetime) -> str:
    """An aware time in UTC as pydantic writes it in JSON mode (``…Z``)."""
    if moment.tzinfo is None:
        raise ValueError("state_at must be timezone-aware")
    return moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
