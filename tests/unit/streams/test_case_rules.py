"""The pure rules of the case flows and the satisfaction windows."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from schemas.commands import CaseJob
from schemas.events import DEFAULT_RATING_SOURCE
from streams.case_rules import apply_case_event, special_groups
from streams.satisfaction import window_key, window_start

SH = ZoneInfo("Asia/Shanghai")
AT = "2026-11-26T10:00:00+08:00"


def case(**changes: object) -> dict:
    payload = {
        "case_id": "C-1",
        "service_item": "食品经营许可证核发",
        "department": "市场监督管理局",
        "service_point": {"id": "ST-01", "name": "韦曲街道便民服务站", "level": "street_station"},
        "applicant": {
            "kind": "citizen",
            "name": "王秀英",
            "mobile": "+8613900000001",
            "age": 40,
            "special_groups": [],
        },
        "key_project": False,
        "submitted_at": AT,
        "completed_at": AT,
    }
    payload.update(changes)
    return payload


@pytest.mark.parametrize(
    ("applicant", "expected"),
    [
        ({"age": 69, "special_groups": []}, []),
        ({"age": 70, "special_groups": []}, ["elderly"]),
        ({"age": None, "special_groups": ["disabled"]}, ["disabled"]),
        ({"age": 80, "special_groups": ["elderly"]}, ["elderly"]),
        ({"age": 75, "special_groups": ["veteran"]}, ["veteran", "elderly"]),
    ],
)
def test_special_groups_include_age(applicant: dict, expected: list[str]) -> None:
    # When / Then
    assert special_groups(applicant, elderly_age=70) == expected


@pytest.mark.parametrize(
    ("event_type", "payload", "state", "expected_actors"),
    [
        ("case.submitted", case(), None, []),
        (
            "case.submitted",
            case(
                applicant={
                    "kind": "citizen",
                    "name": "李",
                    "mobile": "+8613900000001",
                    "age": 82,
                    "special_groups": [],
                }
            ),
            None,
            ["raise_green_channel_alert"],
        ),
        (
            "case.submitted",
            case(
                applicant={
                    "kind": "citizen",
                    "name": "李",
                    "mobile": "+8613900000001",
                    "age": None,
                    "special_groups": ["pregnant"],
                }
            ),
            {"case_id": "C-1", "alerted": True},
            [],
        ),
        ("case.completed", case(), None, ["schedule_survey"]),
        ("case.completed", case(), {"case_id": "C-1", "evaluated": True}, []),
        (
            "case.completed",
            case(
                key_project=True,
                project_steward={
                    "staff_id": "STW",
                    "name": "刘",
                    "mobile": None,
                    "department": "市场监督管理局",
                },
            ),
            None,
            ["schedule_survey", "open_key_project_callback"],
        ),
    ],
)
def test_case_events_start_the_right_jobs(
    event_type: str, payload: dict, state: dict | None, expected_actors: list[str]
) -> None:
    # When
    _state, jobs = apply_case_event(state, event_type, payload, elderly_age=70)

    # Then
    assert [actor for actor, _job in jobs] == expected_actors


def test_an_evaluation_marks_the_case_rated_once_and_defaults_are_flagged() -> None:
    # Given
    evaluation = {
        "evaluation_id": "EV-1",
        "case_id": "C-1",
        "rating": 2,
        "real_name": True,
        "citizen_mobile": "+8613900000001",
        "comment": "",
        "department": "税务局",
        "service_point_id": "ST-01",
        "evaluated_at": AT,
    }

    # When
    state, jobs = apply_case_event(
        {"case_id": "C-1", "service_item": "发票领用"},
        "evaluation.submitted",
        evaluation,
        elderly_age=70,
    )
    again, _ = apply_case_event(state, "evaluation.submitted", evaluation, elderly_age=70)
    _, default_jobs = apply_case_event(
        None, "evaluation.submitted", evaluation, elderly_age=70, source=DEFAULT_RATING_SOURCE
    )

    # Then
    assert state["evaluated"] and state["evaluation_ids"] == ["EV-1"]
    assert again["evaluation_ids"] == ["EV-1"]
    ((actor, job),) = jobs
    assert actor == "record_evaluation"
    assert (job["service_item"], job["is_default"]) == ("发票领用", False)
    assert default_jobs[0][1]["is_default"] is True


def test_an_unknown_event_type_is_refused() -> None:
    with pytest.raises(ValueError, match="not a case event"):
        apply_case_event(None, "license.issued", {"case_id": "X"}, elderly_age=70)


@pytest.mark.parametrize(
    ("at", "length_s", "expected"),
    [
        # A local day starts at 00:00 Shanghai, which is 16:00 UTC the day before.
        ("2026-11-26T00:30:00+08:00", 86400, "2026-11-26T00:00:00+08:00"),
        ("2026-11-25T16:30:00+00:00", 86400, "2026-11-26T00:00:00+08:00"),
        ("2026-11-26T23:59:59+08:00", 86400, "2026-11-26T00:00:00+08:00"),
        ("2026-11-26T10:59:59+08:00", 3600, "2026-11-26T10:00:00+08:00"),
        ("2026-11-26T11:00:00+08:00", 3600, "2026-11-26T11:00:00+08:00"),
        ("2026-11-26T10:44:00+08:00", 900, "2026-11-26T10:30:00+08:00"),
    ],
)
def test_windows_are_aligned_to_local_midnight(at: str, length_s: int, expected: str) -> None:
    # When
    start = window_start(dt.datetime.fromisoformat(at), length_s, SH)

    # Then
    assert start == dt.datetime.fromisoformat(expected)
    assert window_key("department", "税务局", "day", start).startswith("department|税务局|day|")


STEWARD = {"staff_id": "STW", "name": "刘", "mobile": None, "department": "市场监督管理局"}
ACK = {"case_id": "C-1", "service_point_id": "ST-01", "staff_id": "S-2", "acknowledged_at": AT}
DONE = {
    "case_id": "C-1",
    "callback_id": "key_project",
    "staff_id": "S-1",
    "outcome": "已回访",
    "completed_at": AT,
}
RATING = {
    "evaluation_id": "EV-1",
    "case_id": "C-1",
    "rating": 1,
    "real_name": False,
    "department": "市场监督管理局",
    "service_point_id": "ST-01",
    "evaluated_at": AT,
}


def test_every_job_carries_the_event_that_caused_it() -> None:
    # Given one event of each kind that starts jobs, each with its own id
    events = [
        ("ev-completed", "case.completed", case(key_project=True, project_steward=STEWARD)),
        ("ev-rated", "evaluation.submitted", RATING),
        ("ev-ack", "greenchannel.acknowledged", ACK),
        ("ev-done", "callback.completed", DONE),
    ]

    # When the rules apply each
    caused = {
        event_id: apply_case_event(
            None, event_type, payload, elderly_age=70, source="case-system", event_id=event_id
        )[1]
        for event_id, event_type, payload in events
    }

    # Then every job names the event that started it and its source, for the rows it makes
    assert [len(jobs) for jobs in caused.values()] == [2, 1, 1, 1]
    for event_id, jobs in caused.items():
        for _actor, payload in jobs:
            assert (payload["event_id"], payload["event_source"]) == (event_id, "case-system")


def test_a_job_from_before_event_ids_is_still_valid() -> None:
    # Given a job as an older version enqueued it: no event id, no source
    old = {
        "case_id": "C-1",
        "service_item": "食品经营许可证核发",
        "department": "市场监督管理局",
        "service_point_id": "ST-01",
        "service_point_name": "韦曲街道便民服务站",
        "applicant_kind": "citizen",
        "applicant_name": "王秀英",
        "applicant_mobile": "+8613900000001",
        "submitted_at": AT,
    }

    # When the worker reads it
    parsed = CaseJob.model_validate(old)

    # Then it is valid (no dead letter during an upgrade), naming no event
    assert (parsed.event_id, parsed.event_source) == (None, None)
