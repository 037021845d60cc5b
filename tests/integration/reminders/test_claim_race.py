"""A renewal recorded while a reminder is being claimed: the reminder is cancelled, not sent.

The license check runs in the claim's transaction (``workers.reminders._stale_at_claim``) and
reads the license ``FOR SHARE``. A renewal being written at that moment (its row updated, not
yet committed, as ``record_licenses`` does) makes the claim wait for it and see it. Without the
lock the check would read the old row, claim and send, and the renewal's own cancellation would
then find the row `sending`, too late.

Actors on dramatiq's ``StubBroker`` (tests/support/stub_worker.py), real PostgreSQL; the renewal
is a transaction this test holds open on its own connection.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import select, text, update

from infra.db import get_engine, session
from infra.settings import Settings, load_settings
from schemas.commands import LicenseStateJob
from schemas.models import LicenseRecord, Notification
from tests.support.stub_worker import actors_on_stub_broker
from workers.context import WorkerContext
from workers.reminders import record_licenses, send_renewal_reminder
from workers.renewal_rules import due_renewal_jobs

pytestmark = pytest.mark.integration

CST = dt.timezone(dt.timedelta(hours=8))
NOW = dt.datetime(2026, 11, 26, 10, 0, tzinfo=CST)
EXPIRES = NOW.date() + dt.timedelta(days=30)


@pytest.fixture
def test_settings(database_url: str, tmp_path: Path) -> Settings:
    return load_settings(
        namespace="tclaimrace",
        data_dir=tmp_path / "data",
        database_url=database_url,
        today=NOW.date(),
        now=NOW,
        renewal_settle_s=1,  # record_licenses schedules its jobs; this test sends the one due
    )


@pytest.fixture
def stub(test_settings: Settings) -> Iterator[StubBroker]:
    with actors_on_stub_broker(WorkerContext(test_settings)) as broker:
        yield broker


def _waiting_on_a_lock(settings: Settings) -> bool:
    with session(settings) as s:
        return bool(
            s.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            ).scalar_one()
        )


def _notification(settings: Settings) -> Notification | None:
    with session(settings) as s:
        return s.execute(select(Notification)).scalars().first()


def test_a_renewal_written_during_the_claim_cancels_the_reminder(
    test_settings: Settings, stub: StubBroker
) -> None:
    # Given: a live license due its 30-day reminder today, and the reminder's job
    state = LicenseStateJob(
        license_id="LIC-RACE-1",
        status="live",
        category="food_business",
        holder_name="张三",
        holder_mobile="+8613900000778",
        issuing_department="市场监督管理局",
        issued_on=dt.date(2021, 12, 26),
        expires_on=EXPIRES,
        state_at=NOW - dt.timedelta(hours=1),
    )
    record_licenses.send([state.model_dump(mode="json")])
    stub.join(record_licenses.queue_name, fail_fast=True)
    with session(test_settings) as s:
        record = s.get(LicenseRecord, "LIC-RACE-1")
        assert record is not None
        [job] = due_renewal_jobs(record, NOW.date(), test_settings.renewal_sms_offsets, [])

    # And: a renewal being written, not yet committed
    engine = get_engine(test_settings.resolved_database_url)
    with engine.connect() as renewal:
        renewal.execute(
            update(LicenseRecord)
            .where(LicenseRecord.license_id == "LIC-RACE-1")
            .values(expires_on=EXPIRES + dt.timedelta(days=365 * 5), last_event_at=NOW)
        )

        # When: the reminder is sent meanwhile
        send_renewal_reminder.send(job.model_dump(mode="json"))
        deadline = time.monotonic() + 30
        while not _waiting_on_a_lock(test_settings) and _notification(test_settings) is None:
            assert time.monotonic() < deadline, "the reminder neither waited nor finished"
            time.sleep(0.05)
        # ... and the renewal commits
        renewal.commit()
    stub.join(send_renewal_reminder.queue_name, fail_fast=True)

    # Then: the reminder saw the renewal: cancelled, never claimed, never sent
    row = _notification(test_settings)
    assert row is not None
    assert (row.status, row.status_reason, row.attempts) == ("cancelled", "license renewed", 0)
