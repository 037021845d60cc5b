"""`govnotify sweep` on rows real failures leave behind: workers killed with SIGKILL at exact
points of a send (held there by FakeTwilio), `sent` rows whose callback never came, and status
callbacks for messages nobody sent. PostgreSQL, RabbitMQ and the real twilio client."""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import sys
import uuid
from dataclasses import dataclass

import pytest
from sqlalchemy import select, update

from infra.db import session
from infra.settings import Settings
from notifiers.sms import OutboundMessage
from notifiers.sms.twilio import TwilioSMSNotifier
from schemas.models import (
    DeadLetter,
    Notification,
    NotificationStatusEvent,
    Suppression,
    utcnow,
)
from tests.fakes.twilio_server import FakeTwilio
from tests.support import Pipeline, enqueue, metric, scrape, wait_until
from workers.status import apply_status, replay_callback

pytestmark = pytest.mark.integration

FROM = "+15017122661"
BODY = "【长安政务】您的办件回访已安排，工作人员将与您联系。"
#: Thresholds of this file's sweeps; rows are aged past them by moving their timestamps back.
SENDING_AFTER_S = 60
SENT_AFTER_S = 3600


@pytest.fixture
def twilio_settings(settings: Settings, pipeline: Pipeline, fake_twilio: FakeTwilio) -> Settings:
    """The test's settings with Twilio at the fake and this file's sweep thresholds."""
    overrides: dict[str, object] = {
        "twilio_account_sid": fake_twilio.account_sid,
        "twilio_auth_token": fake_twilio.auth_token,
        "twilio_from": FROM,
        "twilio_api_base": fake_twilio.base_url,
        "sweep_sending_after_s": SENDING_AFTER_S,
        "sweep_created_after_s": SENDING_AFTER_S,
        "sweep_sent_after_s": SENT_AFTER_S,
    }
    pipeline.set_env(**{f"GOVNOTIFY_{k.upper()}": str(v) for k, v in overrides.items()})
    return settings.model_copy(update=overrides)


def mobile(i: int) -> str:
    return f"+861390013{i:04d}"


def add_notification(
    settings: Settings,
    *,
    recipient: str,
    status: str,
    provider: str | None = None,
    provider_ref: str | None = None,
    age_s: float = 0,
) -> str:
    """A row as a worker leaves it; ``age_s`` moves its claim and send that far back."""
    at = utcnow() - dt.timedelta(seconds=age_s)
    row = Notification(
        idempotency_key=f"test:{uuid.uuid4().hex}",
        flow="callback_notice",
        channel="sms",
        subject_id="CASE-1",
        recipient=recipient,
        body=BODY,
        status=status,
        provider=provider,
        provider_ref=provider_ref,
        category="callbacks",
        critical=True,
        attempts=0 if status == "created" else 1,
        claimed_at=None if status == "created" else at,
        sent_at=at if status == "sent" else None,
        created_at=at,
        updated_at=at,
    )
    with session(settings) as s:
        s.add(row)
        s.commit()
    return row.id


def age_claim(settings: Settings, notification_id: str, seconds: float) -> None:
    """Move a claim back in time, as if the worker had died that long ago."""
    with session(settings) as s:
        s.execute(
            update(Notification)
            .where(Notification.id == notification_id)
            .values(claimed_at=utcnow() - dt.timedelta(seconds=seconds))
        )
        s.commit()


def notification(settings: Settings, notification_id: str) -> Notification:
    with session(settings) as s:
        row = s.get(Notification, notification_id)
    assert row is not None
    return row


def run_sweep(pipeline: Pipeline) -> dict[str, int]:
    """`govnotify sweep` as a process with the pipeline's environment; its printed counts."""
    result = subprocess.run(
        [sys.executable, "-m", "infra.cli", "sweep"],
        env=pipeline.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return {k: int(v) for k, v in re.findall(r"^\s+(\w+)\s+(\d+)$", result.stdout, re.MULTILINE)}


def processed(settings: Settings) -> float:
    """Delivery jobs the running worker has finished (its dramatiq metrics)."""
    try:
        samples = scrape(settings.worker_metrics_port)
    except OSError:
        return 0.0
    return metric(samples, "dramatiq_messages_total", actor_name="deliver_notification")


# ---- workers killed mid-send -------------------------------------------------------------------
def test_one_clock_a_claim_on_a_clock_pinned_to_another_day_is_resolved_once(
    twilio_settings: Settings, pipeline: Pipeline, fake_twilio: FakeTwilio
) -> None:
    # Given every process on a clock pinned months ahead (the demo's and the tests' way), and a
    # worker whose Twilio answer is held after Twilio took the message
    pipeline.set_env(GOVNOTIFY_NOW="2027-03-01T10:00:00+08:00", GOVNOTIFY_SWEEP_SENDING_AFTER_S="1")
    worker = pipeline.worker()
    fake_twilio.hold_next(1, taken=True)
    notification_id = add_notification(twilio_settings, recipient=mobile(3), status="created")
    enqueue(twilio_settings, "delivery", "deliver_notification", notification_id)
    fake_twilio.wait_held(1, timeout=60)
    [message] = fake_twilio.messages

    # When the worker is killed mid-send and the sweep runs, on the same pinned clock
    worker.kill()
    wait_until(lambda: fake_twilio.held == 0, 10, message="the fake saw no hang-up")
    claimed = notification(twilio_settings, notification_id).claimed_at
    resolved: dict[str, int] = {}

    def swept() -> bool:
        resolved.update(run_sweep(pipeline))
        return resolved.get("confirmed_sent", 0) == 1

    wait_until(swept, 30, interval=1.0, message=lambda: f"sweep counts: {resolved}")

    # Then the claim, stamped on the pinned clock, was judged stuck by that clock, and the
    # message was found at Twilio (which stamps the real time): recorded once, never resent
    assert claimed is not None and claimed.year == 2027
    row = notification(twilio_settings, notification_id)
    assert (row.status, row.provider_ref) == ("sent", message["sid"])
    assert fake_twilio.attempts == 1
    assert len(fake_twilio.messages) == 1


def test_a_worker_killed_before_twilio_took_the_message_is_sent_once_after_the_sweep(
    twilio_settings: Settings, pipeline: Pipeline, fake_twilio: FakeTwilio
) -> None:
    # Given a worker whose request to Twilio is held before Twilio takes it
    worker = pipeline.worker()
    fake_twilio.hold_next(1, taken=False)
    notification_id = add_notification(twilio_settings, recipient=mobile(1), status="created")
    enqueue(twilio_settings, "delivery", "deliver_notification", notification_id)
    fake_twilio.wait_held(1, timeout=60)

    # When the worker is killed there (kill -9 of its process tree)
    worker.kill()
    wait_until(lambda: fake_twilio.abandoned == 1, 10, message="the fake saw no hang-up")
    left = notification(twilio_settings, notification_id)
    # … a new worker starts, and the sweep runs once the claim is past its threshold
    age_claim(twilio_settings, notification_id, SENDING_AFTER_S + 60)
    pipeline.worker(name="worker-2")
    counts = run_sweep(pipeline)

    # Then the claim was released (Twilio has no such message) and the SMS went out once
    assert (left.status, left.provider_ref) == ("sending", None)
    assert counts["released"] == 1
    wait_until(lambda: notification(twilio_settings, notification_id).status == "sent", 30)
    # the killed worker's job came back too: both jobs done, still one SMS
    wait_until(lambda: processed(twilio_settings) >= 2, 30)
    [message] = fake_twilio.messages
    assert fake_twilio.attempts == 2
    row = notification(twilio_settings, notification_id)
    assert (row.provider, row.provider_ref, row.attempts) == ("twilio", message["sid"], 2)


def test_a_worker_killed_after_twilio_took_the_message_is_confirmed_without_a_second_sms(
    twilio_settings: Settings, pipeline: Pipeline, fake_twilio: FakeTwilio
) -> None:
    # Given a worker whose Twilio answer is held after Twilio took the message
    worker = pipeline.worker()
    fake_twilio.hold_next(1, taken=True)
    notification_id = add_notification(twilio_settings, recipient=mobile(2), status="created")
    enqueue(twilio_settings, "delivery", "deliver_notification", notification_id)
    fake_twilio.wait_held(1, timeout=60)
    [message] = fake_twilio.messages

    # When the worker is killed before it learns the sid, a new one starts, and the sweep runs
    worker.kill()
    wait_until(lambda: fake_twilio.held == 0, 10, message="the fake saw no hang-up")
    left = notification(twilio_settings, notification_id)
    age_claim(twilio_settings, notification_id, SENDING_AFTER_S + 60)
    pipeline.worker(name="worker-2")
    counts = run_sweep(pipeline)

    # Then the sweep found the message at Twilio and recorded it as sent, with its sid …
    assert (left.status, left.provider_ref) == ("sending", None)
    assert counts["confirmed_sent"] == 1
    row = notification(twilio_settings, notification_id)
    assert (row.status, row.provider, row.provider_ref) == ("sent", "twilio", message["sid"])
    assert row.status_reason == "confirmed by sweep"
    # … and the killed worker's job, redelivered to the new worker, sent nothing again
    wait_until(lambda: processed(twilio_settings) >= 1, 30)
    assert fake_twilio.attempts == 1
    assert len(fake_twilio.messages) == 1


# ---- rows left `sent` or `sending` -------------------------------------------------------------
@dataclass(frozen=True)
class Stuck:
    name: str
    status: str
    provider: str | None
    #: What Twilio knows: (status, error code) of a real message, or None for no message.
    at_twilio: tuple[str, int | None] | None
    age_s: float
    expected: str
    error_code: str | None = None
    reason: str | None = None


STUCK = (
    Stuck("delivered, callback lost", "sent", "twilio", ("delivered", None), 7200, "delivered"),
    Stuck(
        "unknown handset, callback lost",
        "sent",
        "twilio",
        ("undelivered", 30005),
        7200,
        "permanent-failure",
        "30005",
        "twilio reported undelivered (code 30005)",
    ),
    Stuck(
        "handset off, callback lost",
        "sent",
        "twilio",
        ("failed", 30003),
        7200,
        "temporary-failure",
        "30003",
    ),
    Stuck(
        "Twilio never settled it",
        "sent",
        "twilio",
        ("sent", None),
        7200,
        "unknown-failure",
        reason="twilio still reports 'sent' after 1 h: its fate is unknown",
    ),
    Stuck(
        "Twilio has no such message",
        "sent",
        "twilio",
        None,
        7200,
        "unknown-failure",
        reason="twilio has no message",
    ),
    Stuck(
        "sent by a provider not configured here",
        "sent",
        "gateway",
        None,
        7200,
        "unknown-failure",
        reason="no final status from gateway after 1 h; gateway cannot be asked",
    ),
    Stuck(
        "claimed for a provider that cannot be asked",
        "sending",
        "gateway",
        None,
        7200,
        "unknown-failure",
        reason="outcome unknown: gateway cannot be asked whether it was sent",
    ),
    Stuck("sent a minute ago", "sent", "twilio", ("sent", None), 60, "sent"),
)


def test_rows_past_their_threshold_are_resolved_by_asking_the_provider(
    twilio_settings: Settings, pipeline: Pipeline, fake_twilio: FakeTwilio
) -> None:
    # Given rows left `sent` (no final callback came) and `sending`, as the table says
    ids = {}
    with TwilioSMSNotifier(
        fake_twilio.account_sid, fake_twilio.auth_token, FROM, api_base=fake_twilio.base_url
    ) as twilio:
        for i, case in enumerate(STUCK):
            ref = None
            if case.at_twilio is not None:
                ref = twilio.send(OutboundMessage(f"n-{i}", mobile(10 + i), BODY)).provider_ref
                fake_twilio.set_status(ref, *case.at_twilio)
            elif case.provider == "twilio":
                ref = "SM" + uuid.uuid4().hex
            elif case.status == "sent":
                ref = f"{uuid.uuid4().int % 10**18}^0"
            ids[case.name] = add_notification(
                twilio_settings,
                recipient=mobile(10 + i),
                status=case.status,
                provider=case.provider,
                provider_ref=ref,
                age_s=case.age_s,
            )
    sent_before = len(fake_twilio.messages)

    # When the sweep runs
    counts = run_sweep(pipeline)

    # Then each row ends as its provider says, or unknown-failure saying why
    for case in STUCK:
        row = notification(twilio_settings, ids[case.name])
        assert (row.status, row.error_code) == (case.expected, case.error_code), case.name
        if case.reason:
            assert row.status_reason is not None, case.name
            assert row.status_reason.startswith(case.reason), (case.name, row.status_reason)
    assert counts == {
        "requeued": 0,
        "confirmed_sent": 0,
        "released": 0,
        "unresolved": 0,
        "fetched": 3,
        "unknown": 4,
        "dead_letters": 0,
    }
    # the provider's answers are in the history, marked as the sweep's
    with session(twilio_settings) as s:
        events = s.execute(select(NotificationStatusEvent)).scalars().all()
        suppressed = [r.recipient for r in s.execute(select(Suppression)).scalars()]
    by_row = {e.notification_id: (e.provider_status, e.source) for e in events}
    assert by_row[ids["delivered, callback lost"]] == ("delivered", "sweep")
    assert by_row[ids["unknown handset, callback lost"]] == ("undelivered", "sweep")
    assert suppressed == [mobile(11)]
    # asking sent nothing
    assert len(fake_twilio.messages) == sent_before


# ---- callbacks for messages nobody sent --------------------------------------------------------
def test_a_callback_for_an_unknown_message_becomes_a_dead_letter_that_replays_later(
    twilio_settings: Settings, pipeline: Pipeline
) -> None:
    # Given two `delivered` callbacks for sids no notification has: one long ago, one just now
    old_sid, new_sid = "SM" + uuid.uuid4().hex, "SM" + uuid.uuid4().hex
    received = utcnow() - dt.timedelta(seconds=SENDING_AFTER_S + 600)
    with session(twilio_settings) as s:
        waiting = [
            apply_status(
                s,
                provider="twilio",
                provider_ref=sid,
                provider_status="delivered",
                error_code=None,
                received_at=at,
            )
            for sid, at in ((old_sid, received), (new_sid, None))
        ]

    # When the sweep runs
    counts = run_sweep(pipeline)

    # Then the old one is a dead letter (and out of the history); the new one still waits
    assert waiting == ["pending", "pending"]
    assert counts["dead_letters"] == 1
    with session(twilio_settings) as s:
        [letter] = s.execute(select(DeadLetter)).scalars().all()
        refs = [e.provider_ref for e in s.execute(select(NotificationStatusEvent)).scalars()]
    assert (letter.stage, letter.reason, letter.event_id) == (
        "callback",
        "unknown-message",
        old_sid,
    )
    assert json.loads(letter.raw)["params"] == {"MessageSid": old_sid, "MessageStatus": "delivered"}
    assert refs == [new_sid]

    # When the message turns up after all (sent from a row restored from a backup, say) and
    # the dead letter is replayed
    notification_id = add_notification(
        twilio_settings,
        recipient=mobile(40),
        status="sent",
        provider="twilio",
        provider_ref=old_sid,
    )
    result = replay_callback(twilio_settings, letter.raw)

    # Then it is applied, with the time it first arrived
    assert result == "advanced"
    assert notification(twilio_settings, notification_id).status == "delivered"
    with session(twilio_settings) as s:
        [event] = s.execute(
            select(NotificationStatusEvent).where(NotificationStatusEvent.provider_ref == old_sid)
        ).scalars()
    assert (event.source, event.applied) == ("replay", True)
    assert abs((event.received_at - received).total_seconds()) < 1


def test_the_scheduler_runs_the_sweep_by_itself(
    twilio_settings: Settings, pipeline: Pipeline, fake_twilio: FakeTwilio
) -> None:
    # Given: a row left `created` two minutes ago (its job was lost) and one left `sending`
    # after Twilio took it (a worker died before writing the answer); nobody runs the sweep
    lost = add_notification(twilio_settings, recipient=mobile(71), status="created", age_s=120)
    taken = TwilioSMSNotifier(
        fake_twilio.account_sid, fake_twilio.auth_token, FROM, api_base=fake_twilio.base_url
    ).send(OutboundMessage("n-taken", mobile(72), BODY))
    stuck = add_notification(
        twilio_settings, recipient=mobile(72), status="sending", age_s=SENDING_AFTER_S * 2
    )
    pipeline.set_env(GOVNOTIFY_SWEEP_INTERVAL_S="0.5")

    # When: the worker and the scheduler run
    pipeline.worker()
    pipeline.scheduler()

    # Then: the lost row is sent once, the stuck one confirmed with Twilio's sid, not resent
    wait_until(
        lambda: (
            (
                notification(twilio_settings, lost).status,
                notification(twilio_settings, stuck).status,
            )
            == ("sent", "sent")
        ),
        30,
        message="the scheduler's sweep did not resolve the rows",
    )
    assert notification(twilio_settings, stuck).provider_ref == taken.provider_ref
    assert sorted(m["to"] for m in fake_twilio.messages) == [mobile(71), mobile(72)]


def test_a_row_held_for_its_release_slot_is_left_alone_until_well_after_it(
    twilio_settings: Settings, pipeline: Pipeline
) -> None:
    # Given: two rows held (quiet hours) since long ago: one whose release slot is an hour
    # ahead, one whose slot passed long ago (its job was lost)
    held = add_notification(twilio_settings, recipient=mobile(81), status="created", age_s=600)
    lost = add_notification(twilio_settings, recipient=mobile(82), status="created", age_s=600)
    with session(twilio_settings) as s:
        for notification_id, slot in ((held, 3600), (lost, -600)):
            s.execute(
                update(Notification)
                .where(Notification.id == notification_id)
                .values(
                    not_before=utcnow() + dt.timedelta(seconds=slot), status_reason="quiet hours"
                )
            )
        s.commit()

    # When
    counts = run_sweep(pipeline)

    # Then: only the lost one is handed to the queues again
    assert counts["requeued"] == 1
