"""Opt-outs (退订): a citizen's refusal of one category of messages, honoured before every send."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import delete, select

from infra.db import session
from schemas.models import OptOut, utcnow
from schemas.phone import normalize_mobile
from workers import ledger

if TYPE_CHECKING:
    from infra.settings import Settings

__all__ = ["CATEGORIES", "lift_opt_out", "list_opt_outs", "record_opt_out"]

#: Categories a citizen can refuse. Green-channel and staff messages are not citizen categories.
CATEGORIES = ("reminders", "surveys", "callbacks", "rectification")


def _categories(category: str) -> list[str]:
    if category == "all":
        return list(CATEGORIES)
    if category not in CATEGORIES:
        raise ValueError(f"unknown category {category!r}; one of {', '.join(CATEGORIES)} or all")
    return [category]


def record_opt_out(settings: Settings, mobile: str, category: str, *, source: str = "cli") -> int:
    """Record a refusal (``category`` or ``all``); returns how many were new."""
    recipient = normalize_mobile(mobile)
    new = 0
    with session(settings) as s:
        for cat in _categories(category):
            new += ledger.insert_ignore(
                s,
                OptOut.__table__,
                {"recipient": recipient, "category": cat, "source": source, "created_at": utcnow()},
                ("recipient", "category"),
            )
    return new


def lift_opt_out(settings: Settings, mobile: str, category: str) -> int:
    """Lift a refusal; returns how many were removed."""
    recipient = normalize_mobile(mobile)
    with session(settings) as s:
        result = s.execute(
            delete(OptOut).where(
                OptOut.recipient == recipient, OptOut.category.in_(_categories(category))
            )
        )
        s.commit()
    return result.rowcount


def list_opt_outs(settings: Settings, mobile: str) -> list[str]:
    """The categories ``mobile`` refused."""
    recipient = normalize_mobile(mobile)
    with session(settings) as s:
        return list(
            s.execute(select(OptOut.category).where(OptOut.recipient == recipient)).scalars()
        )
