"""Pure rules of the case flows: what a case or evaluation event sets in motion.

The stream keeps one small state per case (co-partitioned: cases and evaluations are both keyed
by case id) and turns events into jobs for the workers. Every job is keyed downstream, so a
replayed event changes nothing; the state only saves work and answers "was it rated already?".
"""

from __future__ import annotations

from typing import Any

from schemas.commands import CallbackDoneJob, CaseJob, EvaluationJob, GreenChannelAckJob
from schemas.events import DEFAULT_RATING_SOURCE

__all__ = ["Job", "apply_case_event", "case_job", "special_groups"]

#: (actor name, JSON payload) for the workers.
Job = tuple[str, dict[str, Any]]
CaseState = dict[str, Any]


def special_groups(applicant: dict[str, Any], elderly_age: int) -> list[str]:
    """The applicant's special groups; age alone makes someone elderly (高龄老人)."""
    groups = list(applicant.get("special_groups") or [])
    age = applicant.get("age")
    if age is not None and age >= elderly_age and "elderly" not in groups:
        groups.append("elderly")
    return groups


def case_job(payload: dict[str, Any], elderly_age: int) -> CaseJob:
    """The case flows' view of a case.submitted / case.completed payload."""
    applicant, point = payload["applicant"], payload["service_point"]
    steward = payload.get("project_steward") or {}
    return CaseJob(
        case_id=payload["case_id"],
        service_item=payload["service_item"],
        department=payload["department"],
        service_point_id=point["id"],
        service_point_name=point["name"],
        applicant_kind=applicant["kind"],
        applicant_name=applicant["name"],
        applicant_mobile=applicant["mobile"],
        special_groups=special_groups(applicant, elderly_age),
        key_project=bool(payload.get("key_project")),
        steward_id=steward.get("staff_id"),
        steward_name=steward.get("name"),
        steward_department=steward.get("department"),
        submitted_at=payload["submitted_at"],
        completed_at=payload.get("completed_at"),
    )


def apply_case_event(
    state: CaseState | None,
    event_type: str,
    payload: dict[str, Any],
    *,
    elderly_age: int,
    source: str = "",
    event_id: str | None = None,
) -> tuple[CaseState, list[Job]]:
    """The case's new state and the jobs this event starts; each job carries ``event_id`` and
    ``source`` (the envelope's) on to the rows it makes."""
    state = dict(state or {"case_id": payload["case_id"]})
    jobs: list[Job] = []
    caused: dict[str, Any] = {"event_id": event_id, "event_source": source or None}
    if event_type in ("case.submitted", "case.completed"):
        case = case_job(payload, elderly_age).model_copy(update=caused)
        state.update(
            service_item=case.service_item,
            department=case.department,
            service_point_id=case.service_point_id,
        )
        as_json = case.model_dump(mode="json")
        if event_type == "case.submitted":
            if case.special_groups and not state.get("alerted"):
                jobs.append(("raise_green_channel_alert", as_json))
                state["alerted"] = True
        else:
            state["completed"] = True
            if not state.get("evaluated"):
                jobs.append(("schedule_survey", as_json))
            if case.key_project:
                jobs.append(("open_key_project_callback", as_json))
    elif event_type == "evaluation.submitted":
        state["evaluated"] = True
        seen = list(state.get("evaluation_ids") or [])
        if payload["evaluation_id"] not in seen:
            state["evaluation_ids"] = [*seen, payload["evaluation_id"]][-5:]
        jobs.append(
            (
                "record_evaluation",
                EvaluationJob(
                    evaluation_id=payload["evaluation_id"],
                    case_id=payload["case_id"],
                    rating=payload["rating"],
                    real_name=payload["real_name"],
                    citizen_mobile=payload.get("citizen_mobile"),
                    comment=payload.get("comment", ""),
                    department=payload["department"],
                    service_point_id=payload["service_point_id"],
                    service_item=state.get("service_item", ""),
                    evaluated_at=payload["evaluated_at"],
                    is_default=source == DEFAULT_RATING_SOURCE,
                    **caused,
                ).model_dump(mode="json"),
            )
        )
    elif event_type == "greenchannel.acknowledged":
        jobs.append(
            (
                "acknowledge_green_channel_alert",
                GreenChannelAckJob(
                    case_id=payload["case_id"],
                    service_point_id=payload["service_point_id"],
                    staff_id=payload["staff_id"],
                    acknowledged_at=payload["acknowledged_at"],
                    **caused,
                ).model_dump(mode="json"),
            )
        )
    elif event_type == "callback.completed":
        jobs.append(
            (
                "complete_callback_task",
                CallbackDoneJob(
                    case_id=payload["case_id"],
                    callback_id=payload["callback_id"],
                    staff_id=payload["staff_id"],
                    outcome=payload["outcome"],
                    completed_at=payload["completed_at"],
                    **caused,
                ).model_dump(mode="json"),
            )
        )
    else:
        raise ValueError(f"not a case event: {event_type}")
    return state, jobs
