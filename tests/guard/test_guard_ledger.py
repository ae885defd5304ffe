"""The shared ledger against a real redis-server: strict across guards, durable across restarts,
idempotent settles, reservations of a dead guard expire into spend, never double-counted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest
import pytest_asyncio

from agentfleet.api.guardconfig import LedgerConfig
from agentfleet.guard.errors import Code, GuardError
from agentfleet.guard.ledger import Budget, Charge, Period, Unit, Window, to_nanos
from agentfleet.guard.redis_ledger import RedisLedger
from hack.harness.fake_llm import FakeLLM
from tests.guard.redisd import RedisServer
from tests.guard.support import AGENT_KEY, MakeGuard, wait_for

pytestmark = pytest.mark.integration

SCOPE = "agent/team-a/support"


def budgets(tokens: int | None = 1000, dollars: str | None = None) -> tuple[Budget, ...]:
    return (
        Budget("tokens_per_hour", SCOPE, Unit.TOKENS, tokens, Window(Period.SLIDING_HOUR)),
        Budget(
            "cost_per_day", SCOPE, Unit.DOLLARS, to_nanos(Decimal(dollars)) if dollars else None, Window(Period.DAY)
        ),
    )


@pytest_asyncio.fixture(loop_scope="session")
async def ledgers(redis_server: RedisServer) -> AsyncIterator[list[RedisLedger]]:
    """Ledgers made with ``make(...)`` (each as a separate guard would have), closed at the end."""
    made: list[RedisLedger] = []
    yield made
    for led in made:
        await led.close()


async def make(made: list[RedisLedger], url: str, *, ttl: float = 30.0, **kw: Any) -> RedisLedger:
    led = RedisLedger(kw.pop("budgets", budgets()), LedgerConfig(url=url, **kw), hold_ttl=ttl)
    await led.start()
    made.append(led)
    return led


async def settled(led: RedisLedger) -> dict[str, dict[str, Any]]:
    """The ledger's state once this guard's settles have landed."""
    await wait_for(lambda: not led._pending, what="queued settles to be sent")
    await asyncio.sleep(0.05)  # the last pipeline's reply
    return await led.status()


async def test_two_guards_share_one_budget_strictly(redis_server: RedisServer, ledgers: list[RedisLedger]) -> None:
    a = await make(ledgers, redis_server.url)
    b = await make(ledgers, redis_server.url)
    held = [await a.reserve("a1", Charge(300, 0)), await b.reserve("b1", Charge(300, 0))]
    held.append(await a.reserve("a2", Charge(300, 0)))
    with pytest.raises(GuardError) as exc:
        await b.reserve("b2", Charge(101, 0))
    assert (exc.value.code, exc.value.status, exc.value.budget) == (Code.BUDGET_EXHAUSTED, 429, "tokens_per_hour")
    assert "0 tokens used and 900 tokens reserved by calls in flight of 1000 tokens per hour" in exc.value.message
    assert exc.value.retry_after == 1.0
    await b.reserve("b3", Charge(100, 0))  # exactly up to the limit
    for hold in held:
        (a if hold.rid.startswith("a") else b).settle(hold, Charge(50, 0))
    state = await settled(a)
    await wait_for(lambda: not b._pending, what="b's settles")
    state = await b.status()
    assert (state["tokens_per_hour"]["used"], state["tokens_per_hour"]["held"]) == (150, 100)


async def test_a_settle_counts_once_whoever_sends_it_and_however_often(
    redis_server: RedisServer, ledgers: list[RedisLedger]
) -> None:
    a = await make(ledgers, redis_server.url, budgets=budgets(1000, "1"))
    b = await make(ledgers, redis_server.url, budgets=budgets(1000, "1"))
    hold = await a.reserve("r1", Charge.of(400, Decimal("0.4")))
    again = await a.reserve("r1", Charge.of(400, Decimal("0.4")))  # a retried reserve holds nothing more
    assert (await a.status())["tokens_per_hour"]["held"] == 400
    a.settle(hold, Charge.of(100, Decimal("0.1")))
    a.settle(hold, Charge.of(100, Decimal("0.1")))  # ignored locally (already settled)
    a.settle(again, Charge.of(100, Decimal("0.1")))  # sent again: the ledger ignores it
    # Another guard (a replacement after a restart) settling the same request id: also ignored.
    b.settle(hold.__class__(hold.rid, hold.charge, hold.spans), Charge.of(100, Decimal("0.1")))
    await settled(a)
    state = await settled(b)
    assert (state["tokens_per_hour"]["used"], state["tokens_per_hour"]["held"]) == (100, 0)
    assert (state["cost_per_day"]["used"], state["cost_per_day"]["held"]) == (to_nanos(Decimal("0.1")), 0)


async def test_a_dead_guards_reservations_expire_into_spend_once(
    redis_server: RedisServer, ledgers: list[RedisLedger]
) -> None:
    """A guard killed mid-call never settles: its hold expires and is charged in full (the call
    may have been billed); its late settle, if it ever comes, adds nothing."""
    dead = await make(ledgers, redis_server.url, ttl=0.3)
    alive = await make(ledgers, redis_server.url)
    hold = await dead.reserve("gone", Charge(600, 0))
    with pytest.raises(GuardError):
        await alive.reserve("x", Charge(500, 0))
    await asyncio.sleep(0.4)
    state = await alive.status()
    assert state["tokens_per_hour"] | {"used": 600, "held": 0, "holds": 0, "expired": 600} == state["tokens_per_hour"]
    await alive.reserve("y", Charge(400, 0))
    with pytest.raises(GuardError):
        await alive.reserve("z", Charge(1, 0))
    dead._pending.clear()
    dead.settle(hold, Charge(10, 0))  # too late: already charged as 600
    state = await settled(dead)
    assert (state["tokens_per_hour"]["used"], state["tokens_per_hour"]["held"]) == (600, 400)


async def test_spend_survives_a_ledger_restart_and_a_new_client(redis_server: RedisServer, tmp_path: Path) -> None:
    made: list[RedisLedger] = []
    try:
        a = await make(made, redis_server.url, budgets=budgets(None, "0.001"))
        a.settle(await a.reserve("r", Charge.of(10, Decimal("0.0006"))), Charge.of(10, Decimal("0.0006")))
        await settled(a)
        await a.close()
        redis_server.stop()
        redis_server.start()
        b = await make(made, redis_server.url, budgets=budgets(None, "0.001"))
        with pytest.raises(GuardError) as exc:
            await b.reserve("s", Charge.of(10, Decimal("0.0005")))
        assert "$0.000600 spent" in exc.value.message
        assert exc.value.retry_after is not None and exc.value.retry_after > 1  # settled spend: the next day
    finally:
        for led in made[1:]:
            await led.close()


async def test_guards_with_a_shared_ledger_hold_one_budget_over_1000_concurrent_requests(
    make_guard: MakeGuard, fake: FakeLLM, redis_server: RedisServer
) -> None:
    """Two in-process guards (two replicas) and the official SDK: the billed total stays within
    the one budget they share, and the ledger has exactly what the upstream billed."""
    limit = 20_000
    ledger = {"url": redis_server.url}
    guards = [await make_guard(budgets={"tokens_per_hour": limit}, ledger=ledger) for _ in range(2)]
    fake.set_default({"mode": "ok", "completion_tokens": 40})
    clients = [openai.AsyncOpenAI(base_url=h.base_url, api_key=AGENT_KEY) for h in guards]

    async def one(i: int) -> bool:
        try:
            msgs = [{"role": "user", "content": f"Summarise ticket number {i} for the weekly report."}]
            await clients[i % 2].chat.completions.create(model="m", messages=msgs, max_tokens=40)  # type: ignore[arg-type]
            return True
        except openai.RateLimitError as exc:
            assert exc.code == "budget_exhausted"
            return False

    try:
        results = await asyncio.gather(*(one(i) for i in range(1000)))
    finally:
        for c in clients:
            await c.close()
    billed = fake.stats()["total_tokens"]
    assert sum(results) == fake.requests and 0 < fake.requests < 1000
    assert 0.75 * limit <= billed <= limit, billed
    ledgers = [h.guard.ledger for h in guards]
    assert all(isinstance(led, RedisLedger) for led in ledgers)
    led = ledgers[0]
    assert isinstance(led, RedisLedger)
    await wait_for(lambda: all(not x._pending for x in ledgers if isinstance(x, RedisLedger)), what="settles")
    await asyncio.sleep(0.05)
    state = await led.status()
    assert (state["tokens_per_hour"]["used"], state["tokens_per_hour"]["held"]) == (billed, 0)
