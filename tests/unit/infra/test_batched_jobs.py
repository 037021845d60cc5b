"""Jobs of a batch actor's single form travel together (``infra.jobs.batched``)."""

from __future__ import annotations

import pytest

from infra.jobs import batched


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (1, [("send_renewal_reminder", 1)] * 5 + [("other", 1)]),
        (
            2,
            [
                ("other", 1),
                ("send_renewal_reminders", 2),
                ("send_renewal_reminders", 2),
                ("send_renewal_reminders", 1),
            ],
        ),
        (100, [("other", 1), ("send_renewal_reminders", 5)]),
    ],
)
def test_jobs_of_a_batch_actor_travel_together(size: int, expected: list[tuple[str, int]]) -> None:
    # Given: five reminders and one job of another actor, interleaved
    jobs = [("send_renewal_reminder", {"n": i}) for i in range(5)]
    jobs.insert(5 if size == 1 else 2, ("other", {"n": -1}))

    # When: they are grouped for the queues
    grouped = batched(jobs, size)

    # Then: reminders travel `size` to a job of the batch actor, in their order; others alone
    shape = [(actor, len(p) if isinstance(p, list) else 1) for actor, p in grouped]
    assert shape == expected
    reminders = [p for actor, p in grouped if actor.startswith("send_renewal")]
    flat = [x for p in reminders for x in (p if isinstance(p, list) else [p])]
    assert flat == [{"n": i} for i in range(5)]
