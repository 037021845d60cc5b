"""Green-channel alerts end to end on the real services: on-duty staff alerted by webhook and
SMS, escalation of the unacknowledged only, and the response-time report."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys

import pytest

from infra.settings import Settings
from schemas.events import make_event
from schemas.models import Notification, ScheduledJob, StaffAlert
from tests.fakes.twilio_server import FakeTwilio
from tests.support import Pipeline, count_rows, publish, wait_until
from tests.support.cases import CST, case_event, content, env, rows

pytestmark = pytest.mark.integration


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
