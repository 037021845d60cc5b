"""The scheduler's nightly retention purge, on PostgreSQL, with a settable clock.

``purge_if_due`` is the body of the scheduler's retention loop: called here with a clock
pinned to chosen local instants instead of waiting for 02:30. It must purge once per local
day, not before the hour, not again after a restart, and once after nights it missed.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from infra.clock import Clock
from infra.db import session
from infra.journal import get_checkpoint
from infra.settings import Settings, load_settings
from schemas.models import CallListEntry
from workers import scheduler
from workers.scheduler import PURGE_CHECKPOINT, purge_if_due

pytestmark = pytest.mark.integration

TZ = ZoneInfo("Asia/Shanghai")


def at(day: int, hour: int, minute: int = 0) -> Clock:
    """A clock reading 2026-11-<day> hour:minute, Shanghai time (the day may pass 30)."""
    start = dt.datetime(2026, 11, 1, hour, minute, tzinfo=TZ) + dt.timedelta(days=day - 1)
    return Clock(TZ, start=start, epoch=time.time())


@pytest.fixture
def db_settings(database_url: str, tmp_path: Path, namespace: str) -> Settings:
    return load_settings(database_url=database_url, data_dir=tmp_path, namespace=namespace)


def old_entry(settings: Settings, license_id: str) -> str:
    """A call-list entry made in September, long past the 30-day retention."""
    entry_id = uuid.uuid4().hex
    made = dt.datetime(2026, 9, 1, tzinfo=dt.UTC)
    with session(settings) as s:
        s.add(
            CallListEntry(
                id=entry_id,
                idempotency_key=f"test:{license_id}",
                license_id=license_id,
                category="food_business",
                issuing_department="市场监督管理局",
                holder_name="王伟",
                holder_mobile="13800138000",
                expires_on=dt.date(2026, 9, 4),
                offset_days=3,
                due_on=dt.date(2026, 9, 1),
                status="done",
                created_at=made,
            )
        )
        s.commit()
    return entry_id


def holds_number(settings: Settings, entry_id: str) -> bool:
    with session(settings) as s:
        entry = s.get(CallListEntry, entry_id)
        assert entry is not None
        return entry.holder_mobile is not None


def checkpoint(settings: Settings) -> str | None:
    with session(settings) as s:
        return get_checkpoint(s, PURGE_CHECKPOINT)


def test_the_purge_runs_once_per_local_day_from_its_hour(db_settings: Settings) -> None:
    settings = db_settings
    assert settings.retention_purge_at == dt.time(2, 30)
    # Given an old entry and no purge ever run
    first = old_entry(settings, "LIC-OLD-1")

    # When the scheduler looks at 03:00 on the 26th
    counts = purge_if_due(settings, at(26, 3))

    # Then it purges, and records the day
    assert counts is not None and counts["call_list_entry"] == 1
    assert not holds_number(settings, first)
    assert checkpoint(settings) == "2026-11-26"

    # Given another old entry
    second = old_entry(settings, "LIC-OLD-2")

    # When it looks again late that day, after a restart (no memory but the checkpoint), and
    # on the 27th a minute before the hour
    again = [
        purge_if_due(settings, clock) for clock in (at(26, 23, 59), at(26, 23, 59), at(27, 2, 29))
    ]

    # Then nothing runs: the entry keeps its number until the next night
    assert again == [None, None, None]
    assert holds_number(settings, second)

    # When the hour comes on the 27th
    counts = purge_if_due(settings, at(27, 2, 30))

    # Then that night's purge runs, once
    assert counts is not None and counts["call_list_entry"] == 1
    assert not holds_number(settings, second)
    assert checkpoint(settings) == "2026-11-27"
    assert purge_if_due(settings, at(27, 2, 31)) is None


def test_missed_nights_are_caught_up_once(db_settings: Settings) -> None:
    settings = db_settings
    # Given a purge on the 26th, then a scheduler down for three nights, and an old entry
    assert purge_if_due(settings, at(26, 2, 45)) is not None
    entry = old_entry(settings, "LIC-OLD-3")

    # When the scheduler is back on the 30th at 09:00, and looks again at 10:00
    back = purge_if_due(settings, at(30, 9))
    later = purge_if_due(settings, at(30, 10))

    # Then one purge caught up the missed nights, and the next look does nothing
    assert back is not None and back["call_list_entry"] == 1
    assert later is None
    assert not holds_number(settings, entry)
    assert checkpoint(settings) == "2026-11-30"


def test_a_failed_purge_gives_its_night_back(
    db_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = db_settings
    # Given a purge done on the 26th, an old entry, and a database error during the next
    assert purge_if_due(settings, at(26, 3)) is not None
    entry = old_entry(settings, "LIC-OLD-4")
    real_purge = scheduler.purge

    def failing(*args: object, **kwargs: object) -> dict[str, int]:
        raise ConnectionError("database went away")

    monkeypatch.setattr(scheduler, "purge", failing)

    # When the night of the 27th fails
    with pytest.raises(ConnectionError):
        purge_if_due(settings, at(27, 3))

    # Then the checkpoint still says the 26th, and the next look (database back) purges
    assert checkpoint(settings) == "2026-11-26"
    monkeypatch.setattr(scheduler, "purge", real_purge)
    assert purge_if_due(settings, at(27, 3, 1)) is not None
    assert not holds_number(settings, entry)
    assert checkpoint(settings) == "2026-11-27"
