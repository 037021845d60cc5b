"""A simulated day at the centre through every case flow at once (green channel, callbacks,
surveys, rectification, satisfaction): exactly the messages the generator expects."""

from __future__ import annotations

import datetime as dt
from collections import Counter

import pytest
from sqlalchemy import select

from infra.db import session
from infra.settings import Settings
from schemas.models import (
    CallbackTask,
    IngestEvent,
    Notification,
    RectificationTicket,
    ScheduledJob,
    StaffAlert,
)
from tests.fakes.twilio_server import FakeTwilio
from tests.support import Pipeline, count_rows, metric, publish, scrape, wait_until
from tests.support.cases import CST, env

pytestmark = pytest.mark.integration


def test_a_simulated_day_at_the_centre_produces_exactly_the_expected_messages(
    settings: Settings, pipeline: Pipeline, fake_twilio: FakeTwilio, hooks
) -> None:
    # Given: 2,000 cases with a few dozen special-group applicants, five key projects and a
    # few dozen negative reviews, as the generator says (its counts come from its own data)
    from producers.generator import generate_case_day

    webhooks, directory = hooks
    now = dt.datetime(2026, 11, 26, 10, 0, tzinfo=CST)
    pipeline.set_env(
        **env(
            fake_twilio,
            directory,
            now,
            GOVNOTIFY_SURVEY_DELAY_S="20",
            # Wide enough that an acknowledgement or completion arriving before its alert or
            # task (and retried with backoff on a busy machine) still lands before the due time.
            GOVNOTIFY_GREEN_ESCALATE_AFTER_S="25",
            GOVNOTIFY_CALLBACK_DUE_AFTER_S="25",
            # A day's staff messages in two minutes: the robots' 20 a minute (real WeCom and
            # DingTalk limits, paced by default) would stretch them far past the deadline.
            GOVNOTIFY_SEND_RATES="webhook=0",
        )
    )
    pipeline.all()
    at = pipeline.now(now)
    day = generate_case_day(2000, at, seed=11)
    expected = day.expected
    assert 20 <= expected["green_alerts"] <= 80 and expected["rectification_tickets"] >= 10

    # When
    publish(settings, day.events)

    def settled() -> bool:
        with session(settings) as s:
            alerts = s.execute(select(StaffAlert)).scalars().all()
            tasks = s.execute(select(CallbackTask)).scalars().all()
            sms = s.execute(select(Notification)).scalars().all()
        return (
            sum(a.escalated_at is not None for a in alerts) == expected["green_escalations"]
            and sum(t.escalated_at is not None for t in tasks) == expected["callback_escalations"]
            and len(sms) == expected["surveys"] + expected["callback_notices"]
            and all(n.status == "sent" for n in sms)
        )

    try:
        wait_until(settled, 150, interval=0.5)
    except TimeoutError:
        with session(settings) as s:
            alerts = s.execute(select(StaffAlert)).scalars().all()
            tasks = s.execute(select(CallbackTask)).scalars().all()
            sms = Counter((n.flow, n.status) for n in s.execute(select(Notification)).scalars())
        pytest.fail(
            f"the simulated day did not settle: expected {dict(expected)}; got "
            f"{len(alerts)} alerts ({sum(a.escalated_at is not None for a in alerts)} escalated),"
            f" {len(tasks)} callback tasks ({sum(t.escalated_at is not None for t in tasks)} "
            f"escalated), SMS {dict(sms)}"
        )

    # Then: every kind of message, exactly
    with session(settings) as s:
        alerts = s.execute(select(StaffAlert)).scalars().all()
        tasks = s.execute(select(CallbackTask)).scalars().all()
        sms = s.execute(select(Notification)).scalars().all()
    assert len(alerts) == expected["green_alerts"]
    assert all(a.sent_at is not None for a in alerts)
    assert sum(a.acknowledged_at is not None for a in alerts) == (
        expected["green_alerts"] - expected["green_escalations"]
    )
    assert len(tasks) == expected["callback_tasks"]
    assert count_rows(settings, RectificationTicket) == expected["rectification_tickets"]
    # and every row keeps the upstream event that caused it: an event of its own case, of the
    # type that starts that flow
    with session(settings) as s:
        journal = {e.event_id: e for e in s.execute(select(IngestEvent)).scalars()}
        tickets = s.execute(select(RectificationTicket)).scalars().all()
        jobs = s.execute(select(ScheduledJob)).scalars().all()

    digests = "send_call_list_digests"

    def cause(row: object, case_id: str, *types: str) -> None:
        event = journal.get(getattr(row, "event_id", None) or "")
        assert event is not None, f"{type(row).__name__} of {case_id} names no journaled event"
        assert (event.entity_key, event.event_type in types) == (case_id, True), event.event_type

    for a in alerts:
        # An acknowledgement processed before its alert made the row itself.
        cause(a, a.case_id, "case.submitted", "greenchannel.acknowledged")
    for t in tasks:
        cause(t, t.case_id, "case.completed" if t.kind == "key_project" else "evaluation.submitted")
    for ticket in tickets:
        cause(ticket, ticket.case_id, "evaluation.submitted")
    for n in sms:
        cause(n, n.subject_id, "case.completed")
    assert {n.event_source for n in sms} == {"case-system"}
    # (the departments' daily call-list digest is the one job no event causes)
    orphans = [j.key for j in jobs if j.event_id not in journal and j.actor_name != digests]
    assert orphans == []
    flows = Counter(n.flow for n in sms)
    assert flows == {"survey": expected["surveys"], "callback_notice": expected["callback_notices"]}
    assert len(fake_twilio.messages) == expected["surveys"] + expected["callback_notices"]
    assert (
        len({m["to"] for m in fake_twilio.messages if "评价" in m["body"]}) == expected["surveys"]
    )
    # and the live satisfaction rates match the ratings given, per department
    samples = scrape(settings.stream_metrics_port)
    for department, (satisfied, total) in day.ratings.items():
        assert (
            metric(
                samples,
                "govnotify_satisfaction_ratings",
                window="day",
                dimension="department",
                key=department,
            )
            == total
        )
        assert metric(
            samples,
            "govnotify_satisfaction_rate",
            window="day",
            dimension="department",
            key=department,
        ) == pytest.approx(satisfied / total)
    green_hooks = [
        r for r in webhooks.requests if (r.header("X-Govnotify-Id") or "") in {a.id for a in alerts}
    ]
    assert len(green_hooks) == expected["green_alerts"]
