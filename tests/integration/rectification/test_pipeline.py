"""Rectification end to end on the real services: negative reviews open tickets with working-day
deadlines, closing one tells the citizen, an open one past its deadline is flagged overdue."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys

import pytest

from infra.settings import Settings
from schemas.models import CallbackTask, RectificationTicket, ScheduledJob
from tests.fakes.twilio_server import FakeTwilio
from tests.support import Pipeline, count_rows, publish, wait_until
from tests.support.cases import CST, content, env, evaluation, rows

pytestmark = pytest.mark.integration


def test_negative_reviews_open_tickets_with_working_day_deadlines_and_closing_tells_citizen(
    settings: Settings, pipeline: Pipeline, fake_twilio: FakeTwilio, hooks
) -> None:
    # Given: the day before the 2026 Mid-autumn/National Day holidays
    webhooks, directory = hooks
    now = dt.datetime(2026, 9, 30, 10, 0, tzinfo=CST)
    pipeline.set_env(**env(fake_twilio, directory, now))
    pipeline.all()

    # When: a real-name 1-star review, an anonymous 2-star one and a 4-star one arrive
    publish(
        settings,
        [
            evaluation("R-1", 1, now, mobile="13900000401"),
            evaluation("R-2", 2, now, real_name=False),
            evaluation("R-3", 4, now, mobile="13900000403"),
        ],
    )
    wait_until(
        lambda: (
            count_rows(settings, RectificationTicket) == 2
            and count_rows(settings, CallbackTask) == 1
        ),
        60,
    )

    # Then: 5 working days skip Oct 1-7 and count Saturday Oct 10 (a make-up working day)
    tickets = {t.case_id: t for t in rows(settings, RectificationTicket)}
    for ticket in tickets.values():
        assert ticket.deadline_at.astimezone(CST) == dt.datetime(
            2026, 10, 13, 23, 59, 59, tzinfo=CST
        )
    assert tickets["R-1"].citizen_mobile == "+8613900000401"
    assert tickets["R-2"].citizen_mobile is None
    (task,) = rows(settings, CallbackTask)
    assert (task.case_id, task.kind) == ("R-1", "negative_review")
    reminders = {
        j.key: j.run_at.astimezone(CST)
        for j in rows(settings, ScheduledJob)
        if j.key.endswith(":remind")
    }
    assert set(reminders.values()) == {dt.datetime(2026, 10, 12, 9, 0, tzinfo=CST)}
    wait_until(
        lambda: len([r for r in webhooks.requests if r.route == "/hooks/department-robot"]) >= 3, 30
    )

    # When: the department closes R-1's ticket
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "infra.cli",
            "rectification",
            "close",
            tickets["R-1"].id,
            "--outcome",
            "已对窗口人员批评教育并优化排队流程",
        ],
        env=pipeline.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    (sms,) = fake_twilio.wait_for(1, timeout=30)

    # Then: the citizen is told the outcome; the ticket's reminder and overdue are cancelled
    assert sms["to"] == "+8613900000401" and "优化排队流程" in sms["body"]
    wait_until(
        lambda: (
            rows(settings, RectificationTicket, RectificationTicket.id == tickets["R-1"].id)[
                0
            ].status
            == "closed"
        ),
        30,
    )
    statuses = {
        j.key.rsplit(":", 1)[1]: j.status
        for j in rows(settings, ScheduledJob)
        if j.key.startswith(f"rectification:{tickets['R-1'].evaluation_id}")
    }
    assert statuses == {"remind": "cancelled", "overdue": "cancelled"}


def test_an_open_ticket_past_its_deadline_is_flagged_overdue_and_a_closed_one_is_not(
    settings: Settings, pipeline: Pipeline, fake_twilio: FakeTwilio, hooks
) -> None:
    # Given: a 1-working-day deadline, Tuesday 23:59:59, two minutes after the pipeline starts
    # (time enough to start it and close one ticket first, on any machine)
    webhooks, directory = hooks
    now = dt.datetime(2026, 11, 24, 23, 58, 0, tzinfo=CST)  # Tuesday
    deadline = dt.datetime(2026, 11, 24, 23, 59, 59, tzinfo=CST)
    monday = dt.datetime(2026, 11, 23, 10, 0, tzinfo=CST)
    pipeline.set_env(**env(fake_twilio, directory, now, GOVNOTIFY_RECTIFICATION_WORKDAYS="1"))
    pipeline.all()
    publish(
        settings,
        [
            evaluation("O-1", 1, monday, real_name=False),
            evaluation("O-2", 2, monday, real_name=False),
        ],
    )
    wait_until(lambda: count_rows(settings, RectificationTicket) == 2, 60)
    closing = next(t for t in rows(settings, RectificationTicket) if t.case_id == "O-2")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "infra.cli",
            "rectification",
            "close",
            closing.id,
            "--outcome",
            "已整改",
        ],
        env=pipeline.env,
        check=True,
        timeout=60,
        capture_output=True,
    )
    wait_until(
        lambda: (
            rows(settings, RectificationTicket, RectificationTicket.id == closing.id)[0].status
            == "closed"
        ),
        30,
        message="the ticket was not closed",
    )
    assert pipeline.now(now) < deadline  # both tickets were still within their deadline
    assert not any(t.overdue_at for t in rows(settings, RectificationTicket))

    # When: the deadline passes (the night goes by: the worker and the scheduler go on, their
    # clock a few seconds before the deadline, instead of the test waiting for it)
    for child in [c for c in pipeline.children if c.name in ("worker", "scheduler")]:
        child.stop()
        pipeline.children.remove(child)
    pipeline.set_env(GOVNOTIFY_NOW=(deadline - dt.timedelta(seconds=3)).isoformat())
    pipeline.worker()
    pipeline.scheduler()
    wait_until(
        lambda: any(t.overdue_at for t in rows(settings, RectificationTicket)),
        60,
        message="the open ticket was not flagged overdue",
    )

    # Then
    tickets = {t.case_id: t for t in rows(settings, RectificationTicket)}
    assert tickets["O-1"].status == "open" and tickets["O-1"].overdue_at is not None
    assert tickets["O-2"].status == "closed" and tickets["O-2"].overdue_at is None
    overdue = [
        r for r in webhooks.requests if (r.header("X-Govnotify-Id") or "").endswith("-overdue")
    ]
    assert len(overdue) == 1 and "O-1" in content(overdue[0])
    assert fake_twilio.messages == []  # anonymous reviews: nobody to tell
