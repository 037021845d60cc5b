"""Job payloads sent from the stream rules to the dramatiq workers.

They cross a queue, so they are JSON primitives only (ISO dates as strings), validated again by
the worker: a malformed job is a dead letter with a reason, never a crash.
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

__all__ = [
    "BATCH_ACTORS",
    "JOB_QUEUES",
    "CallbackDoneJob",
    "CaseJob",
    "CloseRectificationJob",
    "EvaluationJob",
    "GreenChannelAckJob",
    "LicenseStateJob",
    "RenewalJob",
    "renewal_key",
]


#: Every job by its actor's name → the queue (short name, see ``Settings.queue``) that actor
#: consumes. Whoever hands a job over by name (the stream, the relay's fast path, the
#: scheduler) finds its queue here instead of importing the worker that declares the actor;
#: tests/unit/workers/test_job_queues.py checks that each actor is declared on the queue named here.
JOB_QUEUES: dict[str, str] = {
    # green channel: the highest priority, a queue of its own
    "raise_green_channel_alert": "alerts",
    "acknowledge_green_channel_alert": "alerts",
    "escalate_green_channel_alert": "alerts",
    # renewal reminders (无感续证)
    "record_licenses": "registry",
    "send_renewal_reminder": "reminders",
    "send_renewal_reminders": "reminders",
    "add_call_list_entry": "reminders",
    "send_call_list_digests": "reminders",
    # surveys and evaluations (好差评)
    "schedule_survey": "surveys",
    "send_survey": "surveys",
    "record_default_rating": "surveys",
    "record_evaluation": "evaluations",
    "remind_rectification": "evaluations",
    "flag_rectification_overdue": "evaluations",
    "close_rectification": "evaluations",
    # follow-up callbacks (跟踪回访)
    "open_key_project_callback": "callbacks",
    "complete_callback_task": "callbacks",
    "escalate_callback_task": "callbacks",
    # delivery of persisted notifications (sweep, scheduler, replay) and its retries
    "deliver_notification": "delivery",
    "retry_delivery": "delivery-retry",
}


#: Actors whose jobs travel in batches: actor → the actor that takes a list of its jobs.
#: :class:`infra.jobs.JobSender` groups such jobs (``GOVNOTIFY_JOB_BATCH_SIZE`` to a message), so
#: a worker inserts, checks and claims a batch with a fixed number of statements.
BATCH_ACTORS: dict[str, str] = {"send_renewal_reminder": "send_renewal_reminders"}


def renewal_key(license_id: str, expires_on: dt.date, offset_days: int, kind: str) -> str:
    """The idempotency key: exactly one notification per (license, expiry date, offset, kind)."""
    return f"renewal:{kind}:{license_id}:{expires_on.isoformat()}:{offset_days}"


class _Job(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Caused(_Job):
    """A job an upstream event set in motion: it carries the event's id and source on to every
    row it makes (``govnotify trace EVENT_ID``, outcome webhooks).

    Both default to None, so a job enqueued by an older version (in flight during an upgrade)
    is still valid; its rows simply name no event.
    """

    #: The envelope's ``event_id`` of the event that caused this job.
    event_id: str | None = Field(default=None, max_length=64)
    #: That event's envelope ``source``: whom its outcomes are reported to.
    event_source: str | None = Field(default=None, max_length=64)


class LicenseStateJob(_Caused):
    """A license event for the registry (``license_record``, the system of record).

    ``live`` carries every field a reminder needs; ``revoked`` names only the license and when
    (a revocation changes the status of what the registry holds, or, for a license never seen,
    records it revoked so that a late ``issued`` stays dead).
    """

    license_id: str = Field(min_length=1, max_length=64)
    status: Literal["live", "revoked"]
    category: str = Field(default="", max_length=40)
    holder_name: str = Field(default="", max_length=100)
    holder_mobile: str = Field(default="", pattern=r"^(\+861[3-9][0-9]{9})?$")
    issuing_department: str = Field(default="", max_length=100)
    issued_on: dt.date | None = None
    #: The expiry of a live license; the revocation date of a revoked one.
    expires_on: dt.date
    #: occurred_at of the event: a newer state wins, an older one changes nothing.
    state_at: AwareDatetime


class RenewalJob(_Caused):
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


class CaseJob(_Caused):
    """What the case flows need to know about a case (from case.submitted / case.completed)."""

    case_id: str = Field(min_length=1, max_length=64)
    service_item: str = Field(max_length=200)
    department: str = Field(max_length=100)
    service_point_id: str = Field(max_length=64)
    service_point_name: str = Field(max_length=100)
    applicant_kind: Literal["citizen", "enterprise"]
    applicant_name: str = Field(max_length=100)
    applicant_mobile: str = Field(pattern=r"^\+861[3-9][0-9]{9}$")
    special_groups: list[str] = Field(default_factory=list, max_length=5)
    key_project: bool = False
    steward_id: str | None = Field(default=None, max_length=64)
    steward_name: str | None = Field(default=None, max_length=100)
    steward_department: str | None = Field(default=None, max_length=100)
    submitted_at: AwareDatetime
    completed_at: AwareDatetime | None = None


class GreenChannelAckJob(_Caused):
    """Staff acknowledged a green-channel alert."""

    case_id: str = Field(min_length=1, max_length=64)
    service_point_id: str = Field(max_length=64)
    staff_id: str = Field(max_length=64)
    acknowledged_at: AwareDatetime


class CallbackDoneJob(_Caused):
    """A follow-up callback was made (callback.completed)."""

    case_id: str = Field(min_length=1, max_length=64)
    callback_id: str = Field(max_length=64)
    staff_id: str = Field(max_length=64)
    outcome: str = Field(max_length=1000)
    completed_at: AwareDatetime


class EvaluationJob(_Caused):
    """A citizen's rating of a case, with what the stream knows of the case."""

    evaluation_id: str = Field(min_length=1, max_length=64)
    case_id: str = Field(min_length=1, max_length=64)
    rating: int = Field(ge=1, le=5)
    real_name: bool
    citizen_mobile: str | None = Field(default=None, pattern=r"^\+861[3-9][0-9]{9}$")
    comment: str = Field(default="", max_length=1000)
    department: str = Field(max_length=100)
    service_point_id: str = Field(max_length=64)
    service_item: str = Field(default="", max_length=200)
    evaluated_at: AwareDatetime
    is_default: bool = False


class CloseRectificationJob(_Job):
    """A department closed a rectification ticket with an outcome."""

    ticket_id: str = Field(min_length=1, max_length=64)
    outcome: str = Field(min_length=1, max_length=500)
    closed_at: AwareDatetime
