"""Budget ledger (pure): reservations keep concurrent calls within the limit; calendar windows."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from agentfleet.api.types import LedgerPolicy, LocalAllowance
from agentfleet.guard.budgets import MemoryLedger
from agentfleet.guard.errors import Code, GuardError
from agentfleet.guard.ledger import Budget, Charge, Hold, Period, Unit, Window, to_nanos
from agentfleet.guard.openai_wire import completion_cap, estimate_embedding_tokens, estimate_prompt_tokens
from hack.harness.fake_llm import count_prompt_tokens

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def ledger(tokens_per_hour: int | None, cost_per_day: str | None, **kw: Clock) -> MemoryLedger:
    """The two built-in budgets, as ``agent_budgets`` makes them."""
    return MemoryLedger(
        (
            Budget("tokens_per_hour", "agent/n/a", Unit.TOKENS, tokens_per_hour, Window(Period.SLIDING_HOUR)),
            Budget(
                "cost_per_day",
                "agent/n/a",
                Unit.DOLLARS,
                to_nanos(Decimal(cost_per_day)) if cost_per_day else None,
                Window(Period.DAY),
            ),
        ),
        **kw,
    )


def c(tokens: int, dollars: str = "0") -> Charge:
    return Charge.of(tokens, Decimal(dollars))


def test_reservations_count_before_settlement() -> None:
    led = ledger(1000, None, clock=Clock())
    held = [led.reserve_now(c(300)) for _ in range(3)]
    with pytest.raises(GuardError) as exc:
        led.reserve_now(c(101))
    err = exc.value
    assert (err.code, err.status, err.budget) == (Code.BUDGET_EXHAUSTED, 429, "tokens_per_hour")
    assert err.retry_after == 1.0  # in-flight calls settle soon
    assert "0 tokens used and 900 tokens reserved by calls in flight of 1000 tokens per hour" in err.message
    assert "needs up to 101 tokens" in err.message
    led.reserve_now(c(100))  # exactly up to the limit is fine
    for res in held:
        led.settle(res, c(50))
    assert (led.tokens_used, led.tokens_reserved) == (150, 100)


def test_sliding_hour_frees_tokens_and_says_when() -> None:
    clock = Clock()
    led = ledger(1000, None, clock=clock)
    led.settle(led.reserve_now(c(900)), c(900))
    clock.now += 600
    with pytest.raises(GuardError) as exc:
        led.reserve_now(c(200))
    assert exc.value.retry_after == pytest.approx(3000, abs=11)  # when the first bucket leaves the hour
    assert not exc.value.should_retry
    clock.now += 3011
    led.reserve_now(c(200))
    assert led.tokens_used == 0


def test_request_larger_than_whole_budget_is_refused_without_retry_after() -> None:
    led = ledger(100, "1")
    with pytest.raises(GuardError) as exc:
        led.reserve_now(c(101))
    assert exc.value.retry_after is None and "whole budget" in exc.value.message
    with pytest.raises(GuardError) as exc:
        led.reserve_now(c(1, "1.01"))
    assert exc.value.budget == "cost_per_day" and exc.value.retry_after is None


def test_cost_budget_resets_at_utc_midnight() -> None:
    day = 20_000 * 86400.0
    wall = Clock(day + 23 * 3600)  # 23:00 UTC
    led = ledger(None, "0.50", wall=wall)
    led.settle(led.reserve_now(c(0, "0.40")), c(0, "0.45"))
    with pytest.raises(GuardError) as exc:
        led.reserve_now(c(0, "0.10"))
    assert exc.value.retry_after == pytest.approx(3600)
    assert exc.value.budget == "cost_per_day"
    assert "$0.450000 spent and $0.000000 reserved" in exc.value.message
    wall.now = day + 86400 + 1
    led.reserve_now(c(0, "0.10"))
    assert led.cost_spent == 0


def test_settle_is_idempotent_and_never_goes_negative() -> None:
    led = ledger(1000, "5")
    res = led.reserve_now(c(100, "1"))
    led.settle(res, c(10, "0.1"))
    led.settle(res, c(10, "0.1"))
    assert (led.tokens_reserved, led.tokens_used, led.cost_reserved, led.cost_spent) == (0, 10, 0, Decimal("0.1"))


def test_a_call_reserved_before_midnight_is_not_counted_in_the_new_day() -> None:
    day = 20_000 * 86400.0
    wall = Clock(day - 1)
    led = ledger(None, "1", wall=wall)
    res = led.reserve_now(c(0, "0.5"))
    wall.now = day + 1
    led.settle(res, c(0, "0.5"))
    assert led.cost_spent == 0 and led.cost_reserved == 0


@pytest.mark.parametrize(
    ("period", "zone", "at", "start", "end"),
    [
        # A calendar day in Berlin on the day DST starts: 23 hours long.
        (
            Period.DAY,
            "Europe/Berlin",
            "2026-03-29T12:00:00+02:00",
            "2026-03-29T00:00:00+01:00",
            "2026-03-30T00:00:00+02:00",
        ),
        # ... and on the day it ends: 25 hours.
        (
            Period.DAY,
            "Europe/Berlin",
            "2026-10-25T12:00:00+01:00",
            "2026-10-25T00:00:00+02:00",
            "2026-10-26T00:00:00+01:00",
        ),
        # A month in New York starts at local midnight on the 1st (05:00 UTC in winter).
        (
            Period.MONTH,
            "America/New_York",
            "2026-02-14T08:00:00-05:00",
            "2026-02-01T00:00:00-05:00",
            "2026-03-01T00:00:00-05:00",
        ),
        (Period.MONTH, "UTC", "2026-12-31T23:59:59+00:00", "2026-12-01T00:00:00+00:00", "2027-01-01T00:00:00+00:00"),
        # An hour in a zone half an hour off UTC starts at :30 UTC.
        (
            Period.HOUR,
            "Asia/Kolkata",
            "2026-05-01T10:15:00+05:30",
            "2026-05-01T10:00:00+05:30",
            "2026-05-01T11:00:00+05:30",
        ),
        # The repeated hour when DST ends is two distinct windows.
        (
            Period.HOUR,
            "Europe/Berlin",
            "2026-10-25T02:30:00+01:00",
            "2026-10-25T02:00:00+01:00",
            "2026-10-25T03:00:00+01:00",
        ),
        (
            Period.HOUR,
            "Europe/Berlin",
            "2026-10-25T02:30:00+02:00",
            "2026-10-25T02:00:00+02:00",
            "2026-10-25T03:00:00+02:00",
        ),
    ],
)
def test_calendar_windows_follow_the_zone(period: Period, zone: str, at: str, start: str, end: str) -> None:
    tz = UTC if zone == "UTC" else ZoneInfo(zone)
    span = Window(period, tz).span(datetime.fromisoformat(at).timestamp())
    assert (span.start, span.end) == (
        datetime.fromisoformat(start).timestamp(),
        datetime.fromisoformat(end).timestamp(),
    )
    assert span.id[1:] == str(int(span.start))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 400), st.floats(0, 1), st.booleans()), min_size=1, max_size=200))
def test_interleaved_calls_never_exceed_the_limit(ops: list[tuple[int, float, bool]]) -> None:
    """Any interleaving of reserve/settle with usage <= reservation stays within the budget."""
    limit = 2000
    led = ledger(limit, "0.002", clock=Clock())
    open_: list[tuple[Hold, int]] = []
    for estimate, used_fraction, settle_one in ops:
        with contextlib.suppress(GuardError):
            open_.append((led.reserve_now(Charge(estimate, estimate)), estimate))
        if settle_one and open_:
            res, est = open_.pop(0)
            used = int(est * used_fraction)
            led.settle(res, Charge(used, used))
        assert led.tokens_used + led.tokens_reserved <= limit
        assert led.cost_spent + led.cost_reserved <= Decimal("0.002")
    for res, est in open_:
        led.settle(res, Charge(est, est))
    assert led.tokens_reserved == 0 and led.tokens_used <= limit


@given(
    st.lists(
        st.tuples(st.sampled_from(["system", "user", "assistant", "tool"]), st.text(max_size=300)),
        min_size=1,
        max_size=20,
    )
)
def test_prompt_estimate_covers_the_fake_tokenizer(msgs: list[tuple[str, str]]) -> None:
    """The guard reserves at least what the test upstream will bill, so strictness is testable."""
    messages = [{"role": r, "content": c} for r, c in msgs]
    assert estimate_prompt_tokens(messages) >= count_prompt_tokens(messages)


def test_estimates_and_completion_cap() -> None:
    assert completion_cap({"max_tokens": 50}, 4096) == 50
    assert completion_cap({"max_tokens": 50, "max_completion_tokens": 70, "n": 2}, 4096) == 140
    assert completion_cap({}, 4096) == 4096
    image = [
        {
            "role": "user",
            "content": [{"type": "text", "text": "abc"}, {"type": "image_url", "image_url": {"url": "data:..."}}],
        }
    ]
    assert estimate_prompt_tokens(image) > 1500
    assert estimate_embedding_tokens(["ab" * 30, "cd"]) > estimate_embedding_tokens("cd")
    assert estimate_embedding_tokens([[1, 2, 3]]) == 3


def test_the_strictest_ledger_policy_wins() -> None:
    closed = LedgerPolicy()

    def local(tokens: int | None, dollars: str | None) -> LedgerPolicy:
        allowance = LocalAllowance(tokens=tokens, dollars=dollars)
        return LedgerPolicy(on_unavailable="LocalAllowance", local_allowance=allowance)  # type: ignore[arg-type]

    assert LedgerPolicy.strictest([]) == closed  # nobody said anything: fail closed
    assert LedgerPolicy.strictest([local(100, None), closed]) == closed
    got = LedgerPolicy.strictest([local(100, "2.5"), local(50, None), local(None, "10")])
    assert got.local_allowance == LocalAllowance(tokens=50, dollars="2.5")
    with pytest.raises(ValidationError, match="needs localAllowance"):
        LedgerPolicy(on_unavailable="LocalAllowance")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="needs tokens or dollars"):
        LocalAllowance()


def test_cached_and_reasoning_tokens_are_priced_apart_and_reserved_at_the_worst() -> None:
    from agentfleet.guard.config import Limits, build_config
    from agentfleet.guard.openai_wire import usage_of

    pricing = {"input_per_million": "2", "output_per_million": "8", "cached_input_per_million": "0.5"}
    cfg = build_config(None, {**BASE, "pricing": {**pricing, "reasoning_per_million": "10"}})
    limits = Limits.from_config(cfg)
    usage = usage_of(
        {
            "prompt_tokens": 1000,
            "completion_tokens": 500,
            "prompt_tokens_details": {"cached_tokens": 800},
            "completion_tokens_details": {"reasoning_tokens": 300},
        }
    )
    assert usage is not None and (usage.cached_in, usage.reasoning_out) == (800, 300)
    cost = limits.cost(usage.tokens_in, usage.tokens_out, usage.cached_in, usage.reasoning_out)
    assert cost == Decimal("0.0004") + Decimal("0.0004") + Decimal("0.0016") + Decimal("0.003")
    assert limits.worst_cost(1000, 500) == Decimal("0.002") + Decimal("0.005")  # reasoning is dearer here
    plain = Limits.from_config(build_config(None, {**BASE, "pricing": pricing}))  # unset: the output price
    assert plain.cost(1000, 500, 800, 300) == Decimal("0.0004") + Decimal("0.0004") + Decimal("0.004")
    weird = usage_of({"prompt_tokens": 10, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 99}})
    assert weird is not None and weird.cached_in == 10  # never more than the whole


BASE = {"namespace": "n", "agent": "a", "revision": "r", "model": {"name": "m", "endpoint": "http://127.0.0.1:9/v1"}}


def test_calendar_budgets_reset_in_their_time_zone() -> None:
    from agentfleet.guard.config import ConfigError, build_config
    from agentfleet.guard.ledger import agent_budgets

    budgets = {"cost_per_day": "1", "time_zone": "Europe/Berlin", "windows": [{"period": "Month", "tokens": 500}]}
    cfg = build_config(None, {**BASE, "budgets": budgets, "quotas": [{"policy": "p", "dollars": "5"}]})
    made = agent_budgets(cfg)
    assert [b.name for b in made] == [
        "tokens_per_hour",
        "cost_per_day",
        "tokens_per_month_window",
    ]  # no ledger: no quota
    berlin = ZoneInfo("Europe/Berlin")
    wall = Clock(datetime(2026, 1, 31, 23, 30, tzinfo=berlin).timestamp())  # 22:30 UTC
    led = MemoryLedger(made, wall=wall)
    led.settle(led.reserve_now(c(400, "0.9")), c(400, "0.9"))
    with pytest.raises(GuardError) as exc:
        led.reserve_now(c(50, "0.2"))
    assert exc.value.budget == "cost_per_day" and exc.value.retry_after == pytest.approx(1800)
    assert "per day (Europe/Berlin)" in exc.value.message
    wall.now += 1801  # 00:00:01 in Berlin, still 23:00 UTC: a new day and a new month there
    led.settle(led.reserve_now(c(450, "0.2")), c(450, "0.2"))
    with pytest.raises(GuardError) as exc:
        led.reserve_now(c(51))
    assert exc.value.budget == "tokens_per_month_window"
    with pytest.raises(ConfigError, match="unknown time zone"):
        build_config(None, {**BASE, "budgets": {"time_zone": "Mars/Olympus"}})
