"""Key-project callbacks end to end on the real services: the steward's callback closes the task
or it escalates, a completion that overtakes its task, a department webhook told on the retry."""

from __future__ import annotations

import datetime as dt

import pytest

from infra.settings import Settings
from schemas.events import make_event
from schemas.models import CallbackTask, ScheduledJob
from streams.case_rules import case_job
from tests.fakes.twilio_server import FakeTwilio
from tests.support import Pipeline, enqueue, metric, publish, scrape, wait_until
from tests.support.cases import CST, case_event, env, rows

pytestmark = pytest.mark.integration


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
