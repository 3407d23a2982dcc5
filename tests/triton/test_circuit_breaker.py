"""The circuit breaker's state machine, on a clock the test controls."""

from __future__ import annotations

import pytest

from serving.backends.circuit_breaker import BreakerState, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_opens_after_consecutive_failures_only(clock: Clock) -> None:
    breaker = CircuitBreaker(failures=3, reset_s=1.0, clock=clock)
    for _ in range(2):
        breaker.record_failure()
    breaker.record_success()  # a success in between resets the count
    for _ in range(2):
        breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow()
    assert breaker.opened_count == 1


def test_half_open_lets_exactly_one_probe_through(clock: Clock) -> None:
    breaker = CircuitBreaker(failures=1, reset_s=1.0, clock=clock)
    breaker.record_failure()
    clock.now += 0.99
    assert not breaker.allow()
    clock.now += 0.02
    assert breaker.allow()
    assert breaker.state is BreakerState.HALF_OPEN
    assert not breaker.allow()  # the probe is in flight
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.allow()


def test_failed_probe_reopens_for_another_pause(clock: Clock) -> None:
    breaker = CircuitBreaker(failures=5, reset_s=1.0, clock=clock)
    for _ in range(5):
        breaker.record_failure()
    clock.now += 1.0
    assert breaker.allow()
    breaker.record_failure()  # one failure is enough in half-open
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow()
    clock.now += 1.0
    assert breaker.allow()
    assert breaker.opened_count == 2


def test_abandoned_probe_frees_the_probe_slot(clock: Clock) -> None:
    breaker = CircuitBreaker(failures=1, reset_s=1.0, clock=clock)
    breaker.record_failure()
    clock.now += 1.0
    assert breaker.allow()
    breaker.record_abandoned()  # cancelled by its caller: no verdict
    assert breaker.allow()  # the next call probes at once


def test_rejects_nonsense_thresholds() -> None:
    with pytest.raises(ValueError, match="failures >= 1"):
        CircuitBreaker(failures=0, reset_s=1.0)


def test_probe_is_due_only_after_the_pause(clock: Clock) -> None:
    breaker = CircuitBreaker(failures=1, reset_s=1.0, clock=clock)
    assert not breaker.probe_due()
    breaker.record_failure()
    assert not breaker.probe_due()
    clock.now += 1.0
    assert breaker.probe_due()


def test_failing_from_the_first_failure_until_a_success(clock: Clock) -> None:
    """What the batcher reads before learning a timeout (``Backend.failing``)."""
    breaker = CircuitBreaker(failures=3, reset_s=1.0, clock=clock)
    assert not breaker.failing
    breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.failing  # closed, but its last call failed
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.failing  # open
    clock.now += 1.0
    assert breaker.allow()
    assert breaker.failing  # half-open: probing
    breaker.record_success()
    assert not breaker.failing
