"""The staff sandbox: records staff messages in a JSON-lines file instead of posting them.

It stands for every ``sandbox://`` entry of the staff directory, and for ``mailto:`` entries
while no SMTP server is configured (the zero-setup default); a real implementation for tests,
as :class:`notifiers.sms.sandbox.SandboxNotifier` is for SMS. The file is
``<data_dir>/sandbox-webhooks.jsonl`` (:data:`notifiers.registry.STAFF_SANDBOX_OUTBOX`).

Staff messages name citizens and carry their (masked) numbers and the alerts' data: the file is
readable by its owner only (0600, an existing looser file is tightened), a folder made for it
0700.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import ClassVar

from notifiers.base import Notifier
from notifiers.staff import StaffMessage
from schemas.models import utcnow

__all__ = ["SandboxWebhook"]

#: One writer at a time within the process, so lines never interleave.
_SANDBOX_LOCK = threading.Lock()
#: The file's mode: owner read/write only.
FILE_MODE = 0o600
#: The mode of a folder made for it: owner only.
FOLDER_MODE = 0o700


def _open_private(path: Path) -> int:
    """An append descriptor on ``path``, created 0600 (or tightened to it)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
    os.fchmod(fd, FILE_MODE)
    return fd


class SandboxWebhook(Notifier[StaffMessage, None]):
    """Appends one JSON line per message to ``path``, under the webhook's ``name``.

    Like a receiver that takes everything, it checks nothing: what a robot or a mail server
    would refuse is the business of those notifiers' own tests.
    """

    name: ClassVar[str] = "sandbox"
    channel: ClassVar[str] = "webhook"

    def __init__(self, name: str, path: Path) -> None:
        #: The directory's key of the webhook this stands for; written in every record.
        self.webhook = name
        self.path = path
        if not path.parent.exists():
            path.parent.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)
        os.close(_open_private(path))

    def __repr__(self) -> str:
        return f"SandboxWebhook(webhook={self.webhook!r}, path={str(self.path)!r})"

    def _validate(self, message: StaffMessage) -> None:
        return

    def _send(self, message: StaffMessage) -> None:
        title, text = message.shown()
        record = {
            "webhook": self.webhook,
            "id": message.message_id,
            "kind": message.kind,
            # As a robot would show it: numbers masked (the file is read by people too).
            "title": title,
            "text": text,
            "data": dict(message.data),
            "sent_at": utcnow().isoformat(),
        }
        line = json.dumps(record, ensure_ascii=False, default=str) + "\n"
        with _SANDBOX_LOCK, os.fdopen(_open_private(self.path), "a", encoding="utf-8") as out:
            out.write(line)
