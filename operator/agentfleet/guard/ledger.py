"""What a budget ledger counts, and the one interface the core uses for every ledger.

A *budget* is a limit on one unit (tokens, or dollars counted in nano-dollars) over one window
(the sliding hour, or a calendar hour/day/month in a time zone) for one scope (the agent, shared
by all its replicas and revisions; or an AgentPolicy's spend quota, shared by every agent it
covers). Every LLM call *reserves* its worst case against all budgets at once (all or nothing)
before it goes upstream and *settles* on what the upstream reported when it ends.

Two implementations, one interface (``SpendLedger``), so the core does not care which:

- ``budgets.MemoryLedger``: this process only (tests, a single replica, no ledger configured);
- ``redis_ledger.RedisLedger``: one ledger shared by every replica, revision and restart.

``reserve`` is the only await on the path from the checks to the upstream; ``settle`` never
blocks and never raises (the shared ledger settles in the background, idempotently, and an
unsettled reservation is charged in full when it expires, so a lost settle never undercounts).

Dollars are integers of nano-dollars: every implementation (Lua included, whose numbers are
doubles) counts exactly up to 2**53 units, i.e. $9,007,199 per window, and each call's cost is
rounded *up* to the next nano-dollar.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from decimal import Decimal
from enum import StrEnum
from typing import Protocol
from zoneinfo import ZoneInfo

from agentfleet.api.guardconfig import GuardConfig
from agentfleet.guard.errors import Code, GuardError

NANOS = 10**9
"""Nano-dollars per dollar."""
MAX_UNITS = 2**53
"""Largest amount every ledger counts exactly (Lua numbers are doubles)."""
HOUR = 3600


def to_nanos(dollars: Decimal) -> int:
    """Dollars as nano-dollars, rounded up (a budget never undercounts a fraction)."""
    return math.ceil(dollars * NANOS)


def from_nanos(nanos: int) -> Decimal:
    return Decimal(nanos) / NANOS


class Unit(StrEnum):
    TOKENS = "tokens"
    DOLLARS = "dollars"


class Period(StrEnum):
    SLIDING_HOUR = "sliding-hour"
    HOUR = "hour"
    DAY = "day"
    MONTH = "month"


@dataclass(frozen=True, slots=True)
class Span:
    """One occurrence of a window: its id (part of the shared ledger's keys), start and end."""

    id: str
    start: float
    end: float


@dataclass(frozen=True, slots=True)
class Window:
    """The sliding hour (10 s buckets), or a calendar hour, day or month in a time zone."""

    period: Period
    tz: tzinfo = UTC
    bucket: int = 10
    """Seconds per bucket of the sliding hour."""

    @property
    def sliding(self) -> bool:
        return self.period is Period.SLIDING_HOUR

    def span(self, now: float) -> Span:
        """The window containing ``now`` (Unix seconds). Calendar windows follow the zone's
        clock: a day is 23 or 25 hours on a DST change, a month starts on the 1st at 00:00."""
        if self.sliding:
            return Span("s", now - HOUR, now)
        local = datetime.fromtimestamp(now, self.tz)
        if self.period is Period.HOUR:
            start = local.replace(minute=0, second=0, microsecond=0).timestamp()
            return Span(f"h{int(start)}", start, start + HOUR)
        if self.period is Period.DAY:
            first = datetime(local.year, local.month, local.day, tzinfo=self.tz)
            nxt = first.date() + timedelta(days=1)
            end = datetime(nxt.year, nxt.month, nxt.day, tzinfo=self.tz)
        else:
            first = datetime(local.year, local.month, 1, tzinfo=self.tz)
            year, month = (local.year + 1, 1) if local.month == 12 else (local.year, local.month + 1)
            end = datetime(year, month, 1, tzinfo=self.tz)
        prefix = "d" if self.period is Period.DAY else "m"
        return Span(f"{prefix}{int(first.timestamp())}", first.timestamp(), end.timestamp())

    def describe(self) -> str:
        if self.sliding:
            return "per hour"
        zone = "UTC" if self.tz is UTC else str(getattr(self.tz, "key", self.tz))
        return f"per {self.period.value} ({zone})"


def zone(name: str) -> tzinfo:
    """A time zone by IANA name ("UTC" is the fixed UTC zone)."""
    return UTC if name in ("UTC", "Etc/UTC") else ZoneInfo(name)


@dataclass(frozen=True, slots=True)
class Budget:
    """One limit: ``limit`` units over ``window`` for ``scope``. ``limit`` None: counted (for
    status) but never refused."""

    name: str
    """What refused a call (the ``budget`` label of ``agentfleet_budget_rejections_total``)."""
    scope: str
    """Who shares it: ``agent/NAMESPACE/NAME`` or ``policy/NAME``."""
    unit: Unit
    limit: int | None
    window: Window
    soft: int | None = None
    """Level at which the guard signals that the budget is nearly spent (soft limit)."""

    def amount(self, charge: Charge) -> int:
        return charge.tokens if self.unit is Unit.TOKENS else charge.nanos

    def value(self, units: int) -> int | str:
        """``units`` for status: tokens as a number, dollars as an exact decimal string."""
        return units if self.unit is Unit.TOKENS else str(from_nanos(units).normalize())

    def show(self, units: int) -> str:
        return f"{units} tokens" if self.unit is Unit.TOKENS else f"${from_nanos(units):.6f}"


@dataclass(frozen=True, slots=True)
class Charge:
    """What one call may use (reserve) or did use (settle)."""

    tokens: int
    nanos: int

    @classmethod
    def of(cls, tokens: int, cost: Decimal) -> Charge:
        return cls(tokens, to_nanos(cost))


@dataclass(slots=True)
class Hold:
    """A call's reservation until it settles. Opaque to the core."""

    rid: str
    """Request id: what makes a settle idempotent in the shared ledger."""
    charge: Charge
    spans: tuple[Span, ...] = ()
    """The window of each budget at reservation time (the call settles into the same one)."""
    local: bool = False
    """Reserved against the replica's local allowance (the shared ledger was unreachable)."""
    settled: bool = False
    levels: tuple[int, ...] = field(default=())
    """Each budget's used + reserved after this reservation (for soft limits)."""


class SpendLedger(Protocol):
    """What the core needs from a ledger."""

    budgets: tuple[Budget, ...]

    async def reserve(self, rid: str, charge: Charge) -> Hold:
        """Admit a call that may use up to ``charge`` against every budget, or raise
        ``GuardError`` (429 budget_exhausted, or 503 when the ledger cannot decide)."""
        ...

    def settle(self, hold: Hold, used: Charge) -> None:
        """Replace the reservation by what the call used (idempotent; never blocks or raises)."""
        ...

    def snapshot(self) -> dict[str, object]:
        """What the guard knows about its budgets now (for /readyz; may be a little stale)."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None:
        """Flush what is not settled yet (bounded in time), then release connections."""
        ...


# ------------------------------------------------------------------------------ refusals


def too_large(budget: Budget, amount: int) -> GuardError:
    """A call that may use more than the whole budget: waiting cannot help."""
    what = "tokens" if budget.unit is Unit.TOKENS else "cost"
    limit = budget.limit or 0
    return GuardError(
        Code.BUDGET_EXHAUSTED,
        f"request may use up to {budget.show(amount)} of {what}, more than the whole budget of "
        f"{budget.show(limit)} {budget.window.describe()}"
        + ("; lower max_tokens or shorten the prompt" if budget.unit is Unit.TOKENS else ""),
        429,
        budget=budget.name,
    )


def exhausted(budget: Budget, used: int, held: int, amount: int, retry_after: float) -> GuardError:
    """The budget cannot take this call now: says what is spent, what is held by calls in
    flight and what this call needed, so a refused reservation never reads as a contradiction."""
    what = "token" if budget.unit is Unit.TOKENS else "cost"
    verb = "used" if budget.unit is Unit.TOKENS else "spent"
    owner = " (shared quota " + budget.scope.removeprefix("policy/") + ")" if budget.scope.startswith("policy/") else ""
    return GuardError(
        Code.BUDGET_EXHAUSTED,
        f"{what} budget exhausted{owner}: {budget.show(used)} {verb} and {budget.show(held)} reserved by calls in "
        f"flight of {budget.show(budget.limit or 0)} {budget.window.describe()}; this request needs up to "
        f"{budget.show(amount)}",
        429,
        retry_after=retry_after,
        budget=budget.name,
    )


def calendar_retry(budget: Budget, used: int, amount: int, span: Span, now: float) -> float:
    """When settled spend alone blocks the call, the window's end; else soon (calls in flight
    settle and free what they reserved beyond their use)."""
    limit = budget.limit or 0
    return max(1.0, span.end - now) if used + amount > limit else 1.0


def unavailable(message: str) -> GuardError:
    """The shared ledger cannot decide and the policy does not let the guard decide alone."""
    return GuardError(
        Code.BUDGET_UNAVAILABLE, message, 503, retry_after=1.0, should_retry=True, budget="ledger_unavailable"
    )


# ------------------------------------------------------------------------------ the agent's budgets


PERIODS = {"Hour": Period.HOUR, "Day": Period.DAY, "Month": Period.MONTH}
QUOTA = "spend_quota"
"""The ``budget`` label of a refusal by an AgentPolicy's spend quota."""


def agent_budgets(cfg: GuardConfig) -> tuple[Budget, ...]:
    """The budgets of one agent, shared by all its replicas and revisions (and, for the covering
    policies' spend quotas, by every agent they cover). The two built-in ones are always counted
    (status shows spend even without a limit) and refuse only when set. Quotas need the shared
    ledger: one guard alone cannot count what other agents spend."""
    scope = f"agent/{cfg.namespace}/{cfg.agent}"
    b = cfg.budgets
    tz = zone(b.time_zone)

    def soft(limit: int | None) -> int | None:
        return None if limit is None or b.soft_limit_percent is None else limit * b.soft_limit_percent // 100

    def dollars(text: str | None) -> int | None:
        return None if text is None else to_nanos(Decimal(text))

    out = [
        Budget(
            "tokens_per_hour",
            scope,
            Unit.TOKENS,
            b.tokens_per_hour,
            Window(Period.SLIDING_HOUR),
            soft(b.tokens_per_hour),
        ),
        Budget(
            "cost_per_day",
            scope,
            Unit.DOLLARS,
            dollars(b.cost_per_day),
            Window(Period.DAY, tz),
            soft(dollars(b.cost_per_day)),
        ),
    ]
    for w in b.windows or ():
        period = PERIODS[w.period.value]
        if w.tokens is not None:
            out.append(
                Budget(
                    f"tokens_per_{period.value}_window",
                    scope,
                    Unit.TOKENS,
                    w.tokens,
                    Window(period, tz),
                    soft(w.tokens),
                )
            )
        if w.dollars is not None:
            limit = dollars(w.dollars)
            out.append(
                Budget(f"cost_per_{period.value}_window", scope, Unit.DOLLARS, limit, Window(period, tz), soft(limit))
            )
    if cfg.ledger is not None:
        for q in cfg.quotas:
            limit = dollars(q.dollars)
            window = Window(PERIODS[q.period.value], zone(q.time_zone))
            out.append(Budget(QUOTA, f"policy/{q.policy}", Unit.DOLLARS, limit, window, soft(limit)))
    return tuple(out)


def budget_labels(budgets: tuple[Budget, ...]) -> list[str]:
    """The ``budget`` label values these budgets can refuse with (bounded by the config)."""
    return sorted({b.name for b in budgets})


# ------------------------------------------------------------------------------ per task

TASK_BUDGETS = {"tokens": "task_tokens", "dollars": "task_cost"}
"""The ``budget`` label of a refusal by budgets.perTask, by unit."""


def task_exhausted(who: str, unit: str, used: int, held: int, amount: int, limit: int) -> GuardError:
    """A task's reservation would pass budgets.perTask: waiting does not help (the task's
    calls in flight can only free what they reserved beyond their use), so no retry is
    suggested; a new task starts from zero."""

    def show(n: int) -> str:
        return f"{n} tokens" if unit == "tokens" else f"${from_nanos(n):.6f}"

    what = "token" if unit == "tokens" else "cost"
    return GuardError(
        Code.BUDGET_EXHAUSTED,
        f"{who} would pass its {what} budget of {show(limit)} per task: {show(used)} used and {show(held)} "
        f"reserved by its calls in flight; this request needs up to {show(amount)}",
        429,
        budget=TASK_BUDGETS[unit],
    )
