"""Reaching staff: the directory of who is on duty, and the fan-out to their robots or mailboxes.

Each distinct webhook of the staff addressed gets the message once, through the notifier
:func:`notifiers.registry.staff_notifier` builds for it: an HTTP(S) robot or portal
(:class:`~notifiers.staff.webhook.WebhookNotifier`), a ``mailto:`` address through
``GOVNOTIFY_SMTP_URL`` (:class:`~notifiers.staff.email.EmailNotifier`), or the sandbox file for
``sandbox://`` entries and for e-mail while no SMTP server is configured
(:class:`~notifiers.staff.sandbox.SandboxWebhook`). Here: the per-process cache of those
notifiers (built once per worker context), the metrics, and which error the actor sees.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from infra.metrics import NOTIFICATIONS, PROVIDER_DURATION
from notifiers.errors import DeliveryError, TransientDeliveryError
from notifiers.staff import StaffMessage
from notifiers.staff.email import EmailNotifier
from schemas.staff import Staff, StaffDirectory
from workers.context import current

__all__ = ["directory", "notify_staff", "retry_first"]

log = logging.getLogger("govnotify.staff")


def directory() -> StaffDirectory:
    """The staff directory of this worker's context (loaded and validated once)."""
    return current().directory


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
            current().staff_notifier(key).send(message)
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
