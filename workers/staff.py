"""Reaching staff: the directory of who is on duty, and webhook delivery to their systems."""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from infra.metrics import NOTIFICATIONS, PROVIDER_DURATION
from notifiers.errors import DeliveryError
from notifiers.webhook import StaffMessage, WebhookNotifier
from schemas.models import utcnow
from schemas.staff import Staff, StaffDirectory, load_staff_directory
from workers.broker import settings

__all__ = ["directory", "notify_staff"]

log = logging.getLogger("govnotify.staff")


@functools.cache
def directory() -> StaffDirectory:
    """The staff directory, loaded (and validated) once per process."""
    return load_staff_directory(settings.staff_directory)


class SandboxWebhook:
    """Records staff messages to ``<data_dir>/sandbox-webhooks.jsonl`` instead of posting them."""

    def __init__(self, name: str, path: Path) -> None:
        self.name, self.path = name, path
        path.parent.mkdir(parents=True, exist_ok=True)

    def send(self, message: StaffMessage) -> None:
        record = {
            "webhook": self.name,
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


_SANDBOX_LOCK = threading.Lock()


@functools.cache
def _notifier(webhook_key: str) -> WebhookNotifier | SandboxWebhook:
    hook = directory().webhooks[webhook_key]
    if hook.url.startswith("sandbox://"):
        return SandboxWebhook(webhook_key, settings.data_dir / "sandbox-webhooks.jsonl")
    return WebhookNotifier(hook.url, fmt=hook.format, secret=hook.secret)


def notify_staff(staff: Iterable[Staff], message: StaffMessage, *, flow: str) -> int:
    """Send ``message`` once to each distinct webhook of ``staff``; returns how many received it.

    Raises the first :class:`DeliveryError` after trying every webhook, so the actor's retry
    policy applies; receivers de-duplicate retries by the ``X-Govnotify-Id`` header.
    """
    hooks = sorted({s.webhook for s in staff if s.webhook})
    mentions = tuple(sorted({s.mobile for s in staff}))
    message = StaffMessage(**{**message.__dict__, "mention_mobiles": mentions})
    delivered, first_error = 0, None
    for key in hooks:
        started = time.perf_counter()
        try:
            _notifier(key).send(message)
        except DeliveryError as exc:
            first_error = first_error or exc
            PROVIDER_DURATION.labels("webhook", "error").observe(time.perf_counter() - started)
            NOTIFICATIONS.labels(flow, "webhook", "webhook", "failed").inc()
            log.warning(
                "webhook %s refused %s %s: %s", key, message.kind, message.message_id, exc.reason
            )
            continue
        PROVIDER_DURATION.labels("webhook", "ok").observe(time.perf_counter() - started)
        NOTIFICATIONS.labels(flow, "webhook", "webhook", "sent").inc()
        delivered += 1
    if first_error is not None:
        raise first_error
    if not hooks:
        log.warning(
            "no webhook for %s %s; staff reachable by SMS only", message.kind, message.message_id
        )
    return delivered
