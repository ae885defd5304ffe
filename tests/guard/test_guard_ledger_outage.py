"""The shared ledger goes away mid-run (a real redis-server stopped, then started again) while
agents keep calling through the official SDK: each declared behaviour, and nothing lost or
counted twice once it returns."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import openai
import pytest

from agentfleet.guard.redis_ledger import RedisLedger
from hack.harness.fake_llm import FakeLLM
from tests.guard.redisd import RedisServer
from tests.guard.support import Harness, MakeGuard, wait_for

pytestmark = pytest.mark.integration


class Traffic:
    """``workers`` agents calling one guard in a loop until stopped; counts outcomes."""

    def __init__(self, h: Harness, workers: int = 8) -> None:
        self.client = h.client(timeout=10)
        self.outcomes: Counter[str] = Counter()
        self.log: list[str] = []
        self._stop = False
        self._tasks = [asyncio.create_task(self._worker(i)) for i in range(workers)]

    async def _worker(self, w: int) -> None:
        i = 0
        while not self._stop:
            i += 1
            msgs: Any = [{"role": "user", "content": f"agent {w} asks question {i}"}]
            try:
                await self.client.chat.completions.create(model="m", messages=msgs, max_tokens=40)
                outcome = "ok"
            except openai.APIStatusError as exc:
                outcome = str(exc.code)
            self.outcomes[outcome] += 1
            self.log.append(outcome)

    async def until(self, what: str, count: int, within: float = 20.0) -> None:
        """Run until ``count`` more outcomes ``what`` than now."""
        target = self.outcomes[what] + count
        await wait_for(lambda: self.outcomes[what] >= target, within, f"{count} more {what}")

    async def stop(self) -> None:
        self._stop = True
        await asyncio.gather(*self._tasks)


def ledger_of(h: Harness) -> RedisLedger:
    led = h.guard.ledger
    assert isinstance(led, RedisLedger)
    return led


async def settled_status(h: Harness) -> dict[str, Any]:
    led = ledger_of(h)
    await wait_for(lambda: led.available, what="the ledger to be available again")
    await wait_for(lambda: not led._pending and led._batch is None and not led._unreconciled, what="settles")
    await asyncio.sleep(0.05)
    return (await led.status())["tokens_per_hour"]


async def outage(server: RedisServer, traffic: Traffic, what: str, count: int) -> float:
    """Stop the server, run until ``count`` more ``what``, start it again; seconds it was down."""
    t0 = time.monotonic()
    await asyncio.to_thread(server.stop)
    await traffic.until(what, count)
    await asyncio.to_thread(server.start)
    return time.monotonic() - t0


async def test_fail_closed_refuses_while_the_ledger_is_away_and_loses_nothing(
    make_guard: MakeGuard, fake: FakeLLM, redis_server: RedisServer
) -> None:
    h = await make_guard(
        budgets={"tokens_per_hour": 10**9}, ledger={"url": redis_server.url, "timeout": "300ms"}
    )  # onUnavailable defaults to FailClosed
    fake.set_default({"mode": "ok", "completion_tokens": 40, "latency_ms": 20})  # calls in flight at the cut
    traffic = Traffic(h)
    try:
        await traffic.until("ok", 40)
        await outage(redis_server, traffic, "budget_unavailable", 40)
        await traffic.until("ok", 40)  # the ledger answers again: calls pass again
    finally:
        await traffic.stop()
    assert set(traffic.outcomes) == {"ok", "budget_unavailable"}, traffic.outcomes
    assert fake.requests == traffic.outcomes["ok"]  # a refused call never reached the upstream
    state = await settled_status(h)
    # Calls in flight when it went away settled once it was back: the ledger has exactly what was billed.
    assert (state["used"], state["held"], state["expired"]) == (fake.stats()["total_tokens"], 0, 0)
    assert h.metric("agentfleet_ledger_available") == 1 and h.metric("agentfleet_ledger_errors_total") > 0
    assert (
        h.metric("agentfleet_budget_rejections_total", budget="ledger_unavailable")
        == traffic.outcomes["budget_unavailable"]
    )
    assert h.metric("agentfleet_ledger_local_calls_total") == 0


async def test_a_local_allowance_carries_calls_through_and_is_charged_once_it_returns(
    make_guard: MakeGuard, fake: FakeLLM, redis_server: RedisServer
) -> None:
    allowance = 3000
    h = await make_guard(
        budgets={"tokens_per_hour": 10**9},
        ledger={
            "url": redis_server.url,
            "timeout": "300ms",
            "on_unavailable": "LocalAllowance",
            "local_allowance": {"tokens": allowance},
        },
    )
    fake.set_default({"mode": "ok", "completion_tokens": 40, "latency_ms": 20})
    traffic = Traffic(h)
    try:
        await traffic.until("ok", 40)
        await asyncio.to_thread(redis_server.stop)
        await traffic.until("budget_unavailable", 20)  # the allowance is spent: then it refuses
        local_calls = h.metric("agentfleet_ledger_local_calls_total")
        await asyncio.to_thread(redis_server.start)
        await traffic.until("ok", 40)
    finally:
        await traffic.stop()
    assert set(traffic.outcomes) == {"ok", "budget_unavailable"}, traffic.outcomes
    assert local_calls > 0
    state = await settled_status(h)
    assert (state["used"], state["held"]) == (fake.stats()["total_tokens"], 0)  # reconciled, once
    # What the replica spent alone is bounded by its allowance (reservations counted against it).
    assert 0.5 * allowance < state["reconciled"] <= allowance
    led = ledger_of(h)
    assert (led.local_tokens, led.local_nanos) == (0, 0)  # the allowance is back


async def test_a_local_allowance_overshoots_a_budget_by_at_most_itself(
    make_guard: MakeGuard, fake: FakeLLM, redis_server: RedisServer
) -> None:
    limit, allowance = 3000, 1000
    h = await make_guard(
        budgets={"tokens_per_hour": limit},
        ledger={"url": redis_server.url, "on_unavailable": "LocalAllowance", "local_allowance": {"tokens": allowance}},
    )
    fake.set_default({"mode": "ok", "completion_tokens": 40})
    client = h.client()

    async def call(i: int) -> str:
        try:
            await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": f"question {i}"}], max_tokens=40
            )
            return "ok"
        except openai.APIStatusError as exc:
            return str(exc.code)

    first = [await call(i) for i in range(60)]
    assert first[-1] == "budget_exhausted" and fake.stats()["total_tokens"] <= limit
    await asyncio.to_thread(redis_server.stop)
    during = [await call(i) for i in range(60, 120)]
    assert during[0] == "ok" and during[-1] == "budget_unavailable"
    await asyncio.to_thread(redis_server.start)
    state = await settled_status(h)
    billed = fake.stats()["total_tokens"]
    assert state["used"] == billed and limit < billed <= limit + allowance
    assert await call(999) == "budget_exhausted"  # back on the ledger, which knows what was spent
