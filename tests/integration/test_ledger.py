"""workers.ledger and dead letters on PostgreSQL: insert-once, one claim, forward-only moves."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import select

from infra.db import session
from infra.deadletters import record_dead_letter
from infra.settings import Settings
from schemas.models import DeadLetter, Notification, NotificationStatus
from tests.support import count_rows
from workers import ledger

pytestmark = pytest.mark.integration

S = NotificationStatus


def _values(key: str | None = None, **changes: object) -> dict[str, object]:
    values: dict[str, object] = {
        "id": uuid.uuid4().hex,
        "idempotency_key": key or f"renewal:sms:LIC-{uuid.uuid4().hex[:8]}:2026-12-25:30",
        "flow": "renewal",
        "channel": "sms",
        "subject_id": "LIC-1",
        "recipient": "+8613800138000",
        "body": "【长安政务】您的许可证将于2026年12月25日到期。",
        "status": S.CREATED.value,
        "segments": 0,
        "attempts": 0,
    }
    values.update(changes)
    return values


def _insert(settings: Settings, **changes: object) -> str:
    values = _values(**changes)  # type: ignore[arg-type]
    with session(settings) as s:
        assert ledger.insert_ignore(s, Notification.__table__, values, "idempotency_key")
    return str(values["id"])


def _row(settings: Settings, notification_id: str) -> Notification:
    with session(settings) as s:
        row = s.get(Notification, notification_id)
        assert row is not None
        return row


def test_insert_ignore_twice_keeps_one_row(settings: Settings) -> None:
    # Given a notification key
    key = "renewal:sms:LIC-1:2026-12-25:30"

    # When it is inserted twice (a replayed job), with different ids
    with session(settings) as s:
        first = ledger.insert_ignore(s, Notification.__table__, _values(key), "idempotency_key")
        second = ledger.insert_ignore(s, Notification.__table__, _values(key), "idempotency_key")

    # Then only the first created a row
    assert (first, second) == (True, False)
    assert count_rows(settings, Notification, Notification.idempotency_key == key) == 1
    with session(settings) as s:
        assert ledger.get_by_key(s, key) is not None
        assert ledger.get_by_key(s, key + ":other") is None


def test_claim_is_won_once_by_racing_threads(settings: Settings) -> None:
    # Given one created notification and 8 workers ready at the same instant
    notification_id = _insert(settings)
    threads = 8
    barrier = threading.Barrier(threads)

    def race(_: int) -> bool:
        with session(settings) as s:
            barrier.wait(timeout=30)
            return ledger.claim(s, notification_id)

    # When all of them claim it at once
    with ThreadPoolExecutor(max_workers=threads) as pool:
        results = list(pool.map(race, range(threads)))

    # Then exactly one wins, and the row is sending with one attempt
    assert results.count(True) == 1
    row = _row(settings, notification_id)
    assert row.status == S.SENDING
    assert row.attempts == 1
    assert row.claimed_at is not None


def test_claim_of_a_claimed_or_missing_row_fails(settings: Settings) -> None:
    # Given a claimed notification
    notification_id = _insert(settings)
    with session(settings) as s:
        assert ledger.claim(s, notification_id)

        # When it is claimed again, or an unknown id is claimed
        again = ledger.claim(s, notification_id)
        missing = ledger.claim(s, "0" * 32)

    # Then neither claim succeeds
    assert (again, missing) == (False, False)
    assert _row(settings, notification_id).attempts == 1


@pytest.mark.parametrize(
    ("start", "target", "moved"),
    [
        (S.CREATED, S.SENT, True),
        (S.SENDING, S.SENT, True),
        (S.SENT, S.DELIVERED, True),
        (S.SENDING, S.PERMANENT_FAILURE, True),
        (S.DELIVERED, S.SENT, False),
        (S.CANCELLED, S.SENT, False),
        (S.PERMANENT_FAILURE, S.DELIVERED, False),
        (S.DELIVERED, S.TEMPORARY_FAILURE, False),
        (S.SENT, S.SENT, False),
        (S.SENT, S.SENDING, False),
    ],
)
def test_advance_is_forward_only(
    settings: Settings, start: NotificationStatus, target: NotificationStatus, moved: bool
) -> None:
    # Given a notification in status ``start``
    notification_id = _insert(settings, status=start.value, provider_ref="OLD")

    # When it is advanced to ``target``
    with session(settings) as s:
        result = ledger.advance(s, notification_id, target, provider_ref="NEW")

    # Then it moved (with the new values) only when ``target`` ranks higher
    row = _row(settings, notification_id)
    assert result is moved
    assert row.status == (target if moved else start)
    assert row.provider_ref == ("NEW" if moved else "OLD")
    if moved and target in (S.SENT, S.DELIVERED):
        assert row.sent_at is not None


@pytest.mark.parametrize(
    ("start", "released"),
    [
        (S.SENDING, True),
        (S.CREATED, False),
        (S.SENT, False),
        (S.DELIVERED, False),
        (S.CANCELLED, False),
    ],
)
def test_release_claim_only_from_sending(
    settings: Settings, start: NotificationStatus, released: bool
) -> None:
    # Given a notification in status ``start``
    notification_id = _insert(settings, status=start.value)

    # When its claim is released
    with session(settings) as s:
        result = ledger.release_claim(s, notification_id, "provider said 503")

    # Then only a sending row goes back to created, with the reason
    row = _row(settings, notification_id)
    assert result is released
    if released:
        assert row.status == S.CREATED
        assert row.status_reason == "provider said 503"
    else:
        assert row.status == start
        assert row.status_reason is None


def test_released_row_can_be_claimed_again(settings: Settings) -> None:
    # Given a claimed notification whose claim was released
    notification_id = _insert(settings)
    with session(settings) as s:
        assert ledger.claim(s, notification_id)
        assert ledger.release_claim(s, notification_id, "transient")

        # When it is claimed again
        again = ledger.claim(s, notification_id)

    # Then the retry wins and the attempt is counted
    assert again
    row = _row(settings, notification_id)
    assert (row.status, row.attempts) == (S.SENDING, 2)


def test_same_dead_letter_twice_is_one_row_with_count_two(settings: Settings) -> None:
    # Given one bad message
    raw = b'{"event_type": "license.issued", "payload": {'

    # When it is dead-lettered twice, and a different one once
    with session(settings) as s:
        for _ in range(2):
            record_dead_letter(
                s, stage="ingest", reason="malformed_json", detail="line 1 col 46", raw=raw
            )
        record_dead_letter(s, stage="ingest", reason="malformed_json", detail="x", raw=b"{")

    # Then the repeated one is one row counted twice
    with session(settings) as s:
        rows = s.execute(select(DeadLetter).where(DeadLetter.raw == raw)).scalars().all()
        assert len(rows) == 1
        assert rows[0].count == 2
        assert rows[0].last_seen >= rows[0].first_seen
        assert rows[0].reason == "malformed_json"
    assert count_rows(settings, DeadLetter) == 2


def test_dead_letter_detail_is_masked(settings: Settings) -> None:
    # Given a rejection detail quoting a phone number
    # When it is dead-lettered
    with session(settings) as s:
        record_dead_letter(
            s,
            stage="ingest",
            reason="schema_violation",
            detail="holder_mobile 13800138000 is not a mobile",
            raw=b"{}",
        )

    # Then the stored detail has it masked
    with session(settings) as s:
        detail = s.execute(select(DeadLetter.detail)).scalar_one()
    assert "13800138000" not in detail
    assert "138****8000" in detail
