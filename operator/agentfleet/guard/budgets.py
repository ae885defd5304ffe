"""The in-memory ledger: budgets counted by this guard process alone, strict under concurrency.

A budget checked against *settled* spend lets every concurrent request through until the first
one finishes (LiteLLM issues #34732 and #40095: budgets overshot many times over). Here each
call first *reserves* an upper estimate of what it can cost (prompt estimate + its completion
cap) and is admitted only if settled spend + outstanding reservations + this reservation fit
every budget; when the call ends the reservation is replaced by the real usage. The check and
the reservation happen without an ``await`` in between, so on one event loop they are atomic:
with honest estimates N concurrent requests never exceed the budget, and in general the
overshoot is bounded by what calls used beyond their own reservations.

This is the ledger when no shared one is configured (tests, a single replica): it counts per
process and starts from zero on a restart. ``redis_ledger`` is the shared one; both implement
``ledger.SpendLedger`` with the same budgets, windows and messages.

Memory is bounded: the sliding hour is kept in fixed-width buckets (at most 3600/bucket of
them), a calendar window is one number (only the current window is kept).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from decimal import Decimal

from agentfleet.guard.ledger import HOUR, Budget, Charge, Hold, Span, calendar_retry, exhausted, too_large


def text_tokens(text: str) -> int:
    """Upper-leaning token estimate: one token per 3 UTF-8 bytes (BPE tokenizers average ~4)."""
    return -(-len(text.encode()) // 3)


class _Tally:
    """One budget's state: held by calls in flight, and used in its window."""

    __slots__ = ("buckets", "budget", "held", "span", "used")

    def __init__(self, budget: Budget) -> None:
        self.budget = budget
        self.held = 0
        self.used = 0
        """Settled in the current window (the sliding hour: in the buckets still inside it)."""
        self.buckets: deque[list[float]] = deque()  # [bucket start (monotonic), units]
        self.span: Span | None = None

    def roll(self, wall: float, mono: float) -> Span:
        """Bring the window up to date: expire old buckets, or start a new calendar window."""
        window = self.budget.window
        if window.sliding:
            horizon = mono - HOUR
            while self.buckets and self.buckets[0][0] + window.bucket <= horizon:
                self.used -= int(self.buckets.popleft()[1])
            return window.span(wall)
        if self.span is None or not (self.span.start <= wall < self.span.end):
            span = window.span(wall)
            if self.span is None or span.id != self.span.id:
                self.span, self.used = span, 0
        assert self.span is not None
        return self.span

    def retry_after(self, over: int, mono: float, span: Span, wall: float, amount: int) -> float:
        window = self.budget.window
        if not window.sliding:
            return calendar_retry(self.budget, self.used, amount, span, wall)
        freed = 0
        for start, units in self.buckets:
            freed += int(units)
            if freed >= over:
                return max(1.0, start + window.bucket + HOUR - mono)
        return 1.0  # the rest is held by calls in flight, which settle soon

    def add(self, units: int, mono: float) -> None:
        if units <= 0:
            return
        if self.budget.window.sliding:
            size = self.budget.window.bucket
            start = mono - (mono % size)
            if self.buckets and self.buckets[-1][0] == start:
                self.buckets[-1][1] += units
            else:
                self.buckets.append([start, float(units)])
        self.used += units


class MemoryLedger:
    """Every budget of one guard, in this process. ``reserve_now`` raises ``GuardError``."""

    def __init__(
        self,
        budgets: Sequence[Budget],
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.budgets = tuple(budgets)
        self._clock = clock
        self._wall = wall
        self._tallies = [_Tally(b) for b in self.budgets]
        self._next = 0
        self.held_tokens = 0
        """Tokens held by calls in flight (whatever the budgets)."""
        self.held_nanos = 0
        """Nano-dollars held by calls in flight."""

    # ------------------------------------------------------------------ the interface

    async def reserve(self, rid: str, charge: Charge) -> Hold:
        return self.reserve_now(charge, rid)

    def settle(self, hold: Hold, used: Charge) -> None:
        """Replace a reservation by actual usage (idempotent: only the first call counts).
        Usage is counted in the window the call reserved in, if that is still the current one."""
        if hold.settled:
            return
        hold.settled = True
        self.held_tokens -= hold.charge.tokens
        self.held_nanos -= hold.charge.nanos
        mono = self._clock()
        for tally, span in zip(self._tallies, hold.spans, strict=True):
            tally.held -= tally.budget.amount(hold.charge)
            if tally.budget.window.sliding or (tally.span is not None and tally.span.id == span.id):
                tally.add(tally.budget.amount(used), mono)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    # ------------------------------------------------------------------ synchronous core

    def reserve_now(self, charge: Charge, rid: str = "") -> Hold:
        """Admit a call that may use up to ``charge`` against every budget, or raise 429. No
        await: atomic on the event loop."""
        wall, mono = self._wall(), self._clock()
        spans = tuple(t.roll(wall, mono) for t in self._tallies)
        for tally, span in zip(self._tallies, spans, strict=True):
            budget, amount = tally.budget, tally.budget.amount(charge)
            if budget.limit is None:
                continue
            if amount > budget.limit:
                raise too_large(budget, amount)
            over = tally.used + tally.held + amount - budget.limit
            if over > 0:
                retry = tally.retry_after(over, mono, span, wall, amount)
                raise exhausted(budget, tally.used, tally.held, amount, retry)
        for tally in self._tallies:
            tally.held += tally.budget.amount(charge)
        self.held_tokens += charge.tokens
        self.held_nanos += charge.nanos
        if not rid:
            self._next += 1
            rid = f"m{self._next}"
        return Hold(rid, charge, spans, levels=tuple(t.used + t.held for t in self._tallies))

    def level(self, name: str) -> tuple[int, int]:
        """(used, held) of the budget called ``name``."""
        for tally in self._tallies:
            if tally.budget.name == name:
                tally.roll(self._wall(), self._clock())
                return tally.used, tally.held
        raise KeyError(name)

    def snapshot(self) -> dict[str, object]:
        wall, mono = self._wall(), self._clock()
        out: dict[str, object] = {"ledger": "memory"}
        for tally in self._tallies:
            span = tally.roll(wall, mono)
            b = tally.budget
            out[b.name] = {
                "unit": b.unit.value,
                "limit": None if b.limit is None else b.value(b.limit),
                "used": b.value(tally.used),
                "reserved": b.value(tally.held),
                "resets": None if b.window.sliding else span.end,
            }
        return out

    # ------------------------------------------------------------------ the two built-in budgets

    @property
    def tokens_used(self) -> int:
        """Settled tokens inside the sliding hour (the ``tokens_per_hour`` budget)."""
        return self.level("tokens_per_hour")[0]

    @property
    def tokens_reserved(self) -> int:
        """Tokens held by calls in flight."""
        return self.held_tokens

    @property
    def cost_spent(self) -> Decimal:
        """Settled dollars in the ``cost_per_day`` budget's current day."""
        return Decimal(self.level("cost_per_day")[0]) / 10**9

    @property
    def cost_reserved(self) -> Decimal:
        """Dollars held by calls in flight."""
        return Decimal(self.held_nanos) / 10**9
