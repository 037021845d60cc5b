"""Dead letters on the real services: every stage lands in one table, `govnotify dead-letters`
lists, shows (masked), replays through the normal path and purges — and a replay never sends
a message twice."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from dramatiq.message import Message
from sqlalchemy import select, update

import workers.replay  # noqa: F401  (registers the delivery replayer, as `dead-letters` does)
from infra.db import session
from infra.deadletters import (
    find_letters,
    record_dead_letter,
    record_delivery_failure,
    replay_letter,
)
from infra.settings import Settings
from producers.generator import license_event
from producers.rabbitmq import Publisher
from producers.relay import green_channel_job
from schemas.events import make_event
from schemas.models import DeadLetter, Notification, NotificationStatus, StaffAlert, utcnow
from tests.fakes.twilio_server import FakeTwilio
from tests.fakes.webhook_server import FakeWebhook
from tests.support import Pipeline, env_for, metric, queue_depth, scrape, wait_until

pytestmark = pytest.mark.integration

CST = dt.timezone(dt.timedelta(hours=8))
#: Retries short and few: a job runs out of them in well under a second.
FAST_RETRIES = {
    "GOVNOTIFY_DELIVERY_MAX_RETRIES": "1",
    "GOVNOTIFY_DELIVERY_MIN_BACKOFF_MS": "10",
    "GOVNOTIFY_DELIVERY_MAX_BACKOFF_MS": "100",
}


# ---- fixtures and helpers -----------------------------------------------------------------------
def twilio_env(fake: FakeTwilio) -> dict[str, str]:
    return {
        "GOVNOTIFY_TWILIO_ACCOUNT_SID": fake.account_sid,
        "GOVNOTIFY_TWILIO_AUTH_TOKEN": fake.auth_token,
        "GOVNOTIFY_TWILIO_FROM": "+15017122661",
        "GOVNOTIFY_TWILIO_API_BASE": fake.base_url,
        # Whatever the wall clock says: these tests are not about quiet hours.
        "GOVNOTIFY_QUIET_HOURS": "off",
    }


def govnotify(settings: Settings, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
    """``govnotify <args>`` as an operator runs it, on ``settings``."""
    return subprocess.run(
        [sys.executable, "-m", "infra.cli", *args],
        env=env_for(settings, **extra),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def letters(settings: Settings, *where: Any) -> list[DeadLetter]:
    with session(settings) as s:
        return list(s.execute(select(DeadLetter).where(*where)).scalars())


def one_letter(settings: Settings, *where: Any) -> DeadLetter:
    [letter] = letters(settings, *where)
    return letter


def reopen(settings: Settings, letter_id: str) -> None:
    """Put a replayed letter back to open: what a stale or concurrent replay would see."""
    with session(settings) as s:
        s.execute(update(DeadLetter).where(DeadLetter.id == letter_id).values(status="open"))
        s.commit()


def processed(settings: Settings, actor: str) -> float:
    """Messages of ``actor`` the worker finished (successfully or not), from its metrics."""
    return metric(scrape(settings.worker_metrics_port), "dramatiq_messages_total", actor_name=actor)


def enqueue(settings: Settings, actor: str, *args: Any) -> None:
    """Put a job on its queue as the stream or the relay would."""
    from workers.broker import make_broker

    broker = make_broker(settings.amqp_url, queue_type=settings.rabbitmq_queue_type)
    try:
        broker.enqueue(
            Message(
                queue_name=settings.queue("alerts"),
                actor_name=actor,
                args=args,
                kwargs={},
                options={},
            )
        )
    finally:
        broker.close()


def special_group_case(case_id: str) -> dict[str, Any]:
    """The green-channel job the relay makes of an elderly applicant's case.submitted."""
    at = dt.datetime.now(CST)
    event = make_event(
        "case.submitted",
        {
            "case_id": case_id,
            "service_item": "食品经营许可证核发",
            "department": "市场监督管理局",
            "service_point": {
                "id": "SC-CHANGAN",
                "name": "长安区政务服务中心",
                "level": "service_centre",
            },
            "applicant": {
                "kind": "citizen",
                "name": "王秀英",
                "mobile": "13900000001",
                "age": 78,
                "special_groups": ["elderly"],
            },
            "key_project": False,
            "submitted_at": at.isoformat(),
        },
        source="case-system",
        occurred_at=at,
    )
    job = green_channel_job(event, elderly_age=70)
    assert job is not None and job[0] == "raise_green_channel_alert"
    return job[1]


def notification(settings: Settings, status: NotificationStatus, recipient: str) -> str:
    """A callback-flow SMS already in ``status`` (as the delivery worker leaves it)."""
    notification_id = uuid.uuid4().hex
    now = utcnow()
    with session(settings) as s:
        s.add(
            Notification(
                id=notification_id,
                idempotency_key=f"test:{notification_id}",
                flow="callback",
                channel="sms",
                subject_id=f"CASE-{notification_id[:6]}",
                recipient=recipient,
                body="【长安政务】您的项目管家将于三日内回访，请保持电话畅通。",
                segments=1,
                status=status,
                status_reason="retries exhausted: provider unavailable (code 503)",
                provider="twilio",
                category="callbacks",
                attempts=2,
                created_at=now,
                updated_at=now,
            )
        )
        s.commit()
    return notification_id


def status_of(settings: Settings, notification_id: str) -> str:
    with session(settings) as s:
        row = s.get(Notification, notification_id)
        assert row is not None
        return row.status


# ---- ingest -------------------------------------------------------------------------------------
def test_an_ingest_rejection_is_listed_shown_masked_and_stays_dead_after_replay(
    settings: Settings, pipeline: Pipeline
) -> None:
    # Given: the relay, and a license event that expires before it was issued
    pipeline.relay()
    envelope = json.loads(
        license_event(
            "license.issued",
            f"LIC-DL-{uuid.uuid4().hex[:6]}",
            category="food_business",
            holder_name="张三丰",
            holder_mobile="13800138000",
            issued_on=dt.date(2026, 6, 1),
            expires_on=dt.date(2027, 6, 1),
            occurred_at=dt.datetime(2026, 6, 1, 8, tzinfo=dt.UTC),
        ).to_json_bytes()
    )
    envelope["payload"]["expires_on"] = "2025-01-01"
    raw = json.dumps(envelope, ensure_ascii=False).encode()
    with Publisher.from_settings(settings) as publisher:
        publisher.publish_raw(raw, "license.issued")
    wait_until(lambda: letters(settings, DeadLetter.stage == "ingest"), 30, message="no letter")
    letter = one_letter(settings, DeadLetter.stage == "ingest")

    # When
    listed = govnotify(settings, "dead-letters", "list", "--stage", "ingest")
    shown = govnotify(settings, "dead-letters", "show", letter.id[:10])
    replayed = govnotify(settings, "dead-letters", "replay", letter.id[:10])

    # Then: listed and shown, the citizen's number and name never in clear
    assert listed.returncode == 0, listed.stderr
    assert letter.id[:12] in listed.stdout and "license.issued" in listed.stdout
    assert shown.returncode == 0, shown.stderr
    assert '"holder_mobile": "+86138****8000"' in shown.stdout, shown.stdout
    assert '"holder_name": "张**"' in shown.stdout
    assert "13800138000" not in shown.stdout + listed.stdout
    assert "张三丰" not in shown.stdout
    # … replayed through the exchange: the relay rejects it again, same row, count 2, open again
    assert replayed.returncode == 0, replayed.stderr
    assert "1 replayed" in replayed.stdout
    wait_until(
        lambda: one_letter(settings, DeadLetter.id == letter.id).count == 2,
        30,
        message="the replayed event did not reach the relay",
    )
    again = one_letter(settings, DeadLetter.id == letter.id)
    assert (again.status, again.replay_count, again.raw) == ("open", 1, raw)
    assert again.replayed_at is not None
    assert len(letters(settings)) == 1
    assert queue_depth(settings, settings.dead_letter_queue) == 2


# ---- jobs out of retries -----------------------------------------------------------------------
def test_a_job_out_of_retries_is_a_dead_letter_and_a_replay_runs_it_once(
    settings: Settings, pipeline: Pipeline, hooks: tuple[FakeWebhook, Path], fake_twilio: FakeTwilio
) -> None:
    # Given: a worker whose staff webhook is down, alerts also texted to the on-duty staff
    webhooks, directory = hooks
    webhooks.fail_next(1000, 503)
    pipeline.set_env(
        GOVNOTIFY_STAFF_DIRECTORY=str(directory),
        GOVNOTIFY_GREEN_CHANNEL_SMS="true",
        **twilio_env(fake_twilio),
        **FAST_RETRIES,
    )
    pipeline.worker()
    case_id = f"G-{uuid.uuid4().hex[:8]}"

    # When: the alert job fails on every try
    enqueue(settings, "raise_green_channel_alert", special_group_case(case_id))
    wait_until(lambda: letters(settings, DeadLetter.stage == "job"), 30, message="no job letter")

    # Then: one letter for the job, with a bounded reason, masked detail, and the job itself;
    # RabbitMQ's own dead-letter queue has it too
    letter = one_letter(settings, DeadLetter.stage == "job")
    assert (letter.reason, letter.event_type, letter.count) == (
        "ProviderUnavailableError",
        "raise_green_channel_alert",
        1,
    )
    assert "gave up after 2 attempt(s)" in letter.detail
    job = Message.decode(letter.raw)
    assert job.args[0]["case_id"] == case_id
    assert "retries" not in job.options and "traceback" not in job.options
    wait_until(lambda: queue_depth(settings, settings.queue("alerts") + ".XQ") == 1, 10)
    assert fake_twilio.attempts == 0

    # When: the webhook is back and the letter is replayed
    webhooks.clear()
    replay = govnotify(settings, "dead-letters", "replay", letter.id[:12])

    # Then: the job ran once more and the staff got the alert once, by webhook and SMS
    assert replay.returncode == 0, replay.stderr
    assert "raise_green_channel_alert re-enqueued" in replay.stdout
    [alert] = webhooks.wait_for(1, timeout=30)
    assert alert.route == "/hooks/hall-robot"
    fake_twilio.wait_for(2, timeout=30)
    wait_until(lambda: processed(settings, "raise_green_channel_alert") == 3, 30)
    replayed = one_letter(settings, DeadLetter.id == letter.id)
    assert (replayed.status, replayed.replay_count, replayed.count) == ("replayed", 1, 1)

    # When: replayed again (refused: already replayed), then forced open and replayed again,
    # as a stale or concurrent replay would
    twice = govnotify(settings, "dead-letters", "replay", letter.id[:12])
    reopen(settings, letter.id)
    forced = govnotify(settings, "dead-letters", "replay", letter.id[:12])

    # Then: the job ran a fourth time and found the alert sent: nothing more reached anyone
    assert twice.returncode == 0 and "1 skipped" in twice.stdout, twice.stdout
    assert forced.returncode == 0 and "1 replayed" in forced.stdout, forced.stdout
    wait_until(lambda: processed(settings, "raise_green_channel_alert") == 4, 30)
    assert len(webhooks.requests) == 1
    assert len(fake_twilio.messages) == 2
    with session(settings) as s:
        [sent] = s.execute(select(StaffAlert).where(StaffAlert.case_id == case_id)).scalars()
    assert sent.sent_at is not None


# ---- deliveries that gave up -------------------------------------------------------------------
def test_a_delivery_replay_sends_once_and_only_from_a_certain_non_delivery(
    settings: Settings, pipeline: Pipeline, fake_twilio: FakeTwilio
) -> None:
    # Given: a worker, an SMS that ran out of retries (temporary-failure) and one already sent
    pipeline.set_env(**twilio_env(fake_twilio))
    pipeline.worker()
    failed = notification(settings, NotificationStatus.TEMPORARY_FAILURE, "+8613900139001")
    sent = notification(settings, NotificationStatus.SENT, "+8613900139002")
    record_delivery_failure(settings, failed, "retries exhausted: provider unavailable")
    record_delivery_failure(settings, sent, "a late call for a row that moved on")
    letter = one_letter(settings, DeadLetter.stage == "delivery")

    # When
    replay = govnotify(settings, "dead-letters", "replay", letter.id[:12])

    # Then: a letter only for the failed one; re-opened, sent once through the worker
    assert (letter.event_id, letter.reason, letter.event_type) == (
        failed,
        "temporary-failure",
        "callback",
    )
    assert replay.returncode == 0, replay.stderr + replay.stdout
    [message] = fake_twilio.wait_for(1, timeout=30)
    assert message["to"] == "+8613900139001"
    wait_until(lambda: status_of(settings, failed) == NotificationStatus.SENT, 30)

    # When: replayed twice more (the second forced open), and a letter whose row was sent
    skipped = govnotify(settings, "dead-letters", "replay", letter.id[:12])
    reopen(settings, letter.id)
    refused = govnotify(settings, "dead-letters", "replay", letter.id[:12])
    with session(settings) as s:
        record_dead_letter(
            s, stage="delivery", reason="temporary-failure", detail="stale", raw=sent.encode()
        )
    stale = one_letter(settings, DeadLetter.event_id.is_(None), DeadLetter.stage == "delivery")
    refused_sent = govnotify(settings, "dead-letters", "replay", stale.id[:12])

    # Then: nothing re-opened, nothing queued, still exactly one message on the fake
    assert "1 skipped" in skipped.stdout, skipped.stdout
    assert refused.returncode == 1 and "is sent" in refused.stdout, refused.stdout
    assert refused_sent.returncode == 1 and "is sent" in refused_sent.stdout
    assert one_letter(settings, DeadLetter.id == letter.id).status == "open"
    assert status_of(settings, sent) == NotificationStatus.SENT
    assert queue_depth(settings, settings.queue("delivery")) == 0
    assert len(fake_twilio.messages) == 1
    assert fake_twilio.attempts == 1


def test_two_replays_at_once_send_once(
    settings: Settings, pipeline: Pipeline, fake_twilio: FakeTwilio
) -> None:
    # Given: one delivery letter, and two operators replaying it at the same moment
    pipeline.set_env(**twilio_env(fake_twilio))
    pipeline.worker()
    failed = notification(settings, NotificationStatus.TECHNICAL_FAILURE, "+8613900139003")
    record_delivery_failure(settings, failed, "notifier misconfigured")
    [letter] = find_letters(settings, [one_letter(settings).id[:8]])
    start = threading.Barrier(2)
    outcomes: list[str] = []

    def replay() -> None:
        start.wait()
        outcomes.append(replay_letter(settings, letter).result)

    # When
    threads = [threading.Thread(target=replay) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    # Then: one won the letter; one message went out
    assert sorted(outcomes) == ["replayed", "skipped"]
    fake_twilio.wait_for(1, timeout=30)
    wait_until(lambda: status_of(settings, failed) == NotificationStatus.SENT, 30)
    assert len(fake_twilio.messages) == 1


# ---- callbacks ----------------------------------------------------------------------------------
def test_a_callback_replay_applies_the_report_and_a_malformed_one_is_refused(
    settings: Settings,
) -> None:
    # Given: a sent SMS whose delivery report came before its reference was known (dead-lettered
    # by the status worker), and a callback letter that is not a report at all
    sent = notification(settings, NotificationStatus.SENT, "+8613900139004")
    sid = "SM" + uuid.uuid4().hex
    with session(settings) as s:
        s.execute(update(Notification).where(Notification.id == sent).values(provider_ref=sid))
        s.commit()
        report = {"provider": "twilio", "params": {"MessageSid": sid, "MessageStatus": "delivered"}}
        record_dead_letter(
            s,
            stage="callback",
            reason="unknown-message",
            detail=f"twilio status delivered for {sid}",
            raw=json.dumps(report, sort_keys=True).encode(),
        )
        record_dead_letter(s, stage="callback", reason="malformed", detail="x", raw=b"not json")
    good = one_letter(settings, DeadLetter.reason == "unknown-message")
    bad = one_letter(settings, DeadLetter.reason == "malformed")

    # When
    applied = govnotify(settings, "dead-letters", "replay", good.id[:12])
    refused = govnotify(settings, "dead-letters", "replay", bad.id[:12])

    # Then
    assert applied.returncode == 0, applied.stdout + applied.stderr
    assert status_of(settings, sent) == NotificationStatus.DELIVERED
    assert one_letter(settings, DeadLetter.id == good.id).status == "replayed"
    assert refused.returncode == 1 and "cannot be read" in refused.stdout
    assert one_letter(settings, DeadLetter.id == bad.id).status == "open"


def test_a_replay_that_cannot_reach_the_broker_leaves_the_letter_open(settings: Settings) -> None:
    # Given: an ingest letter, and RabbitMQ unreachable for the operator's command
    with session(settings) as s:
        record_dead_letter(s, stage="ingest", reason="invalid_json", detail="x", raw=b"{")
    letter = one_letter(settings)
    from infra.services import free_port

    # When
    result = govnotify(
        settings,
        "dead-letters",
        "replay",
        letter.id,
        GOVNOTIFY_AMQP_URL=f"amqp://guest:guest@127.0.0.1:{free_port()}/",
    )

    # Then: reported as failed, exit 1, and the letter is as it was
    assert result.returncode == 1, result.stdout + result.stderr
    assert "failed" in result.stdout and "Traceback" not in result.stderr
    again = one_letter(settings)
    assert (again.status, again.replay_count, again.replayed_at) == ("open", 0, letter.replayed_at)


# ---- list filters and purge --------------------------------------------------------------------
def test_list_filters_and_purge(settings: Settings) -> None:
    # Given: letters of three stages, one of them seen last ten days ago
    with session(settings) as s:
        for n in range(3):
            record_dead_letter(
                s, stage="ingest", reason="invalid_json", detail="bad", raw=f"{{{n}".encode()
            )
        record_dead_letter(s, stage="job", reason="KeyError", detail="k", raw=b"job")
        record_dead_letter(s, stage="callback", reason="bad_signature", detail="c", raw=b"cb")
        s.execute(
            update(DeadLetter)
            .where(DeadLetter.stage == "callback")
            .values(last_seen=utcnow() - dt.timedelta(days=10))
        )
        s.commit()
    job = one_letter(settings, DeadLetter.stage == "job")

    # When
    listed = govnotify(settings, "dead-letters", "list", "--stage", "ingest", "--limit", "2")
    unsafe = govnotify(settings, "dead-letters", "purge", "--stage", "ingest")
    bad_stage = govnotify(settings, "dead-letters", "list", "--stage", "nope")
    by_id = govnotify(settings, "dead-letters", "purge", job.id[:10])
    old = govnotify(settings, "dead-letters", "purge", "--older-than-days", "5", "--all")
    by_stage = govnotify(settings, "dead-letters", "purge", "--stage", "ingest", "--all")
    unknown = govnotify(settings, "dead-letters", "show", "ffffffffffff")

    # Then
    assert listed.returncode == 0 and listed.stdout.count("invalid_json") == 2, listed.stdout
    assert unsafe.returncode == 2 and "--all" in unsafe.stderr
    assert bad_stage.returncode == 2
    assert by_id.stdout.strip() == "1 dead letter purged"
    assert old.stdout.strip() == "1 dead letter purged"
    assert by_stage.stdout.strip() == "3 dead letters purged"
    assert unknown.returncode == 4 and "no dead letter" in unknown.stderr  # not found
    assert letters(settings) == []
