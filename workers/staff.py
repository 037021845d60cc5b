"""Reaching staff: the directory of who is on duty, and delivery to their robots or mailboxes.

Each distinct webhook of the staff addressed gets the message once: an HTTP(S) robot or portal
(:class:`~notifiers.webhook.WebhookNotifier`), a ``mailto:`` address through
``GOVNOTIFY_SMTP_URL`` (:class:`~notifiers.email_smtp.EmailNotifier`), or the sandbox file for
``sandbox://`` entries and for e-mail while no SMTP server is configured.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from infra.metrics import NOTIFICATIONS, PROVIDER_DURATION
from notifiers.email_smtp import EmailNotifier
from notifiers.errors import DeliveryError, TransientDeliveryError
from notifiers.webhook import StaffMessage, WebhookNotifier
from schemas.models import utcnow
from schemas.staff import Staff, StaffDirectory, load_staff_directory
from workers.broker import settings

__all__ = ["directory", "notify_staff", "retry_first"]

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
def _notifier(webhook_key: str) -> WebhookNotifier | EmailNotifier | SandboxWebhook:
    hook = directory().webhooks[webhook_key]
    sandbox = settings.data_dir / "sandbox-webhooks.jsonl"
    if hook.format == "email":
        address = hook.email_address
        if not settings.smtp_url:
            _warn_email_sandbox()
            return SandboxWebhook(webhook_key, sandbox)
        assert address is not None  # every "email" entry has one mailto: address (schemas)
        return EmailNotifier(settings.smtp_url, settings.smtp_from, to=address)
    if hook.url.startswith("sandbox://"):
        return SandboxWebhook(webhook_key, sandbox)
    return WebhookNotifier(hook.url, fmt=hook.format, secret=hook.secret)


@functools.cache
def _warn_email_sandbox() -> None:
    """Said once per process: the zero-setup default, but in production a misconfiguration."""
    log.warning(
        "GOVNOTIFY_SMTP_URL is empty: staff e-mail (mailto: webhooks) goes to the sandbox file "
        "%s, not to any mailbox",
        settings.data_dir / "sandbox-webhooks.jsonl",
    )


def _labels(webhook_key: str) -> tuple[str, str]:
    """``(channel, provider)`` of the metrics for a webhook: e-mail is its own."""
    if directory().webhooks[webhook_key].format == "email":
        return EmailNotifier.channel, EmailNotifier.name
    return "webhook", "webhook"


def retry_first(kept: DeliveryError | None, new: DeliveryError) -> DeliveryError:
    """The error to raise of two: a transient one wins, so the actor retries what can still
    go through; the staff actors throw permanent ones straight to the dead letters."""
    if kept is None:
        return new
    if isinstance(new, TransientDeliveryError) and not isinstance(kept, TransientDeliveryError):
        return new
    return kept


def notify_staff(staff: Iterable[Staff], message: StaffMessage, *, flow: str) -> int:
    """Send ``message`` once to each distinct webhook of ``staff``; returns how many received it.

    Raises, after trying every webhook, the first transient :class:`DeliveryError` (the actor
    retries; receivers de-duplicate retries by the ``X-Govnotify-Id`` header), else the first
    permanent one (the staff actors declare it in ``throws``: a dead letter at once).
    """
    hooks = sorted({s.webhook for s in staff if s.webhook})
    mentions = tuple(sorted({s.mobile for s in staff}))
    message = StaffMessage(**{**message.__dict__, "mention_mobiles": mentions})
    delivered, first_error = 0, None
    for key in hooks:
        channel, provider = _labels(key)
        started = time.perf_counter()
        try:
            _notifier(key).send(message)
        except DeliveryError as exc:
            first_error = retry_first(first_error, exc)
            PROVIDER_DURATION.labels(provider, "error").observe(time.perf_counter() - started)
            NOTIFICATIONS.labels(flow, channel, provider, "failed").inc()
            log.warning(
                "webhook %s refused %s %s: %s", key, message.kind, message.message_id, exc.reason
            )
            continue
        PROVIDER_DURATION.labels(provider, "ok").observe(time.perf_counter() - started)
        NOTIFICATIONS.labels(flow, channel, provider, "sent").inc()
        delivered += 1
    if first_error is not None:
        raise first_error
    if not hooks:
        log.warning(
            "no webhook for %s %s; staff reachable by SMS only", message.kind, message.message_id
        )
    return delivered
