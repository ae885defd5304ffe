"""budgets.perTask through a running guard (real HTTP, the fake LLM as upstream): each LLM call of
a task reserves its worst case against the task's tokens and dollars, so neither sequential nor
concurrent calls of one task pass its cap, and other tasks are not affected."""

from __future__ import annotations

import asyncio

import openai
import pytest
from pydantic import ValidationError

from agentfleet.api.types import Budgets, TaskBudget
from hack.harness.fake_llm import FakeLLM
from tests.guard.support import USER, MakeGuard, code_of

CAP = 300
"""max_tokens of every call: its completion's share of the reservation."""


def task(name: str) -> dict[str, str]:
    return {"X-Agentfleet-Task": name}


async def test_task_tokens_refuse_the_reservation_that_would_pass_the_cap(make_guard: MakeGuard, fake: FakeLLM) -> None:
    fake.set_default({"mode": "ok", "prompt_tokens": 50, "completion_tokens": 50})
    h = await make_guard(budgets={"per_task": {"tokens": 1000}})
    client = h.client()
    refused: openai.RateLimitError | None = None
    for _ in range(20):
        try:
            await client.chat.completions.create(model="x", messages=USER, max_tokens=CAP, extra_headers=task("t-1"))
        except openai.RateLimitError as exc:
            refused = exc
            break
    assert refused is not None, "the task's token budget never refused"
    served = fake.requests
    # Each call settled at 100 tokens; the refused one would have reserved ~310 on top.
    assert 100 * served <= 1000 < 100 * served + CAP + 20
    assert code_of(refused) == "budget_exhausted"
    assert "task 't-1' would pass its token budget of 1000 tokens per task" in refused.message
    assert f"{100 * served} tokens used and 0 tokens reserved" in refused.message
    assert refused.response.headers["x-should-retry"] == "false"
    assert h.metric("agentfleet_budget_rejections_total", budget="task_tokens") == 1
    await client.chat.completions.create(
        model="x", messages=USER, max_tokens=CAP, extra_headers=task("t-2")
    )  # a new task
    assert fake.requests == served + 1
    records = await h.audit_records()
    assert any(r.get("reason") == "budget_exhausted" and "per task" in (r.get("detail") or "") for r in records)


async def test_concurrent_calls_of_one_task_cannot_pass_it_together(make_guard: MakeGuard, fake: FakeLLM) -> None:
    fake.set_default({"mode": "ok", "latency_ms": 400, "prompt_tokens": 10, "completion_tokens": CAP})
    h = await make_guard(budgets={"per_task": {"tokens": 1000}})
    client = h.client(max_retries=0)

    async def one() -> str:
        try:
            await client.chat.completions.create(model="x", messages=USER, max_tokens=CAP, extra_headers=task("burst"))
        except openai.RateLimitError as exc:
            return code_of(exc)
        return "ok"

    outcomes = await asyncio.gather(*(one() for _ in range(10)))
    # Each reservation is ~310 tokens, so at most 3 fit in 1000 at once; the rest are refused
    # before they reach the upstream (without reservations all 10 would: 3,100 tokens billed).
    assert outcomes.count("ok") == fake.requests == 3
    assert outcomes.count("budget_exhausted") == 7
    assert fake.prompt_tokens + fake.completion_tokens <= 1000
    assert h.metric("agentfleet_budget_rejections_total", budget="task_tokens") == 7


async def test_task_dollars(make_guard: MakeGuard, fake: FakeLLM) -> None:
    # $1 / M input, $2 / M output: a call settles at 50e-6 + 100e-6 = $0.00015 and reserves
    # about 10e-6 + 600e-6 at its worst.
    fake.set_default({"mode": "ok", "prompt_tokens": 50, "completion_tokens": 50})
    h = await make_guard(budgets={"per_task": {"dollars": "0.001"}})
    client = h.client()
    for _ in range(3):
        await client.chat.completions.create(model="x", messages=USER, max_tokens=CAP, extra_headers=task("t-1"))
    with pytest.raises(openai.RateLimitError) as exc:
        await client.chat.completions.create(model="x", messages=USER, max_tokens=CAP, extra_headers=task("t-1"))
    assert "would pass its cost budget of $0.001000 per task: $0.000450 used" in exc.value.message
    assert h.metric("agentfleet_budget_rejections_total", budget="task_cost") == 1
    assert fake.requests == 3


def test_per_task_needs_a_limit() -> None:
    with pytest.raises(ValidationError, match="perTask needs tokens or dollars"):
        Budgets.model_validate({"perTask": {}})
    assert Budgets.model_validate({"perTask": {"dollars": "0.50"}}).per_task == TaskBudget(dollars="0.50")
