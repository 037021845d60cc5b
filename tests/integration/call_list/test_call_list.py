"""Renewal call lists reach the issuing departments: the daily digest, and the CLI staff use.

On the real RabbitMQ and PostgreSQL, with the worker and the scheduler as processes and the
department robots on a loopback fake.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import uuid
from typing import Any

import pytest
from sqlalchemy import select

from infra.db import session
from infra.settings import Settings
from schemas.models import CallListEntry, DeadLetter, OperatorAudit
from tests.fakes.webhook_server import FakeWebhook
from tests.support import Pipeline, env_for, metric, scrape, wait_until
from tests.support.call_list import add_entry, notified

pytestmark = pytest.mark.integration

CST = dt.timezone(dt.timedelta(hours=8))
#: A Thursday, after the 09:00 digest time: today's digest is due at once.
NOW = dt.datetime(2026, 11, 26, 10, 0, tzinfo=CST)
TODAY = NOW.date()
ROBOT = "/hooks/department-robot"


def digests(webhooks: FakeWebhook) -> list[Any]:
    return [r for r in webhooks.requests if r.route == ROBOT]


def text(request: Any) -> str:
    """Everything the robot was sent, as text (the robot format's JSON)."""
    return json.dumps(request.body, ensure_ascii=False)


def start(pipeline: Pipeline, directory: Any, **extra: str) -> None:
    pipeline.set_env(
        GOVNOTIFY_STAFF_DIRECTORY=str(directory), GOVNOTIFY_NOW=NOW.isoformat(), **extra
    )
    pipeline.worker()
    pipeline.scheduler()


def test_each_department_gets_its_due_entries_once_with_numbers_masked(
    settings: Settings, pipeline: Pipeline, hooks
) -> None:
    # Given entries of two departments due by today, one due later, one sent yesterday and
    # one cancelled by a renewal
    webhooks, directory = hooks
    add_entry(settings, "LIC-MKT-1", mobile="13800138001")
    add_entry(settings, "LIC-MKT-2", due_on=TODAY - dt.timedelta(days=1), mobile="13800138002")
    add_entry(settings, "LIC-HEALTH-1", department="卫生健康局", mobile="13800138003")
    add_entry(settings, "LIC-LATER", due_on=TODAY + dt.timedelta(days=1))
    add_entry(settings, "LIC-SENT", notified=True)
    add_entry(settings, "LIC-RENEWED", status="cancelled")

    # When the worker and the scheduler run on a working day after 09:00
    start(pipeline, directory)

    # Then each department's head got one message with its own due entries
    wait_until(
        lambda: len(digests(webhooks)) == 2,
        60,
        message=lambda: f"robot got {len(digests(webhooks))} messages",
    )
    wait_until(lambda: sum(notified(settings).values()) == 4, 30)
    assert notified(settings) == {
        "LIC-MKT-1": True,
        "LIC-MKT-2": True,
        "LIC-HEALTH-1": True,
        "LIC-LATER": False,
        "LIC-SENT": True,
        "LIC-RENEWED": False,
    }
    texts = [text(r) for r in digests(webhooks)]
    by_department = {
        "卫生健康局": next(t for t in texts if "LIC-HEALTH-1" in t),
        "市场监督管理局": next(t for t in texts if "LIC-MKT-1" in t),
    }
    assert "LIC-MKT" not in by_department["卫生健康局"]
    assert "LIC-MKT-2" in by_department["市场监督管理局"]
    assert "LIC-HEALTH" not in by_department["市场监督管理局"]
    assert all(
        "LIC-LATER" not in t and "LIC-SENT" not in t and "LIC-RENEWED" not in t for t in texts
    )
    # masked in the group chat: never a full number or name
    assert all("138****8001" in t or "138****8003" in t for t in texts)
    assert not any(f"1380013800{k}" in t for t in texts for k in (1, 2, 3))
    assert not any("王伟" in t for t in texts)
    # and the open calls are a gauge per department
    samples = scrape(settings.scheduler_metrics_port)
    assert metric(samples, "govnotify_call_list_entries_open", department="市场监督管理局") == 4
    assert metric(samples, "govnotify_call_list_entries_open", department="卫生健康局") == 1


def test_a_robot_failure_is_retried_without_resending_the_other_department(
    settings: Settings, pipeline: Pipeline, hooks
) -> None:
    # Given two departments with due entries, and a robot that refuses the first message
    webhooks, directory = hooks
    add_entry(settings, "LIC-MKT-1")
    add_entry(settings, "LIC-HEALTH-1", department="卫生健康局")
    webhooks.fail_next(1, 503)

    # When the digest runs
    start(pipeline, directory)

    # Then both are sent in the end: one refused try, then one message per department
    wait_until(
        lambda: notified(settings) == {"LIC-MKT-1": True, "LIC-HEALTH-1": True},
        60,
        message=lambda: f"{notified(settings)}: {len(digests(webhooks))} requests",
    )
    ids = [r.header("X-Govnotify-Id") for r in digests(webhooks)]
    assert len(ids) == 3
    assert len(set(ids)) == 2  # the retry resent only the refused department's digest


def test_a_robot_refusing_for_good_makes_a_dead_letter_at_once(
    settings: Settings, pipeline: Pipeline, hooks
) -> None:
    # Given a department robot that refuses the digest for good (DingTalk: keyword mismatch)
    webhooks, directory = hooks
    add_entry(settings, "LIC-MKT-1")
    webhooks.errcode_next(1, 310000)

    # When the digest runs
    start(pipeline, directory)

    # Then the job is a dead letter to replay once the robot is fixed, after one try, not eight
    def letters() -> list[DeadLetter]:
        with session(settings) as s:
            return list(s.execute(select(DeadLetter)).scalars())

    wait_until(lambda: letters(), 60, message=lambda: f"{len(digests(webhooks))} requests")
    (letter,) = letters()
    assert (letter.stage, letter.event_type) == ("job", "send_call_list_digests")
    assert "failed for good" in letter.detail
    assert len(digests(webhooks)) == 1
    assert notified(settings) == {"LIC-MKT-1": False}


def govnotify(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "infra.cli", "call-list", *args],
        env=env_for(settings),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_staff_list_their_calls_and_record_them_done(settings: Settings) -> None:
    # Given two open entries of one department and one of another
    first = add_entry(settings, "LIC-MKT-1", mobile="13800138001")
    add_entry(settings, "LIC-MKT-2", mobile="13800138002")
    add_entry(settings, "LIC-HEALTH-1", department="卫生健康局")

    # When staff list their department's calls, masked and then revealed
    masked = govnotify(settings, "list", "--department", "市场监督管理局")
    revealed = govnotify(
        settings, "list", "--department", "市场监督管理局", "--reveal", "--operator", "李娜"
    )

    # Then
    assert masked.returncode == 0, masked.stderr
    assert "LIC-MKT-1" in masked.stdout and "LIC-HEALTH-1" not in masked.stdout
    assert "138****8001" in masked.stdout and "13800138001" not in masked.stdout
    assert revealed.returncode == 0, revealed.stderr
    assert "13800138001" in revealed.stdout and "王伟" in revealed.stdout

    # When one call is recorded done, by a prefix of its id
    done = govnotify(settings, "done", first[:10], "--outcome", "已告知续证材料")

    # Then it leaves the open list and keeps its outcome
    assert done.returncode == 0, done.stderr
    still_open = govnotify(settings, "list", "--department", "市场监督管理局")
    assert "LIC-MKT-1" not in still_open.stdout and "LIC-MKT-2" in still_open.stdout
    with session(settings) as s:
        entry = s.get(CallListEntry, first)
    assert entry is not None
    assert (entry.status, entry.outcome) == ("done", "已告知续证材料")
    assert entry.completed_at is not None


@pytest.mark.parametrize(
    ("args", "message", "status"),
    [
        (("done",), "required: ENTRY", 2),  # usage (argparse's)
        (("done", "ffffffffffff"), "no call-list entry", 4),  # not found
        (("done", "DONE"), "is done, not open", 2),
    ],
)
def test_bad_call_list_commands_exit_with_their_code_and_the_reason(
    settings: Settings, args: tuple[str, ...], message: str, status: int
) -> None:
    # Given an entry already done (its id starts with "DONE")
    with session(settings) as s:
        s.add(
            CallListEntry(
                id="DONE" + uuid.uuid4().hex[:28],
                idempotency_key="test:done",
                license_id="LIC-DONE",
                category="food_business",
                issuing_department="市场监督管理局",
                expires_on=TODAY,
                offset_days=3,
                due_on=TODAY,
                status="done",
            )
        )
        s.commit()

    # When
    result = govnotify(settings, *args)

    # Then
    assert result.returncode == status
    assert message in result.stderr


def audit_rows(settings: Settings) -> list[OperatorAudit]:
    with session(settings) as s:
        return list(s.execute(select(OperatorAudit).order_by(OperatorAudit.id)).scalars())


@pytest.mark.parametrize(
    ("args", "missing"),
    [
        (("--reveal",), "--operator NAME"),
        (("--reveal", "--department", "市场监督管理局"), "--operator NAME"),
        (("--reveal", "--operator", "李娜"), "--department DEPT"),
        (("--reveal", "--operator", "  ", "--department", "市场监督管理局"), "--operator NAME"),
        (("--reveal", "--operator", "李娜\n伪造", "--department", "市场监督管理局"), "printable"),
    ],
)
def test_reveal_without_a_named_operator_and_one_department_is_refused(
    settings: Settings, args: tuple[str, ...], missing: str
) -> None:
    # Given an open entry
    add_entry(settings, "LIC-MKT-1", mobile="13800138001")

    # When numbers are asked for without saying who asks, or for which department
    result = govnotify(settings, "list", *args)

    # Then nothing is shown, the reason is, and nothing is recorded
    assert result.returncode == 2
    assert missing in result.stderr
    assert "13800138001" not in result.stdout + result.stderr
    assert audit_rows(settings) == []


def test_reveal_shows_one_department_and_records_who_saw_how_many(settings: Settings) -> None:
    # Given two open entries of one department, one done, and one of another department
    add_entry(settings, "LIC-MKT-1", mobile="13800138001")
    add_entry(settings, "LIC-MKT-2", mobile="13800138002")
    add_entry(settings, "LIC-MKT-3", mobile="13800138004", status="done")
    add_entry(settings, "LIC-HEALTH-1", department="卫生健康局", mobile="13800138003")

    # When an operator reveals the market regulator's open calls
    result = govnotify(
        settings, "list", "--reveal", "--operator", "李娜", "--department", "市场监督管理局"
    )

    # Then that department's open numbers are shown, no other department's
    assert result.returncode == 0, result.stderr
    assert "13800138001" in result.stdout and "13800138002" in result.stdout
    assert "LIC-HEALTH-1" not in result.stdout and "13800138003" not in result.stdout
    assert "13800138004" not in result.stdout
    # … and one audit row says who, what, for which department and how many, never a number
    (row,) = audit_rows(settings)
    assert (row.operator, row.action, row.subject) == ("李娜", "call-list.reveal", "市场监督管理局")
    assert "revealed 2 entries" in row.detail
    assert "1380013800" not in f"{row.operator}{row.subject}{row.detail}"
    assert row.at is not None


def test_listing_without_reveal_stays_masked_and_unrecorded(settings: Settings) -> None:
    # Given entries of two departments
    add_entry(settings, "LIC-MKT-1", mobile="13800138001")
    add_entry(settings, "LIC-HEALTH-1", department="卫生健康局", mobile="13800138003")

    # When the whole list is shown without --reveal (an operator named or not)
    result = govnotify(settings, "list", "--operator", "李娜")

    # Then both departments show, masked, and nothing is audited
    assert result.returncode == 0, result.stderr
    assert "138****8001" in result.stdout and "138****8003" in result.stdout
    assert "13800138001" not in result.stdout and "王伟" not in result.stdout
    assert audit_rows(settings) == []
