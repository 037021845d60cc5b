"""``govnotify trace ID``, the real CLI as a subprocess, on rows in a real PostgreSQL database.

One license and one case, each with what the pipeline leaves behind (the accepted event, a
scheduled job, a notification with its provider status, the staff tasks, each keeping the id of
the event that caused it), are traced by event id, license id, case id and mobile number: the
chain comes oldest first, an event's own consequences before the rest of its entity's chain,
numbers and names masked unless an operator reveals them, which is audited.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select

from infra.db import session
from infra.settings import Settings, load_settings
from schemas.models import (
    CallbackTask,
    CallListEntry,
    DeadLetter,
    IngestEvent,
    Notification,
    NotificationStatusEvent,
    OperatorAudit,
    OutcomeReport,
    RectificationTicket,
    ScheduledJob,
    StaffAlert,
)
from tests.support import env_for, free_ports, run_cli

pytestmark = pytest.mark.integration

MOBILE = "+8613800138000"
MASKED = "+86138****8000"
#: 2026-12-01 09:00 in Shanghai: every row is stamped from here on, a minute apart.
T0 = dt.datetime(2026, 12, 1, 1, 0, tzinfo=dt.UTC)


def at(minutes: int) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


@dataclass(frozen=True)
class World:
    settings: Settings
    license_id: str
    case_id: str
    license_event: str
    case_event: str
    bad_event: str
    renewal_event: str
    rating_event: str


@pytest.fixture
def trace_settings(namespace: str, database_url: str, tmp_path: Path) -> Settings:
    """Settings on this test's migrated database; trace needs no broker."""
    return load_settings(
        namespace=namespace, data_dir=tmp_path / "data", database_url=database_url, **free_ports()
    )


def _event(event_id: str, event_type: str, family: str, key: str, minute: int) -> IngestEvent:
    return IngestEvent(
        event_id=event_id,
        event_type=event_type,
        family=family,
        entity_key=key,
        occurred_at=at(minute) - dt.timedelta(seconds=5),
        body=b"{}",
        fingerprint="0" * 64,
        received_at=at(minute),
        relayed_at=at(minute) + dt.timedelta(seconds=1),
        applied_at=at(minute) + dt.timedelta(seconds=2),
        epoch=1,
    )


@pytest.fixture
def world(trace_settings: Settings) -> Iterator[World]:
    """A license and a case with every kind of row trace follows, ids unique to this test."""
    u = uuid.uuid4().hex[:8]
    lic, case = f"LIC-{u}", f"C-{u}"
    w = World(
        trace_settings,
        lic,
        case,
        f"ev-lic-{u}",
        f"ev-case-{u}",
        f"ev-bad-{u}",
        f"ev-ren-{u}",
        f"ev-rating-{u}",
    )
    note = Notification(
        idempotency_key=f"renewal:{lic}:2026-12-31:30",
        flow="renewal",
        channel="sms",
        subject_id=lic,
        recipient=MOBILE,
        status="delivered",
        provider="sandbox",
        provider_ref=f"SM{u}",
        created_at=at(2),
        sent_at=at(3),
        updated_at=at(4),
        event_id=w.license_event,
        event_source="license-registry",
    )
    # The renewal's own reminder: the license's, but not what the issue caused.
    renewal_note = Notification(
        idempotency_key=f"renewal:{lic}:2031-12-31:30",
        flow="renewal",
        channel="sms",
        subject_id=lic,
        recipient=MOBILE,
        status="created",
        created_at=at(31),
        updated_at=at(31),
        event_id=w.renewal_event,
        event_source="license-registry",
    )
    with session(trace_settings) as s:
        s.add(_event(w.license_event, "license.issued", "licenses", lic, 0))
        s.add(
            ScheduledJob(
                key=f"renewal:{lic}:2026-12-31:30",
                run_at=at(2),
                actor_name="send_reminder",
                payload="{}",
                status="enqueued",
                created_at=at(1),
                enqueued_at=at(2),
                event_id=w.license_event,
            )
        )
        s.add(note)
        s.add(_event(w.renewal_event, "license.renewed", "licenses", lic, 30))
        s.add(renewal_note)
        s.add(
            NotificationStatusEvent(
                dedupe_key=f"sandbox:SM{u}:delivered",
                notification_id=note.id,
                provider="sandbox",
                provider_ref=f"SM{u}",
                provider_status="delivered",
                status="delivered",
                applied=True,
                received_at=at(4),
            )
        )
        # The registry asked for outcomes: the delivery is owed to it, its endpoint is down.
        s.add(
            OutcomeReport(
                key=f"{note.id}:delivered",
                notification_id=note.id,
                event_id=w.license_event,
                source="license-registry",
                flow="renewal",
                status="delivered",
                status_at=at(4),
                state="pending",
                attempts=2,
                next_at=at(9),
                last_error="HTTP 503",
                created_at=at(6),
            )
        )
        s.add(
            CallListEntry(
                idempotency_key=f"call-list:{lic}:3",
                license_id=lic,
                category="食品经营许可证",
                issuing_department="市场监督管理局",
                holder_name="张三丰",
                holder_mobile=MOBILE,
                expires_on=dt.date(2026, 12, 31),
                offset_days=3,
                due_on=dt.date(2026, 12, 28),
                created_at=at(5),
                event_id=w.license_event,
            )
        )
        s.add(_event(w.case_event, "case.completed", "cases", case, 10))
        s.add(
            StaffAlert(
                idempotency_key=f"green:{case}",
                case_id=case,
                service_point_id="SP-01",
                special_groups="elderly",
                status="acknowledged",
                event_at=at(10),
                created_at=at(11),
                sent_at=at(11),
                acknowledged_at=at(12),
                event_id=w.case_event,
            )
        )
        s.add(
            CallbackTask(
                idempotency_key=f"callback:{case}:key_project",
                case_id=case,
                kind="key_project",
                owner_staff_id="S-7",
                owner_name="李四",
                department="发展和改革局",
                service_item="企业投资项目备案",
                due_at=at(60 * 72),
                created_at=at(13),
                event_id=w.case_event,
            )
        )
        s.add(
            RectificationTicket(
                idempotency_key=f"rectification:EV-{u}",
                evaluation_id=f"EV-{u}",
                case_id=case,
                department="发展和改革局",
                service_item="企业投资项目备案",
                service_point_id="SP-01",
                rating=1,
                citizen_mobile=MOBILE,
                opened_at=at(14),
                deadline_at=at(60 * 24 * 7),
                # Caused by the rating, not by the case's completion.
                event_id=w.rating_event,
            )
        )
        s.add(
            DeadLetter(
                fingerprint=uuid.uuid4().hex * 2,
                stage="ingest",
                reason="schema_violation",
                detail="payload.holder_mobile: not a mainland mobile number",
                event_type="license.issued",
                event_id=w.bad_event,
                raw=b'{"event_id": "x"}',
                first_seen=at(20),
                last_seen=at(20),
            )
        )
        s.commit()
    yield w


def kinds(stdout: str) -> list[str]:
    """The kind column of each step line of the plain output (its second field)."""
    return [line.split()[2] for line in stdout.splitlines() if line[:4].isdigit()]


def _id(w: World, which: str) -> str:
    return {
        "license_event": w.license_event,
        "case_event": w.case_event,
        "license": w.license_id,
        "case": w.case_id,
        "mobile": "138 0013 8000",
        "bad_event": w.bad_event,
    }[which]


@pytest.mark.parametrize(
    ("which", "expected"),
    [
        # What the issue caused first, then the rest of the license's chain (its renewal).
        (
            "license_event",
            [
                "event",
                "job",
                "notification",
                "provider-status",
                "call-list",
                "outcome-report",
                "event",
                "notification",
            ],
        ),
        # What the completion caused first; the rating's ticket is context.
        ("case_event", ["event", "staff-alert", "callback-task", "rectification"]),
        (
            "license",
            [
                "event",
                "job",
                "notification",
                "provider-status",
                "call-list",
                "outcome-report",
                "event",
                "notification",
            ],
        ),
        ("case", ["event", "staff-alert", "callback-task", "rectification"]),
        (
            "mobile",
            [
                "event",
                "job",
                "notification",
                "provider-status",
                "call-list",
                "outcome-report",
                "event",
                "staff-alert",
                "callback-task",
                "rectification",
                "event",
                "notification",
            ],
        ),
        ("bad_event", ["dead-letter"]),
    ],
)
def test_trace_prints_the_chain_oldest_first(world: World, which: str, expected: list[str]) -> None:
    # Given the rows of a license and a case
    env = env_for(world.settings)

    # When it is traced by one of its ids
    done = run_cli("trace", _id(world, which), env=env)

    # Then every step shows, oldest first, with its local time, and no number unmasked
    assert done.returncode == 0, done.stderr
    assert kinds(done.stdout) == expected, done.stdout
    assert "13800138000" not in done.stdout
    if "notification" in expected:
        assert f"to {MASKED}" in done.stdout
        assert "2026-12-01 09:02:00" in done.stdout  # created, Shanghai time
        assert "provider_ref SM" in done.stdout
    if "call-list" in expected:
        assert "holder 张**" in done.stdout and "张三丰" not in done.stdout


def test_an_event_shows_what_it_caused_before_its_context(world: World) -> None:
    # Given a license issued (a reminder, a job, a call-list entry) and later renewed (a
    # second reminder), every row keeping the event that caused it
    env = env_for(world.settings)

    # When the issue event is traced, as text and as JSON
    done = run_cli("trace", world.license_event, env=env)
    doc = json.loads(run_cli("trace", world.license_event, "--json", env=env).stdout)

    # Then exactly what the issue caused comes first, under its own heading, and the renewal
    # and its reminder come after, as the license's context
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"trace {world.license_event}: 6 steps caused by this event, oldest first"
    context = next(i for i, line in enumerate(lines) if line.startswith("context: "))
    assert lines[context] == f"context: 2 more steps, oldest first (following {world.license_id})"
    assert doc["event"] is True
    assert (doc["caused"][0]["kind"], doc["caused"][0]["ref"]) == ("event", world.license_event)
    caused = {s["fields"].get("event_id") for s in doc["caused"] if s["kind"] != "event"}
    assert caused == {world.license_event, None}  # None: the provider's status of the SMS
    assert [s["kind"] for s in doc["steps"]] == ["event", "notification"]
    assert doc["steps"][1]["fields"]["event_id"] == world.renewal_event
    assert "13800138000" not in done.stdout


def test_an_outcome_owed_to_the_source_shows_its_attempts(world: World) -> None:
    # Given a delivered reminder whose outcome the registry's endpoint has refused twice
    env = env_for(world.settings)

    # When the issue event is traced, as text and as JSON
    done = run_cli("trace", world.license_event, env=env)
    doc = json.loads(run_cli("trace", world.license_event, "--json", env=env).stdout)

    # Then the report is among what the event caused: owed, its attempts, the next one
    assert done.returncode == 0, done.stderr
    line = next(line for line in done.stdout.splitlines() if "outcome-report" in line)
    assert "pending" in line
    assert "delivered of notification" in line and "owed to license-registry, 2 attempts" in line
    (report,) = [step for step in doc["caused"] if step["kind"] == "outcome-report"]
    assert report["status"] == "pending"
    assert report["times"]["next_attempt"] == "2026-12-01T09:09:00+08:00"
    assert report["fields"]["last_error"] == "HTTP 503"
    assert report["fields"]["source"] == "license-registry"
    assert "next_attempt 2026-12-01 09:09:00" in done.stdout
    assert "last_error HTTP 503" in done.stdout


def test_trace_json_is_one_document(world: World) -> None:
    # Given the rows of a license
    env = env_for(world.settings)

    # When it is traced by its mobile with --json
    done = run_cli("trace", "+86 138-0013-8000", "--json", env=env)

    # Then one JSON document holds the chain, numbers masked
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["mobile"] == MASKED and doc["revealed"] is False
    assert set(doc["subjects"]) == {world.license_id, world.case_id}
    times = [step["at"] for step in doc["steps"]]
    assert times == sorted(times)
    note = next(step for step in doc["steps"] if step["kind"] == "notification")
    assert note["status"] == "delivered"
    assert note["mobile"] == MASKED
    assert note["fields"]["provider"] == "sandbox"
    assert note["times"]["sent"] == "2026-12-01T09:03:00+08:00"
    assert "13800138000" not in done.stdout


def test_reveal_shows_numbers_and_is_audited(world: World) -> None:
    # Given the rows of a license
    env = env_for(world.settings)
    operator = f"op-{uuid.uuid4().hex[:6]}"

    # When an operator reveals its trace
    done = run_cli("trace", world.license_id, "--reveal", "--operator", operator, env=env)

    # Then numbers and names show whole, and the reveal is recorded without the number
    assert done.returncode == 0, done.stderr
    assert f"to {MOBILE}" in done.stdout and "张三丰" in done.stdout
    with session(world.settings) as s:
        rows = list(s.execute(select(OperatorAudit)).scalars())
    assert [(r.operator, r.action, r.subject) for r in rows] == [
        (operator, "trace.reveal", world.license_id)
    ]
    assert "13800138000" not in rows[0].detail


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["trace", "no-such-id"], 4, "nothing known about no-such-id"),
        (["trace", "13900139000"], 4, "nothing known about 139****9000"),
        (["trace", "LIC-1", "--reveal"], 2, "--reveal needs --operator NAME (it is recorded)"),
    ],
)
def test_trace_refusals(trace_settings: Settings, args: list[str], code: int, message: str) -> None:
    # Given an empty, migrated database
    env = env_for(trace_settings)

    # When an unknown id is traced, or a reveal names no operator
    done = run_cli(*args, env=env)

    # Then one line on stderr with the documented exit code, and nothing audited
    assert done.returncode == code, done.stderr
    assert done.stderr.strip() == f"govnotify: {message}"
    assert done.stdout == ""
    with session(trace_settings) as s:
        assert list(s.execute(select(OperatorAudit)).scalars()) == []
