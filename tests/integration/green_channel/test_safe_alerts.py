"""Green-channel alerts that must reach people whatever their text or their robot says (issue 11).

The actors run in this process on dramatiq's ``StubBroker`` (tests/support/stub_worker.py), on
the real PostgreSQL database, with every staff robot pointed at the loopback webhook fake. The
escalation fires through the real scheduler tick (:func:`workers.scheduled_jobs.tick`), whose
sender hands the due job to the stub broker.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dramatiq.brokers.stub import StubBroker

from infra.settings import Settings, load_settings
from schemas.commands import CaseJob
from schemas.models import DeadLetter, ScheduledJob, StaffAlert
from tests.fakes.webhook_server import FakeWebhook
from tests.support.cases import CST, content, rows
from tests.support.stub_worker import actors_on_stub_broker
from workers.context import WorkerContext
from workers.green_channel import escalate_green_channel_alert, raise_green_channel_alert
from workers.scheduled_jobs import tick

pytestmark = pytest.mark.integration

SUBMITTED = dt.datetime(2026, 11, 26, 9, 30, tzinfo=CST)
ESCALATE_AFTER_S = 600


@pytest.fixture
def test_settings(database_url: str, tmp_path: Path, hooks: tuple[FakeWebhook, Path]) -> Settings:
    return load_settings(
        namespace="tsafe" + uuid.uuid4().hex[:8],
        data_dir=tmp_path / "data",
        database_url=database_url,
        staff_directory=hooks[1],
        green_escalate_after_s=ESCALATE_AFTER_S,
    )


@pytest.fixture
def stub(test_settings: Settings) -> Iterator[StubBroker]:
    with actors_on_stub_broker(WorkerContext(test_settings)) as broker:
        yield broker


class _StubSender:
    """The scheduler's job sender, handing each due job to the actor on the stub broker."""

    def send_many(self, jobs: list[tuple[str, Any]]) -> None:
        actors = {a.actor_name: a for a in (escalate_green_channel_alert,)}
        for actor_name, payload in jobs:
            actors[actor_name].send(payload)


class _At:
    """A clock standing at one instant (the scheduler only asks for utcnow)."""

    def __init__(self, instant: dt.datetime) -> None:
        self.instant = instant

    def utcnow(self) -> dt.datetime:
        return self.instant.astimezone(dt.UTC)


def _case_job(case_id: str, service_item: str = "食品经营许可证核发") -> dict[str, Any]:
    return CaseJob(
        case_id=case_id,
        service_item=service_item,
        department="市场监督管理局",
        service_point_id="SC-CHANGAN",
        service_point_name="长安区政务服务中心",
        applicant_kind="citizen",
        applicant_name="王秀英",
        applicant_mobile="+8613900000001",
        special_groups=["elderly"],
        submitted_at=SUBMITTED,
    ).model_dump(mode="json")


def _fire_due_escalations(settings: Settings, stub: StubBroker, *, fail_fast: bool = True) -> int:
    """One scheduler tick just after the escalation falls due, then the stub worker drains
    (``fail_fast``: re-raise what an actor of the alerts queue raised for good)."""
    due = SUBMITTED + dt.timedelta(seconds=ESCALATE_AFTER_S + 1)
    fired = tick(settings, _At(due), _StubSender())  # type: ignore[arg-type]
    stub.join(escalate_green_channel_alert.queue_name, fail_fast=fail_fast)
    return fired


def test_an_alert_and_its_escalation_with_numbers_in_them_go_out_masked(
    test_settings: Settings, hooks: tuple[FakeWebhook, Path], stub: StubBroker
) -> None:
    # Given: a case whose id is 18 digits (shaped like an ID-card number) and whose service
    # item carries a mobile number: a job from the stream, not re-checked at ingest
    webhooks, _ = hooks
    case_id = "610116202611260001"
    job = _case_job(case_id, service_item="咨询13800138000食品经营许可")

    # When: the alert is raised, nobody acknowledges it, and the escalation falls due
    raise_green_channel_alert.send(job)
    stub.join(raise_green_channel_alert.queue_name, fail_fast=True)
    fired = _fire_due_escalations(test_settings, stub)

    # Then: the on-duty staff got the alert with the mobile masked
    assert fired == 1
    alerts = [r for r in webhooks.requests if r.route == "/hooks/hall-robot"]
    assert len(alerts) == 1 and alerts[0].answered == 200
    assert "咨询138****8000食品经营许可" in content(alerts[0])
    # and the hall supervisor got the escalation, the case id masked as an ID number would be
    [escalation] = [r for r in webhooks.requests if r.route == "/hooks/supervisor-robot"]
    text = content(escalation)
    assert "绿色通道超时未响应" in text and "610116********0001" in text
    for request in webhooks.requests:
        assert case_id not in content(request) and "13800138000" not in content(request)
    [alert] = rows(test_settings, StaffAlert, StaffAlert.case_id == case_id)
    assert alert.status == "escalated" and alert.escalated_at is not None
    assert rows(test_settings, DeadLetter) == []


def test_the_escalation_is_scheduled_before_the_first_send_and_fires_when_it_fails(
    test_settings: Settings, hooks: tuple[FakeWebhook, Path], stub: StubBroker
) -> None:
    # Given: the on-duty robot refuses the alert for good (a revoked robot URL answers 404)
    webhooks, _ = hooks
    case_id = f"G-{uuid.uuid4().hex[:8]}"
    webhooks.fail_next(1, 404)

    # When: the alert is raised (and dead-lettered), then the escalation falls due
    raise_green_channel_alert.send(_case_job(case_id))
    stub.join(raise_green_channel_alert.queue_name, fail_fast=False)
    [scheduled] = rows(test_settings, ScheduledJob, ScheduledJob.key == f"green-escalate:{case_id}")
    # (the alert's own dead letter stays on the shared alerts queue: not re-raised here)
    fired = _fire_due_escalations(test_settings, stub, fail_fast=False)

    # Then: the refused alert is a dead letter with its reason ...
    [letter] = rows(test_settings, DeadLetter)
    assert (letter.stage, letter.event_type) == ("job", "raise_green_channel_alert")
    assert letter.reason == "PermanentDeliveryError" and "404" in letter.detail
    # ... its escalation had been scheduled all the same, and reached the hall supervisor
    assert scheduled.actor_name == "escalate_green_channel_alert"
    assert scheduled.run_at == SUBMITTED + dt.timedelta(seconds=ESCALATE_AFTER_S)
    assert fired == 1
    [escalation] = [r for r in webhooks.requests if r.route == "/hooks/supervisor-robot"]
    assert escalation.answered == 200 and case_id in content(escalation)
    [alert] = rows(test_settings, StaffAlert, StaffAlert.case_id == case_id)
    assert alert.sent_at is None and alert.status == "escalated"
