"""Acceptance: one budget held by a fleet of real guard processes sharing one real redis-server,
while guards are SIGKILLed and a new revision rolls out mid-run.

Four ``agentfleet guard`` processes of one agent (revision rev1) serve 1,000 requests sent
through the official ``openai`` SDK (at most 200 in flight), against the fake LLM running as its
own process, whose accounting is the ground truth (every tenth call takes 1.5 s upstream, so
calls hold budget at every guard at any moment). When a quarter of the requests are done, two
guards are SIGKILLed (their calls in flight are lost to the agents but may have been billed) and
two guards of revision rev2 start in their place. Then:

- what the fake LLM billed never exceeds the budget: every call was reserved at its worst case
  in the shared ledger before it went upstream, and the fake bills no more than reserved, so the
  estimation error of the reservations in flight is 0;
- nothing is double-counted: once the killed guards' holds have expired (charged in full), the
  ledger's spend minus those expired holds is exactly what the surviving guards settled, and the
  rest of the bill (the killed calls) lies between 0 and what expired.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import pytest_asyncio
import yaml

from agentfleet.api.guardconfig import AuditSink, GuardConfig, LedgerConfig, PolicyQuota
from agentfleet.api.types import Budgets, LatencyBudget, ModelSpec, Pricing
from agentfleet.guard.ledger import agent_budgets
from agentfleet.guard.redis_ledger import RedisLedger
from tests.guard.redisd import RedisServer
from tests.guard.support import AGENT_KEY, AGENTFLEET, UPSTREAM_KEY, get, start, wait_for

pytestmark = pytest.mark.integration

DEADLINE = "5s"
MARGIN = "1s"  # holds of a killed guard expire 6 s after they were made


def guard_config(tmp: Path, fake_url: str, redis_url: str, revision: str, budgets: Budgets, agent: str) -> GuardConfig:
    key = tmp / "api-key"
    key.write_text(UPSTREAM_KEY + "\n")
    return GuardConfig(
        namespace="team-a",
        agent=agent,
        revision=revision,
        model=ModelSpec(name="gpt-test", endpoint=f"{fake_url}/v1"),
        pricing=Pricing(input_per_million="1", output_per_million="2"),
        api_key_file=str(key),
        budgets=budgets,
        ledger=LedgerConfig(url=redis_url),
    )


@dataclass
class Fleet:
    """Guard processes of one or more agents; ``urls`` are those currently serving."""

    tmp: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    started: int = 0

    async def start(self, cfg: GuardConfig) -> tuple[subprocess.Popen[bytes], str]:
        n = self.started
        self.started += 1
        path = self.tmp / f"guard-{n}.yaml"
        audit = AuditSink(stdout=False, file=str(self.tmp / f"audit-{n}.jsonl"))  # one per process
        path.write_text(yaml.safe_dump(cfg.model_copy(update={"audit": audit}).wire()))
        proc, line = await asyncio.to_thread(
            start,
            [AGENTFLEET, "guard", "--config", str(path), "--port", "0", "--ledger-hold-margin", MARGIN],
            '"event": "listening"',
            self.tmp / f"guard-{n}.log",
            "stderr",
        )
        self.procs.append(proc)
        return proc, json.loads(line)["url"]

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest_asyncio.fixture(loop_scope="session")
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    f = Fleet(tmp_path)
    yield f
    await asyncio.to_thread(f.close)


async def control(fake_url: str, path: str, body: Any = None) -> Any:
    async with aiohttp.ClientSession() as s:
        if body is None:
            async with s.get(f"{fake_url}/_control/{path}") as r:
                return await r.json()
        async with s.post(f"{fake_url}/_control/{path}", json=body) as r:
            return await r.json()


async def ledger_status(cfg: GuardConfig) -> dict[str, Any]:
    """The ledger as a new guard of this agent would read it."""
    assert cfg.ledger is not None
    led = RedisLedger(agent_budgets(cfg), cfg.ledger, hold_ttl=1)
    await led.start()
    try:
        return (await led.status())["tokens_per_hour"]
    finally:
        await led.close()


N = 1000
IN_FLIGHT = 200
MAX_TOKENS = 40


async def test_four_guards_one_budget_two_killed_and_a_new_revision(
    fleet: Fleet, fake_process: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    limit = 40_000  # about 650 of the 1,000 calls: the budget is still open when the guards die
    await control(fake_process, "reset", {})
    await control(
        fake_process, "default", {"behavior": {"mode": "ok", "completion_tokens": MAX_TOKENS, "latency_ms": 50}}
    )
    budgets = Budgets(
        tokens_per_hour=limit, max_concurrent_tasks=100000, latency=LatencyBudget(per_call_deadline=DEADLINE)
    )

    def cfg(rev: str) -> GuardConfig:
        return guard_config(tmp_path, fake_process, redis_server.url, rev, budgets, "support")

    started = await asyncio.gather(*(fleet.start(cfg("rev1")) for _ in range(4)))
    live: list[str] = [url for _, url in started]
    clients = {url: openai.AsyncOpenAI(base_url=url + "/v1", api_key=AGENT_KEY, max_retries=0) for url in live}
    outcomes: Counter[str] = Counter()
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def one(i: int) -> None:
        async with gate:
            url = live[i % len(live)]
            client = clients[url]
            # Every tenth call waits 1.5 s upstream: some are in flight, holding budget, when guards die.
            slow = '[[fake:{"latency_ms": 1500}]] ' if i % 10 == 0 else ""
            msgs: Any = [{"role": "user", "content": f"{slow}Summarise ticket number {i} for the weekly report."}]
            try:
                await client.chat.completions.create(model="gpt-4o", messages=msgs, max_tokens=MAX_TOKENS)
                outcomes["ok"] += 1
            except openai.APIStatusError as exc:
                outcomes[str(exc.code)] += 1
            except openai.APIConnectionError:
                outcomes["guard_killed"] += 1

    async def roll() -> None:
        await wait_for(lambda: sum(outcomes.values()) >= N // 4, 60, "a quarter of the requests")
        for proc, url in started[:2]:
            live.remove(url)
            proc.send_signal(signal.SIGKILL)
        new = await asyncio.gather(*(fleet.start(cfg("rev2")) for _ in range(2)))
        for _, url in new:
            clients[url] = openai.AsyncOpenAI(base_url=url + "/v1", api_key=AGENT_KEY, max_retries=0)
            live.append(url)

    try:
        await asyncio.gather(roll(), *(one(i) for i in range(N)))
    finally:
        for c in clients.values():
            await c.close()
    assert set(outcomes) <= {"ok", "budget_exhausted", "guard_killed"}, outcomes
    assert outcomes["ok"] > 0 and outcomes["budget_exhausted"] > 0 and sum(outcomes.values()) == N
    stats = await control(fake_process, "stats")
    billed = stats["total_tokens"]
    # Strict: the fake bills no more than reserved, so no overshoot at all.
    assert billed <= limit, f"overshoot: {billed} billed against {limit}"
    assert billed >= 0.6 * limit, f"too conservative: only {billed} of {limit} used"
    assert stats["requests"] >= outcomes["ok"]  # plus calls lost with the killed guards

    # Once the killed guards' holds expired (deadline 5 s + 1 s), they are charged in full, once.
    state: dict[str, Any] = {}

    async def expired() -> bool:
        state.update(await ledger_status(cfg("rev3")))
        return state["held"] == 0

    deadline = asyncio.get_running_loop().time() + 30
    while not await expired():
        assert asyncio.get_running_loop().time() < deadline, state
        await asyncio.sleep(0.2)
    settled_by_survivors = state["used"] - state["expired"]
    lost_with_killed = billed - settled_by_survivors
    assert 0 <= lost_with_killed <= state["expired"], (billed, state)
    assert outcomes["guard_killed"] > 0 and state["expired"] > 0, (outcomes, state, stats)  # calls died holding budget
    assert state["used"] <= limit
    print(f"outcomes {dict(outcomes)}; billed {billed} of {limit}; ledger {state}")  # shown with -rP


async def test_a_namespace_quota_holds_over_five_agents(
    fleet: Fleet, fake_process: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    """Five agents (one guard process each), no budget of their own, one AgentPolicy spend quota:
    together they never spend more than it, and the soft limit was signalled before the stop."""
    quota = Decimal("0.05")  # about 530 of the 1,000 calls at $1 / $2 per million tokens
    await control(fake_process, "reset", {})
    await control(
        fake_process, "default", {"behavior": {"mode": "ok", "completion_tokens": MAX_TOKENS, "latency_ms": 30}}
    )
    budgets = Budgets(
        max_concurrent_tasks=100000, soft_limit_percent=80, latency=LatencyBudget(per_call_deadline=DEADLINE)
    )
    cfgs = [
        guard_config(tmp_path, fake_process, redis_server.url, "rev1", budgets, f"agent-{k}").model_copy(
            update={"quotas": [PolicyQuota(policy="team-a-quota", dollars=str(quota))]}
        )
        for k in range(5)
    ]
    urls = [url for _, url in await asyncio.gather(*(fleet.start(c) for c in cfgs))]
    clients = [openai.AsyncOpenAI(base_url=u + "/v1", api_key=AGENT_KEY, max_retries=0) for u in urls]
    outcomes: Counter[str] = Counter()
    messages: list[str] = []
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def one(i: int) -> None:
        async with gate:
            msgs: Any = [{"role": "user", "content": f"Summarise ticket number {i} for the weekly report."}]
            try:
                await clients[i % 5].chat.completions.create(model="gpt-4o", messages=msgs, max_tokens=MAX_TOKENS)
                outcomes["ok"] += 1
            except openai.APIStatusError as exc:
                outcomes[str(exc.code)] += 1
                messages.append(exc.message)

    try:
        await asyncio.gather(*(one(i) for i in range(N)))
    finally:
        for c in clients:
            await c.close()
    assert set(outcomes) == {"ok", "budget_exhausted"}, outcomes
    stats = await control(fake_process, "stats")
    billed = (Decimal(stats["prompt_tokens"]) + 2 * Decimal(stats["completion_tokens"])) / 10**6
    assert billed <= quota, f"overshoot: ${billed} billed against a quota of ${quota}"
    assert billed >= quota * Decimal("0.75"), billed
    assert all("shared quota team-a-quota" in m for m in messages), messages[:3]
    texts = [(await get(u + "/metrics"))[1] for u in urls]
    soft = [
        line
        for text in texts
        for line in text.splitlines()
        if line.startswith("agentfleet_budget_soft_limit_reached") and 'budget="spend_quota"' in line
    ]
    assert len(soft) == 5 and any(line.endswith(" 1.0") for line in soft), soft  # 80% passed before the stop
    print(f"outcomes {dict(outcomes)}; billed ${billed} of ${quota}")  # shown with -rP
