"""Circuit breaker state machine (pure, with a fake clock)."""

from __future__ import annotations

import pytest

from agentfleet.guard.breaker import BreakerState, CircuitBreaker

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def make() -> tuple[CircuitBreaker, Clock, list[tuple[BreakerState, BreakerState]]]:
    clock = Clock()
    changes: list[tuple[BreakerState, BreakerState]] = []
    breaker = CircuitBreaker(
        3, 5.0, 20.0, probe_timeout=30.0, clock=clock, on_change=lambda old, new, reason: changes.append((old, new))
    )
    return breaker, clock, changes


def test_opens_after_consecutive_failures_only() -> None:
    breaker, _, changes = make()
    breaker.failure("http_5xx")
    breaker.failure("http_5xx")
    breaker.success()  # resets the streak
    breaker.failure("connect")
    breaker.failure("connect")
    assert breaker.before_call() is None and breaker.state is BreakerState.CLOSED
    breaker.failure("connect")
    assert breaker.state is BreakerState.OPEN
    assert breaker.before_call() == pytest.approx(5.0)
    assert changes == [(BreakerState.CLOSED, BreakerState.OPEN)]


def test_half_open_lets_one_probe_through_and_closes_on_success() -> None:
    breaker, clock, changes = make()
    for _ in range(3):
        breaker.failure("timeout")
    clock.now = 5.0
    assert breaker.before_call() is None  # the probe
    assert breaker.state is BreakerState.HALF_OPEN
    wait = breaker.before_call()
    assert wait is not None and wait > 0  # everyone else still fails fast
    breaker.success()
    assert breaker.state is BreakerState.CLOSED and breaker.before_call() is None
    assert [new for _, new in changes] == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]


def test_failed_probe_reopens_for_longer_up_to_the_cap() -> None:
    breaker, clock, _ = make()
    for _ in range(3):
        breaker.failure("http_5xx")
    opens = []
    for _ in range(4):
        clock.now += 100
        assert breaker.before_call() is None
        breaker.failure("http_5xx")
        wait = breaker.before_call()
        assert wait is not None
        opens.append(round(wait))
    assert opens == [10, 20, 20, 20]


def test_abandoned_probe_does_not_wedge_the_breaker() -> None:
    breaker, clock, _ = make()
    for _ in range(3):
        breaker.failure("reset")
    clock.now = 5.0
    assert breaker.before_call() is None
    breaker.abandon_probe()
    assert breaker.before_call() is None  # another probe may go
    clock.now = 100.0  # and a probe that never reports back is replaced after probe_timeout
    assert breaker.before_call() is None
