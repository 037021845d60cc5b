"""The sandbox notifier: records every message in a JSON-lines outbox instead of sending it.

It is the embedded default (no Twilio credentials) and a real implementation for tests, in the
manner of dramatiq's stub broker. Many worker threads and processes append to the same file, so
each record is one ``write`` on an ``O_APPEND`` descriptor under an exclusive ``flock``: lines
never interleave and none is lost.

The outbox holds full phone numbers and message texts: it is readable by its owner only (0600,
an existing looser file is tightened) and a folder made for it is 0700.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import uuid
from pathlib import Path
from typing import Any, ClassVar

from notifiers.sms import OutboundMessage, Receipt, SMSNotifier
from notifiers.sms.text import count_segments

__all__ = ["OUTBOX_MODE", "SandboxNotifier", "read_outbox"]

#: The outbox's mode: owner read/write only.
OUTBOX_MODE = 0o600
#: The mode of a folder made for the outbox: owner only.
FOLDER_MODE = 0o700


class SandboxNotifier(SMSNotifier):
    """Appends one JSON line per message to ``outbox``; every message is "delivered"."""

    name: ClassVar[str] = "sandbox"
    # Same limit as Twilio to mainland China, so a message the sandbox accepts is one the real
    # provider would accept too.
    body_maxlen: ClassVar[int] = 500

    def __init__(self, outbox: Path) -> None:
        self.outbox = Path(outbox)
        if not self.outbox.parent.exists():
            self.outbox.parent.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)
        # Created (or tightened, if an older run left it 0644) before the first message.
        fd = os.open(self.outbox, os.O_WRONLY | os.O_APPEND | os.O_CREAT, OUTBOX_MODE)
        try:
            os.fchmod(fd, OUTBOX_MODE)
        finally:
            os.close(fd)

    def _send(self, message: OutboundMessage) -> Receipt:
        record = {
            "provider_ref": "SB" + uuid.uuid4().hex,
            "notification_id": message.notification_id,
            "to": message.to,
            "body": message.body,
            "segments": count_segments(message.body),
            "sent_at": dt.datetime.now(dt.UTC).isoformat(),
        }
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        # 0600 also when a test or an operator removed the file since __init__.
        fd = os.open(self.outbox, os.O_WRONLY | os.O_APPEND | os.O_CREAT, OUTBOX_MODE)
        try:
            # O_APPEND alone does not make a large write atomic across processes; the lock does.
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                view = memoryview(line)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
        return Receipt(
            provider=self.name,
            provider_ref=record["provider_ref"],
            status="delivered",
            segments=record["segments"],
        )

    def lookup(
        self, to: str, body: str, since: dt.datetime, *, notification_id: str | None = None
    ) -> str | None:
        """The outbox reference of a message with this recipient and body since ``since``."""
        for record in read_outbox(self.outbox):
            if (
                record["to"] == to
                and record["body"] == body
                and dt.datetime.fromisoformat(record["sent_at"]) >= since
            ):
                return str(record["provider_ref"])
        return None


def read_outbox(path: Path) -> list[dict[str, Any]]:
    """Every record in the outbox at ``path``, oldest first; ``[]`` when it does not exist."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return []
    with os.fdopen(fd, "rb") as handle:
        # A shared lock so a reader never sees half of a line being written.
        fcntl.flock(handle.fileno(), fcntl.LOCK_SH)
        try:
            data = handle.read()
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    return [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]
