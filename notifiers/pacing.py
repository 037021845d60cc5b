"""Send rates shared by every worker process: one slot per send, one interval apart.

A provider's limit is on our account (or robot), not on one process: four worker processes of
eight threads each must keep to the gateway's 100 requests a second together. So a sender's
pace lives where every process sees it, the ``send_pace`` table: one row per sender whose
``next_at`` is the Unix time of its next free slot. A send takes a slot with one atomic
statement, ``UPDATE send_pace SET next_at = max(next_at, now) + interval … RETURNING next_at``
(the row lock is held for that statement only), and waits until its slot comes.

Keys: ``sms:<provider>`` (the SMS providers, :class:`notifiers.routing.RoutingNotifier`),
``staff:<webhook key>`` (each staff robot or mailbox) and ``release:<provider>:<instant>``
(messages held by quiet hours or the daily cap, given release times one interval apart from the
instant they may go: :meth:`Pacer.reserve_at`).

Backends, as dramatiq's rate limiters have theirs: :class:`DatabasePacer` (PostgreSQL for every
process of a deployment, or the SQLite file of a single machine), :class:`LocalPacer` (one
process: unit tests, a single worker) and :class:`NoPacer` (nothing paced). Every instant comes
from the settable clock (:mod:`infra.clock`), so a pinned clock paces as the real one does.

A wait needs no cap: a slot is at most (senders waiting for the key) / rate ahead, and each
worker thread waits for one slot at a time, so the wait is bounded by the process count times
threads over the rate (32 senders at 100/s: a third of a second). A provider's "slow down"
(:meth:`Pacer.hold`) pushes the next slot back by what it asked, for every process at once.
"""

from __future__ import annotations

import abc
import datetime as dt
import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

from sqlalchemy import Engine, func, text, update
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

from infra.db import conflict_insert, get_engine
from schemas.models import SendPace, utcnow

if TYPE_CHECKING:
    from infra.clock import Clock
    from infra.settings import Settings

__all__ = [
    "DatabasePacer",
    "LocalPacer",
    "NoPacer",
    "Pacer",
    "interval_of",
    "release_key",
    "sms_key",
    "staff_key",
]

_log = logging.getLogger(__name__)

#: Sleeps ``seconds`` (``time.sleep``); tests pass one that records the waits instead.
Sleep = Callable[[float], None]


def sms_key(provider: str) -> str:
    """The pace of SMS provider ``provider``."""
    return f"sms:{provider}"


def staff_key(webhook: str) -> str:
    """The pace of the staff directory's webhook ``webhook`` (one robot or mailbox)."""
    return f"staff:{webhook}"


def release_key(provider: str, instant: dt.datetime) -> str:
    """The spread of the messages for ``provider`` held until ``instant`` (aware)."""
    return f"release:{provider}:{instant.astimezone(dt.UTC).isoformat()}"


def interval_of(rate: float | None) -> float | None:
    """Seconds between two sends at ``rate`` a second; ``None`` for no pace (``None`` or 0)."""
    return 1.0 / rate if rate else None


class Pacer(abc.ABC):
    """Hands out send slots per key, one ``interval`` apart, shared as far as the backend
    reaches (one process, or every process on the database)."""

    def __init__(self, clock: Clock | None = None, *, sleep: Sleep = time.sleep) -> None:
        self.clock = clock
        self._sleep = sleep

    def now(self) -> float:
        """Unix time on the pacer's clock (the settable clock when given, else the real one)."""
        if self.clock is None:
            return time.time()
        return self.clock.utcnow().timestamp()

    @abc.abstractmethod
    def take(self, key: str, interval: float) -> float:
        """Take the next slot of ``key`` (at least ``interval`` after the one before, and not
        before now); returns the seconds until it, 0 when it is now."""

    @abc.abstractmethod
    def hold(self, key: str, seconds: float) -> None:
        """Let no slot of ``key`` be earlier than ``seconds`` from now (the provider said "slow
        down"): every sender of the backend backs off, not only the one that was refused."""

    @abc.abstractmethod
    def reserve_at(
        self, session: Session, key: str, not_before: dt.datetime, interval: float
    ) -> dt.datetime:
        """A slot of ``key`` at or after ``not_before``, ``interval`` after the one before it.

        For a release spread: messages held until one instant get instants one interval apart.
        A :class:`DatabasePacer` takes it in ``session``'s transaction (not committed: the
        caller commits it with what it schedules); other backends ignore ``session``.
        """

    def wait(self, key: str, interval: float | None) -> float:
        """Take a slot of ``key`` and sleep until it; returns the seconds slept. ``interval``
        ``None``: not paced, no wait and no database round trip."""
        if interval is None:
            return 0.0
        delay = self.take(key, interval)
        if delay > 0:
            self._sleep(delay)
        return delay


class NoPacer(Pacer):
    """Paces nothing: every slot is now."""

    def take(self, key: str, interval: float) -> float:
        return 0.0

    def hold(self, key: str, seconds: float) -> None:
        return

    def reserve_at(
        self, session: Session, key: str, not_before: dt.datetime, interval: float
    ) -> dt.datetime:
        return not_before


class LocalPacer(Pacer):
    """Slots kept in this process's memory: exact for one process, not shared with others."""

    def __init__(self, clock: Clock | None = None, *, sleep: Sleep = time.sleep) -> None:
        super().__init__(clock, sleep=sleep)
        self._next: dict[str, float] = {}
        self._lock = threading.Lock()

    def _advance(self, key: str, not_before: float, interval: float) -> float:
        """The slot taken: max(next free, ``not_before``); the next free is one interval on."""
        with self._lock:
            slot = max(self._next.get(key, not_before), not_before)
            self._next[key] = slot + interval
        return slot

    def take(self, key: str, interval: float) -> float:
        now = self.now()
        return max(0.0, self._advance(key, now, interval) - now)

    def hold(self, key: str, seconds: float) -> None:
        until = self.now() + seconds
        with self._lock:
            self._next[key] = max(self._next.get(key, until), until)

    def reserve_at(
        self, session: Session, key: str, not_before: dt.datetime, interval: float
    ) -> dt.datetime:
        slot = self._advance(key, not_before.timestamp(), interval)
        return dt.datetime.fromtimestamp(slot, dt.UTC)


class DatabasePacer(Pacer):
    """Slots in the ``send_pace`` table, shared by every process on the database.

    One statement takes a slot: ``UPDATE … SET next_at = max(next_at, :now) + :interval …
    RETURNING next_at``; two senders can never take the same one. A key's row is made the
    first time it is used (insert-or-ignore, then the update again), so a purged row comes back
    by itself. On PostgreSQL each slot is its own short transaction with
    ``synchronous_commit = off``: losing the last few reservations in a crash only lets a few
    sends go a slot early, and the commit does not wait for the disk, so the row lock is held
    for microseconds however busy the WAL is.

    Pacing is never a new way for a send to fail: when the table cannot be reached (the
    database down, migration 0008 not applied yet) the pacer logs it, at most once a minute, and
    paces this process alone (a :class:`LocalPacer`) until it can.

    Parameters:
      settings: the database (``settings.resolved_database_url``).
      clock: the one clock (:meth:`infra.clock.Clock.from_settings`).
      engine: another engine for the same database (tests: one per simulated process).
    """

    #: Seconds between two warnings that the table cannot be reached.
    WARN_EVERY_S: ClassVar[float] = 60.0

    def __init__(
        self,
        settings: Settings,
        clock: Clock,
        *,
        engine: Engine | None = None,
        sleep: Sleep = time.sleep,
    ) -> None:
        super().__init__(clock, sleep=sleep)
        self._url = settings.resolved_database_url
        self._engine = engine
        self._alone = LocalPacer(clock, sleep=sleep)
        self._warned_at: float | None = None

    def __repr__(self) -> str:
        return f"DatabasePacer({self._url.split(':', 1)[0]})"

    @functools.cached_property
    def engine(self) -> Engine:
        """The engine, on first use (building a notifier must not touch the database)."""
        return self._engine or get_engine(self._url)

    @functools.cached_property
    def _postgres(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    def _greatest(self, a: object, b: object) -> object:
        # PostgreSQL's GREATEST; SQLite's max() of two arguments is the same scalar function.
        return func.greatest(a, b) if self._postgres else func.max(a, b)

    def _advance(self, s: Session, key: str, floor: float, interval: float) -> float:
        """Take the slot max(next_at, ``floor``) of ``key`` in ``s``; returns it."""
        table = SendPace.__table__
        stmt = (
            update(table)
            .where(table.c.key == key)
            .values(next_at=self._greatest(table.c.next_at, floor) + interval, updated_at=utcnow())
            .returning(table.c.next_at)
        )
        next_at = s.execute(stmt).scalar_one_or_none()
        if next_at is None:
            self._create(s, key, floor)
            next_at = s.execute(stmt).scalar_one()
        return float(next_at) - interval

    def _create(self, s: Session, key: str, next_at: float) -> None:
        s.execute(
            conflict_insert(s)(SendPace.__table__)
            .values(key=key, next_at=next_at, updated_at=utcnow())
            .on_conflict_do_nothing(index_elements=["key"])
        )

    def _unsynced(self, s: Session) -> None:
        """This transaction's commit does not wait for the disk (PostgreSQL; see the class)."""
        if self._postgres:
            s.execute(text("SET LOCAL synchronous_commit = off"))

    def _unreachable(self, exc: SQLAlchemyError) -> None:
        now = time.monotonic()
        if self._warned_at is None or now - self._warned_at >= self.WARN_EVERY_S:
            self._warned_at = now
            _log.warning(
                "send_pace cannot be used (%s); pacing this process alone until it can "
                "(run `govnotify db upgrade` if the table is missing)",
                type(getattr(exc, "orig", None) or exc).__name__,
            )

    def take(self, key: str, interval: float) -> float:
        now = self.now()
        try:
            with Session(self.engine) as s:
                self._unsynced(s)
                slot = self._advance(s, key, now, interval)
                s.commit()
        except SQLAlchemyError as exc:
            self._unreachable(exc)
            return self._alone.take(key, interval)
        return max(0.0, slot - now)

    def hold(self, key: str, seconds: float) -> None:
        until = self.now() + seconds
        table = SendPace.__table__
        try:
            with Session(self.engine) as s:
                self._unsynced(s)
                self._create(s, key, until)
                s.execute(
                    update(table)
                    .where(table.c.key == key)
                    .values(next_at=self._greatest(table.c.next_at, until), updated_at=utcnow())
                )
                s.commit()
        except SQLAlchemyError as exc:
            self._unreachable(exc)
            self._alone.hold(key, seconds)

    def reserve_at(
        self, session: Session, key: str, not_before: dt.datetime, interval: float
    ) -> dt.datetime:
        try:
            # A savepoint: a failure here must not spoil the caller's transaction.
            with session.begin_nested():
                slot = self._advance(session, key, not_before.timestamp(), interval)
        except SQLAlchemyError as exc:
            self._unreachable(exc)
            return self._alone.reserve_at(session, key, not_before, interval)
        return dt.datetime.fromtimestamp(slot, dt.UTC)
