"""Renewal rules: a license event as a registry job (streams.rules), and which reminders a
registry entry has due when (workers.renewal_rules). The registry's "newer state wins" is SQL,
tested on PostgreSQL in tests/integration/reminders/test_registry.py."""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

import pytest

from producers.generator import generate_registry
from schemas.commands import LicenseStateJob, renewal_key
from schemas.events import parse_event
from schemas.models import LicenseRecord
from streams.rules import license_state_data, license_state_job
from workers.renewal_rules import due_renewal_jobs, scan_windows

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


def _record(job: LicenseStateJob) -> LicenseRecord:
    """The registry row ``record_licenses`` writes for ``job`` on an empty registry."""
    return LicenseRecord(
        license_id=job.license_id,
        status=job.status,
        category=job.category,
        holder_name=job.holder_name,
        holder_mobile=job.holder_mobile,
        issuing_department=job.issuing_department,
        issued_on=job.issued_on,
        expires_on=job.expires_on,
        last_event_at=job.state_at,
    )


def _live(expires_on: dt.date, license_id: str = "SX-SP-2024-0001") -> LicenseRecord:
    return _record(
        license_state_job(
            "license.issued", _payload(license_id, expires_on=expires_on.isoformat()), T0
        )
    )


def _due(jobs: list[Any]) -> set[tuple[str, int]]:
    return {(job.kind, job.offset_days) for job in jobs}


# ---- license_state_job -------------------------------------------------------------------------
def test_issued_gives_a_live_state_with_every_field_a_reminder_needs() -> None:
    # When
    job = license_state_job("license.issued", _payload(), T0)

    # Then
    assert job.status == "live"
    assert job.holder_mobile == "+8613800138000"
    assert job.holder_name == "长安区某某餐饮店"
    assert job.issuing_department == "长安区市场监督管理局"
    assert job.issued_on == dt.date(2021, 6, 1)
    assert job.expires_on == dt.date(2026, 6, 21)
    assert job.state_at == T0


def test_occurred_at_in_another_zone_is_kept_as_the_same_instant_in_utc() -> None:
    # Given an event stamped in Shanghai time
    local = T0.astimezone(SHANGHAI)

    # When
    job = license_state_job("license.renewed", _payload(), local)

    # Then
    assert job.state_at == T0
    assert job.state_at.utcoffset() == dt.timedelta(0)


def test_revoked_names_only_the_license_and_its_date() -> None:
    # When
    job = license_state_job(
        "license.revoked", {"license_id": "L-9", "revoked_on": "2026-05-02", "reason": ""}, T0
    )

    # Then
    assert (job.status, job.license_id, job.expires_on) == ("revoked", "L-9", dt.date(2026, 5, 2))
    assert job.holder_mobile == job.holder_name == job.category == ""


def test_unknown_event_type_is_an_error() -> None:
    with pytest.raises(ValueError, match="not a license event"):
        license_state_job("case.completed", _payload(), T0)


@pytest.mark.parametrize(
    ("event_type", "payload"),
    [
        ("license.issued", _payload()),
        ("license.revoked", {"license_id": "SX-SP-2024-0001", "revoked_on": "2026-05-02"}),
    ],
)
def test_state_job_round_trips_through_json(event_type: str, payload: dict[str, Any]) -> None:
    # Given a registry job
    job = license_state_job(event_type, payload, T0)

    # When it crosses the queue as JSON
    again = LicenseStateJob.model_validate_json(job.model_dump_json())

    # Then nothing is lost
    assert again == job


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
        assert job.license_id == state.license_id
        assert job.holder_mobile == "+8613800138000"
        assert job.idempotency_key == renewal_key(
            state.license_id, expires_on, job.offset_days, job.kind
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
    state = _live(TODAY + dt.timedelta(days=20))
    state.status = "revoked"

    # When / Then
    assert due_renewal_jobs(state, TODAY, SMS_OFFSETS, CALL_OFFSETS) == []


def test_a_live_entry_without_a_mobile_has_nothing_due() -> None:
    # Given a registry row from before the registry kept holders (migrated, not republished)
    state = _live(TODAY + dt.timedelta(days=5))
    state.holder_mobile = ""

    # When / Then: nothing is sent rather than a job nobody can deliver
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


# ---- scan_windows ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("first", "offsets", "expected"),
    [
        # one day: the exact expiry dates whose reminder date is today
        (TODAY, (30, 7, 3), [(3, 3), (7, 7), (30, 30)]),
        # three days (a scheduler down two days catches up): a range per offset
        (TODAY - dt.timedelta(days=2), (30, 7, 3), [(1, 3), (5, 7), (28, 30)]),
        # touching ranges are merged
        (TODAY - dt.timedelta(days=3), (30, 7, 3), [(0, 7), (27, 30)]),
        # a long outage: overlapping ranges become one
        (TODAY - dt.timedelta(days=10), (30, 7, 3), [(-7, 7), (20, 30)]),
        (TODAY, (), []),
    ],
)
def test_scan_windows_cover_every_reminder_date_since_the_last_scan(
    first: dt.date, offsets: tuple[int, ...], expected: list[tuple[int, int]]
) -> None:
    # When
    windows = scan_windows(first, TODAY, offsets)

    # Then the expiry ranges, as days after today, are these
    assert [((lo - TODAY).days, (hi - TODAY).days) for lo, hi in windows] == expected


@pytest.mark.parametrize("days_back", [0, 1, 2, 5, 29, 40])
def test_every_license_with_a_reminder_date_in_the_span_is_in_a_window(days_back: int) -> None:
    # Given a scan covering the days from ``first`` to today
    first = TODAY - dt.timedelta(days=days_back)
    windows = scan_windows(first, TODAY, (*SMS_OFFSETS, *CALL_OFFSETS))

    # Then a license is in a window exactly when one of its reminder dates is in the span
    for days_left in range(-50, 80):
        expires_on = TODAY + dt.timedelta(days=days_left)
        dated = any(
            first <= expires_on - dt.timedelta(days=o) <= TODAY
            for o in (*SMS_OFFSETS, *CALL_OFFSETS)
        )
        inside = any(lo <= expires_on <= hi for lo, hi in windows)
        assert inside == dated, days_left


# ---- license_state_data: the stream's JSON of the same job, built without the model ----------
def test_license_state_data_is_the_jobs_json_key_for_key() -> None:
    # Given every event of a generated registry (issued, renewed, revoked) as the stream parses
    # it, at times with and without microseconds, in UTC and in Shanghai time
    events = [parse_event(e.to_json_bytes()) for e in generate_registry(400, TODAY).events]
    kinds = {e.event_type for e in events}
    assert {"license.issued", "license.revoked"} <= kinds
    times = [T0, T0.replace(microsecond=123456), dt.datetime(2026, 5, 1, 17, 0, 0, 5, SHANGHAI)]
    for event, at in itertools.product(events, times):
        env = event.envelope
        args = (event.event_type, env.payload, at)
        ids = {"event_id": event.event_id, "source": env.source}

        # When the stream builds the job's data directly
        data = license_state_data(*args, **ids)

        # Then it is what the validated model dumps, in the same key order
        dumped = license_state_job(*args, **ids).model_dump(mode="json")
        assert data == dumped and list(data) == list(dumped)
        # and the worker takes it as that job
        assert LicenseStateJob.model_validate(data) == license_state_job(*args, **ids)


def test_license_state_data_refuses_what_the_model_refuses() -> None:
    with pytest.raises(ValueError, match="not a license event"):
        license_state_data("case.completed", _payload(), T0)
    with pytest.raises(ValueError, match="timezone-aware"):
        license_state_data("license.issued", _payload(), dt.datetime(2026, 5, 1, 9))
