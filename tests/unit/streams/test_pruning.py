"""Which stream state may be forgotten (pure rules of streams.pruning)."""

from __future__ import annotations

import datetime as dt

import pytest

from streams.pruning import prunable_case

NOW = dt.datetime(2026, 11, 26, 2, 0, tzinfo=dt.UTC)


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
