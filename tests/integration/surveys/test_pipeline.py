"""Surveys and satisfaction end to end on the real services: one invitation per completed case
(none once rated, none after an opt-out, deferred in quiet hours), the live satisfaction rates
of the stream, and default ratings for cases not rated in time."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys

import pytest
from sqlalchemy import select

from infra.db import session
from infra.settings import Settings
from schemas.models import Notification, ScheduledJob
from tests.fakes.twilio_server import FakeTwilio
from tests.support import Pipeline, count_rows, metric, publish, scrape, wait_until
from tests.support.cases import CST, case_event, env, evaluation, rows

pytestmark = pytest.mark.integration


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
        # One read judges both the count and the statuses: counted apart, S-1's row could be
        # missing from the first read and still `sending` in the second.
        with session(settings) as s:
            pending = s.execute(select(ScheduledJob).where(ScheduledJob.status == "pending"))
            if pending.first():
                return False
            made = s.execute(select(Notification.status)).scalars().all()
            return len(made) >= 2 and all(
                status in ("sent", "suppressed", "cancelled") for status in made
            )

    wait_until(done, 60)

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
