"""Call-list entries for tests: written straight to the database, as add_call_list_entry
would, and read back."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import select

from infra.db import session
from infra.settings import Settings
from schemas.models import CallListEntry, utcnow

__all__ = ["TODAY", "add_entry", "notified"]

#: The tests' local day: a Thursday, a working day.
TODAY = dt.date(2026, 11, 26)


def add_entry(
    settings: Settings,
    license_id: str,
    *,
    department: str = "市场监督管理局",
    due_on: dt.date = TODAY,
    status: str = "open",
    notified: bool = False,
    mobile: str = "13800138000",
) -> str:
    entry_id = uuid.uuid4().hex
    with session(settings) as s:
        s.add(
            CallListEntry(
                id=entry_id,
                idempotency_key=f"test:{license_id}",
                license_id=license_id,
                category="food_business",
                issuing_department=department,
                holder_name="王伟",
                holder_mobile=mobile,
                expires_on=due_on + dt.timedelta(days=3),
                offset_days=3,
                due_on=due_on,
                status=status,
                created_at=utcnow(),
                notified_at=utcnow() if notified else None,
            )
        )
        s.commit()
    return entry_id


def notified(settings: Settings) -> dict[str, bool]:
    with session(settings) as s:
        return {
            e.license_id: e.notified_at is not None
            for e in s.execute(select(CallListEntry)).scalars()
        }
