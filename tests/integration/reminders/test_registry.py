"""The license registry in PostgreSQL: a newer state wins, whatever order the events arrive in.

``record_licenses`` runs on dramatiq's ``StubBroker`` in this process (tests/support/
stub_worker.py), with this test's settings passed in, against the real PostgreSQL database.
The expiries lie years ahead of the pinned day, so no reminder is due and no job leaves.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dramatiq.brokers.stub import StubBroker
from sqlmodel import select

from infra.db import session
from infra.settings import Settings, load_settings
from schemas.commands import LicenseStateJob
from schemas.models import DeadLetter, LicenseRecord
from tests.support.stub_worker import actors_on_stub_broker
from workers.context import WorkerContext
from workers.reminders import record_licenses

pytestmark = pytest.mark.integration

CST = dt.timezone(dt.timedelta(hours=8))
ISSUED_AT = dt.datetime(2026, 6, 1, 9, 0, tzinfo=CST)


@pytest.fixture
def test_settings(database_url: str, tmp_path: Path) -> Settings:
    return load_settings(
        namespace="tregistry",
        data_dir=tmp_path / "data",
        database_url=database_url,
        today=dt.date(2026, 6, 1),
    )


@pytest.fixture
def stub(test_settings: Settings) -> Iterator[StubBroker]:
    with actors_on_stub_broker(WorkerContext(test_settings)) as broker:
        yield broker


def state(status: str, expires_on: dt.date, minutes_later: int) -> dict[str, Any]:
    return LicenseStateJob(
        license_id="LIC-1",
        status=status,
        category="food_business",
        holder_name="张三" if status == "live" else "",
        holder_mobile="+8613900000001" if status == "live" else "",
        issuing_department="市场监督管理局",
        issued_on=dt.date(2026, 6, 1) if status == "live" else None,
        expires_on=expires_on,
        state_at=ISSUED_AT + dt.timedelta(minutes=minutes_later),
    ).model_dump(mode="json")


def record(settings: Settings) -> LicenseRecord | None:
    with session(settings) as s:
        return s.get(LicenseRecord, "LIC-1")


ISSUED = ("live", dt.date(2031, 6, 1), 0)
RENEWED = ("live", dt.date(2036, 6, 1), 10)
REVOKED = ("revoked", dt.date(2026, 7, 1), 20)


@pytest.mark.parametrize(
    ("arrivals", "expected"),
    [
        ([ISSUED, RENEWED], ("live", dt.date(2036, 6, 1))),
        ([RENEWED, ISSUED], ("live", dt.date(2036, 6, 1))),  # a late issue changes nothing
        ([ISSUED, REVOKED], ("revoked", dt.date(2031, 6, 1))),  # keeps the license's expiry
        # never seen: recorded revoked (on the revocation date), so a late issue stays dead
        ([REVOKED, ISSUED], ("revoked", dt.date(2026, 7, 1))),
        ([REVOKED, RENEWED, ISSUED], ("revoked", dt.date(2026, 7, 1))),
        ([ISSUED, RENEWED, ISSUED, RENEWED], ("live", dt.date(2036, 6, 1))),  # replays
    ],
    ids=["in-order", "renewal-first", "revoked", "revoked-first", "reversed", "replayed"],
)
def test_the_newest_state_wins_in_any_arrival_order(
    test_settings: Settings, stub: StubBroker, arrivals: list, expected: tuple
) -> None:
    # Given the actors on the stub broker
    # When each state arrives in its own job, in this order
    for status, expires_on, minutes_later in arrivals:
        record_licenses.send([state(status, expires_on, minutes_later)])
        stub.join(record_licenses.queue_name, fail_fast=True)

    # Then the registry holds the newest one
    row = record(test_settings)
    assert row is not None
    assert (row.status, row.expires_on) == expected
    assert row.last_event_at == ISSUED_AT + dt.timedelta(minutes=max(a[2] for a in arrivals))


def test_a_malformed_state_in_a_batch_is_a_dead_letter_and_the_others_are_recorded(
    test_settings: Settings, stub: StubBroker
) -> None:
    # Given a batch with one state whose mobile is a landline
    bad = {**state(*ISSUED), "license_id": "LIC-BAD", "holder_mobile": "+86291234567"}

    # When
    record_licenses.send([bad, state(*RENEWED)])
    stub.join(record_licenses.queue_name, fail_fast=True)

    # Then
    row = record(test_settings)
    assert row is not None and row.expires_on == dt.date(2036, 6, 1)
    with session(test_settings) as s:
        letters = list(s.exec(select(DeadLetter)))
        bad_row = s.get(LicenseRecord, "LIC-BAD")
    assert [(d.stage, d.reason, d.event_type) for d in letters] == [
        ("job", "invalid_job", "record_licenses")
    ]
    assert bad_row is None
