"""The rectification actors on dramatiq's ``StubBroker``, with this test's settings passed in.

No worker process and no RabbitMQ: the actors run in this process (tests/support/stub_worker.py)
on the real PostgreSQL database and the staff webhook fake, reading a worker context built
from the test's own settings.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from dramatiq.brokers.stub import StubBroker
from sqlalchemy import select

from infra.db import session
from infra.settings import Settings, load_settings
from schemas.commands import EvaluationJob
from schemas.models import CallbackTask, DeadLetter, EvaluationRecord, RectificationTicket
from tests.fakes.webhook_server import FakeWebhook
from tests.support import worker_context
from tests.support.stub_worker import actors_on_stub_broker
from workers.rectification import flag_rectification_overdue, record_evaluation

pytestmark = pytest.mark.integration

CST = dt.timezone(dt.timedelta(hours=8))
EVALUATED = dt.datetime(2026, 11, 23, 10, 0, tzinfo=CST)


@pytest.fixture
def test_settings(database_url: str, tmp_path: Path, hooks: tuple[FakeWebhook, Path]) -> Settings:
    return load_settings(
        namespace="tstub",
        data_dir=tmp_path / "data",
        database_url=database_url,
        staff_directory=hooks[1],
        rectification_workdays=3,
    )


@pytest.fixture
def stub(test_settings: Settings) -> Iterator[StubBroker]:
    # The robot's pace kept, its waits not slept (tests.support.worker_context).
    with actors_on_stub_broker(worker_context(test_settings)) as broker:
        yield broker


def negative_review(case_id: str, *, real_name: bool) -> dict:
    return EvaluationJob(
        evaluation_id=f"EV-{case_id}",
        case_id=case_id,
        rating=1,
        real_name=real_name,
        citizen_mobile="+8613900000009" if real_name else None,
        comment="等待时间太长",
        department="市场监督管理局",
        service_point_id="SC-CHANGAN",
        service_item="食品经营许可证核发",
        evaluated_at=EVALUATED,
    ).model_dump(mode="json")


def all_rows(settings: Settings, model: type) -> list:
    with session(settings) as s:
        return list(s.execute(select(model)).scalars())


def test_a_negative_real_name_review_opens_a_ticket_and_a_callback_and_tells_the_head(
    test_settings: Settings, hooks: tuple[FakeWebhook, Path], stub: StubBroker
) -> None:
    # Given: the actors on the stub broker, in this test's worker context
    webhooks, _ = hooks

    # When: the stream's job for a 1-star real-name review is handed over
    record_evaluation.send(negative_review("S-1", real_name=True))
    stub.join(record_evaluation.queue_name, fail_fast=True)

    # Then: recorded, a ticket due in 3 working days, a callback task for the head, who was told
    [record] = all_rows(test_settings, EvaluationRecord)
    [ticket] = all_rows(test_settings, RectificationTicket)
    [task] = all_rows(test_settings, CallbackTask)
    assert (record.case_id, record.rating) == ("S-1", 1)
    assert (ticket.case_id, ticket.status, ticket.citizen_mobile) == (
        "S-1",
        "open",
        "+8613900000009",
    )
    assert ticket.deadline_at.astimezone(CST).date() == dt.date(2026, 11, 26)
    assert (task.case_id, task.kind, task.status) == ("S-1", "negative_review", "open")
    told = {r.header("X-Govnotify-Id") for r in webhooks.requests if r.answered < 300}
    assert ticket.id in told


def test_a_malformed_job_is_a_dead_letter_and_opens_nothing(
    test_settings: Settings, stub: StubBroker
) -> None:
    # Given: a job whose rating is out of range
    job = {**negative_review("S-2", real_name=False), "rating": 9}

    # When
    record_evaluation.send(job)
    stub.join(record_evaluation.queue_name, fail_fast=True)

    # Then
    [letter] = all_rows(test_settings, DeadLetter)
    assert (letter.stage, letter.reason, letter.event_type) == (
        "job",
        "invalid_job",
        "record_evaluation",
    )
    assert all_rows(test_settings, RectificationTicket) == []
    assert all_rows(test_settings, EvaluationRecord) == []


def test_an_overdue_ticket_is_flagged_once_however_often_its_job_runs(
    test_settings: Settings, hooks: tuple[FakeWebhook, Path], stub: StubBroker
) -> None:
    # Given: an open anonymous ticket
    webhooks, _ = hooks
    record_evaluation.send(negative_review("S-3", real_name=False))
    stub.join(record_evaluation.queue_name, fail_fast=True)
    [ticket] = all_rows(test_settings, RectificationTicket)

    # When: its overdue job runs, and is delivered again after it ran (a redelivery)
    for _ in range(2):
        flag_rectification_overdue.send(ticket.id)
        stub.join(flag_rectification_overdue.queue_name, fail_fast=True)

    # Then: marked, and the head told once
    [flagged] = all_rows(test_settings, RectificationTicket)
    assert flagged.overdue_at is not None
    overdue = [r for r in webhooks.requests if r.header("X-Govnotify-Id") == f"{ticket.id}-overdue"]
    assert len(overdue) == 1
