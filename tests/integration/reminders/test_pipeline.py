"""Renewal reminders end to end on the real RabbitMQ, Tansu and PostgreSQL, with the real
``twilio`` client talking to a loopback fake of the Twilio Messages API."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
from collections import Counter

import pika
import pytest
from sqlalchemy import select

from infra.db import session
from infra.settings import Settings
from producers.generator import bad_events, license_event
from producers.rabbitmq import Publisher
from schemas.events import Event, make_event
from schemas.models import CallListEntry, DeadLetter, LicenseRecord, Notification
from tests.fakes.twilio_server import FakeTwilio
from tests.support import (
    Pipeline,
    count_rows,
    env_for,
    metric,
    publish,
    queue_depth,
    scrape,
    wait_until,
)

pytestmark = pytest.mark.integration

TODAY = dt.date(2026, 11, 26)
T0 = dt.datetime(2026, 11, 20, 9, 0, tzinfo=dt.UTC)
FINAL = (
    "sent",
    "delivered",
    "cancelled",
    "permanent-failure",
    "temporary-failure",
    "technical-failure",
)


def twilio_env(fake: FakeTwilio) -> dict[str, str]:
    return {
        "GOVNOTIFY_TWILIO_ACCOUNT_SID": fake.account_sid,
        "GOVNOTIFY_TWILIO_AUTH_TOKEN": fake.auth_token,
        "GOVNOTIFY_TWILIO_FROM": "+15017122661",
        "GOVNOTIFY_TWILIO_API_BASE": fake.base_url,
        # 10:00 local: outside quiet hours whenever the suite runs.
        "GOVNOTIFY_NOW": at_ten(TODAY),
    }


def at_ten(day: dt.date) -> str:
    return f"{day.isoformat()}T10:00:00+08:00"


def issued(
    license_id: str,
    days_left: int,
    mobile: str,
    *,
    at: dt.datetime = T0,
    event_type: str = "license.issued",
    category: str = "food_business",
) -> Event:
    expires = TODAY + dt.timedelta(days=days_left)
    return license_event(
        event_type,
        license_id,
        category=category,
        holder_mobile=mobile,
        issued_on=expires - dt.timedelta(days=365 * 5),
        expires_on=expires,
        occurred_at=at,
    )


def revoked(license_id: str, at: dt.datetime) -> Event:
    return make_event(
        "license.revoked",
        {"license_id": license_id, "reason": "吊销", "revoked_on": "2026-11-21"},
        source="license-registry",
        occurred_at=at,
    )


def stream_processed(settings: Settings) -> float:
    try:
        samples = scrape(settings.stream_metrics_port)
    except OSError:
        return 0.0
    return metric(samples, "govnotify_stream_events_total")


def settled(settings: Settings, notifications: int) -> bool:
    """Every expected notification row exists and is in a final status."""
    with session(settings) as s:
        rows = s.execute(select(Notification.status)).scalars().all()
    return len(rows) == notifications and all(status in FINAL for status in rows)


def test_license_events_become_exactly_the_expected_sms(
    settings: Settings, pipeline: Pipeline, fake_twilio: FakeTwilio
) -> None:
    # Given: licenses at every distance from expiry, one renewed and one revoked by events that
    # are published before the (older) issue events, and one number Twilio refuses for good
    later = T0 + dt.timedelta(days=1)
    events = [
        issued("LIC-A-20", 20, "13800000001"),  # 30-day SMS
        issued("LIC-B-5", 5, "13800000002"),  # 7-day SMS
        issued("LIC-C-2", 2, "13800000003"),  # 7-day SMS and a 3-day call-list entry
        issued("LIC-D-60", 60, "13800000004"),  # nothing yet
        issued("LIC-E-EXP", -3, "13800000005"),  # already expired: nothing
        issued(
            "LIC-F-REN",
            10 + 1826,
            "13800000006",
            at=later + dt.timedelta(hours=1),
            event_type="license.renewed",
        ),
        revoked("LIC-G-REV", later),
        issued("LIC-F-REN", 10, "13800000006"),  # older than the renewal: ignored
        issued("LIC-G-REV", 10, "13800000007"),  # older than the revocation: ignored
        issued("LIC-H-40", 40, "13800000008"),
        issued("LIC-H-40", 40 + 1826, "13800000008", at=later, event_type="license.renewed"),
        issued("LIC-I-BAD", 20, "13900000009"),  # Twilio: 21211 invalid number
    ]
    fake_twilio.fail_number("+8613900000009", 400, 21211)
    pipeline.set_env(**twilio_env(fake_twilio))

    # When
    pipeline.all()
    publish(settings, events)
    wait_until(
        lambda: stream_processed(settings) >= len(events),
        90,
        message="stream did not process every event:\n" + pipeline.children[1].log_tail(),
    )
    wait_until(lambda: settled(settings, 4), 60, message="notifications did not settle")
    wait_until(lambda: count_rows(settings, LicenseRecord) == 9, 30)

    # Then: exactly three SMS reached the provider, each to the right holder with the right text
    sent = fake_twilio.messages
    assert sorted(m["to"] for m in sent) == ["+8613800000001", "+8613800000002", "+8613800000003"]
    by_to = {m["to"]: m["body"] for m in sent}
    assert by_to["+8613800000001"].startswith("【长安政务】")
    assert "LIC-A-20" in by_to["+8613800000001"] and "距今20天" in by_to["+8613800000001"]
    assert "LIC-B-5" in by_to["+8613800000002"] and "距今5天" in by_to["+8613800000002"]
    assert all("http" not in m["body"] for m in sent)
    with session(settings) as s:
        rows = {r.subject_id: r for r in s.execute(select(Notification)).scalars()}
        calls = s.execute(select(CallListEntry)).scalars().all()
        records = {r.license_id: r for r in s.execute(select(LicenseRecord)).scalars()}
    assert set(rows) == {"LIC-A-20", "LIC-B-5", "LIC-C-2", "LIC-I-BAD"}
    assert {k: r.status for k, r in rows.items()} == {
        "LIC-A-20": "sent",
        "LIC-B-5": "sent",
        "LIC-C-2": "sent",
        "LIC-I-BAD": "permanent-failure",
    }
    assert rows["LIC-A-20"].idempotency_key == "renewal:sms:LIC-A-20:2026-12-16:30"
    assert rows["LIC-A-20"].provider == "twilio" and rows["LIC-A-20"].provider_ref.startswith("SM")
    assert all(r.segments >= 1 for r in rows.values())
    assert "invalid_number" in (rows["LIC-I-BAD"].status_reason or "")
    assert [(c.license_id, c.offset_days) for c in calls] == [("LIC-C-2", 3)]
    assert records["LIC-G-REV"].status == "revoked"
    assert records["LIC-F-REN"].expires_on == TODAY + dt.timedelta(days=10 + 1826)
    # and each reminder keeps the license event that caused it (the registry's latest: the
    # renewal for LIC-F-REN, not the older issue published after it), with its source
    caused = {e.payload.license_id: e for e in events if e.event_type == "license.issued"}  # type: ignore[attr-defined]
    for license_id in ("LIC-A-20", "LIC-B-5", "LIC-C-2", "LIC-I-BAD"):
        assert rows[license_id].event_id == caused[license_id].event_id
        assert rows[license_id].event_source == "license-registry"
        assert records[license_id].last_event_id == caused[license_id].event_id
    assert calls[0].event_id == caused["LIC-C-2"].event_id
    assert records["LIC-F-REN"].last_event_id == events[5].event_id
    assert records["LIC-G-REV"].last_event_id == events[6].event_id
    # and the worker's metrics say the same, over HTTP
    samples = scrape(settings.worker_metrics_port)
    assert (
        metric(
            samples,
            "govnotify_notifications_total",
            flow="renewal",
            provider="twilio",
            status="sent",
        )
        == 3
    )
    assert metric(samples, "govnotify_notifications_total", status="permanent-failure") == 1
    assert (
        metric(samples, "govnotify_provider_request_duration_seconds_count", provider="twilio") == 4
    )


def test_replayed_events_and_a_killed_worker_still_send_exactly_one_sms_each(
    settings: Settings, pipeline: Pipeline, fake_twilio: FakeTwilio
) -> None:
    # Given: 120 licenses due for their 30-day reminder and a slow provider
    n = 120
    events = [issued(f"LIC-K-{i:04d}", 20, f"1370000{i:04d}") for i in range(n)]
    fake_twilio.delay_next(n, 0.05)
    pipeline.set_env(
        **twilio_env(fake_twilio),
        GOVNOTIFY_SWEEP_SENDING_AFTER_S="1",
        GOVNOTIFY_SWEEP_CREATED_AFTER_S="1",
    )
    pipeline.relay()
    pipeline.stream()
    worker = pipeline.worker()

    # When: the events are published, the worker is killed mid-run, then the upstream sends
    # them all again (same event ids: repeats) and again as new events (replays), and a new
    # worker starts
    publish(settings, events)
    fake_twilio.wait_for(n // 4, timeout=90)
    worker.kill()
    replays = [issued(f"LIC-K-{i:04d}", 20, f"1370000{i:04d}") for i in range(n)]
    publish(settings, events + replays)
    pipeline.worker(name="worker-2")
    wait_until(lambda: stream_processed(settings) >= 2 * n, 90)
    # (the repeats were recognised by the relay's journal, and not relayed again)
    assert metric(scrape(settings.relay_metrics_port), "govnotify_events_duplicate_total") == n

    def resolved() -> bool:
        # The sweep resolves rows the kill left in `sending` (asking the fake provider) and
        # re-queues rows left in `created`; repeat until every row is final.
        subprocess.run(
            [sys.executable, "-m", "infra.cli", "sweep"],
            env=pipeline.env,
            check=True,
            capture_output=True,
            timeout=60,
        )
        return settled(settings, n)

    wait_until(resolved, 120, interval=1.0, message="rows did not settle after the kill")

    # Then: one SMS per license at the provider, and one `sent` row per license
    per_license = Counter(m["body"].split("证号")[1].split("）")[0] for m in fake_twilio.messages)
    assert len(per_license) == n
    assert set(per_license.values()) == {1}
    assert count_rows(settings, Notification, Notification.status == "sent") == n


def queued_jobs(settings: Settings, queue: str) -> int:
    """The jobs waiting on ``queue``, read without taking them: a batch message (a list, see
    ``schemas.commands.BATCH_ACTORS``) counts one per item."""
    conn = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
    try:
        channel = conn.channel()
        jobs = 0
        while True:
            try:
                method, _props, body = channel.basic_get(queue, auto_ack=False)
            except pika.exceptions.ChannelClosedByBroker:  # not declared yet: nothing queued
                return 0
            if method is None:
                return jobs
            [payload] = json.loads(body)["args"]
            jobs += len(payload) if isinstance(payload, list) else 1
    finally:
        conn.close()  # unacknowledged: every message goes back on the queue


def test_a_queued_reminder_is_stopped_at_send_time_by_a_later_renewal_or_revocation(
    settings: Settings, pipeline: Pipeline, fake_twilio: FakeTwilio
) -> None:
    # Given: reminders already queued for two due licenses (the registry worker recorded the
    # licenses and queued them) while no worker takes reminders
    pipeline.set_env(**twilio_env(fake_twilio))
    pipeline.relay()
    pipeline.stream()
    registry_worker = pipeline.worker("--queues", "registry", name="registry-worker")
    publish(settings, [issued("LIC-R-1", 20, "13600000001"), issued("LIC-V-1", 20, "13600000002")])
    wait_until(lambda: queued_jobs(settings, settings.queue("reminders")) == 2, 90)

    # When: one is renewed and the other revoked, the license records are updated first, and
    # only then does a worker take the queued reminders
    later = T0 + dt.timedelta(days=2)
    publish(
        settings,
        [
            issued("LIC-R-1", 20 + 1826, "13600000001", at=later, event_type="license.renewed"),
            revoked("LIC-V-1", later),
        ],
    )
    wait_until(
        lambda: count_rows(settings, LicenseRecord, LicenseRecord.last_event_at == later) == 2, 60
    )
    registry_worker.stop()
    pipeline.worker()
    wait_until(lambda: settled(settings, 2), 60)

    # Then: both reminders are cancelled with the reason, and nothing reached the provider
    with session(settings) as s:
        rows = {r.subject_id: r for r in s.execute(select(Notification)).scalars()}
    assert {k: (r.status, r.status_reason) for k, r in rows.items()} == {
        "LIC-R-1": ("cancelled", "license renewed"),
        "LIC-V-1": ("cancelled", "license revoked"),
    }
    assert fake_twilio.messages == []


def test_each_kind_of_bad_input_is_dead_lettered_with_its_reason_and_the_relay_keeps_going(
    settings: Settings, pipeline: Pipeline
) -> None:
    # Given: a running relay
    relay = pipeline.relay()
    bad = bad_events(TODAY)

    # When: every kind of bad input arrives, then a good event
    with Publisher.from_settings(settings) as p:
        for _reason, raw in bad:
            p.publish_raw(raw, "license.issued")
        p.publish(issued("LIC-OK-1", 20, "13500000001"))

    # Then: one dead-letter row per input, with its reason and the raw bytes
    wait_until(lambda: count_rows(settings, DeadLetter) == len(bad), 30)
    with session(settings) as s:
        letters = s.execute(select(DeadLetter)).scalars().all()
    assert Counter(d.reason for d in letters) == Counter(reason for reason, _ in bad)
    assert {bytes(d.raw) for d in letters} == {raw for _, raw in bad}
    assert all(d.stage == "ingest" and d.detail for d in letters)
    assert not any("029" in d.detail and "8888" in d.detail for d in letters)
    # and a copy of each on the RabbitMQ dead-letter queue, with the reason in a header
    conn = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
    try:
        ch = conn.channel()
        reasons = []
        for _ in range(len(bad)):
            method, props, _body = ch.basic_get(settings.dead_letter_queue, auto_ack=True)
            assert method is not None
            reasons.append(props.headers["x-reject-reason"])
    finally:
        conn.close()
    assert Counter(reasons) == Counter(reason for reason, _ in bad)
    # and counted, by reason, in the relay's metrics; the good event went through
    wait_until(
        lambda: metric(scrape(settings.relay_metrics_port), "govnotify_events_relayed_total") == 1,
        30,
    )
    samples = scrape(settings.relay_metrics_port)
    for reason, expected in Counter(r for r, _ in bad).items():
        assert metric(samples, "govnotify_events_rejected_total", reason=reason) == expected
    assert relay.alive()


def test_publish_cli_rejects_bad_lines_before_they_reach_the_broker(
    settings: Settings, tmp_path
) -> None:
    # Given: a file with two good events and one with a landline instead of a mobile
    good = [issued(f"LIC-P-{i}", 20, "13500000002").to_json_bytes() for i in range(2)]
    bad = bad_events(TODAY)[3][1]
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join([good[0], bad, good[1]]) + b"\n")

    # When
    result = subprocess.run(
        [sys.executable, "-m", "infra.cli", "publish", str(path)],
        env=env_for(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )

    # Then
    assert result.returncode == 1
    assert "line 2: rejected schema_violation: payload.holder_mobile" in result.stdout
    assert "2 accepted, 1 rejected" in result.stdout
    assert queue_depth(settings, settings.relay_queue) == 2


def test_transient_errors_are_retried_and_exhausted_retries_say_why(
    settings: Settings, pipeline: Pipeline, fake_twilio: FakeTwilio
) -> None:
    # Given: a provider that throttles then fails once for one number, and is down for another
    fake_twilio.fail_next(1, 429, 20429)
    fake_twilio.fail_next(1, 503)
    fake_twilio.fail_number("+8613300000002", 503, 20500)
    pipeline.set_env(
        **twilio_env(fake_twilio),
        GOVNOTIFY_DELIVERY_MAX_RETRIES="2",
        GOVNOTIFY_DELIVERY_MIN_BACKOFF_MS="50",
        GOVNOTIFY_DELIVERY_MAX_BACKOFF_MS="200",
    )
    pipeline.all()

    # When
    publish(
        settings, [issued("LIC-T-OK", 20, "13300000001"), issued("LIC-T-DOWN", 20, "13300000002")]
    )
    wait_until(lambda: settled(settings, 2), 60, message="rows did not settle")

    # Then: the first went out on its third attempt; the second says why it gave up
    with session(settings) as s:
        rows = {r.subject_id: r for r in s.execute(select(Notification)).scalars()}
    assert (rows["LIC-T-OK"].status, rows["LIC-T-OK"].attempts) == ("sent", 3)
    down = rows["LIC-T-DOWN"]
    assert (down.status, down.attempts) == ("temporary-failure", 3)
    assert "retries exhausted" in down.status_reason
    assert "provider_unavailable" in down.status_reason
    assert [m["to"] for m in fake_twilio.messages] == ["+8613300000001"]
    samples = scrape(settings.worker_metrics_port)
    assert metric(samples, "govnotify_notifications_total", status="temporary-failure") == 1
    assert (
        metric(samples, "govnotify_provider_request_duration_seconds_count", outcome="transient")
        == 4
    )
    # (the 429 is a rate limit, not a transient failure: retried on Twilio, no circuit)
    assert (
        metric(samples, "govnotify_provider_request_duration_seconds_count", outcome="rate_limited")
        == 1
    )


def test_the_registry_in_postgresql_sends_what_became_due_on_a_later_day(
    settings: Settings, pipeline: Pipeline, fake_twilio: FakeTwilio
) -> None:
    # Given: 60 licenses that are not due yet on day 1, recorded by a running pipeline
    n = 60
    events = [issued(f"LIC-D-{i:03d}", 35, f"1320000{i:04d}") for i in range(n)]
    events.append(issued("LIC-D-LATER", 90, "13210000000"))
    pipeline.set_env(**twilio_env(fake_twilio))
    pipeline.relay()
    stream = pipeline.stream()
    worker = pipeline.worker()
    publish(settings, events)
    wait_until(lambda: count_rows(settings, LicenseRecord) == n + 1, 90)
    assert fake_twilio.messages == []
    with session(settings) as s:
        record = s.get(LicenseRecord, "LIC-D-007")
    assert record is not None
    assert (record.holder_mobile, record.status) == ("+8613200000007", "live")
    assert record.expires_on == TODAY + dt.timedelta(days=35)

    # When: six days later, only a worker and the scheduler run (no stream, nothing published
    # again): the scheduler's daily scan reads the registry
    stream.stop()
    worker.stop()
    pipeline.set_env(GOVNOTIFY_NOW=at_ten(TODAY + dt.timedelta(days=6)))
    pipeline.worker(name="worker-day-7")
    scheduler = pipeline.scheduler()
    wait_until(
        lambda: settled(settings, n) and len(fake_twilio.messages) >= n,
        90,
        message="the daily scan did not send the reminders that became due",
    )

    # Then: every license now 29 days from expiry got its 30-day reminder, exactly once
    bodies = [m["body"] for m in fake_twilio.messages]
    assert len(bodies) == n
    assert all("距今29天" in body for body in bodies)
    assert len({body.split("证号")[1].split("）")[0] for body in bodies}) == n
    assert count_rows(settings, Notification) == n
    # and a restarted scheduler does not scan the same day again
    scheduler.stop()
    pipeline.scheduler()
    assert count_rows(settings, Notification) == n


def test_a_license_renewed_or_revoked_within_the_settle_window_texts_nobody(
    settings: Settings, pipeline: Pipeline, fake_twilio: FakeTwilio, hooks
) -> None:
    # Given: reminders due at once wait 15 s and are checked against the registry again
    settle_s = 15
    webhooks, directory = hooks
    pipeline.set_env(
        **twilio_env(fake_twilio),
        GOVNOTIFY_RENEWAL_SETTLE_S=str(settle_s),
        GOVNOTIFY_STAFF_DIRECTORY=str(directory),
    )
    pipeline.all()
    now = pipeline.now(dt.datetime.fromisoformat(at_ten(TODAY)))
    later = now + dt.timedelta(seconds=1)
    # 40 licenses due today, each renewed (20) or revoked (20) a second after it was issued, and
    # 5 that stay as issued
    events: list[Event] = []
    for i in range(40):
        events.append(issued(f"LIC-S-{i:03d}", 20, f"1350000{i:04d}", at=now))
        if i % 2:
            events.append(
                issued(
                    f"LIC-S-{i:03d}",
                    20 + 1826,
                    f"1350000{i:04d}",
                    at=later,
                    event_type="license.renewed",
                )
            )
        else:
            events.append(revoked(f"LIC-S-{i:03d}", later))
    events += [issued(f"LIC-KEEP-{i}", 20, f"1351000000{i}", at=now) for i in range(5)]
    # … and a green-channel case: a critical alert, which never waits
    alert = make_event(
        "case.submitted",
        {
            "case_id": "G-SETTLE",
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
                "special_groups": ["disabled"],
            },
            "key_project": False,
            "submitted_at": now.isoformat(),
        },
        source="case-system",
        occurred_at=now,
    )

    # When they are published together
    published = time.monotonic()
    publish(settings, [*events, alert])

    # Then the alert reaches the on-duty staff while every reminder still waits
    webhooks.wait_for(1, timeout=60)
    assert fake_twilio.messages == []
    # … the 5 licenses left as issued are texted, not before the settle window ended
    fake_twilio.wait_for(5, timeout=120)
    assert time.monotonic() - published >= settle_s
    wait_until(lambda: settled(settings, count_rows(settings, Notification)), 60)
    # … and none of the 40 superseded ones ever is
    texted = sorted(m["body"].split("证号")[1].split("）")[0] for m in fake_twilio.messages)
    assert texted == [f"LIC-KEEP-{i}" for i in range(5)]
    with session(settings) as s:
        rows = s.execute(select(Notification.subject_id, Notification.status)).all()
    assert {status for subject, status in rows if subject.startswith("LIC-S-")} <= {"cancelled"}
