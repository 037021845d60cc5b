"""Batches waiting for a hand-over that runs one at a time and takes all of them at once.

An agent that hands its batches to the blocking thread (journal read, confirmed job, journal
mark) should not wait for each hand-over before it reads the next batch, nor start a second
hand-over beside the first: each must know what the one before it applied (the license agent
reads the journal, plus the ids it sent and is still marking), or a re-driven copy in one and
its original in the other could both be applied. So
hand-overs run one at a time, in order, and each takes every batch that is waiting: while one
works, the agent goes on fetching and parsing, and a slow hand-over is followed by a bigger one
instead of a queue of small ones (its cost is mostly per round trip to PostgreSQL and
RabbitMQ, not per event).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

__all__ = ["HandOver"]

R = TypeVar("R")
J = TypeVar("J")


class HandOver(Generic[R, J]):
    """Serial hand-overs of what :meth:`put` queued; ``settle(records, jobs)`` does one.

    ``settle`` must not raise (the stream's blocking calls retry until they work); if it does,
    the next :meth:`put` raises it, and the batches it held are never settled (their records
    stay unacknowledged: faust commits no offset past them).
    """

    def __init__(
        self, settle: Callable[[list[R], list[J]], Awaitable[None]], *, max_waiting: int = 4
    ) -> None:
        if max_waiting < 1:
            raise ValueError("max_waiting must be at least 1")
        self._settle = settle
        self.max_waiting = max_waiting
        self._waiting: list[tuple[list[R], list[J]]] = []
        self._taken = asyncio.Event()
        self._running: asyncio.Task[None] | None = None

    @property
    def waiting(self) -> int:
        """Batches queued and not yet taken by a hand-over."""
        return len(self._waiting)

    async def put(self, records: list[R], jobs: list[J]) -> None:
        """Queue one batch for the next hand-over; returns at once, unless ``max_waiting``
        batches are waiting already (back-pressure: the agent reads no further ahead)."""
        running = self._running
        if running is not None and running.done():
            running.result()  # a hand-over that raised: stop here, not later
            self._running = running = None
        self._waiting.append((records, jobs))
        if running is None:
            self._running = asyncio.ensure_future(self._run())
        while len(self._waiting) >= self.max_waiting:
            self._taken.clear()
            await self._taken.wait()

    async def drain(self) -> None:
        """Return once everything queued so far is handed over."""
        while self._running is not None and not self._running.done():
            await asyncio.shield(self._running)

    async def _run(self) -> None:
        while self._waiting:
            group, self._waiting = self._waiting, []
            self._taken.set()
            records = [record for held, _jobs in group for record in held]
            await self._settle(records, [job for _held, jobs in group for job in jobs])
