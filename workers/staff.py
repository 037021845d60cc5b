"""Reaching staff: the directory of who is on duty, and the fan-out to their robots or mailboxes.

Each distinct webhook of the staff addressed gets the message once, through the notifier
:func:`notifiers.registry.staff_notifier` builds for it: an HTTP(S) robot or portal
(:class:`~notifiers.staff.webhook.WebhookNotifier`), a ``mailto:`` address through
``GOVNOTIFY_SMTP_URL`` (:class:`~notifiers.staff.email.EmailNotifier`), or the sandbox file for
``sandbox://`` entries and for e-mail while no SMTP server is configured
(:class:`~notifiers.staff.sandbox.SandboxWebhook`). Here: the per-process cache of those
notifiers (built once per worker context), the metrics, and which error the actor sees.

Each webhook keeps its own pace, shared by every worker process (:mod:`notifiers.pacing`, key
``staff:<webhook>``): a WeCom or DingTalk robot takes 20 messages a minute and refuses the
rest, so a burst waits here instead (a ``json`` webhook and the sandbox are not paced unless
``GOVNOTIFY_SEND_RATES`` says so). A message waits for its own slot only: one interval per
message already waiting for that robot, never for a backlog still on the queues, so a
green-channel alert waits at most (worker threads sending to that robot) × 3 s.
A robot that refuses anyway (45009 / 130101, HTTP 429) holds every worker back for the time it
asked, or a minute.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from infra.metrics import NOTIFICATIONS, PACE_WAIT, PROVIDER_DURATION
from notifiers.errors import DeliveryError, RateLimitedError, TransientDeliveryError
from notifiers.pacing import interval_of, staff_key
from notifiers.registry import send_rate
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
        notifier = current().staff_notifier(key)
        interval = interval_of(send_rate(notifier.name, notifier.declared_rate, current().settings))
        if interval is not None:
            PACE_WAIT.labels(staff_key(key)).observe(current().pacer.wait(staff_key(key), interval))
        started = time.perf_counter()
        try:
            notifier.send(message)
        except DeliveryError as exc:
            if isinstance(exc, RateLimitedError):
                # Over the robot's limit after all (another sender, a restart): every worker
                # holds back from this robot.
                current().pacer.hold(staff_key(key), exc.retry_after or interval or 1.0)
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
