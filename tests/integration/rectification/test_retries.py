"""A rectification ticket's overdue notice survives a failed webhook and a retry.

The notice used to be marked before it was sent: a webhook that failed once (the actor retries)
or a worker killed in between left the ticket marked overdue and the department head never told.
These run the actor's own code (``actor.fn``) against a real PostgreSQL database and the webhook
fake, and retry it as dramatiq would.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infra.db import session
from infra.settings import Settings, load_settings
from notifiers.errors import TransientDeliveryError
from schemas.models import RectificationTicket
from tests.fakes.webhook_server import FakeWebhook
from tests.support import worker_context
from workers import rectification as rectification_module
from workers.context import using

pytestmark = pytest.mark.integration

CST = dt.timezone(dt.timedelta(hours=8))
OPENED = dt.datetime(2026, 11, 23, 10, 0, tzinfo=CST)


@pytest.fixture
def test_settings(database_url: str, tmp_path: Path, hooks: tuple[FakeWebhook, Path]) -> Settings:
    return load_settings(
        namespace="trectify",
        data_dir=tmp_path / "data",
        database_url=database_url,
        staff_directory=hooks[1],
    )


@pytest.fixture
def rectification(test_settings: Settings) -> Iterator[Any]:
    """``workers.rectification``, its actors run in a worker context of this test's settings
    (the robot's pace kept, its waits not slept: :func:`tests.support.worker_context`)."""
    with using(worker_context(test_settings)):
        yield rectification_module


def open_ticket(settings: Settings, **fields: Any) -> str:
    ticket = RectificationTicket(
        idempotency_key=f"rectification:{fields.get('case_id', 'R-9')}",
        evaluation_id="EV-9",
        case_id="R-9",
        department="市场监督管理局",
        service_item="食品经营许可证核发",
        service_point_id="SC-CHANGAN",
        rating=1,
        opened_at=OPENED,
        deadline_at=OPENED + dt.timedelta(days=1),
        **fields,
    )
    with session(settings) as s:
        s.add(ticket)
        s.commit()
        return ticket.id


def overdue_notices(webhooks: FakeWebhook, ticket_id: str) -> list[Any]:
    return [
        r
        for r in webhooks.requests
        if r.header("X-Govnotify-Id") == f"{ticket_id}-overdue" and r.answered < 300
    ]


def test_an_overdue_notice_refused_once_is_sent_on_the_retry_and_then_marked(
    test_settings: Settings, hooks: tuple[FakeWebhook, Path], rectification: Any
) -> None:
    # Given: an open ticket and a webhook that refuses its next request
    webhooks, _ = hooks
    ticket_id = open_ticket(test_settings)
    webhooks.fail_next(1, 503)

    # When: the overdue job runs, fails, and is retried (twice, as a redelivery would)
    with pytest.raises(TransientDeliveryError):
        rectification.flag_rectification_overdue.fn(ticket_id)
    with session(test_settings) as s:
        unmarked = s.get(RectificationTicket, ticket_id)
    rectification.flag_rectification_overdue.fn(ticket_id)
    rectification.flag_rectification_overdue.fn(ticket_id)

    # Then: not marked while the head had not been told; told once after; marked
    assert unmarked is not None and unmarked.overdue_at is None
    assert len(overdue_notices(webhooks, ticket_id)) == 1
    with session(test_settings) as s:
        ticket = s.get(RectificationTicket, ticket_id)
    assert ticket is not None and ticket.overdue_at is not None


def test_a_closed_ticket_is_never_flagged_overdue(
    test_settings: Settings, hooks: tuple[FakeWebhook, Path], rectification: Any
) -> None:
    # Given: a ticket closed before its deadline
    webhooks, _ = hooks
    ticket_id = open_ticket(test_settings, status="closed", outcome="已整改")

    # When
    rectification.flag_rectification_overdue.fn(ticket_id)

    # Then
    assert overdue_notices(webhooks, ticket_id) == []
    with session(test_settings) as s:
        ticket = s.get(RectificationTicket, ticket_id)
    assert ticket is not None and ticket.overdue_at is None
