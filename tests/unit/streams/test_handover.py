"""Hand-overs run one at a time, in order, each taking every batch that waits."""

from __future__ import annotations

import asyncio

import pytest

from streams.handover import HandOver


class Recorder:
    """A settle that records what each hand-over got and waits to be let go."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], list[int]]] = []
        self.running = 0
        self.most_running = 0
        self.gate = asyncio.Event()

    async def settle(self, records: list[str], jobs: list[int]) -> None:
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        self.calls.append((records, jobs))
        await self.gate.wait()
        self.running -= 1


async def _until(condition, timeout: float = 2.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0)


def test_batches_put_while_a_hand_over_runs_go_together_in_order() -> None:
    async def scenario() -> Recorder:
        # Given a hand-over under way with the first batch
        rec = Recorder()
        hand_over: HandOver[str, int] = HandOver(rec.settle, max_waiting=4)
        await hand_over.put(["a1", "a2"], [1, 2])
        await _until(lambda: len(rec.calls) == 1)

        # When two more batches are parsed meanwhile, then the first hand-over ends
        await hand_over.put(["b1"], [3])
        await hand_over.put(["c1", "c2"], [4, 5])
        rec.gate.set()
        await hand_over.drain()
        return rec

    rec = asyncio.run(scenario())

    # Then the second hand-over took both, in order, and never two ran at once
    assert rec.calls == [(["a1", "a2"], [1, 2]), (["b1", "c1", "c2"], [3, 4, 5])]
    assert rec.most_running == 1


def test_put_waits_once_max_waiting_batches_wait() -> None:
    async def scenario() -> tuple[bool, bool, list[tuple[list[str], list[int]]]]:
        # Given a hand-over that does not end, and one batch waiting behind it
        rec = Recorder()
        hand_over: HandOver[str, int] = HandOver(rec.settle, max_waiting=2)
        await hand_over.put(["a"], [1])
        await _until(lambda: len(rec.calls) == 1)
        await hand_over.put(["b"], [2])

        # When a third batch is put
        third = asyncio.ensure_future(hand_over.put(["c"], [3]))
        await asyncio.sleep(0.05)
        blocked = not third.done()

        # Then it waits until a hand-over takes the waiting ones
        rec.gate.set()
        await asyncio.wait_for(third, 2)
        await hand_over.drain()
        return blocked, third.done(), rec.calls

    blocked, released, calls = asyncio.run(scenario())
    assert blocked and released
    assert [records for records, _jobs in calls] == [["a"], ["b", "c"]]


def test_a_hand_over_that_raised_stops_the_next_put() -> None:
    async def failing(records: list[str], jobs: list[int]) -> None:
        raise RuntimeError("boom")

    async def scenario() -> None:
        hand_over: HandOver[str, int] = HandOver(failing)
        await hand_over.put(["a"], [1])
        await asyncio.sleep(0.01)
        await hand_over.put(["b"], [2])

    with pytest.raises(RuntimeError, match="boom"):
        asyncio.run(scenario())


def test_max_waiting_below_one_is_refused() -> None:
    async def settle(records: list[str], jobs: list[int]) -> None:
        return None

    with pytest.raises(ValueError, match="at least 1"):
        HandOver(settle, max_waiting=0)
