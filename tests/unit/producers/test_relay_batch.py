"""When the relay flushes a batch: full, input quiet, or its first message waited long enough."""

from __future__ import annotations

import pytest

from producers.relay import Batch


@pytest.mark.parametrize(
    ("arrivals", "now", "idle", "due"),
    [
        ([], 10.0, True, False),  # nothing to flush, even when quiet
        ([0.0], 0.01, False, False),  # one young message, more coming
        ([0.0], 0.01, True, True),  # the input went quiet
        ([0.0, 0.02, 0.04], 0.049, False, False),  # a trickle, first not yet too old
        ([0.0, 0.02, 0.04], 0.05, False, True),  # a trickle: the first waited max_age_s
        ([0.0] * 4, 0.0, False, True),  # full
    ],
)
def test_a_batch_is_due_when_full_quiet_or_old(
    arrivals: list[float], now: float, idle: bool, due: bool
) -> None:
    # Given a batch of at most 4 whose first item may wait 50 ms
    batch = Batch[int](4, 0.05)
    for i, at in enumerate(arrivals):
        batch.add(i, at)

    # When / Then
    assert batch.due(now, idle=idle) is due


def test_take_empties_the_batch_and_the_next_one_is_timed_from_its_own_first_item() -> None:
    # Given a batch flushed once
    batch = Batch[str](100, 0.05)
    batch.add("a", 0.0)
    batch.add("b", 0.03)
    assert batch.take() == ["a", "b"]
    assert not batch

    # When the next item comes long after the first batch began
    batch.add("c", 1.0)

    # Then its age counts from its own arrival
    assert not batch.due(1.04, idle=False)
    assert batch.due(1.05, idle=False)
