"""Dead-letter records: one row per distinct bad message, with its reason, raw bytes and count."""

from __future__ import annotations

import hashlib
import uuid

from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session

from infra.logging import mask_pii
from infra.metrics import DEAD_LETTERS
from schemas.models import DeadLetter, utcnow

__all__ = ["record_dead_letter"]


def record_dead_letter(
    session: Session,
    *,
    stage: str,
    reason: str,
    detail: str,
    raw: bytes,
    event_type: str | None = None,
    event_id: str | None = None,
) -> None:
    """Keep ``raw`` with its reason; the same bytes seen again bump ``count`` and ``last_seen``."""
    fingerprint = hashlib.sha256(stage.encode() + b"\0" + raw).hexdigest()
    now = utcnow()
    table = DeadLetter.__table__
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    stmt = insert(table).values(
        id=uuid.uuid4().hex,
        fingerprint=fingerprint,
        stage=stage,
        reason=reason,
        # The detail may quote library errors; personal data never reaches the table in clear.
        detail=mask_pii(detail)[:2000],
        event_type=(event_type or None) and event_type[:64],
        event_id=(event_id or None) and event_id[:64],
        raw=raw,
        count=1,
        first_seen=now,
        last_seen=now,
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=["fingerprint"],
        set_={"count": table.c.count + 1, "last_seen": now},
    )
    session.execute(stmt)
    session.commit()
    DEAD_LETTERS.labels(stage=stage, reason=reason).inc()
