"""Replaying delivery and callback dead letters, through the workers' normal paths.

- ``delivery``: the notification is re-opened (``created``) only from a certain non-delivery
  (:data:`~infra.deadletters.REPLAYABLE_DELIVERY_STATUSES`), by a guarded update only one
  replay can win, and handed to the delivery actor, which sends it once.
- ``callback``: the provider's report is applied again by :func:`workers.status.replay_callback`
  (forward-only, so a late one changes nothing).

Both are registered with :mod:`infra.deadletters` as this module is imported, and so is the
``outcome`` stage's (:func:`workers.outcomes.replay_outcome`: an outcome webhook out of
attempts is made due again), which this module imports for that.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dramatiq.message import Message
from sqlalchemy import update

from infra.db import session
from infra.deadletters import (
    REPLAYABLE_DELIVERY_STATUSES,
    DeadLetterError,
    register_replayer,
)
from infra.jobs import enqueue_message
from schemas.models import DeadLetter, Notification, NotificationStatus, utcnow
from workers import outcomes  # noqa: F401  (registers the outcome stage's replayer)
from workers.status import MalformedCallbackError, replay_callback

if TYPE_CHECKING:
    from infra.settings import Settings

__all__ = ["DELIVERY_ACTOR", "replay_callback_letter", "replay_delivery"]

#: The delivery actor a re-opened notification is handed to (workers.delivery); named, not
#: imported: importing the delivery module declares its actors against the process's settings.
DELIVERY_ACTOR = "deliver_notification"


def replay_delivery(settings: Settings, letter: DeadLetter) -> str:
    """Re-open the notification for one more delivery, only from a certain non-delivery."""
    try:
        notification_id = bytes(letter.raw).decode("ascii")
    except UnicodeDecodeError:
        notification_id = ""
    if len(notification_id) != 32 or any(c not in "0123456789abcdef" for c in notification_id):
        # e.g. an invalid job payload (reason invalid_job): the sender has to fix it.
        raise DeadLetterError("this delivery letter names no notification; it cannot be replayed")
    with session(settings) as s:
        reopened = (
            s.execute(
                update(Notification)
                .where(
                    Notification.id == notification_id,
                    Notification.status.in_(list(REPLAYABLE_DELIVERY_STATUSES)),
                )
                .values(
                    status=NotificationStatus.CREATED,
                    status_reason=f"re-opened by dead-letter replay {letter.id}",
                    updated_at=utcnow(),
                )
            ).rowcount
            == 1
        )
        s.commit()
        if not reopened:
            row = s.get(Notification, notification_id)
            state = row.status if row is not None else "gone"
            raise DeadLetterError(
                f"notification {notification_id} is {state}: only "
                f"{' or '.join(REPLAYABLE_DELIVERY_STATUSES)} is delivered again"
            )
    message = Message(
        queue_name=settings.queue("delivery"),
        actor_name=DELIVERY_ACTOR,
        args=(notification_id,),
        kwargs={},
        options={},
    )
    try:
        enqueue_message(settings, message)
    except Exception as exc:
        # The row is `created` now, where the sweep re-queues it: replayed all the same.
        return (
            f"notification {notification_id} re-opened; queueing failed "
            f"({type(exc).__name__}), the sweep will queue it"
        )
    return f"notification {notification_id} re-opened and queued for delivery"


def replay_callback_letter(settings: Settings, letter: DeadLetter) -> str:
    """Apply the provider's status report again (forward-only, so a late one changes nothing)."""
    try:
        results = replay_callback(settings, bytes(letter.raw))
    except MalformedCallbackError as exc:
        raise DeadLetterError(f"the callback cannot be read: {exc}") from exc
    return f"callback applied again: {results}"


register_replayer("delivery", replay_delivery)
register_replayer("callback", replay_callback_letter)
