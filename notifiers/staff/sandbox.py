"""The staff sandbox: records staff messages in a JSON-lines file instead of posting them.

It stands for every ``sandbox://`` entry of the staff directory, and for ``mailto:`` entries
while no SMTP server is configured (the zero-setup default); a real implementation for tests,
as :class:`notifiers.sms.sandbox.SandboxNotifier` is for SMS. The file is
``<data_dir>/sandbox-webhooks.jsonl`` (:data:`notifiers.registry.STAFF_SANDBOX_OUTBOX`).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import ClassVar

from notifiers.base import Notifier
from notifiers.staff import StaffMessage
from schemas.models import utcnow

__all__ = ["SandboxWebhook"]

#: One writer at a time within the process, so lines never interleave.
_SANDBOX_LOCK = threading.Lock()


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
        path.parent.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"SandboxWebhook(webhook={self.webhook!r}, path={str(self.path)!r})"

    def _validate(self, message: StaffMessage) -> None:
        return

    def _send(self, message: StaffMessage) -> None:
        record = {
            "webhook": self.webhook,
            "id": message.message_id,
            "kind": message.kind,
            "title": message.title,
            "text": message.text,
            "data": dict(message.data),
            "sent_at": utcnow().isoformat(),
        }
        line = json.dumps(record, ensure_ascii=False, default=str) + "\n"
        with _SANDBOX_LOCK, self.path.open("a", encoding="utf-8") as out:
            out.write(line)
