"""Job payloads sent from the stream rules to the dramatiq workers.

They cross a queue, so they are JSON primitives only (ISO dates as strings), validated again by
the worker: a malformed job is a dead letter with a reason, never a crash.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

__all__ = ["LicenseStateJob", "RenewalJob", "renewal_key"]


def renewal_key(license_id: str, expires_on: dt.date, offset_days: int, kind: str) -> str:
    """The idempotency key: exactly one notification per (license, expiry date, offset, kind)."""
    return f"renewal:{kind}:{license_id}:{expires_on.isoformat()}:{offset_days}"


class _Job(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LicenseStateJob(_Job):
    """The latest state of a license, recorded so send-time checks can stop stale reminders."""

    license_id: str = Field(min_length=1, max_length=64)
    status: Literal["live", "revoked"]
    category: str = Field(max_length=40)
    issuing_department: str = Field(max_length=100)
    expires_on: dt.date
    state_at: AwareDatetime


class RenewalJob(_Job):
    """One renewal reminder that is due: an SMS to the holder or a call-list entry for staff."""

    kind: Literal["sms", "call_list"]
    idempotency_key: str = Field(max_length=200)
    license_id: str = Field(min_length=1, max_length=64)
    category: str = Field(max_length=40)
    holder_name: str = Field(max_length=100)
    holder_mobile: str = Field(pattern=r"^\+861[3-9][0-9]{9}$")
    issuing_department: str = Field(max_length=100)
    expires_on: dt.date
    offset_days: int = Field(ge=0)
    due_on: dt.date
    #: occurred_at of the event whose state produced this job; newer states may cancel it.
    state_at: AwareDatetime
