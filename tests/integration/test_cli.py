"""`govnotify` as a subprocess: help, settings errors, publish, db upgrade and the sweep."""

from __future__ import annotations

import datetime as dt
import json
import re
import sqlite3
import uuid
from pathlib import Path

import pika
import pytest
from sqlalchemy import select

from infra.db import session
from infra.settings import Settings
from notifiers.sms import OutboundMessage
from notifiers.sms.sandbox import SandboxNotifier
from producers.generator import license_event
from schemas.models import Notification, NotificationStatus, utcnow
from tests.support import clean_env, env_for, run_cli

pytestmark = pytest.mark.integration

SUBCOMMANDS = ("services", "db", "schemas", "publish", "relay", "stream", "worker", "sweep", "demo")
TODAY = dt.date(2026, 6, 1)


def _message_count(settings: Settings, queue: str) -> int:
    conn = pika.BlockingConnection(pika.URLParameters(settings.amqp_url))
    try:
        return conn.channel().queue_declare(queue, passive=True).method.message_count
    finally:
        conn.close()


def _good_line(n: int) -> bytes:
    return license_event(
        "license.issued",
        f"LIC-CLI-{n:04d}",
        category="food_business",
        issued_on=TODAY - dt.timedelta(days=365),
        expires_on=TODAY + dt.timedelta(days=20 + n),
        occurred_at=dt.datetime(2026, 6, 1, 8, tzinfo=dt.UTC) + dt.timedelta(minutes=n),
    ).to_json_bytes()


def _landline_line() -> bytes:
    envelope = json.loads(_good_line(99))
    envelope["event_id"] = str(uuid.uuid4())
    envelope["payload"]["holder_mobile"] = "029-88886666"
    return json.dumps(envelope, ensure_ascii=False).encode()


# ---- help and settings -----------------------------------------------------------------------
def test_help_names_every_subcommand_with_a_help_line() -> None:
    # Given / When
    result = run_cli("--help", env=clean_env())

    # Then it exits 0 and lists each subcommand with a one-line description
    assert result.returncode == 0, result.stderr
    for name in SUBCOMMANDS:
        match = re.search(rf"^\s+{name}\s+(\S.*)$", result.stdout, re.MULTILINE)
        assert match, f"{name} has no help line in:\n{result.stdout}"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("GOVNOTIFY_KAFKA_PARTITIONS", "zero"),
        ("GOVNOTIFY_TIMEZONE", "Mars/Base"),
        ("GOVNOTIFY_AMQP_URL", "http://x"),
    ],
)
def test_bad_setting_exits_2_naming_the_variable(variable: str, value: str) -> None:
    # Given a bad setting in the environment
    env = clean_env(**{variable: value})

    # When any command runs
    result = run_cli("sweep", env=env)

    # Then it stops at start with exit code 2, naming the variable, without a traceback
    assert result.returncode == 2, result.stdout + result.stderr
    assert variable in result.stderr
    assert "Traceback" not in result.stderr


# ---- publish ---------------------------------------------------------------------------------
def test_publish_reports_each_bad_line_and_queues_only_good_ones(
    settings: Settings, tmp_path: Path
) -> None:
    # Given a file of 3 good events, a malformed line and one with a landline as mobile
    path = tmp_path / "events.jsonl"
    lines = [
        _good_line(1),
        _good_line(2),
        _good_line(3),
        b'{"event_type": "license.issued',
        _landline_line(),
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")

    # When it is published
    result = run_cli("publish", str(path), env=env_for(settings))

    # Then the bad lines are named with their reasons and the command exits 1
    assert result.returncode == 1, result.stdout + result.stderr
    assert re.search(r"^line 4: rejected malformed_json", result.stdout, re.MULTILINE)
    assert re.search(r"^line 5: rejected schema_violation", result.stdout, re.MULTILINE)
    assert not re.search(r"^line [123]: rejected", result.stdout, re.MULTILINE)
    assert "3 accepted, 2 rejected" in result.stdout
    # and exactly the 3 good events wait on the relay queue (nothing consumes it here)
    assert _message_count(settings, settings.relay_queue) == 3


def test_publish_all_good_exits_0(settings: Settings, tmp_path: Path) -> None:
    # Given a file of good events only
    path = tmp_path / "good.jsonl"
    path.write_bytes(b"\n".join(_good_line(n) for n in range(1, 5)) + b"\n")

    # When it is published
    result = run_cli("publish", "-v", str(path), env=env_for(settings))

    # Then every line is accepted and queued
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 accepted, 0 rejected" in result.stdout
    assert "rejected " not in result.stdout.replace("0 rejected", "")
    assert _message_count(settings, settings.relay_queue) == 4


# ---- db upgrade ------------------------------------------------------------------------------
def test_db_upgrade_on_fresh_sqlite_data_dir(tmp_path: Path) -> None:
    # Given an empty data folder and no database URL (SQLite default)
    data_dir = tmp_path / "fresh"
    env = clean_env(GOVNOTIFY_DATA_DIR=str(data_dir))

    # When the migrations are applied
    result = run_cli("db", "upgrade", env=env)

    # Then it exits 0 and the SQLite file has the tables
    assert result.returncode == 0, result.stdout + result.stderr
    assert "migrated" in result.stdout
    conn = sqlite3.connect(data_dir / "govnotify.db")
    try:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        conn.close()
    assert {"notification", "license_record", "call_list_entry", "dead_letter"} <= names


# ---- sweep -----------------------------------------------------------------------------------
def _notification(key: str, status: NotificationStatus, **values: object) -> Notification:
    return Notification(
        idempotency_key=key,
        flow="renewal",
        channel="sms",
        subject_id=key,
        recipient="+8613800138000",
        body=f"【长安政务】您的许可证{key}即将到期，请及时办理续证。",
        status=status.value,
        **values,
    )


def test_sweep_resolves_stuck_rows(settings: Settings) -> None:
    # Given rows stuck in sending and created, and one freshly claimed
    now = utcnow()
    ago = now - dt.timedelta(minutes=10)
    sent_before = _notification(
        "LIC-SENT", NotificationStatus.SENDING, claimed_at=ago, updated_at=ago, attempts=1
    )
    never_sent = _notification(
        "LIC-LOST", NotificationStatus.SENDING, claimed_at=ago, updated_at=ago, attempts=1
    )
    stuck_created = _notification("LIC-IDLE", NotificationStatus.CREATED, updated_at=ago)
    fresh = _notification(
        "LIC-BUSY", NotificationStatus.SENDING, claimed_at=now, updated_at=now, attempts=1
    )
    rows = (sent_before, never_sent, stuck_created, fresh)
    with session(settings) as s:
        s.add_all(rows)
        s.commit()
    ids = {row.idempotency_key: row.id for row in rows}
    # the first one did reach the (sandbox) provider before its worker died
    receipt = SandboxNotifier(settings.data_dir / "sandbox-outbox.jsonl").send(
        OutboundMessage(ids["LIC-SENT"], sent_before.recipient or "", sent_before.body or "")
    )

    # When the sweep runs with 60-second thresholds (no Twilio: the sandbox is asked)
    env = env_for(
        settings, GOVNOTIFY_SWEEP_SENDING_AFTER_S="60", GOVNOTIFY_SWEEP_CREATED_AFTER_S="60"
    )
    result = run_cli("sweep", env=env)

    # Then each row is resolved as the provider's record says
    assert result.returncode == 0, result.stdout + result.stderr
    with session(settings) as s:
        status = {
            row.idempotency_key: row for row in s.execute(select(Notification)).scalars().all()
        }
    assert status["LIC-SENT"].status == NotificationStatus.SENT
    assert status["LIC-SENT"].provider_ref == receipt.provider_ref
    assert status["LIC-SENT"].provider == "sandbox"
    assert status["LIC-LOST"].status == NotificationStatus.CREATED
    assert status["LIC-LOST"].status_reason == "not found at provider by sweep"
    assert status["LIC-IDLE"].status == NotificationStatus.CREATED
    assert status["LIC-BUSY"].status == NotificationStatus.SENDING
    # and the released row and the idle created row are back on the delivery queue
    assert _message_count(settings, settings.queue("delivery")) == 2
    counts = dict(re.findall(r"^\s+(\w+)\s+(\d+)$", result.stdout, re.MULTILINE))
    assert counts == {
        "requeued": "1",
        "confirmed_sent": "1",
        "released": "1",
        "unresolved": "0",
        "fetched": "0",
        "unknown": "0",
        "dead_letters": "0",
    }
