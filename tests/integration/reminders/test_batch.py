"""Renewal reminders in batches (``send_renewal_reminders``): one transaction claims them all,
and each message still gets exactly what it would have got alone.

The queues carry reminders ``GOVNOTIFY_JOB_BATCH_SIZE`` to a job (``infra.jobs.batched``); the
worker inserts, checks and claims a batch with a fixed number of statements
(``workers.ledger.claim_many_for_send``). These tests hold it to the rules of one message:
opt-out, suppression, the daily cap counted across the batch, the license check, a key given
twice, a job already sent, a malformed job; and to exactly once when two batches that share
citizens and licenses run at the same time in opposite orders (no deadlock either).

Actors on dramatiq's ``StubBroker`` (tests/support/stub_worker.py, two worker threads), real
PostgreSQL, the sandbox provider (its outbox is what was "sent").
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import event, exists, select, text, update
from sqlalchemy.orm import Session

from infra.db import session
from infra.settings import Settings, load_settings
from notifiers.registry import SANDBOX_OUTBOX
from notifiers.sms.sandbox import read_outbox
from schemas.commands import LicenseStateJob
from schemas.models import (
    DeadLetter,
    LicenseRecord,
    Notification,
    OptOut,
    ScheduledJob,
    Suppression,
)
from tests.support.stub_worker import actors_on_stub_broker
from workers.context import WorkerContext
from workers.delivery import deliver_notification
from workers.reminders import record_licenses, send_renewal_reminders
from workers.renewal_rules import due_renewal_jobs

pytestmark = pytest.mark.integration

CST = dt.timezone(dt.timedelta(hours=8))
#: A weekday morning: no quiet hours.
NOW = dt.datetime(2026, 11, 26, 10, 0, tzinfo=CST)
EXPIRES = NOW.date() + dt.timedelta(days=30)


@pytest.fixture
def test_settings(database_url: str, tmp_path: Path) -> Settings:
    return load_settings(
        namespace="tbatch",
        data_dir=tmp_path / "data",
        database_url=database_url,
        today=NOW.date(),
        now=NOW,
        sms_daily_cap=5,
        renewal_settle_s=1,  # record_licenses schedules its jobs; the tests send them
    )


@pytest.fixture
def stub(test_settings: Settings) -> Iterator[StubBroker]:
    with actors_on_stub_broker(WorkerContext(test_settings)) as broker:
        yield broker


def _register(stub: StubBroker, licenses: dict[str, str]) -> None:
    """Live licenses (id → holder's mobile), each due its 30-day reminder today."""
    states = [
        LicenseStateJob(
            license_id=license_id,
            status="live",
            category="food_business",
            holder_name="张三",
            holder_mobile=mobile,
            issuing_department="市场监督管理局",
            issued_on=dt.date(2021, 12, 26),
            expires_on=EXPIRES,
            state_at=NOW - dt.timedelta(hours=1),
        )
        for license_id, mobile in licenses.items()
    ]
    record_licenses.send([state.model_dump(mode="json") for state in states])
    stub.join(record_licenses.queue_name, fail_fast=True)


def _jobs(settings: Settings, license_ids: list[str]) -> list[dict[str, Any]]:
    """The reminder jobs of these licenses, in this order."""
    with session(settings) as s:
        records = {r.license_id: r for r in s.execute(select(LicenseRecord)).scalars()}
        return [
            job.model_dump(mode="json")
            for license_id in license_ids
            for job in due_renewal_jobs(
                records[license_id], NOW.date(), settings.renewal_sms_offsets, []
            )
        ]


def _outcomes(settings: Settings) -> dict[str, tuple[str, str | None]]:
    with session(settings) as s:
        return {
            row.subject_id: (row.status, row.status_reason)
            for row in s.execute(select(Notification)).scalars()
        }


def _sent(settings: Settings) -> Counter[str]:
    """How many SMS the sandbox took, per recipient."""
    path = settings.data_dir / SANDBOX_OUTBOX
    return Counter(record["to"] for record in read_outbox(path)) if path.exists() else Counter()


def test_each_message_of_a_batch_gets_the_rules_it_would_get_alone(
    test_settings: Settings, stub: StubBroker
) -> None:
    # Given: in one batch, in this order —
    #   seven reminders to one citizen (the cap is 5 a day: the 6th and 7th wait),
    #   one to a citizen who opted out of reminders, one to a suppressed number,
    #   one whose license was renewed after its job was made, one already sent,
    #   one plain one given twice, a malformed job, and one whose text is refused
    capped = {f"LIC-CAP-{i}": "+8613900000100" for i in range(7)}
    others = {
        "LIC-OPT": "+8613900000200",
        "LIC-SUP": "+8613900000300",
        "LIC-REN": "+8613900000400",
        "LIC-DONE": "+8613900000500",
        "LIC-TWICE": "+8613900000600",
    }
    _register(stub, {**capped, **others})
    with session(test_settings) as s:
        s.add(OptOut(recipient="+8613900000200", category="reminders"))
        s.add(
            Suppression(
                recipient="+8613900000300",
                category="reminders",
                reason="invalid number",
                status="active",
            )
        )
        s.commit()
    done = _jobs(test_settings, ["LIC-DONE"])
    send_renewal_reminders.send(done)
    stub.join(send_renewal_reminders.queue_name, fail_fast=True)
    jobs = _jobs(test_settings, [*capped, *others])
    jobs.append(_jobs(test_settings, ["LIC-TWICE"])[0])
    jobs.append({"license_id": "LIC-BAD"})
    # a well-formed job whose text would carry something like a phone number
    unsafe = {**jobs[0], "license_id": "LIC1-0000400", "idempotency_key": "renewal:sms:LIC1:x:30"}
    jobs.append(unsafe)
    with session(test_settings) as s:
        s.execute(
            update(LicenseRecord)
            .where(LicenseRecord.license_id == "LIC-REN")
            .values(
                expires_on=EXPIRES + dt.timedelta(days=1826),
                last_event_at=NOW - dt.timedelta(minutes=5),
            )
        )
        s.commit()

    # When: one batch job carries them all
    send_renewal_reminders.send(jobs)
    stub.join(send_renewal_reminders.queue_name, fail_fast=True)

    # Then: each message got its own rule
    outcomes = _outcomes(test_settings)
    cap = [outcomes[f"LIC-CAP-{i}"] for i in range(7)]
    assert cap[:5] == [("delivered", None)] * 5
    assert cap[5:] == [("created", "daily cap")] * 2
    assert outcomes["LIC-OPT"] == ("suppressed", "opted out")
    assert outcomes["LIC-SUP"] == ("suppressed", "number suppressed: invalid number")
    assert outcomes["LIC-REN"] == ("cancelled", "license renewed")
    assert outcomes["LIC-DONE"][0] == "delivered"
    assert outcomes["LIC-TWICE"][0] == "delivered"
    # the held two are scheduled for tomorrow; the malformed and the refused job are dead
    # letters of their own, and the others went all the same
    with session(test_settings) as s:
        held = s.execute(
            select(ScheduledJob.actor_name).where(ScheduledJob.key.like("deliver:%"))
        ).all()
        letters = s.execute(select(DeadLetter.reason, DeadLetter.event_type)).all()
    assert len(held) == 2
    assert sorted(tuple(letter) for letter in letters) == [
        ("invalid_job", "send_renewal_reminders"),
        ("unsafe_text", "send_renewal_reminders"),
    ]
    # and the provider took exactly one SMS per message sent: none twice, none to the refused
    assert _sent(test_settings) == Counter(
        {"+8613900000100": 5, "+8613900000500": 1, "+8613900000600": 1}
    )


def test_two_batches_sharing_citizens_in_opposite_orders_send_each_once_without_deadlock(
    test_settings: Settings, stub: StubBroker
) -> None:
    # Given: 60 licenses of 20 citizens (three each), all due today, and the same 60 reminder
    # jobs in two batches, one in the reverse order of the other
    licenses = {f"LIC-RACE-{i:02d}": f"+86139000{i % 20:05d}" for i in range(60)}
    _register(stub, licenses)
    jobs = _jobs(test_settings, list(licenses))
    with session(test_settings) as s:
        deadlocks_before = s.execute(
            text("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
        ).scalar_one()

    # When: both run at once on the worker's two threads
    send_renewal_reminders.send(jobs)
    send_renewal_reminders.send(jobs[::-1])
    stub.join(send_renewal_reminders.queue_name, fail_fast=True)

    # Then: each reminder is delivered once, each citizen got exactly three SMS
    outcomes = _outcomes(test_settings)
    assert len(outcomes) == 60
    assert set(outcomes.values()) == {("delivered", None)}
    assert _sent(test_settings) == Counter({mobile: 3 for mobile in set(licenses.values())})
    # and PostgreSQL broke no deadlock between them (the locks are taken in one order)
    with session(test_settings) as s:
        deadlocks_after = s.execute(
            text("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
        ).scalar_one()
    assert deadlocks_after == deadlocks_before


def test_a_batch_behind_a_slow_provider_hands_back_what_it_did_not_send_within_half_its_lease(
    test_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a provider that takes 4 SMS a second, and a sweep that takes a row still
    # `sending` after 2 s (its claim's lease) and, when the provider has no such message,
    # sends it again
    settings = load_settings(
        **{**test_settings.model_dump(), "send_rates": {"sandbox": 4}, "sweep_sending_after_s": 2}
    )
    licenses = {f"LIC-SLOW-{i}": f"+86139000007{i:02d}" for i in range(10)}
    with actors_on_stub_broker(WorkerContext(settings)) as stub:
        _register(stub, licenses)

        # When one batch claims all ten (2.5 s of sends at that pace)
        send_renewal_reminders.send(_jobs(settings, list(licenses)))
        stub.join(send_renewal_reminders.queue_name, fail_fast=True)
        handed_back = [r for r in caplog.records if "handed back" in r.getMessage()]
        stub.join(deliver_notification.queue_name, fail_fast=True)

    # Then no send began after half the lease: the rest went back to the queue, and each
    # citizen still got exactly one SMS
    assert handed_back, "the batch sent past half its lease"
    assert _sent(settings) == Counter(licenses.values())
    assert {status for status, _why in _outcomes(settings).values()} == {"delivered"}


def test_a_batch_held_by_the_quiet_hours_commits_each_message_with_its_release_job(
    test_settings: Settings,
) -> None:
    # Given 22:30 (quiet hours until 08:00), ten reminders due, and a watcher that after every
    # commit in this process reads, on a connection of its own, the held messages that have
    # no job to release them
    settings = load_settings(
        **{**test_settings.model_dump(), "now": NOW.replace(hour=22, minute=30)}
    )
    licenses = {f"LIC-NIGHT-{i}": f"+86139000008{i:02d}" for i in range(10)}
    unreleased = (
        select(Notification.id)
        .where(Notification.status == "created", Notification.not_before.is_not(None))
        .where(
            ~exists().where(
                ScheduledJob.key.like("deliver:" + Notification.id + ":%"),
                ScheduledJob.status == "pending",
            )
        )
    )
    seen: list[str] = []

    def watch(_session: Session) -> None:
        with session(settings) as other:
            seen.extend(other.scalars(unreleased))

    with actors_on_stub_broker(WorkerContext(settings)) as stub:
        _register(stub, licenses)

        # When one batch claims them all
        event.listen(Session, "after_commit", watch)
        try:
            send_renewal_reminders.send(_jobs(settings, list(licenses)))
            stub.join(send_renewal_reminders.queue_name, fail_fast=True)
        finally:
            event.remove(Session, "after_commit", watch)

    # Then all ten are held for 08:00, and no commit ever showed one without its release job
    assert {why for _status, why in _outcomes(settings).values()} == {"quiet hours"}
    with session(settings) as s:
        jobs = s.scalars(select(ScheduledJob.run_at).where(ScheduledJob.key.like("deliver:%")))
        assert {run_at.astimezone(CST).hour for run_at in jobs} == {8}
    assert seen == []
    assert _sent(settings) == Counter()
