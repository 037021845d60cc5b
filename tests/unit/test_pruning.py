"""Which stream state may be forgotten (pure rules of streams.pruning)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from streams.pruning import prunable_case, prunable_license

TODAY = dt.date(2026, 11, 26)
NOW = dt.datetime(2026, 11, 26, 2, 0, tzinfo=dt.UTC)


def license_state(status: str, expires_on: str, category: str = "food_business") -> dict[str, Any]:
    return {"license_id": "L-1", "status": status, "category": category, "expires_on": expires_on}


@pytest.mark.parametrize(
    ("state", "prunable"),
    [
        (license_state("live", "2026-08-27"), True),  # expired 91 days ago
        (license_state("live", "2026-08-28"), False),  # exactly 90 days: kept
        (license_state("live", "2027-01-01"), False),  # not expired
        (license_state("revoked", "2026-01-01"), True),  # revoked, long expired
        (license_state("revoked", "2026-01-01", category=""), False),  # never seen issued
        (license_state("live", ""), False),  # no date: kept, never guessed
        ({"license_id": "L-1", "status": "live"}, False),
    ],
)
def test_licenses_are_forgotten_only_long_after_expiry(
    state: dict[str, Any], prunable: bool
) -> None:
    # When / Then
    assert prunable_license(state, TODAY, keep_days=90) is prunable


@pytest.mark.parametrize(
    ("last_event_at", "prunable"),
    [
        ("2026-08-27T01:59:59+00:00", True),
        ("2026-08-28T02:00:00+00:00", False),
        ("2026-11-26T01:00:00+00:00", False),
        (None, False),
    ],
)
def test_cases_are_forgotten_after_keep_days_without_an_event(
    last_event_at: str | None, prunable: bool
) -> None:
    # Given
    state = {"case_id": "C-1", "completed": True, "last_event_at": last_event_at}

    # When / Then
    assert prunable_case(state, NOW, keep_days=90) is prunable
