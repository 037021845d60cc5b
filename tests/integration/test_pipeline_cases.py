"""The three case flows end to end on the real services: green-channel alerts, follow-up
callbacks, surveys and rectification, with staff webhooks and SMS at loopback fakes."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from infra.db import session
from infra.settings import Settings
from schemas.events import Event, make_event
from schemas.models import (
    CallbackTask,
    Notification,
    RectificationTicket,
    ScheduledJob,
    StaffAlert,
)
from streams.case_rules import case_job
from tests.fakes.twilio_server import FakeTwilio
from tests.support import Pipeline, count_rows, enqueue, metric, publish, scrape, wait_until

pytestmark = pytest.mark.integration

CST = dt.timezone(dt.timedelta(hours=8))


def env(fake_twilio: FakeTwilio, directory: Path, now: dt.datetime, **extra: str) -> dict:
    return {
        "GOVNOTIFY_TWILIO_ACCOUNT_SID": fake_twilio.account_sid,
        "GOVNOTIFY_TWILIO_AUTH_TOKEN": fake_twilio.auth_token,
        "GOVNOTIFY_TWILIO_FROM": "+15017122661",
        "GOVNOTIFY_TWILIO_API_BASE": fake_twilio.base_url,
        "GOVNOTIFY_STAFF_DIRECTORY": str(directory),
        "GOVNOTIFY_NOW": now.isoformat(),
        "GOVNOTIFY_GREEN_ESCALATE_AFTER_S": "3",
        "GOVNOTIFY_SURVEY_DELAY_S": "2",
        "GOVNOTIFY_CALLBACK_DUE_AFTER_S": "3",
        **extra,
    }


def case_event(
    event_type: str,
    case_id: str,
    at: dt.datetime,
    *,
    mobile: str = "13900000001",
    point: tuple[str, str, str] = ("SC-CHANGAN", "长安区政务服务中心", "service_centre"),
    groups: tuple[str, ...] = (),
    age: int | None = None,
    key_project: bool = False,
    department: str = "市场监督管理局",
) -> Event:
    payload: dict[str, Any] = {
        "case_id": case_id,
        "service_item": "食品经营许可证核发",
        "department": department,
        "service_point": {"id": point[0], "name": point[1], "level": point[2]},
        "applicant": {
            "kind": "enterprise" if key_project else "citizen",
            "name": "西安长安科技有限公司" if key_project else "王秀英",
            "mobile": mobile,
            "age": age,
            "special_groups": list(groups),
        },
        "key_project": key_project,
        "submitted_at": (at - dt.timedelta(hours=1)).isoformat(),
    }
    if key_project:
        payload["project_steward"] = {
            "staff_id": "STW-01",
            "name": "刘管家",
            "mobile": "13800130099",
            "department": department,
        }
    if event_type == "case.completed":
        payload["completed_at"] = at.isoformat()
    else:
        payload["submitted_at"] = at.isoformat()
    return make_event(event_type, payload, source="case-system", occurred_at=at)


def evaluation(
    case_id: str,
    rating: int,
    at: dt.datetime,
    *,
    real_name: bool = True,
    mobile: str | None = "13900000009",
    department: str = "市场监督管理局",
) -> Event:
    return make_event(
        "evaluation.submitted",
        {
            "evaluation_id": f"EV-{case_id}-{uuid.uuid4().hex[:6]}",
            "case_id": case_id,
            "rating": rating,
            "real_name": real_name,
            "citizen_mobile": mobile if real_name else None,
            "comment": "等待时间太长" if rating <= 2 else "",
            "department": department,
            "service_point_id": "SC-CHANGAN",
            "evaluated_at": at.isoformat(),
        },
        source="evaluation-system",
        occurred_at=at,
    )


def rows(settings: Settings, model, *where) -> list:  # type: ignore[no-untyped-def]
    with session(settings) as s:
        return list(s.execute(select(model).where(*where)).scalars())


def content(request) -> str:  # type: ignore[no-untyped-def]
    body = request.body
    return body["text"]["content"] if "msgtype" in body else body["title"] + body["text"]


def test_green_channel_alerts_on_duty_staff_and_escalates_only_the_unacknowledged(
    settings: Settings, pipeline: Pipeline, fake_twilio: FakeTwilio, hooks
) -> None:
    # Given: an elderly applicant at a street station (acknowledged at once), a 75-year-old
    # without the tag at the centre (never acknowledged) and an ordinary applicant
    webhooks, directory = hooks
    start = dt.datetime(2026, 11, 26, 10, 0, tzinfo=CST)
    # 22:00-ish would not matter: alerts are critical. Staff also get them by SMS here.
    pipeline.set_env(**env(fake_twilio, directory, start, GOVNOTIFY_GREEN_CHANNEL_SMS="true"))
    pipeline.all()
    now = pipeline.now(start)
    station = ("ST-01", "长安区韦曲街道便民服务站", "street_station")

    # When
    publish(
        settings,
        [
            case_event("case.submitted", "G-1", now, groups=("elderly",), point=station),
            case_event("case.submitted", "G-2", now, age=75),
            case_event("case.submitted", "N-1", now),
            make_event(
                "greenchannel.acknowledged",
                {
                    "case_id": "G-1",
                    "service_point_id": "ST-01",
                    "staff_id": "S101",
                    "acknowledged_at": (now + dt.timedelta(seconds=1)).isoformat(),
                },
                source="queue-system",
                occurred_at=now + dt.timedelta(seconds=1),
            ),
        ],
    )
    wait_until(
        lambda: any(
            a.status == "escalated" for a in rows(settings, StaffAlert, StaffAlert.case_id == "G-2")
        ),
        60,
        message="the unacknowledged alert did not escalate",
    )

    # Then: one alert per special-group case, to that service point's robot
    alerts = [
        r
        for r in webhooks.wait_for(3, timeout=10)
        if r.header("X-Govnotify-Id") and "escalation" not in r.header("X-Govnotify-Id")
    ]
    by_route = {r.route: content(r) for r in alerts}
    assert set(by_route) == {"/hooks/station-robot", "/hooks/hall-robot"}
    assert "高龄老人" in by_route["/hooks/station-robot"]
    assert "高龄老人" in by_route["/hooks/hall-robot"]
    assert "N-1" not in "".join(by_route.values())
    # and the escalation reached the hall supervisor for G-2 only
    escalations = [r for r in webhooks.requests if r.route == "/hooks/supervisor-robot"]
    assert len(escalations) == 1 and "G-2" in content(escalations[0])
    g1, g2 = (rows(settings, StaffAlert, StaffAlert.case_id == c)[0] for c in ("G-1", "G-2"))
    assert g1.status == "acknowledged" and g1.acknowledged_by == "S101"
    assert g1.sent_at is not None and g1.escalated_at is None
    assert g2.sent_at is not None and g2.escalated_at is not None
    assert count_rows(settings, StaffAlert) == 2
    jobs = {j.key: j.status for j in rows(settings, ScheduledJob)}
    assert jobs["green-escalate:G-2"] == "enqueued"
    # G-1's escalation was cancelled, or never planned because the ack came first
    assert jobs.get("green-escalate:G-1", "cancelled") == "cancelled"
    # and the on-duty staff of both points were texted too (critical SMS), nobody else
    staff = json.loads(directory.read_text())["service_points"]
    on_duty = {p["id"]: {m["mobile"] for m in p["on_duty"]} for p in staff}
    texted = [
        m["to"]
        for m in fake_twilio.wait_for(
            len(on_duty["ST-01"]) + len(on_duty["SC-CHANGAN"]), timeout=30
        )
    ]
    assert sorted(texted) == sorted(on_duty["ST-01"] | on_duty["SC-CHANGAN"])
    assert all(m["body"].startswith("【长安政务】绿色通道") for m in fake_twilio.messages)
    assert all(r.critical for r in rows(settings, Notification))
    # and the response times per service point can be reported
    report = subprocess.run(
        [sys.executable, "-m", "infra.cli", "green-channel"],
        env=pipeline.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert report.returncode == 0, report.stderr
    lines = {
        line.split()[0]: line.split()[1:4]
        for line in report.stdout.splitlines()
        if line.strip().startswith(("SC-", "ST-"))
    }
    assert lines == {"SC-CHANGAN": ["1", "0", "1"], "ST-01": ["1", "1", "0"]}


def test_surveys_one_per_completed_case_none_once_rated_none_after_opt_out(
    settings: Settings, pipeline: Pipeline, fake_twilio: FakeTwilio, hooks
) -> None:
    # Given
    _webhooks, directory = hooks
    start = dt.datetime(2026, 11, 26, 10, 0, tzinfo=CST)
    # 20 s after completion: the opt-out is recorded while the invitations wait
    pipeline.set_env(**env(fake_twilio, directory, start, GOVNOTIFY_SURVEY_DELAY_S="20"))
    pipeline.all()
    now = pipeline.now(start)

    # When: S-1 is completed; S-2 is rated before its completion arrives; S-3 is rated
    # right after completion; S-4's citizen refuses surveys while the invitation waits
    publish(
        settings,
        [
            case_event("case.completed", "S-1", now, mobile="13900000101"),
            evaluation("S-2", 5, now, mobile="13900000102"),
            case_event("case.completed", "S-2", now, mobile="13900000102"),
            case_event("case.completed", "S-3", now, mobile="13900000103"),
            evaluation("S-3", 4, now + dt.timedelta(seconds=1), mobile="13900000103"),
            case_event("case.completed", "S-4", now, mobile="13900000104"),
        ],
    )
    wait_until(
        lambda: {"survey:S-1", "survey:S-4"} <= {j.key for j in rows(settings, ScheduledJob)}, 60
    )
    result = subprocess.run(
        [sys.executable, "-m", "infra.cli", "opt-out", "add", "13900000104", "surveys"],
        env=pipeline.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "139****0104" in result.stdout

    def done() -> bool:
        with session(settings) as s:
            pending = s.execute(select(ScheduledJob).where(ScheduledJob.status == "pending"))
            return not pending.first() and all(
                r.status in ("sent", "suppressed", "cancelled")
                for r in s.execute(select(Notification)).scalars()
            )

    wait_until(lambda: done() and count_rows(settings, Notification) >= 2, 60)

    # Then: exactly one invitation went out, to S-1, with the rating scale and no link
    assert [m["to"] for m in fake_twilio.messages] == ["+8613900000101"]
    body = fake_twilio.messages[0]["body"]
    assert body.startswith("【长安政务】") and body.endswith(settings.opt_out_hint)
    assert "非常满意" in body and "http" not in body
    survey_rows = {r.subject_id: r.status for r in rows(settings, Notification)}
    assert survey_rows == {"S-1": "sent", "S-4": "suppressed"}
    jobs = {j.key: j.status for j in rows(settings, ScheduledJob)}
    # S-3's rating either came before its survey was planned, or cancelled the plan
    assert jobs.get("survey:S-3", "cancelled") == "cancelled"
    assert "survey:S-2" not in jobs


def test_a_survey_due_in_quiet_hours_is_deferred_to_eight_not_dropped(
    settings: Settings, pipeline: Pipeline, fake_twilio: FakeTwilio, hooks
) -> None:
    # Given: 22:30 local
    _webhooks, directory = hooks
    now = dt.datetime(2026, 11, 26, 22, 30, tzinfo=CST)
    pipeline.set_env(**env(fake_twilio, directory, now, GOVNOTIFY_SURVEY_DELAY_S="0"))
    pipeline.all()

    # When
    publish(settings, [case_event("case.completed", "Q-1", now, mobile="13900000201")])
    wait_until(lambda: any(r.not_before for r in rows(settings, Notification)), 60)

    # Then: the invitation waits for 08:00 the next morning, scheduled, not sent
    (row,) = rows(settings, Notification)
    assert row.status == "created" and row.status_reason == "quiet hours"
    assert row.not_before.astimezone(CST) == dt.datetime(2026, 11, 27, 8, 0, tzinfo=CST)
    deferred = rows(settings, ScheduledJob, ScheduledJob.actor_name == "deliver_notification")
    assert [(j.status, j.run_at.astimezone(CST).hour) for j in deferred] == [("pending", 8)]
    assert fake_twilio.messages == []
    assert (
        metric(
            scrape(settings.worker_metrics_port),
            "govnotify_notifications_deferred_total",
            reason="quiet hours",
        )
        == 1
    )


def applied_by_stream(settings: Settings, event_type: str) -> float:
    samples = scrape(settings.stream_metrics_port)
    return metric(samples, "govnotify_stream_events_total", event_type=event_type)


def enqueued_by_stream(settings: Settings, kind: str) -> float:
    samples = scrape(settings.stream_metrics_port)
    return metric(samples, "govnotify_jobs_enqueued_total", kind=kind)


def test_key_projects_get_a_steward_callback_that_closes_or_escalates(
    settings: Settings, pipeline: Pipeline, fake_twilio: FakeTwilio, hooks
) -> None:
    # Given
    webhooks, directory = hooks
    start = dt.datetime(2026, 11, 26, 10, 0, tzinfo=CST)
    # Due 25 s after completion: time for the steward's completion to be applied first, even
    # when it overtakes the job opening its task and waits for retries on a busy machine (10 s
    # was overtaken once, in a clean-clone run beside other work).
    pipeline.set_env(
        **env(
            fake_twilio,
            directory,
            start,
            GOVNOTIFY_SURVEY_DELAY_S="3600",
            GOVNOTIFY_CALLBACK_DUE_AFTER_S="25",
        )
    )
    pipeline.all()
    now = pipeline.now(start)

    # When: two key projects complete; the steward calls back on the first only
    publish(
        settings,
        [
            case_event("case.completed", "K-1", now, key_project=True, mobile="13900000301"),
            case_event("case.completed", "K-2", now, key_project=True, mobile="13900000302"),
            make_event(
                "callback.completed",
                {
                    "case_id": "K-1",
                    "callback_id": "key_project",
                    "staff_id": "STW-01",
                    "outcome": "企业对办理过程满意",
                    "completed_at": (now + dt.timedelta(seconds=1)).isoformat(),
                },
                source="case-system",
                occurred_at=now + dt.timedelta(seconds=1),
            ),
        ],
    )

    def outcome() -> dict[str, tuple[str, bool]]:
        return {
            t.case_id: (t.status, t.escalated_at is not None) for t in rows(settings, CallbackTask)
        }

    wait_until(
        lambda: outcome() == {"K-1": ("done", False), "K-2": ("open", True)},
        60,
        message=lambda: (
            f"the callbacks did not close and escalate as expected: {outcome()}; "
            "callback.completed applied by the stream: "
            f"{applied_by_stream(settings, 'callback.completed')}, jobs enqueued: "
            f"{enqueued_by_stream(settings, 'complete_callback_task')}"
        ),
    )

    # Then: the enterprises were told who calls and by when
    notices = fake_twilio.wait_for(2, timeout=30)
    assert sorted(m["to"] for m in notices) == ["+8613900000301", "+8613900000302"]
    assert all("项目管家刘管家" in m["body"] and "11月26日" in m["body"] for m in notices)
    tasks = {t.case_id: t for t in rows(settings, CallbackTask)}
    assert tasks["K-1"].status == "done" and tasks["K-1"].outcome == "企业对办理过程满意"
    assert tasks["K-1"].escalated_at is None
    assert tasks["K-2"].status == "open" and tasks["K-2"].escalated_at is not None
    ids = [
        r.header("X-Govnotify-Id")
        for r in webhooks.requests
        if r.route == "/hooks/department-robot"
    ]
    # the department head was told of K-2's task and its escalation; of K-1's task too, unless
    # the steward's completion overtook the job opening it (then the task opened done)
    assert [i for i in ids if i.endswith("-escalation")] == [f"{tasks['K-2'].id}-escalation"]
    told = {i for i in ids if not i.endswith("-escalation")}
    assert told in ({tasks["K-1"].id, tasks["K-2"].id}, {tasks["K-2"].id})
    assert (tasks["K-1"].notified_at is not None) == (tasks["K-1"].id in told)


def test_a_completion_that_overtakes_its_task_closes_it_instead_of_an_escalation(
    settings: Settings, pipeline: Pipeline, fake_twilio: FakeTwilio, hooks
) -> None:
    # Given a worker, and the steward's completion handed over before the job opening the task
    # (both come from one stream batch; workers run jobs side by side)
    webhooks, directory = hooks
    start = dt.datetime(2026, 11, 26, 10, 0, tzinfo=CST)
    pipeline.set_env(**env(fake_twilio, directory, start, GOVNOTIFY_CALLBACK_DUE_AFTER_S="3"))
    pipeline.worker()
    now = start
    completed = case_event("case.completed", "K-7", now, key_project=True, mobile="13900000307")
    enqueue(
        settings,
        "callbacks",
        "complete_callback_task",
        {
            "case_id": "K-7",
            "callback_id": "key_project",
            "staff_id": "STW-01",
            "outcome": "企业对办理过程满意",
            "completed_at": now.isoformat(),
        },
    )
    wait_until(lambda: len(rows(settings, CallbackTask)) == 1, 60)

    # When the opening job runs after it
    job = case_job(completed.payload.model_dump(mode="json"), 70).model_dump(mode="json")
    enqueue(settings, "callbacks", "open_key_project_callback", job)

    # Then the task is done, with what only the opening knew, and nothing escalates or reminds
    wait_until(
        lambda: [t.owner_name for t in rows(settings, CallbackTask)] == ["刘管家"],
        60,
        message=lambda: f"{rows(settings, CallbackTask)}",
    )
    (task,) = rows(settings, CallbackTask)
    assert (task.status, task.outcome, task.escalated_at) == ("done", "企业对办理过程满意", None)
    assert (task.department, task.service_item) == ("市场监督管理局", "食品经营许可证核发")
    assert fake_twilio.wait_for(1, timeout=30)[0]["to"] == "+8613900000307"
    assert not [j for j in rows(settings, ScheduledJob) if j.key.startswith("callback-due:")]
    assert not [r for r in webhooks.requests if r.route == "/hooks/department-robot"]


def test_a_callback_task_whose_webhook_failed_is_told_on_the_retry(
    settings: Settings, pipeline: Pipeline, fake_twilio: FakeTwilio, hooks
) -> None:
    # Given the department robot refuses its first message
    webhooks, directory = hooks
    start = dt.datetime(2026, 11, 26, 10, 0, tzinfo=CST)
    pipeline.set_env(
        **env(
            fake_twilio,
            directory,
            start,
            GOVNOTIFY_SURVEY_DELAY_S="3600",
            GOVNOTIFY_CALLBACK_DUE_AFTER_S="3600",
        )
    )
    pipeline.all()
    webhooks.fail_next(1, 503)

    # When a key project completes
    now = pipeline.now(start)
    publish(
        settings, [case_event("case.completed", "K-9", now, key_project=True, mobile="13900000309")]
    )

    # Then the retry tells the department head, once it worked, and the enterprise gets its notice
    wait_until(
        lambda: [t.notified_at is not None for t in rows(settings, CallbackTask)] == [True],
        60,
        message=lambda: f"the task was not told: {rows(settings, CallbackTask)}",
    )
    task = rows(settings, CallbackTask)[0]
    told = [r for r in webhooks.requests if r.route == "/hooks/department-robot"]
    assert [r.header("X-Govnotify-Id") for r in told] == [task.id, task.id]
    assert len(fake_twilio.wait_for(1, timeout=30)) == 1


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
    # Given: a 1-working-day deadline that ends 40 s after the pipeline starts (time enough to
    # start it and close one ticket first)
    webhooks, directory = hooks
    now = dt.datetime(2026, 11, 24, 23, 59, 19, tzinfo=CST)  # Tuesday
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

    # When: the deadline passes
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


def test_the_sixth_sms_of_the_day_to_one_citizen_waits_for_tomorrow(
    settings: Settings, pipeline: Pipeline, fake_twilio: FakeTwilio, hooks
) -> None:
    # Given: six licenses of one holder, all due for a reminder today
    from producers.generator import license_event

    _webhooks, directory = hooks
    now = dt.datetime(2026, 11, 26, 10, 0, tzinfo=CST)
    pipeline.set_env(**env(fake_twilio, directory, now))
    pipeline.all()
    events = [
        license_event(
            "license.issued",
            f"LIC-CAP-{i}",
            category="food_business",
            holder_mobile="13900000501",
            issued_on=dt.date(2021, 12, 16),
            expires_on=dt.date(2026, 12, 16),
            occurred_at=now,
        )
        for i in range(6)
    ]

    # When
    publish(settings, events)
    wait_until(
        lambda: (
            count_rows(settings, Notification) == 6
            and all(r.status == "sent" or r.not_before for r in rows(settings, Notification))
        ),
        60,
    )

    # Then: five were sent, the sixth is deferred to 08:00 tomorrow
    assert len(fake_twilio.messages) == 5
    (deferred,) = [r for r in rows(settings, Notification) if r.status != "sent"]
    assert deferred.status_reason == "daily cap"
    assert deferred.not_before.astimezone(CST) == dt.datetime(2026, 11, 27, 8, 0, tzinfo=CST)


def test_live_satisfaction_rates_per_department_from_the_stream(
    settings: Settings, pipeline: Pipeline, fake_twilio: FakeTwilio, hooks
) -> None:
    # Given
    _webhooks, directory = hooks
    now = dt.datetime(2026, 11, 26, 10, 0, tzinfo=CST)
    pipeline.set_env(**env(fake_twilio, directory, now))
    pipeline.all()

    # When: 3 ratings for one department (one negative), 2 for another, one replayed
    ratings = [evaluation(f"SAT-{i}", r, now, real_name=False) for i, r in enumerate((5, 4, 1))]
    others = [
        evaluation(f"SAT-B{i}", 3, now, real_name=False, department="税务局") for i in range(2)
    ]
    publish(settings, [*ratings, *others, ratings[0]])

    def rates() -> dict[str, float]:
        samples = scrape(settings.stream_metrics_port)
        return {
            dept: metric(
                samples,
                "govnotify_satisfaction_ratings",
                window="day",
                dimension="department",
                key=dept,
            )
            for dept in ("市场监督管理局", "税务局")
        }

    wait_until(lambda: rates() == {"市场监督管理局": 3.0, "税务局": 2.0}, 60)

    # Then: the rates are right, and the CLI shows them
    samples = scrape(settings.stream_metrics_port)
    assert metric(
        samples,
        "govnotify_satisfaction_rate",
        window="day",
        dimension="department",
        key="市场监督管理局",
    ) == pytest.approx(2 / 3)
    assert (
        metric(
            samples,
            "govnotify_satisfaction_rate",
            window="short",
            dimension="department",
            key="税务局",
        )
        == 1.0
    )
    assert (
        metric(
            samples,
            "govnotify_satisfaction_ratings",
            window="day",
            dimension="service_point",
            key="SC-CHANGAN",
        )
        == 5
    )
    result = subprocess.run(
        [sys.executable, "-m", "infra.cli", "satisfaction"],
        env=pipeline.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "市场监督管理局" in result.stdout and "66.67%" in result.stdout
    assert "100.00%" in result.stdout


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


def test_cases_not_rated_in_time_get_the_default_rating_when_enabled(
    settings: Settings, pipeline: Pipeline, fake_twilio: FakeTwilio, hooks
) -> None:
    # Given: default ratings on, after 3 s (7 days in production)
    from schemas.models import EvaluationRecord

    _webhooks, directory = hooks
    start = dt.datetime(2026, 11, 26, 10, 0, tzinfo=CST)
    pipeline.set_env(
        **env(
            fake_twilio,
            directory,
            start,
            GOVNOTIFY_SURVEY_DELAY_S="3600",
            GOVNOTIFY_DEFAULT_RATING_ENABLED="true",
            GOVNOTIFY_DEFAULT_RATING_AFTER_S="3",
        )
    )
    pipeline.all()
    now = pipeline.now(start)

    # When: one case is never rated, the other is rated at once
    publish(
        settings,
        [
            case_event("case.completed", "D-1", now, mobile="13900000601"),
            case_event("case.completed", "D-2", now, mobile="13900000602"),
            evaluation("D-2", 5, now, real_name=False),
        ],
    )
    wait_until(lambda: count_rows(settings, EvaluationRecord) == 2, 60)

    # Then: D-1 got 基本满意 (3), marked as a default; D-2 kept its own rating
    records = {r.case_id: r for r in rows(settings, EvaluationRecord)}
    assert (records["D-1"].rating, records["D-1"].is_default) == (3, True)
    assert (records["D-2"].rating, records["D-2"].is_default) == (5, False)
    jobs = {j.key: j.status for j in rows(settings, ScheduledJob)}
    assert jobs["default-rating:D-1"] == "enqueued"
    # and it counts in the live satisfaction rates like any rating
    wait_until(
        lambda: (
            metric(
                scrape(settings.stream_metrics_port),
                "govnotify_satisfaction_ratings",
                window="day",
                dimension="department",
                key="市场监督管理局",
            )
            == 2
        ),
        30,
    )
