"""A circuit breaker per provider: a provider failing often leaves the rotation for a while.

Closed (normal) → **open** when, over the last ``window_s`` seconds, at least ``min_requests``
requests were made and the share of errors reached ``error_rate``. Open → **half-open** once
``cooldown_s`` has passed: exactly one trial request is let through (every other caller still
sees the circuit open); its success closes the circuit with a clean window, its failure opens it
for another cool-down. Nobody has to close it by hand.

"Error" is the caller's word: the router counts transient failures and timeouts (the provider is
not doing its job) and counts a permanent refusal as a success (the provider answered, the
number or the content was at fault).

The clock is injected (a callable returning seconds, ``time.monotonic`` by default) so tests
step through windows and cool-downs without sleeping. Breakers are shared by every worker thread
of a process through a :class:`CircuitBoard`; each process has its own (the gauge's
multiprocess mode is "max", so a provider shows open if any process took it out).
"""

from __future__ import annotations

import enum
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from infra.metrics import PROVIDER_CIRCUIT_OPEN

__all__ = ["CircuitBoard", "CircuitBreaker", "CircuitConfig", "CircuitState", "Permit"]

Clock = Callable[[], float]


class CircuitState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True)
class CircuitConfig:
    """The thresholds; defaults match the settings' (``GOVNOTIFY_CIRCUIT_*``)."""

    window_s: float = 60.0
    min_requests: int = 10
    error_rate: float = 0.5
    cooldown_s: float = 30.0

    def __post_init__(self) -> None:
        if not (self.window_s > 0 and self.cooldown_s > 0):
            raise ValueError("window_s and cooldown_s must be positive")
        if self.min_requests < 1:
            raise ValueError("min_requests must be at least 1")
        if not 0 < self.error_rate <= 1:
            raise ValueError("error_rate must be in (0, 1]")

    @classmethod
    def from_settings(cls, settings: object) -> CircuitConfig:
        return cls(
            window_s=settings.circuit_window_s,  # type: ignore[attr-defined]
            min_requests=settings.circuit_min_requests,  # type: ignore[attr-defined]
            error_rate=settings.circuit_error_rate,  # type: ignore[attr-defined]
            cooldown_s=settings.circuit_cooldown_s,  # type: ignore[attr-defined]
        )


@dataclass(frozen=True)
class Permit:
    """Leave to send one request through a breaker; report its outcome with :meth:`record`."""

    breaker: CircuitBreaker
    #: The breaker's state generation when the permit was given; a permit from before the
    #: circuit last changed state is ignored when it reports (a late answer says nothing new).
    generation: int
    #: True for the one trial request of a half-open circuit.
    trial: bool

    def record(self, ok: bool) -> None:
        """The request's outcome: ``ok`` unless the provider failed to do its job."""
        self.breaker._record(self, ok)

    def release(self) -> None:
        """Give the permit back unused (the caller sent nothing)."""
        self.breaker._release(self)


class CircuitBreaker:
    """One provider's circuit. Thread-safe.

    Use: ``permit = breaker.acquire()``; ``None`` means skip the provider; otherwise send and
    ``permit.record(ok)``. In the half-open state only one permit (the trial) is given until
    it reports.
    """

    def __init__(self, name: str, config: CircuitConfig, clock: Clock = time.monotonic) -> None:
        self.name = name
        self.config = config
        self._clock = clock
        self._lock = threading.Lock()
        self._outcomes: deque[tuple[float, bool]] = deque()
        #: The failures among _outcomes, kept as they come and go: summing the window on every
        #: outcome cost O(window) per SMS (a minute at 500/s is 30,000 entries).
        self._errors = 0
        self._state = CircuitState.CLOSED
        self._generation = 0
        self._opened_at = 0.0
        self._trial_in_flight = False
        PROVIDER_CIRCUIT_OPEN.labels(provider=name).set(0)

    # ---- reading -------------------------------------------------------------------------------
    @property
    def state(self) -> CircuitState:
        """The state now (an open circuit past its cool-down reads half-open)."""
        with self._lock:
            self._advance()
            return self._state

    def stats(self) -> tuple[int, int]:
        """(requests, errors) inside the current window."""
        with self._lock:
            self._prune()
            return len(self._outcomes), self._errors

    # ---- deciding ------------------------------------------------------------------------------
    def acquire(self) -> Permit | None:
        """A permit to send now, or ``None`` while the circuit is open (or its trial is out)."""
        with self._lock:
            self._advance()
            if self._state is CircuitState.CLOSED:
                return Permit(self, self._generation, trial=False)
            if self._state is CircuitState.HALF_OPEN and not self._trial_in_flight:
                self._trial_in_flight = True
                return Permit(self, self._generation, trial=True)
            return None

    def _record(self, permit: Permit, ok: bool) -> None:
        with self._lock:
            self._advance()
            if permit.generation != self._generation:
                return
            now = self._clock()
            if permit.trial:
                self._trial_in_flight = False
                if ok:
                    self._close()
                else:
                    self._open(now)
                return
            self._outcomes.append((now, ok))
            self._errors += not ok
            self._prune()
            requests = len(self._outcomes)
            errors = self._errors
            if requests >= self.config.min_requests and errors / requests >= self.config.error_rate:
                self._open(now)

    def _release(self, permit: Permit) -> None:
        with self._lock:
            if permit.trial and permit.generation == self._generation:
                self._trial_in_flight = False

    # ---- transitions (lock held) ----------------------------------------------------------------
    def _prune(self) -> None:
        horizon = self._clock() - self.config.window_s
        while self._outcomes and self._outcomes[0][0] <= horizon:
            _at, ok = self._outcomes.popleft()
            self._errors -= not ok

    def _advance(self) -> None:
        if (
            self._state is CircuitState.OPEN
            and self._clock() - self._opened_at >= self.config.cooldown_s
        ):
            self._state = CircuitState.HALF_OPEN
            self._generation += 1
            self._trial_in_flight = False

    def _open(self, now: float) -> None:
        self._state = CircuitState.OPEN
        self._generation += 1
        self._opened_at = now
        self._outcomes.clear()
        self._errors = 0
        PROVIDER_CIRCUIT_OPEN.labels(provider=self.name).set(1)

    def _close(self) -> None:
        self._state = CircuitState.CLOSED
        self._generation += 1
        self._outcomes.clear()
        self._errors = 0
        PROVIDER_CIRCUIT_OPEN.labels(provider=self.name).set(0)


class CircuitBoard:
    """The breakers of one process, by provider name (created on first use)."""

    def __init__(self, config: CircuitConfig, clock: Clock = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self._lock = threading.Lock()
        self._breakers: dict[str, CircuitBreaker] = {}

    def get(self, provider: str) -> CircuitBreaker:
        with self._lock:
            breaker = self._breakers.get(provider)
            if breaker is None:
                breaker = self._breakers[provider] = CircuitBreaker(
                    provider, self.config, self.clock
                )
            return breaker

    def states(self) -> dict[str, CircuitState]:
        with self._lock:
            breakers = list(self._breakers.values())
        return {b.name: b.state for b in breakers}
