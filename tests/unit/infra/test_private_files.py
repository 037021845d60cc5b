"""Files holding personal data are readable by their owner only, on real files.

The SQLite database (and its WAL companions), the SMS sandbox outbox and the staff sandbox file
hold names and full mobile numbers: 0600, and a folder made for them 0700, whatever the umask
(a loose 0o000 one included) and even when an older run left the file 0644.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from infra.db import engine_for
from notifiers.sms import OutboundMessage
from notifiers.sms.sandbox import SandboxNotifier
from notifiers.staff import StaffMessage
from notifiers.staff.sandbox import SandboxWebhook


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(autouse=True)
def loose_umask() -> Iterator[None]:
    """The loosest umask: any mode we get is the one we asked for."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_a_new_sqlite_database_and_its_wal_files_are_owner_only(tmp_path: Path) -> None:
    # Given a database path in a folder that does not exist yet
    db = tmp_path / "data" / "govnotify.db"

    # When the engine opens it and writes (WAL mode: -wal and -shm appear)
    engine = engine_for(f"sqlite:///{db}")
    try:
        with engine.begin() as conn:
            conn.execute(text("create table t (mobile text)"))
            conn.execute(text("insert into t values ('13800138000')"))
        with engine.connect() as conn:
            assert conn.execute(text("pragma journal_mode")).scalar() == "wal"
            side = [db.with_name(db.name + s) for s in ("-wal", "-shm")]
            assert all(p.exists() for p in side)

            # Then every file is 0600 and the folder 0700
            assert mode(db) == 0o600
            assert [mode(p) for p in side] == [0o600, 0o600]
            assert mode(db.parent) == 0o700
    finally:
        engine.dispose()


def test_an_existing_world_readable_database_is_tightened(tmp_path: Path) -> None:
    # Given a database file left 0644 by an older version
    db = tmp_path / "govnotify.db"
    db.touch(mode=0o644)
    db.chmod(0o644)

    # When an engine is made for it
    engine_for(f"sqlite:///{db}").dispose()

    # Then it is 0600, and the folder we did not create keeps its mode
    assert mode(db) == 0o600
    assert mode(tmp_path) == stat.S_IMODE(tmp_path.stat().st_mode)


def test_the_sms_outbox_is_owner_only(tmp_path: Path) -> None:
    # Given an outbox in a new folder, and an old one left 0644
    outbox = tmp_path / "new" / "outbox.jsonl"
    old = tmp_path / "old-outbox.jsonl"
    old.write_text("")
    old.chmod(0o644)

    # When messages are recorded in both
    for path in (outbox, old):
        SandboxNotifier(path).send(
            OutboundMessage(notification_id="n-1", to="+8613800138000", body="【长安政务】测试")
        )

    # Then both files are 0600 and the new folder 0700
    assert "13800138000" in outbox.read_text()
    assert (mode(outbox), mode(old), mode(outbox.parent)) == (0o600, 0o600, 0o700)


def test_the_staff_sandbox_file_is_owner_only(tmp_path: Path) -> None:
    # Given the staff sandbox in a new folder
    path = tmp_path / "data" / "sandbox-webhooks.jsonl"

    # When a staff message is recorded
    SandboxWebhook("hall", path).send(
        StaffMessage(
            message_id="m-1", kind="green_channel_alert", title="绿色通道", text="张*", data={}
        )
    )

    # Then the file is 0600 and its folder 0700
    assert '"m-1"' in path.read_text()
    assert (mode(path), mode(path.parent)) == (0o600, 0o700)


def test_a_staff_sandbox_file_removed_and_recreated_is_owner_only(tmp_path: Path) -> None:
    # Given a staff sandbox whose file an operator removed
    path = tmp_path / "sandbox-webhooks.jsonl"
    webhook = SandboxWebhook("hall", path)
    path.unlink()

    # When the next message is recorded
    webhook.send(StaffMessage(message_id="m-2", kind="call_list", title="清单", text="x", data={}))

    # Then the new file is 0600 too
    assert mode(path) == 0o600
