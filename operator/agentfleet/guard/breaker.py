"""Circuit breaker for the upstream LLM API.

When the API flakes at 2 a.m., every agent retrying every call multiplies the load on a service
that is already failing, and every agent waits out its full deadline. The breaker turns that
into a fast, clear ``upstream_unavailable`` with a Retry-After: after ``threshold`` consecutive
failed attempts it opens; after the open period one request is let through as a half-open probe;
its success closes the breaker, its failure re-opens it for twice as long (up to a cap).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import IntEnum


class BreakerState(IntEnum):
    """Values of the ``agentfleet_breaker_state`` gauge."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


StateListener = Callable[[BreakerState, BreakerState, str], None]


class CircuitBreaker:
    """Consecutive-failure breaker with a single half-open probe."""

    def __init__(
        self,
        threshold: int,
        open_seconds: float,
        max_open_seconds: float,
        *,
        probe_timeout: float,
        on_change: StateListener | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.base_open = open_seconds
        self.max_open = max_open_seconds
        self.probe_timeout = probe_timeout
        self._on_change = on_change
        self._clock = clock
        self.state = BreakerState.CLOSED
        self.failures = 0
        self._open_for = open_seconds
        self._opened_at = 0.0
        self._probe_started: float | None = None

    def _set(self, state: BreakerState, reason: str) -> None:
        old, self.state = self.state, state
        if old != state and self._on_change is not None:
            self._on_change(old, state, reason)

    def before_call(self) -> float | None:
        """None if a call may go upstream now; otherwise seconds until it is worth trying again."""
        if self.state is BreakerState.CLOSED:
            return None
        now = self._clock()
        if self.state is BreakerState.OPEN:
            remaining = self._opened_at + self._open_for - now
            if remaining > 0:
                return remaining
            self._set(BreakerState.HALF_OPEN, "open period elapsed; probing")
        # Half-open: one probe at a time; a probe that never reported back is replaced.
        if self._probe_started is not None and now - self._probe_started < self.probe_timeout:
            return max(0.5, self._probe_started + self.probe_timeout - now)
        self._probe_started = now
        return None

    def success(self) -> None:
        """An upstream attempt succeeded (or failed in a way that is not the upstream's fault)."""
        self.failures = 0
        self._probe_started = None
        if self.state is not BreakerState.CLOSED:
            self._open_for = self.base_open
            self._set(BreakerState.CLOSED, "probe succeeded")

    def failure(self, reason: str) -> None:
        """An upstream attempt failed with a retryable fault (connect, timeout, 429, 5xx)."""
        self.failures += 1
        now = self._clock()
        if self.state is BreakerState.HALF_OPEN:
            self._probe_started = None
            self._open_for = min(self._open_for * 2, self.max_open)
            self._opened_at = now
            self._set(BreakerState.OPEN, f"probe failed: {reason}")
        elif self.state is BreakerState.CLOSED and self.failures >= self.threshold:
            self._opened_at = now
            self._set(BreakerState.OPEN, f"{self.failures} consecutive failures, last: {reason}")

    def abandon_probe(self) -> None:
        """A probe ended without a verdict (e.g. the agent went away); let another one try."""
        self._probe_started = None
