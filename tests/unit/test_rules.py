"""streams.rules: how license events change the registry, and which reminders are due when."""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

import pytest

from schemas.commands import LicenseStateJob, renewal_key
from streams.rules import apply_license_event, due_renewal_jobs, state_job

TODAY = dt.date(2026, 6, 1)
T0 = dt.datetime(2026, 5, 1, 9, 0, tzinfo=dt.UTC)
SMS_OFFSETS = (30, 7)
CALL_OFFSETS = (3,)
SHANGHAI = dt.timezone(dt.timedelta(hours=8))


def _payload(license_id: str = "SX-SP-2024-0001", **changes: Any) -> dict[str, Any]:
    payload = {
        "license_id": license_id,
        "category": "food_business",
        "holder_name": "长安区某某餐饮店",
        "holder_mobile": "+8613800138000",
        "issuing_department": "长安区市场监督管理局",
        "issued_on": "2021-06-01",
        "expires_on": "2026-06-21",
    }
    payload.update(changes)
    return payload


def _live(expires_on: dt.date, license_id: str = "SX-SP-2024-0001") -> dict[str, Any]:
    state = apply_license_event(
        None, "license.issued", _payload(license_id, expires_on=expires_on.isoformat()), T0
    )
    assert state is not None
    return state


def _due(jobs: list[Any]) -> set[tuple[str, int]]:
    return {(job.kind, job.offset_days) for job in jobs}


# ---- apply_license_event ---------------------------------------------------------------------
def test_issued_on_empty_state_gives_a_live_entry() -> None:
    # Given no registry entry
    # When the license is issued
    state = apply_license_event(None, "license.issued", _payload(), T0)

    # Then the entry is live with the event's details and time (in UTC)
    assert state == {
        "license_id": "SX-SP-2024-0001",
        "status": "live",
        "category": "food_business",
        "holder_name": "长安区某某餐饮店",
        "holder_mobile": "+8613800138000",
        "issuing_department": "长安区市场监督管理局",
        "issued_on": "2021-06-01",
        "expires_on": "2026-06-21",
        "state_at": "2026-05-01T09:00:00+00:00",
    }


def test_occurred_at_in_another_zone_is_stored_as_utc() -> None:
    # Given an event stamped in Asia/Shanghai local time
    local = dt.datetime(2026, 5, 1, 17, 0, tzinfo=SHANGHAI)

    # When it is applied
    state = apply_license_event(None, "license.issued", _payload(), local)

    # Then the state time is the same instant, in UTC
    assert state is not None
    assert state["state_at"] == "2026-05-01T09:00:00+00:00"


def test_renewed_replaces_expiry() -> None:
    # Given a live license expiring 2026-06-21
    state = apply_license_event(None, "license.issued", _payload(), T0)

    # When a later renewal moves the expiry five years on
    renewed = apply_license_event(
        state,
        "license.renewed",
        _payload(issued_on="2026-06-01", expires_on="2031-06-21"),
        T0 + dt.timedelta(days=30),
    )

    # Then the entry is live with the new expiry and the renewal's time
    assert renewed is not None
    assert renewed["status"] == "live"
    assert renewed["expires_on"] == "2031-06-21"
    assert renewed["issued_on"] == "2026-06-01"
    assert renewed["state_at"] == (T0 + dt.timedelta(days=30)).isoformat()


def test_revoked_marks_a_known_license_revoked_and_keeps_its_details() -> None:
    # Given a live license
    state = apply_license_event(None, "license.issued", _payload(), T0)
    assert state is not None

    # When it is revoked later
    revoked = apply_license_event(
        state,
        "license.revoked",
        {"license_id": "SX-SP-2024-0001", "reason": "吊销", "revoked_on": "2026-05-02"},
        T0 + dt.timedelta(days=1),
    )

    # Then it is revoked, with the details it had
    assert revoked is not None
    assert revoked["status"] == "revoked"
    assert revoked["expires_on"] == state["expires_on"]
    assert revoked["holder_name"] == state["holder_name"]
    assert revoked["state_at"] == (T0 + dt.timedelta(days=1)).isoformat()


@pytest.mark.parametrize(
    ("event_type", "delta"),
    [
        ("license.issued", dt.timedelta(seconds=-1)),
        ("license.renewed", dt.timedelta(days=-10)),
        ("license.revoked", dt.timedelta(microseconds=-1)),
        # a replay of the very event that made the state changes nothing either
        ("license.issued", dt.timedelta(0)),
    ],
)
def test_event_not_newer_than_the_state_is_stale(event_type: str, delta: dt.timedelta) -> None:
    # Given a live license whose state comes from an event at T0
    state = apply_license_event(None, "license.issued", _payload(), T0)
    payload = (
        {"license_id": "SX-SP-2024-0001", "revoked_on": "2026-05-01"}
        if event_type == "license.revoked"
        else _payload(expires_on="2040-01-01")
    )

    # When an event that happened at or before T0 arrives
    result = apply_license_event(state, event_type, payload, T0 + delta)

    # Then it is ignored as stale
    assert result is None


def test_revocation_of_unknown_license_is_remembered_so_a_late_issue_stays_dead() -> None:
    # Given a revocation of a license never seen before
    revoked = apply_license_event(
        None,
        "license.revoked",
        {"license_id": "SX-SP-2024-0001", "reason": "吊销", "revoked_on": "2026-05-02"},
        T0 + dt.timedelta(days=1),
    )
    assert revoked is not None
    assert revoked["status"] == "revoked"

    # When the (earlier) issue event arrives late
    late = apply_license_event(revoked, "license.issued", _payload(), T0)

    # Then it is stale: the registry keeps the revocation and nothing is due
    assert late is None
    assert due_renewal_jobs(revoked, TODAY, SMS_OFFSETS, CALL_OFFSETS) == []


def test_unknown_event_type_is_an_error() -> None:
    # Given / When / Then
    with pytest.raises(ValueError, match="not a license event"):
        apply_license_event(None, "case.completed", _payload(), T0)


# ---- due_renewal_jobs ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("days_left", "expected"),
    [
        (-1, set()),
        (0, set()),  # expires today: nothing left to remind
        (1, {("sms", 7), ("call_list", 3)}),
        (2, {("sms", 7), ("call_list", 3)}),
        (3, {("sms", 7), ("call_list", 3)}),
        (4, {("sms", 7)}),
        (6, {("sms", 7)}),
        (7, {("sms", 7)}),
        (8, {("sms", 30)}),
        (20, {("sms", 30)}),
        (29, {("sms", 30)}),
        (30, {("sms", 30)}),
        (31, set()),
        (60, set()),
    ],
)
def test_due_reminders_by_days_to_expiry(days_left: int, expected: set[tuple[str, int]]) -> None:
    # Given a live license expiring ``days_left`` days after today
    expires_on = TODAY + dt.timedelta(days=days_left)
    state = _live(expires_on)

    # When the due reminders are computed with the default offsets
    jobs = due_renewal_jobs(state, TODAY, SMS_OFFSETS, CALL_OFFSETS)

    # Then exactly the latest applicable reminder of each channel is due, dated correctly
    assert _due(jobs) == expected
    assert len(jobs) == len(expected)
    for job in jobs:
        assert job.expires_on == expires_on
        assert job.due_on == expires_on - dt.timedelta(days=job.offset_days)
        assert job.due_on <= TODAY
        assert job.license_id == state["license_id"]
        assert job.holder_mobile == "+8613800138000"
        assert job.idempotency_key == renewal_key(
            state["license_id"], expires_on, job.offset_days, job.kind
        )


@pytest.mark.parametrize(
    ("sms_offsets", "call_offsets", "days_left", "expected"),
    [
        ((14,), (1,), 10, {("sms", 14)}),
        ((14,), (1,), 1, {("sms", 14), ("call_list", 1)}),
        ((14,), (1,), 15, set()),
        # unsorted offsets: still the smallest reached one
        ((7, 60, 30), (), 45, {("sms", 60)}),
        ((7, 60, 30), (), 5, {("sms", 7)}),
        ((), (5,), 5, {("call_list", 5)}),
        ((), (), 1, set()),
    ],
)
def test_due_reminders_with_custom_offsets(
    sms_offsets: tuple[int, ...],
    call_offsets: tuple[int, ...],
    days_left: int,
    expected: set[tuple[str, int]],
) -> None:
    # Given a live license
    state = _live(TODAY + dt.timedelta(days=days_left))

    # When due reminders are computed with configured offsets
    jobs = due_renewal_jobs(state, TODAY, sms_offsets, call_offsets)

    # Then they follow those offsets
    assert _due(jobs) == expected


def test_revoked_license_has_nothing_due() -> None:
    # Given a license revoked 20 days before expiry
    state = apply_license_event(
        _live(TODAY + dt.timedelta(days=20)),
        "license.revoked",
        {"license_id": "SX-SP-2024-0001", "revoked_on": TODAY.isoformat()},
        T0 + dt.timedelta(days=1),
    )
    assert state is not None

    # When / Then
    assert due_renewal_jobs(state, TODAY, SMS_OFFSETS, CALL_OFFSETS) == []


def test_idempotency_keys_are_deterministic() -> None:
    # Given the same license state, computed twice from the same event
    expires_on = TODAY + dt.timedelta(days=2)

    # When due jobs are computed twice (as a replay would)
    first = due_renewal_jobs(_live(expires_on), TODAY, SMS_OFFSETS, CALL_OFFSETS)
    second = due_renewal_jobs(_live(expires_on), TODAY, SMS_OFFSETS, CALL_OFFSETS)

    # Then the keys are identical, and the same on a later day for the same reminder
    assert [j.idempotency_key for j in first] == [j.idempotency_key for j in second]
    later = due_renewal_jobs(
        _live(expires_on), TODAY + dt.timedelta(days=1), SMS_OFFSETS, CALL_OFFSETS
    )
    assert {j.idempotency_key for j in later} == {j.idempotency_key for j in first}


def test_idempotency_keys_differ_per_kind_license_expiry_and_offset() -> None:
    # Given every combination of two values of each part of the key
    combos = list(
        itertools.product(
            ("sms", "call_list"),
            ("LIC-1", "LIC-2"),
            (dt.date(2026, 6, 21), dt.date(2031, 6, 21)),
            (30, 7, 3),
        )
    )

    # When keys are made for each
    keys = {renewal_key(lic, expires, offset, kind) for kind, lic, expires, offset in combos}

    # Then no two collide
    assert len(keys) == len(combos)


def test_jobs_of_one_day_have_distinct_keys() -> None:
    # Given a license 2 days from expiry (an SMS and a call-list entry are due)
    jobs = due_renewal_jobs(_live(TODAY + dt.timedelta(days=2)), TODAY, SMS_OFFSETS, CALL_OFFSETS)

    # When / Then
    assert len(jobs) == 2
    assert len({j.idempotency_key for j in jobs}) == 2


# ---- state_job -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("event_type", "payload"),
    [
        ("license.issued", _payload()),
        ("license.revoked", {"license_id": "SX-SP-2024-0001", "revoked_on": "2026-05-02"}),
    ],
)
def test_state_job_round_trips_through_json(event_type: str, payload: dict[str, Any]) -> None:
    # Given a registry entry (live, or revoked without ever being seen issued)
    state = apply_license_event(None, event_type, payload, T0)
    assert state is not None

    # When it becomes a job and crosses the queue as JSON
    job = state_job(state)
    again = LicenseStateJob.model_validate_json(job.model_dump_json())

    # Then nothing is lost
    assert again == job
    assert again.license_id == state["license_id"]
    assert again.status == state["status"]
    assert again.expires_on.isoformat() == state["expires_on"]
    assert again.state_at == T0
    assert again.state_at.isoformat() == state["state_at"]
