"""Number suppression: a permanent failure stops further sends of that category to that number.

A city should not pay every day to fail the same way. An invalid, landline or unsubscribed
number is suppressed for the message's category until the number changes (a new number is a
new key) or staff lift it (``govnotify suppression lift``). Content refusals do not suppress:
the fault is the message's, not the number's.
"""

from __future__ import annotations

import logging

from sqlalchemy import select, update
from sqlmodel import Session

from infra.logging import mask_mobile
from infra.metrics import SUPPRESSIONS
from notifiers.errors import (
    InvalidRecipientError,
    PermanentDeliveryError,
    RecipientUnsubscribedError,
    UnsupportedRecipientError,
)
from schemas.models import Suppression, utcnow
from workers.ledger import insert_ignore

__all__ = ["SUPPRESSING_ERRORS", "active", "lift", "suppress", "suppress_after"]

log = logging.getLogger("govnotify.suppression")

#: Failures that say something about the number itself.
SUPPRESSING_ERRORS: tuple[type[PermanentDeliveryError], ...] = (
    InvalidRecipientError,
    RecipientUnsubscribedError,
    UnsupportedRecipientError,
)


def suppress(
    s: Session,
    *,
    recipient: str,
    category: str,
    reason: str,
    provider: str | None = None,
    error_code: str | None = None,
) -> bool:
    """Suppress ``recipient`` for ``category`` (re-activating a lifted one); True if new."""
    now = utcnow()
    created = insert_ignore(
        s,
        Suppression.__table__,
        {
            "recipient": recipient,
            "category": category,
            "reason": reason[:200],
            "provider": provider,
            "error_code": error_code,
            "status": "active",
            "created_at": now,
        },
        ("recipient", "category"),
    )
    if not created:
        reactivated = s.execute(
            update(Suppression)
            .where(
                Suppression.recipient == recipient,
                Suppression.category == category,
                Suppression.status != "active",
            )
            .values(
                status="active",
                reason=reason[:200],
                provider=provider,
                error_code=error_code,
                created_at=now,
                lifted_at=None,
                lifted_by=None,
            )
        ).rowcount
        s.commit()
        created = reactivated == 1
    if created:
        SUPPRESSIONS.labels(category, _reason_label(reason)).inc()
        log.warning("number %s suppressed for %s: %s", mask_mobile(recipient), category, reason)
    return created


def suppress_after(
    s: Session, *, recipient: str, category: str, error: PermanentDeliveryError
) -> bool:
    """Suppress after a permanent failure, when the failure is about the number."""
    if not category or not recipient or not isinstance(error, SUPPRESSING_ERRORS):
        return False
    return suppress(
        s,
        recipient=recipient,
        category=category,
        reason=error.reason,
        provider=error.provider,
        error_code=None if error.code is None else str(error.code),
    )


def lift(s: Session, *, recipient: str, category: str | None, by: str) -> int:
    """Lift the suppression of ``recipient`` (one category, or all); returns how many."""
    stmt = update(Suppression).where(
        Suppression.recipient == recipient, Suppression.status == "active"
    )
    if category:
        stmt = stmt.where(Suppression.category == category)
    lifted = s.execute(stmt.values(status="lifted", lifted_at=utcnow(), lifted_by=by)).rowcount
    s.commit()
    return lifted


def active(s: Session, recipient: str | None = None) -> list[Suppression]:
    """Active suppressions, optionally for one number, newest first."""
    stmt = select(Suppression).where(Suppression.status == "active")
    if recipient:
        stmt = stmt.where(Suppression.recipient == recipient)
    return list(s.execute(stmt.order_by(Suppression.created_at.desc())).scalars())


def _reason_label(reason: str) -> str:
    """A bounded label value from a free-text reason."""
    lowered = reason.lower()
    for word in ("unsubscribed", "landline", "invalid", "unreachable"):
        if word in lowered:
            return word
    return "other"
