"""Budget ledger (pure): reservations keep concurrent calls within the limit."""

from __future__ import annotations

import contextlib
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agentfleet.guard.budgets import Ledger, Reservation
from agentfleet.guard.errors import Code, GuardError
from agentfleet.guard.openai_wire import completion_cap, estimate_embedding_tokens, estimate_prompt_tokens
from hack.harness.fake_llm import count_prompt_tokens

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_reservations_count_before_settlement() -> None:
    ledger = Ledger(1000, None, clock=Clock())
    held = [ledger.reserve(300, Decimal(0)) for _ in range(3)]
    with pytest.raises(GuardError) as exc:
        ledger.reserve(101, Decimal(0))
    err = exc.value
    assert (err.code, err.status, err.budget) == (Code.BUDGET_EXHAUSTED, 429, "tokens_per_hour")
    assert err.retry_after == 1.0 and "900 reserved" in err.message  # in-flight calls settle soon
    ledger.reserve(100, Decimal(0))  # exactly up to the limit is fine
    for res in held:
        ledger.settle(res, 50, Decimal(0))
    assert (ledger.tokens_used, ledger.tokens_reserved) == (150, 100)


def test_sliding_hour_frees_tokens_and_says_when() -> None:
    clock = Clock()
    ledger = Ledger(1000, None, clock=clock)
    ledger.settle(ledger.reserve(900, Decimal(0)), 900, Decimal(0))
    clock.now += 600
    with pytest.raises(GuardError) as exc:
        ledger.reserve(200, Decimal(0))
    assert exc.value.retry_after == pytest.approx(3000, abs=11)  # when the first bucket leaves the hour
    assert not exc.value.should_retry
    clock.now += 3011
    ledger.reserve(200, Decimal(0))
    assert ledger.tokens_used == 0


def test_request_larger_than_whole_budget_is_refused_without_retry_after() -> None:
    ledger = Ledger(100, Decimal("1"))
    with pytest.raises(GuardError) as exc:
        ledger.reserve(101, Decimal(0))
    assert exc.value.retry_after is None and "whole budget" in exc.value.message
    with pytest.raises(GuardError) as exc:
        ledger.reserve(1, Decimal("1.01"))
    assert exc.value.budget == "cost_per_day" and exc.value.retry_after is None


def test_cost_budget_resets_at_utc_midnight() -> None:
    day = 20_000 * 86400.0
    wall = Clock(day + 23 * 3600)  # 23:00 UTC
    ledger = Ledger(None, Decimal("0.50"), wall=wall)
    ledger.settle(ledger.reserve(0, Decimal("0.40")), 0, Decimal("0.45"))
    with pytest.raises(GuardError) as exc:
        ledger.reserve(0, Decimal("0.10"))
    assert exc.value.retry_after == pytest.approx(3600)
    assert exc.value.budget == "cost_per_day"
    wall.now = day + 86400 + 1
    ledger.reserve(0, Decimal("0.10"))
    assert ledger.cost_spent == 0


def test_settle_is_idempotent_and_never_goes_negative() -> None:
    ledger = Ledger(1000, Decimal(5))
    res = ledger.reserve(100, Decimal(1))
    ledger.settle(res, 10, Decimal("0.1"))
    ledger.settle(res, 10, Decimal("0.1"))
    assert (ledger.tokens_reserved, ledger.tokens_used, ledger.cost_reserved, ledger.cost_spent) == (
        0,
        10,
        0,
        Decimal("0.1"),
    )


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 400), st.floats(0, 1), st.booleans()), min_size=1, max_size=200))
def test_interleaved_calls_never_exceed_the_limit(ops: list[tuple[int, float, bool]]) -> None:
    """Any interleaving of reserve/settle with usage <= reservation stays within the budget."""
    limit = 2000
    ledger = Ledger(limit, Decimal("0.002"), clock=Clock())
    open_: list[tuple[Reservation, int]] = []
    for estimate, used_fraction, settle_one in ops:
        with contextlib.suppress(GuardError):
            open_.append((ledger.reserve(estimate, Decimal(estimate) / 10**6), estimate))
        if settle_one and open_:
            res, est = open_.pop(0)
            used = int(est * used_fraction)
            ledger.settle(res, used, Decimal(used) / 10**6)
        assert ledger.tokens_used + ledger.tokens_reserved <= limit
        assert ledger.cost_spent + ledger.cost_reserved <= Decimal("0.002")
    for res, est in open_:
        ledger.settle(res, est, Decimal(est) / 10**6)
    assert ledger.tokens_reserved == 0 and ledger.tokens_used <= limit


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
