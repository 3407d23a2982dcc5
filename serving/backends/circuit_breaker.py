"""A circuit breaker: stop sending work to a backend that keeps failing, probe it, resume.

Without it every request waits for its own timeout against a dead or frozen Triton before it
fails over, so a Triton outage costs each request its whole budget. With it, after
``failures`` consecutive failures the breaker opens and calls fail at once (the failover
policy answers them); after ``reset_s`` it lets exactly one call through (half-open). That
probe's success closes the breaker, its failure opens it for another ``reset_s``.
Listeners (:meth:`CircuitBreaker.watch`) hear every change of state: the gateway turns them
into the ``rankserve_circuit_breaker_state`` gauge.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Not thread-safe: used from one event loop, where check-and-set needs no lock."""

    def __init__(self, failures: int, reset_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if failures < 1 or reset_s <= 0:
            raise ValueError(f"need failures >= 1 and reset_s > 0, got {failures}, {reset_s}")
        self.failures = failures
        self.reset_s = reset_s
        self._clock = clock
        self._consecutive = 0
        self._state = BreakerState.CLOSED
        self._opened_at = 0.0
        self.opened_count = 0
        """How many times the breaker has opened (for metrics and tests)."""
        self._listeners: list[Callable[[BreakerState], None]] = []

    def watch(self, listener: Callable[[BreakerState], None]) -> None:
        """Call ``listener`` with the current state now and with every later change.

        A listener must not raise: it runs inside the backend's call path.
        """
        self._listeners.append(listener)
        listener(self._state)

    @property
    def state(self) -> BreakerState:
        return self._state

    @property
    def failing(self) -> bool:
        """The backend's last call failed (or it is open or being probed): what it takes
        now says nothing about its normal speed (see :meth:`Backend.failing`)."""
        return self._state is not BreakerState.CLOSED or self._consecutive > 0

    def allow(self) -> bool:
        """Whether a call may go to the backend now; in half-open, only the one probe may."""
        if self._state is BreakerState.CLOSED:
            return True
        if self.probe_due():
            self._set(BreakerState.HALF_OPEN)
            return True
        return False

    def probe_due(self) -> bool:
        """Open, and the pause is over: the next call (or a health check) may probe."""
        return (self._state is BreakerState.OPEN
                and self._clock() - self._opened_at >= self.reset_s)

    def record_success(self) -> None:
        self._consecutive = 0
        self._set(BreakerState.CLOSED)

    def record_failure(self) -> None:
        self._consecutive += 1
        if self._state is BreakerState.HALF_OPEN or self._consecutive >= self.failures:
            self._open()

    def record_abandoned(self) -> None:
        """The call was cancelled by its caller: no verdict, but a probe slot is freed."""
        if self._state is BreakerState.HALF_OPEN:
            self._set(BreakerState.OPEN)
            self._opened_at = self._clock() - self.reset_s  # the next call probes again

    def reset(self) -> None:
        """Close the breaker: an out-of-band health check found the backend ready again."""
        self.record_success()

    def _open(self) -> None:
        if self._state is not BreakerState.OPEN:
            self.opened_count += 1
        self._opened_at = self._clock()
        self._set(BreakerState.OPEN)

    def _set(self, state: BreakerState) -> None:
        if state is self._state:
            return
        self._state = state
        for listener in self._listeners:
            listener(state)
