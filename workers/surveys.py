"""Satisfaction surveys (好差评): one invitation per completed case, none once it is rated.

The invitation is scheduled ``survey_delay_s`` after completion and goes through the citizen
rules (opt-out, quiet hours, daily cap); whether the case was rated is checked when scheduling
and again right before sending.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import dramatiq
from sqlalchemy import select
from sqlmodel import Session

import workers.broker  # noqa: F401  (declares the broker the actors below are bound to)
from infra.amqp import publish_confirmed
from infra.db import session
from notifiers.errors import PermanentDeliveryError
from notifiers.templates import load_templates
from schemas.commands import CaseJob
from schemas.events import DEFAULT_RATING_SOURCE, make_event
from schemas.models import EvaluationRecord, Notification
from workers.context import current
from workers.delivery import (
    RETRY_OPTIONS,
    attempt,
    create_from_template,
    register_stale_check,
)
from workers.jobs import parse_job
from workers.scheduled_jobs import schedule

__all__ = [
    "DEFAULT_RATING_SOURCE",
    "record_default_rating",
    "schedule_survey",
    "send_survey",
    "survey_key",
]

FLOW = "survey"
QUEUE = current().settings.queue("surveys")
TEMPLATE = load_templates()["survey_invitation"]


def survey_key(case_id: str) -> str:
    return f"survey:{case_id}"


def _rated(s: Session, case_id: str) -> bool:
    return (
        s.execute(
            select(EvaluationRecord.evaluation_id).where(EvaluationRecord.case_id == case_id)
        ).first()
        is not None
    )


@dramatiq.actor(queue_name=QUEUE, **RETRY_OPTIONS)
def schedule_survey(job: dict[str, Any]) -> None:
    """Plan the invitation for ``survey_delay_s`` after completion, unless already rated."""
    settings = current().settings
    case = parse_job(CaseJob, job, "schedule_survey")
    if case is None or case.completed_at is None:
        return
    with session(settings) as s:
        if _rated(s, case.case_id):
            return
        send_at = case.completed_at + dt.timedelta(seconds=settings.survey_delay_s)
        schedule(s, survey_key(case.case_id), send_at, "send_survey", job)
        if settings.default_rating_enabled:
            default_at = case.completed_at + dt.timedelta(seconds=settings.default_rating_after_s)
            schedule(s, f"default-rating:{case.case_id}", default_at, "record_default_rating", job)


# A value refused at render time (notifiers.templates) will be refused again: a dead letter at
# once, not after every retry.
@dramatiq.actor(queue_name=QUEUE, **RETRY_OPTIONS, throws=(PermanentDeliveryError,))
def send_survey(job: dict[str, Any]) -> None:
    """Persist and send the invitation (deferred out of quiet hours by the citizen rules)."""
    settings = current().settings
    case = parse_job(CaseJob, job, "send_survey")
    if case is None or case.completed_at is None:
        return
    completed_local = case.completed_at.astimezone(settings.tz)
    params = {
        "service_item": case.service_item,
        "service_point_name": case.service_point_name,
        "completed_on": f"{completed_local:%m月%d日}",
    }
    with session(settings) as s:
        if _rated(s, case.case_id):
            return
        row = create_from_template(
            s,
            TEMPLATE,
            params,
            key=survey_key(case.case_id),
            flow=FLOW,
            subject_id=case.case_id,
            recipient=case.applicant_mobile,
            category="surveys",
            event_at=case.completed_at,
            event_id=case.event_id,
            event_source=case.event_source,
        )
    attempt(row)


def _rated_since(s: Session, row: Notification) -> str | None:
    return "already evaluated" if _rated(s, row.subject_id) else None


register_stale_check(FLOW, _rated_since)


@dramatiq.actor(queue_name=QUEUE, **RETRY_OPTIONS)
def record_default_rating(job: dict[str, Any]) -> None:
    """Not rated in time: publish the default 基本满意 (3) as an evaluation, as some provinces do.

    It goes through the normal path (relay, stream, satisfaction windows, evaluation record) as
    an ``evaluation.submitted`` from ``DEFAULT_RATING_SOURCE``; a real rating that arrived first
    makes this a no-op.
    """
    settings = current().settings
    case = parse_job(CaseJob, job, "record_default_rating")
    if case is None or case.completed_at is None:
        return
    with session(settings) as s:
        if _rated(s, case.case_id):
            return
    event = make_event(
        "evaluation.submitted",
        {
            "evaluation_id": f"DEFAULT-{case.case_id}"[:64],
            "case_id": case.case_id,
            "rating": 3,
            "real_name": False,
            "citizen_mobile": None,
            "comment": "逾期未评价，系统默认基本满意",
            "department": case.department,
            "service_point_id": case.service_point_id,
            "evaluated_at": current().clock.utcnow().isoformat(),
        },
        source=DEFAULT_RATING_SOURCE,
        occurred_at=current().clock.utcnow(),
    )
    # Raises PublishError unless confirmed: the job is retried, and a rating published twice is
    # one event id, which the relay and the stream de-duplicate.
    publish_confirmed(
        settings.amqp_url,
        settings.exchange,
        [(event.to_json_bytes(), event.event_type, event.event_id)],
    )
