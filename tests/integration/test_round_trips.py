"""The worker's PostgreSQL round trips per SMS: a budget, counted, so a regression shows.

One SMS goes through the real actors on dramatiq's ``StubBroker`` (tests/support/stub_worker.py)
against the real PostgreSQL database, with the sandbox provider. SQLAlchemy's engine events
count what the worker sends while it runs: statements, pool checkouts (each with the pool's
pre-ping ``SELECT 1``, which the events do not see), ``BEGIN``, ``COMMIT`` and ``ROLLBACK``.
Counts, not times (docs/perf/where-the-time-goes.md, "Change 2, done"): before that change a
renewal reminder took 11 statements, 6 checkouts, 6 transactions, 4 commits and 2 rollbacks.

Where each count comes from, for one reminder that is sent:

- checkout 1, one transaction, one commit: ``INSERT … RETURNING``, the recipient's advisory
  lock, the license ``FOR SHARE``, opt-out, suppression, today's count, the claim ``UPDATE``;
- the provider call, holding no connection;
- checkout 2, two transactions: the outcome ``UPDATE`` (commit), then the pending-reports read
  (its own transaction on purpose, committed: see ``workers.delivery.deliver_claimed``).

A batch of reminders (``send_renewal_reminders``, how the queues carry them) takes the same
statements for all its messages: each one covers the whole batch.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import event, select

from infra.db import get_engine, session
from infra.settings import Settings, load_settings
from schemas.commands import LicenseStateJob
from schemas.models import LicenseRecord, Notification, NotificationStatus, utcnow
from tests.support.stub_worker import actors_on_stub_broker
from workers import ledger
from workers.context import WorkerContext
from workers.delivery import deliver_notification
from workers.reminders import record_licenses, send_renewal_reminder, send_renewal_reminders
from workers.renewal_rules import due_renewal_jobs

pytestmark = pytest.mark.integration

CST = dt.timezone(dt.timedelta(hours=8))
#: A weekday morning: no quiet hours.
NOW = dt.datetime(2026, 11, 26, 10, 0, tzinfo=CST)
EXPIRES = NOW.date() + dt.timedelta(days=30)
MOBILE = "+8613900000777"

#: The budget per SMS sent. Statements are SQLAlchemy's (the pre-pings are the checkouts).
REMINDER_BUDGET = {"statements": 9, "checkouts": 2, "begins": 3, "commits": 3, "rollbacks": 0}
#: A persisted row by id (sweep, scheduler, replay): the row is read instead of inserted.
DELIVERY_BUDGET = {"statements": 9, "checkouts": 2, "begins": 3, "commits": 3, "rollbacks": 0}
#: A reminder's job delivered again after its SMS went: an INSERT that makes nothing, one read.
REPLAY_BUDGET = {"statements": 2, "checkouts": 1, "begins": 1, "commits": 0, "rollbacks": 1}


@pytest.fixture
def test_settings(database_url: str, tmp_path: Path) -> Settings:
    return load_settings(
        namespace="trtrips",
        data_dir=tmp_path / "data",
        database_url=database_url,
        today=NOW.date(),
        now=NOW,
        renewal_settle_s=1,  # record_licenses schedules its jobs, it does not send them
    )


@pytest.fixture
def stub(test_settings: Settings) -> Iterator[StubBroker]:
    with actors_on_stub_broker(WorkerContext(test_settings)) as broker:
        yield broker


@contextlib.contextmanager
def counting(settings: Settings) -> Iterator[Counter[str]]:
    """What the engine of ``settings`` sends while the block runs (every thread)."""
    engine = get_engine(settings.resolved_database_url)
    counts: Counter[str] = Counter()

    def statement(*_args: Any) -> None:
        counts["statements"] += 1

    def checkout(*_args: Any) -> None:
        counts["checkouts"] += 1

    listeners: list[tuple[Any, str, Any]] = [
        (engine, "before_cursor_execute", statement),
        (engine, "begin", lambda _c: counts.update(["begins"])),
        (engine, "commit", lambda _c: counts.update(["commits"])),
        (engine, "rollback", lambda _c: counts.update(["rollbacks"])),
        (engine.pool, "checkout", checkout),
    ]
    for target, name, fn in listeners:
        event.listen(target, name, fn)
    try:
        yield counts
    finally:
        for target, name, fn in listeners:
            event.remove(target, name, fn)


def _license(stub: StubBroker) -> LicenseStateJob:
    state = LicenseStateJob(
        license_id="LIC-RT-1",
        status="live",
        category="food_business",
        holder_name="张三",
        holder_mobile=MOBILE,
        issuing_department="市场监督管理局",
        issued_on=dt.date(2021, 12, 26),
        expires_on=EXPIRES,
        state_at=NOW - dt.timedelta(hours=1),
    )
    record_licenses.send([state.model_dump(mode="json")])
    stub.join(record_licenses.queue_name, fail_fast=True)
    return state


def _reminder_job(settings: Settings) -> dict[str, Any]:
    with session(settings) as s:
        record = s.get(LicenseRecord, "LIC-RT-1")
        assert record is not None
        [job] = due_renewal_jobs(record, NOW.date(), settings.renewal_sms_offsets, [])
    return job.model_dump(mode="json")


def _statuses(settings: Settings) -> list[str]:
    with session(settings) as s:
        statuses = s.execute(select(Notification.status)).scalars()
        return [NotificationStatus(status).value for status in statuses]


def _within(counts: Counter[str], budget: dict[str, int]) -> dict[str, int]:
    return {name: counts[name] for name in budget}


def test_a_renewal_reminder_stays_within_its_round_trip_budget(
    test_settings: Settings, stub: StubBroker
) -> None:
    # Given: a live license due its 30-day reminder today, and the reminder's job
    _license(stub)
    job = _reminder_job(test_settings)

    # When: the worker sends it, counted
    with counting(test_settings) as counts:
        send_renewal_reminder.send(job)
        stub.join(send_renewal_reminder.queue_name, fail_fast=True)

    # Then: sent, within the budget
    assert _statuses(test_settings) == ["delivered"]
    assert _within(counts, REMINDER_BUDGET) == REMINDER_BUDGET


def test_a_replayed_reminder_sends_nothing_and_reads_once(
    test_settings: Settings, stub: StubBroker
) -> None:
    # Given: a reminder already sent
    _license(stub)
    job = _reminder_job(test_settings)
    send_renewal_reminder.send(job)
    stub.join(send_renewal_reminder.queue_name, fail_fast=True)

    # When: its job comes again (a redelivery), counted
    with counting(test_settings) as counts:
        send_renewal_reminder.send(job)
        stub.join(send_renewal_reminder.queue_name, fail_fast=True)

    # Then: one row, one SMS; the replay was an INSERT that made nothing and one read
    assert len(_statuses(test_settings)) == 1
    assert _within(counts, REPLAY_BUDGET) == REPLAY_BUDGET


def test_delivering_a_persisted_notification_stays_within_its_round_trip_budget(
    test_settings: Settings, stub: StubBroker
) -> None:
    # Given: a `created` reminder row (as the sweep or a held delivery finds it)
    _license(stub)
    key = f"renewal:sms:LIC-RT-1:{EXPIRES.isoformat()}:30"
    notification_id = uuid.uuid4().hex
    with session(test_settings) as s:
        assert ledger.insert_ignore(
            s,
            Notification.__table__,
            {
                "id": notification_id,
                "idempotency_key": key,
                "flow": "renewal",
                "channel": "sms",
                "subject_id": "LIC-RT-1",
                "recipient": MOBILE,
                "body": "【长安政务】您的许可证将于30天后到期。",
                "status": NotificationStatus.CREATED.value,
                "segments": 1,
                "attempts": 0,
                "category": "reminders",
                "event_at": NOW - dt.timedelta(hours=1),
                "created_at": utcnow(),
                "updated_at": utcnow(),
            },
            "idempotency_key",
        )

    # When: deliver_notification runs for it, counted
    with counting(test_settings) as counts:
        deliver_notification.send(notification_id)
        stub.join(deliver_notification.queue_name, fail_fast=True)

    # Then: sent, within the budget (the row read replaces the INSERT)
    assert _statuses(test_settings) == ["delivered"]
    assert _within(counts, DELIVERY_BUDGET) == DELIVERY_BUDGET


def test_a_batch_of_reminders_takes_the_round_trips_of_one(
    test_settings: Settings, stub: StubBroker
) -> None:
    # Given: 100 live licenses, each due its 30-day reminder today, to 100 citizens
    states = [
        LicenseStateJob(
            license_id=f"LIC-RTB-{i:03d}",
            status="live",
            category="food_business",
            holder_name="张三",
            holder_mobile=f"+86139000{i:05d}",
            issuing_department="市场监督管理局",
            issued_on=dt.date(2021, 12, 26),
            expires_on=EXPIRES,
            state_at=NOW - dt.timedelta(hours=1),
        )
        for i in range(100)
    ]
    record_licenses.send([state.model_dump(mode="json") for state in states])
    stub.join(record_licenses.queue_name, fail_fast=True)
    with session(test_settings) as s:
        records = s.execute(select(LicenseRecord)).scalars().all()
        jobs = [
            job.model_dump(mode="json")
            for record in records
            for job in due_renewal_jobs(record, NOW.date(), test_settings.renewal_sms_offsets, [])
        ]
    assert len(jobs) == 100

    # When: one batch job carries them all, counted
    with counting(test_settings) as counts:
        send_renewal_reminders.send(jobs)
        stub.join(send_renewal_reminders.queue_name, fail_fast=True)

    # Then: all 100 sent, within the budget of one reminder
    assert _statuses(test_settings) == ["delivered"] * 100
    assert _within(counts, REMINDER_BUDGET) == REMINDER_BUDGET
