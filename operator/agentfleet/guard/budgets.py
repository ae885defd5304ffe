"""Tokens-per-hour and cost-per-day budgets, strict under concurrency.

A budget checked against *settled* spend lets every concurrent request through until the first
one finishes (LiteLLM issues #34732 and #40095: budgets overshot many times over). Here each
call first *reserves* an upper estimate of what it can cost (prompt estimate + its completion
cap) and is admitted only if settled spend + outstanding reservations + this reservation fit the
limit; when the call ends the reservation is replaced by the real usage. The check and the
reservation happen without an ``await`` in between, so on one event loop they are atomic: with
honest estimates N concurrent requests never exceed the budget, and in general the overshoot is
bounded by what calls used beyond their own reservations.

Memory is bounded: the hour is kept in fixed-width buckets (at most 3600/bucket of them), the
day is one number.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from agentfleet.guard.errors import Code, GuardError

HOUR = 3600.0


def text_tokens(text: str) -> int:
    """Upper-leaning token estimate: one token per 3 UTF-8 bytes (BPE tokenizers average ~4)."""
    return -(-len(text.encode()) // 3)


@dataclass(slots=True)
class Reservation:
    """What one call holds until it settles."""

    tokens: int
    cost: Decimal
    day: int
    settled: bool = False


class Ledger:
    """Both budgets of one guard. ``reserve`` raises ``GuardError`` (429 budget_exhausted)."""

    def __init__(
        self,
        tokens_per_hour: int | None,
        cost_per_day: Decimal | None,
        *,
        bucket_seconds: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.tokens_per_hour = tokens_per_hour
        self.cost_per_day = cost_per_day
        self._bucket = bucket_seconds
        self._clock = clock
        self._wall = wall
        self._buckets: deque[list[float]] = deque()  # [bucket start, tokens]
        self.tokens_used = 0
        """Settled tokens inside the sliding hour."""
        self.tokens_reserved = 0
        """Tokens held by calls in flight."""
        self._day = self._today()
        self.cost_spent = Decimal(0)
        """Settled dollars today (UTC)."""
        self.cost_reserved = Decimal(0)
        """Dollars held by calls in flight."""

    # ------------------------------------------------------------------ clocks and windows

    def _today(self) -> int:
        return int(self._wall() // 86400)

    def _roll_day(self) -> int:
        today = self._today()
        if today != self._day:
            self._day, self.cost_spent = today, Decimal(0)
        return today

    def _expire(self, now: float) -> None:
        horizon = now - HOUR
        buckets = self._buckets
        while buckets and buckets[0][0] + self._bucket <= horizon:
            self.tokens_used -= int(buckets.popleft()[1])

    def _seconds_to_midnight(self) -> float:
        now = datetime.fromtimestamp(self._wall(), UTC)
        midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
        return (midnight - now).total_seconds()

    def _tokens_retry_after(self, need: int, now: float) -> float:
        """Seconds until enough settled tokens leave the window to free ``need`` tokens."""
        freed = 0
        for start, tokens in self._buckets:
            freed += int(tokens)
            if freed >= need:
                return max(1.0, start + self._bucket + HOUR - now)
        return 1.0  # the rest is held by calls in flight, which settle soon

    # ------------------------------------------------------------------ reserve / settle

    def reserve(self, tokens: int, cost: Decimal) -> Reservation:
        """Admit a call that may use up to ``tokens`` and ``cost``, or raise 429."""
        day = self._roll_day()
        if self.tokens_per_hour is not None:
            now = self._clock()
            self._expire(now)
            limit = self.tokens_per_hour
            if tokens > limit:
                raise GuardError(
                    Code.BUDGET_EXHAUSTED,
                    f"request may use up to {tokens} tokens, more than the whole budget of {limit} tokens "
                    "per hour; lower max_tokens or shorten the prompt",
                    429,
                    budget="tokens_per_hour",
                )
            over = self.tokens_used + self.tokens_reserved + tokens - limit
            if over > 0:
                raise GuardError(
                    Code.BUDGET_EXHAUSTED,
                    f"token budget exhausted: {self.tokens_used} used and {self.tokens_reserved} reserved of "
                    f"{limit} per hour; this request needs up to {tokens}",
                    429,
                    retry_after=self._tokens_retry_after(over, now),
                    budget="tokens_per_hour",
                )
        if self.cost_per_day is not None:
            limit_c = self.cost_per_day
            if cost > limit_c:
                raise GuardError(
                    Code.BUDGET_EXHAUSTED,
                    f"request may cost up to ${cost:.6f}, more than the whole budget of ${limit_c} per day",
                    429,
                    budget="cost_per_day",
                )
            if self.cost_spent + self.cost_reserved + cost > limit_c:
                settled_blocks = self.cost_spent + cost > limit_c
                raise GuardError(
                    Code.BUDGET_EXHAUSTED,
                    f"cost budget exhausted: ${self.cost_spent:.6f} spent and ${self.cost_reserved:.6f} reserved "
                    f"of ${limit_c} per UTC day; this request needs up to ${cost:.6f}",
                    429,
                    retry_after=self._seconds_to_midnight() if settled_blocks else 1.0,
                    budget="cost_per_day",
                )
        self.tokens_reserved += tokens
        self.cost_reserved += cost
        return Reservation(tokens, cost, day)

    def settle(self, res: Reservation, tokens: int, cost: Decimal) -> None:
        """Replace a reservation by actual usage (idempotent: only the first call counts)."""
        if res.settled:
            return
        res.settled = True
        self.tokens_reserved -= res.tokens
        self.cost_reserved -= res.cost
        if tokens > 0:
            now = self._clock()
            start = now - (now % self._bucket)
            if self._buckets and self._buckets[-1][0] == start:
                self._buckets[-1][1] += tokens
            else:
                self._buckets.append([start, float(tokens)])
            self.tokens_used += tokens
        if cost > 0 and self._roll_day() == res.day:
            self.cost_spent += cost

    def snapshot(self) -> dict[str, str | int | None]:
        """Current state (for /readyz details and tests)."""
        if self.tokens_per_hour is not None:
            self._expire(self._clock())
        self._roll_day()
        return {
            "tokens_per_hour": self.tokens_per_hour,
            "tokens_used": self.tokens_used,
            "tokens_reserved": self.tokens_reserved,
            "cost_per_day": str(self.cost_per_day) if self.cost_per_day is not None else None,
            "cost_spent": str(self.cost_spent),
            "cost_reserved": str(self.cost_reserved),
        }
