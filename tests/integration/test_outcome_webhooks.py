"""Outcome webhooks (workers.outcomes) on a real PostgreSQL, POSTing to a loopback receiver.

Notifications caused by a source's events reach a final status; the scheduler's steps enrol
them and POST a small signed JSON to the source's outcome URL: the signature verifies with the
key ``govnotify sources`` printed, a receiver's 500 is retried, a receiver that keeps failing
ends in a dead letter that a replay sends again, and schedulers running side by side post each
report once.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, update

from infra.db import session
from infra.deadletters import replay_letter
from infra.settings import Settings, load_settings
from infra.sources import add_source, outcome_key, set_outcome_url
from schemas.models import DeadLetter, Notification, OperatorAudit, OutcomeReport, utcnow
from tests.fakes.webhook_server import FakeWebhook
from tests.support import Pipeline, env_for, free_ports, run_cli
from workers import outcomes

pytestmark = pytest.mark.integration

SOURCE = "permit-portal"
MASTER = "outcome-master-key-for-tests-0123456789"
MOBILE = "+8613800138000"


@pytest.fixture
def receiver() -> Iterator[FakeWebhook]:
    with FakeWebhook() as fake:
        yield fake


@pytest.fixture
def out_settings(
    namespace: str, database_url: str, tmp_path: Path, receiver: FakeWebhook
) -> Settings:
    """Settings on this test's migrated database, a master key, three attempts; the source
    reports to the receiver."""
    settings = load_settings(
        namespace=namespace,
        data_dir=tmp_path / "data",
        database_url=database_url,
        outcome_signing_key=MASTER,
        outcome_max_attempts=3,
        outcome_retry_s=10,
        **free_ports(),
    )
    with session(settings) as s:
        add_source(s, SOURCE, ["license.issued"], amqp_user=None, http_token=True, operator="t")
        add_source(s, "quiet-source", ["case.submitted"], amqp_user=None, http_token=True,
                   operator="t")  # fmt: skip
        s.commit()
        set_outcome_url(settings, s, SOURCE, receiver.url("/outcomes"), operator="t")
    return settings


def final(
    settings: Settings, status: str = "delivered", source: str = SOURCE, **row: object
) -> str:
    """A notification an event of ``source`` caused, already in ``status``."""
    note = Notification(
        idempotency_key=f"renewal:{uuid.uuid4().hex}",
        flow="renewal",
        channel="sms",
        subject_id="LIC-1",
        recipient=MOBILE,
        body="【长安政务】您的许可证即将到期",
        status=status,
        event_id=str(uuid.uuid4()),
        event_source=source,
        **row,
    )
    with session(settings) as s:
        s.add(note)
        s.commit()
    return note.id


def reports(settings: Settings) -> dict[str, OutcomeReport]:
    with session(settings) as s:
        return {r.notification_id: r for r in s.execute(select(OutcomeReport)).scalars()}


def later(settings: Settings) -> dt.datetime:
    """An instant after every pending report's next attempt is due."""
    with session(settings) as s:
        rows = s.execute(select(OutcomeReport.next_at)).scalars().all()
    return max([utcnow(), *rows]) + dt.timedelta(seconds=1)


def test_a_final_status_is_posted_once_signed_without_personal_data(
    out_settings: Settings, receiver: FakeWebhook
) -> None:
    # Given a delivered and a failed notification of the source, one of a source without an
    # outcome URL, and one of the source still on its way
    delivered = final(out_settings)
    failed = final(
        out_settings,
        "permanent-failure",
        status_reason="invalid_number: 21211 The 'To' number +8613800138000 is not valid",
        error_code="21211",
    )
    final(out_settings, source="quiet-source")
    final(out_settings, "sent")

    # When the scheduler's steps run (twice: the second finds nothing more to do)
    outcomes.tick(out_settings)
    outcomes.tick(out_settings)

    # Then the source got one POST per final notification, signed with its key, and nothing
    # personal in it
    got = receiver.wait_for(2)
    assert len(receiver.requests) == 2
    key = outcome_key(out_settings, SOURCE)
    for request in got:
        stamp = request.header("X-Govnotify-Timestamp") or ""
        expected = hmac.new(key.encode(), stamp.encode() + b"." + request.raw, hashlib.sha256)
        assert request.header("X-Govnotify-Signature") == f"sha256={expected.hexdigest()}"
        assert request.route == "/outcomes"
        assert b"13800138000" not in request.raw and "长安".encode() not in request.raw
    bodies = {r.body["notification_id"]: r.body for r in got}
    assert set(bodies) == {delivered, failed}
    assert bodies[failed]["status"] == "permanent-failure"
    assert bodies[failed]["reason"] == "invalid_number"
    assert bodies[failed]["error_code"] == "21211"
    assert set(bodies[delivered]) == {
        "event_id", "notification_id", "flow", "status", "reason", "error_code", "at"
    }  # fmt: skip
    assert {r.state for r in reports(out_settings).values()} == {"reported"}
    # and a signature made with another key would not verify
    wrong = hmac.new(b"x" * 64, b"1." + got[0].raw, hashlib.sha256).hexdigest()
    assert got[0].header("X-Govnotify-Signature") != f"sha256={wrong}"


def test_a_receiver_error_is_retried_later(out_settings: Settings, receiver: FakeWebhook) -> None:
    # Given a delivered notification and a receiver that answers its first POST with a 500
    note = final(out_settings)
    receiver.fail_next(1, 500)

    # When the scheduler ticks, and again once the retry is due
    first = outcomes.tick(out_settings)
    pending = reports(out_settings)[note]
    again = outcomes.post_due(out_settings, now=lambda: later(out_settings))

    # Then the first attempt failed and was kept for later, the second was reported: the same
    # delivery id both times
    assert (first.failed, first.reported) == (1, 0)
    assert pending.state == "pending" and pending.attempts == 1
    assert pending.last_error == "HTTP 500"
    assert pending.next_at > utcnow()
    assert again.reported == 1
    ids = {r.header("X-Govnotify-Delivery") for r in receiver.wait_for(2)}
    assert ids == {pending.id}
    assert reports(out_settings)[note].state == "reported"


def test_a_receiver_failing_every_attempt_leaves_a_dead_letter_that_replays(
    out_settings: Settings, receiver: FakeWebhook
) -> None:
    # Given a delivered notification and a receiver failing three times (the most attempts)
    note = final(out_settings)
    receiver.fail_next(3, 503)

    # When the scheduler tries each time the report is due
    outcomes.enrol(out_settings)
    results = [outcomes.post_due(out_settings, now=lambda: later(out_settings)) for _ in range(3)]

    # Then the report is dead, kept as a dead letter, and nothing is posted any more
    assert [(r.failed, r.dead) for r in results] == [(1, 0), (1, 0), (0, 1)]
    assert reports(out_settings)[note].state == "dead"
    assert outcomes.post_due(out_settings, now=lambda: later(out_settings)).total == 0
    with session(out_settings) as s:
        letter = s.execute(select(DeadLetter).where(DeadLetter.stage == "outcome")).scalar_one()
    assert (letter.reason, letter.event_type) == ("out_of_attempts", "renewal")
    assert "13800138000" not in letter.detail

    # When the letter is replayed and the scheduler ticks
    replayed = replay_letter(out_settings, letter)
    after = outcomes.post_due(out_settings, now=lambda: later(out_settings))

    # Then the receiver got it after all
    assert replayed.result == "replayed", replayed.detail
    assert after.reported == 1
    assert reports(out_settings)[note].state == "reported"
    assert len(receiver.wait_for(4)) == 4


def test_schedulers_side_by_side_post_each_report_once(
    out_settings: Settings, receiver: FakeWebhook
) -> None:
    # Given many final notifications and a receiver slow enough that the schedulers overlap
    notes = {final(out_settings) for _ in range(24)}
    receiver.delay_next(24, 0.02)

    # When four schedulers enrol and post at once, a few at a time, until none has work left
    def scheduler() -> None:
        while True:
            outcomes.enrol(out_settings, limit=5)
            if outcomes.post_due(out_settings, limit=3).total == 0 and not _owed(out_settings):
                return

    threads = [threading.Thread(target=scheduler) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    # Then every notification was reported exactly once
    assert not any(thread.is_alive() for thread in threads)
    posted = [r.body["notification_id"] for r in receiver.wait_for(24)]
    assert sorted(posted) == sorted(notes)
    assert len(reports(out_settings)) == 24
    assert {r.state for r in reports(out_settings).values()} == {"reported"}


def _owed(settings: Settings) -> bool:
    """Whether anything is left to enrol or post."""
    with session(settings) as s:
        unjudged = s.execute(
            select(Notification.id).where(
                Notification.event_id.is_not(None), Notification.outcome_status.is_(None)
            )
        ).first()
        pending = s.execute(
            select(OutcomeReport.id).where(OutcomeReport.state == "pending")
        ).first()
    return unjudged is not None or pending is not None


def test_a_notification_final_again_after_a_replay_is_reported_again(
    out_settings: Settings, receiver: FakeWebhook
) -> None:
    # Given a notification reported as a temporary failure, then re-opened and delivered
    note = final(out_settings, "temporary-failure")
    outcomes.tick(out_settings)
    with session(out_settings) as s:
        s.execute(update(Notification).where(Notification.id == note).values(status="delivered"))
        s.commit()

    # When the scheduler ticks again
    outcomes.tick(out_settings)

    # Then the source heard both statuses, in order
    got = receiver.wait_for(2)
    assert [r.body["status"] for r in got] == ["temporary-failure", "delivered"]


def test_sources_commands_print_the_key_once_and_audit_a_reprint(out_settings: Settings) -> None:
    # Given the CLI's environment with the master key
    env = env_for(out_settings) | {"GOVNOTIFY_OUTCOME_SIGNING_KEY": MASTER}

    # When an operator sets an outcome URL, reprints the key, adds the hotline with both
    # powers, and tries a URL that is refused
    set_url = run_cli(
        "sources", "set-outcome", "quiet-source", "https://cases.example.gov.cn/outcomes",
        "--operator", "ops1", env=env,
    )  # fmt: skip
    reprint = run_cli("sources", "outcome-key", "quiet-source", "--operator", "ops2", env=env)
    added = run_cli(
        "sources", "add", "hotline-12345", "--types", "case.submitted", "--http-token",
        "--trace-any", "--outcome-url", "https://hotline.example.gov.cn/o", env=env,
    )  # fmt: skip
    ftp = run_cli("sources", "set-outcome", "quiet-source", "ftp://x.example/", env=env)
    listed = json.loads(run_cli("sources", "list", "--json", env=env).stdout)

    # Then the key printed is the derived one, the reprint is recorded, the bad URL refused
    key = outcome_key(out_settings, "quiet-source")
    assert set_url.returncode == 0, set_url.stderr
    assert f"Outcome signing key: {key}" in set_url.stdout
    assert reprint.returncode == 0 and reprint.stdout.strip() == key
    assert ftp.returncode == 2 and "must be http:// or https://" in ftp.stderr
    assert added.returncode == 0, added.stderr
    assert "Trace: its token may trace any id" in added.stdout
    assert f"Outcome signing key: {outcome_key(out_settings, 'hotline-12345')}" in added.stdout
    by_name = {row["name"]: row for row in listed["sources"]}
    assert by_name["hotline-12345"]["trace_any"] is True
    assert by_name["quiet-source"]["trace_any"] is False
    assert by_name["quiet-source"]["outcome_url"] == "https://cases.example.gov.cn/outcomes"
    with session(out_settings) as s:
        rows = s.execute(select(OperatorAudit)).scalars().all()
    audits = [(a.operator, a.action, a.subject) for a in rows]
    details = " ".join(a.detail for a in rows)
    assert ("ops1", "sources.set-outcome", "quiet-source") in audits
    assert ("ops2", "sources.outcome-key", "quiet-source") in audits
    assert key not in details and "/outcomes" not in details


def test_the_scheduler_process_reports_outcomes(
    settings: Settings, pipeline: Pipeline, receiver: FakeWebhook
) -> None:
    # Given a source reporting to the receiver, a scheduler process with the master key, and a
    # notification of that source's event that was delivered
    pipeline.set_env(GOVNOTIFY_OUTCOME_SIGNING_KEY=MASTER)
    keyed = settings.model_copy(update={"outcome_signing_key": MASTER})
    with session(keyed) as s:
        add_source(s, SOURCE, ["license.issued"], amqp_user=None, http_token=True, operator="t")
        s.commit()
        set_outcome_url(keyed, s, SOURCE, receiver.url("/outcomes"), operator="t")
    note = final(keyed)

    # When the scheduler runs
    pipeline.scheduler()

    # Then the receiver hears of it, signed with the source's key
    got = receiver.wait_for(1, timeout=60)
    assert got[0].body["notification_id"] == note
    stamp = got[0].header("X-Govnotify-Timestamp") or ""
    assert got[0].header("X-Govnotify-Signature") == outcomes.sign(
        outcome_key(keyed, SOURCE), stamp, got[0].raw
    )
