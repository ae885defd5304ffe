"""Budgets are strict under concurrency: 1,000 simultaneous requests through the official SDK.

The client is ``openai.AsyncOpenAI`` with only ``base_url`` changed (and a placeholder key, as
any agent has): default retries, default timeouts. The fake upstream reports the usage it bills,
which is the ground truth the budget is checked against (LiteLLM #34732 / #40095: concurrent
requests all passed a budget check made against settled spend).
"""

from __future__ import annotations

import asyncio
from decimal import Decimal

import openai
import pytest

from agentfleet.guard.openai_wire import estimate_prompt_tokens
from hack.harness.fake_llm import FakeLLM
from tests.guard.support import AGENT_KEY, MakeGuard

N = 1000
MAX_TOKENS = 40


def messages(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Summarise ticket number {i} for the weekly report."}]


async def run_all(client: openai.AsyncOpenAI, stream: bool) -> tuple[int, list[openai.APIStatusError]]:
    async def one(i: int) -> bool:
        if stream:
            s = await client.chat.completions.create(
                model="gpt-4o-mini", messages=messages(i), max_tokens=MAX_TOKENS, stream=True
            )
            return bool([c async for c in s])
        reply = await client.chat.completions.create(model="gpt-4o-mini", messages=messages(i), max_tokens=MAX_TOKENS)
        return bool(reply.choices)

    results = await asyncio.gather(*(one(i) for i in range(N)), return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert all(isinstance(e, openai.RateLimitError) for e in errors), {type(e).__name__: str(e) for e in errors}
    return sum(1 for r in results if r is True), errors


async def test_tokens_per_hour_holds_for_1000_concurrent_requests(make_guard: MakeGuard, fake: FakeLLM) -> None:
    limit = 20_000
    h = await make_guard(budgets={"tokens_per_hour": limit})
    fake.set_default({"mode": "ok", "completion_tokens": MAX_TOKENS})  # every call uses its whole cap
    client = openai.AsyncOpenAI(base_url=h.base_url, api_key=AGENT_KEY)
    try:
        ok, errors = await run_all(client, stream=False)
    finally:
        await client.close()
    reservation = max(estimate_prompt_tokens(messages(i)) for i in range(N)) + MAX_TOKENS
    billed = fake.stats()["total_tokens"]
    assert ok + len(errors) == N and ok > 0 and errors
    assert billed <= limit + reservation, f"overshoot: {billed} billed against {limit}"
    assert billed >= 0.75 * limit, f"too conservative: only {billed} of {limit} used"
    assert h.guard.ledger.tokens_used == billed  # the guard accounted exactly what the upstream billed
    assert {e.code for e in errors} == {"budget_exhausted"}
    assert all(e.response.headers["x-should-retry"] == "false" for e in errors)
    assert fake.requests == ok  # rejected calls never reached the upstream (and the SDK did not retry)
    assert h.metric("agentfleet_budget_rejections_total", budget="tokens_per_hour") == len(errors)
    assert h.metric("agentfleet_requests_total", outcome="rejected") == len(errors)


async def test_cost_per_day_holds_for_1000_concurrent_streams(make_guard: MakeGuard, fake: FakeLLM) -> None:
    budget = Decimal("0.02")
    h = await make_guard(budgets={"cost_per_day": str(budget)})  # $1 / $2 per million in / out
    fake.set_default({"mode": "ok", "completion_tokens": MAX_TOKENS})
    client = openai.AsyncOpenAI(base_url=h.base_url, api_key=AGENT_KEY)
    try:
        ok, errors = await run_all(client, stream=True)
    finally:
        await client.close()
    stats = fake.stats()
    billed = Decimal(stats["prompt_tokens"]) / 10**6 + Decimal(stats["completion_tokens"]) * 2 / 10**6
    one = Decimal(max(estimate_prompt_tokens(messages(i)) for i in range(N))) / 10**6 + Decimal(MAX_TOKENS * 2) / 10**6
    assert ok > 0 and errors and ok + len(errors) == N
    assert billed <= budget + one, f"overshoot: ${billed} billed against ${budget}"
    assert billed >= budget * Decimal("0.75")
    assert h.guard.ledger.cost_spent == billed and h.guard.ledger.cost_reserved == 0
    assert {e.code for e in errors} == {"budget_exhausted"}
    assert h.metric("agentfleet_cost_dollars_total") == pytest.approx(float(billed))


async def test_an_upstream_billing_beyond_the_cap_blocks_what_follows(make_guard: MakeGuard, fake: FakeLLM) -> None:
    """A response far larger than its reservation is settled as billed; the next call is refused."""
    h = await make_guard(budgets={"cost_per_day": "0.10"})
    client = h.client()
    fake.set_default("expensive")  # 200,000 completion tokens whatever max_tokens says: $0.40
    await client.chat.completions.create(model="x", messages=messages(0), max_tokens=10)
    billed = Decimal(fake.stats()["prompt_tokens"]) / 10**6 + Decimal("0.4")
    assert h.guard.ledger.cost_spent == billed > Decimal("0.10")
    with pytest.raises(openai.RateLimitError) as exc:
        await client.chat.completions.create(model="x", messages=messages(1), max_tokens=10)
    assert exc.value.code == "budget_exhausted"
    retry_after = int(exc.value.response.headers["Retry-After"])
    assert 0 < retry_after <= 86400  # the next UTC midnight
    assert fake.requests == 1
