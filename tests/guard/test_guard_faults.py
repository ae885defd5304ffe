"""A flaky upstream: retries within the deadline, the breaker, broken streams, bounded state."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import replace

import openai
import pytest

from agentfleet.guard.breaker import BreakerState
from hack.harness.fake_llm import FakeLLM
from tests.guard.support import FAST, USER, MakeGuard, code_of, wait_for


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("error", "http_5xx"),
        ({"mode": "error", "status": 429, "retry_after": "0"}, "http_429"),
        ("reset", "reset"),
        ({"mode": "truncate"}, "truncated"),
        ("garbage", "invalid_response"),
    ],
)
async def test_retryable_faults_are_retried(make_guard: MakeGuard, fake: FakeLLM, fault: object, reason: str) -> None:
    h = await make_guard()
    fake.script(fault, fault)
    reply = await h.client().chat.completions.create(model="x", messages=USER)
    assert reply.choices[0].message.content
    assert fake.requests == 3
    assert h.metric("agentfleet_upstream_errors_total", reason=reason) == 2
    assert h.metric("agentfleet_requests_total", outcome="ok") == 1
    records = await h.audit_records()
    assert next(r for r in records if r["kind"] == "llm_call")["attempts"] == 3


async def test_streams_are_retried_until_the_first_event(make_guard: MakeGuard, fake: FakeLLM) -> None:
    h = await make_guard()
    fake.script({"mode": "truncate", "truncate_after": 0}, "unavailable")
    s = await h.client().chat.completions.create(model="x", messages=USER, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in s if c.choices])
    assert text.startswith("Hello") and fake.requests == 3


async def test_request_errors_are_passed_through_without_retry(make_guard: MakeGuard, fake: FakeLLM) -> None:
    h = await make_guard()
    fake.script({"mode": "error", "status": 400, "message": "context length exceeded", "code": "context_length"})
    with pytest.raises(openai.BadRequestError) as exc:
        await h.client().chat.completions.create(model="x", messages=USER)
    assert exc.value.code == "context_length" and fake.requests == 1
    assert h.metric("agentfleet_requests_total", outcome="error") == 1
    assert h.guard.breaker.failures == 0  # the upstream is healthy; the request was bad


async def test_the_deadline_bounds_a_hanging_upstream(make_guard: MakeGuard, fake: FakeLLM) -> None:
    h = await make_guard(budgets={"latency": {"per_call_deadline": "300ms"}})
    fake.set_default("hang")
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError) as exc:
        await h.client().chat.completions.create(model="x", messages=USER)
    elapsed = time.monotonic() - started
    assert code_of(exc.value) == "upstream_unavailable" and "deadline" in exc.value.message
    assert 0.3 <= elapsed < 3.0
    assert h.metric("agentfleet_upstream_errors_total", reason="timeout") == 1


async def test_no_retry_when_the_deadline_leaves_no_room(make_guard: MakeGuard, fake: FakeLLM) -> None:
    h = await make_guard(budgets={"latency": {"per_call_deadline": "1s"}})
    fake.set_default({"mode": "error", "status": 503, "retry_after": "30"})
    with pytest.raises(openai.InternalServerError) as exc:
        await h.client().chat.completions.create(model="x", messages=USER)
    assert fake.requests == 1 and "no time to retry" in exc.value.message
    assert exc.value.response.headers["Retry-After"] == "30"


async def test_breaker_opens_fails_fast_and_recovers(make_guard: MakeGuard, fake: FakeLLM) -> None:
    h = await make_guard(tuning=replace(FAST, max_attempts=1, breaker_threshold=3))
    client = h.client()
    fake.set_default("unavailable")
    for _ in range(3):
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(model="x", messages=USER)
    assert h.metric("agentfleet_breaker_state") == BreakerState.OPEN
    with pytest.raises(openai.InternalServerError) as exc:
        await client.chat.completions.create(model="x", messages=USER)
    assert "circuit breaker is open" in exc.value.message and fake.requests == 3  # failed fast
    assert exc.value.response.headers["x-should-retry"] == "true" and "Retry-After" in exc.value.response.headers
    fake.set_default("ok")

    async def succeeds() -> bool:
        try:
            await client.chat.completions.create(model="x", messages=USER)
        except openai.InternalServerError:
            return False
        return True

    deadline = time.monotonic() + 5
    while not await succeeds():
        assert time.monotonic() < deadline, "breaker never let a probe through"
        await asyncio.sleep(0.05)
    assert h.metric("agentfleet_breaker_state") == BreakerState.CLOSED
    records = await h.audit_records()
    assert [r["decision"] for r in records if r["kind"] == "breaker"] == ["open", "half_open", "closed"]


async def test_a_stream_cut_mid_way_ends_with_an_error_event(make_guard: MakeGuard, fake: FakeLLM) -> None:
    h = await make_guard()
    fake.set_default({"mode": "truncate", "truncate_after": 4})
    s = await h.client().chat.completions.create(model="x", messages=USER, stream=True)
    got: list[str] = []
    with pytest.raises(openai.APIError) as exc:
        async for chunk in s:
            got.append(chunk.choices[0].delta.content or "")
    assert "".join(got) == "Hello from the"  # what arrived before the cut was relayed
    assert code_of(exc.value) == "upstream_unavailable"
    assert h.metric("agentfleet_upstream_errors_total", reason="truncated") == 1
    assert h.guard.ledger.tokens_reserved == 0 and h.guard.ledger.tokens_used > 0


async def test_an_agent_that_hangs_up_mid_stream_frees_everything(make_guard: MakeGuard, fake: FakeLLM) -> None:
    h = await make_guard(budgets={"tokens_per_hour": 100000})
    fake.set_default({"mode": "ok", "chunk_delay_ms": 50, "text": " ".join(["word"] * 40)})
    s = await h.client().chat.completions.create(
        model="x", messages=USER, stream=True, **{"extra_headers": {"X-Agentfleet-Task": "gone"}}
    )
    seen = 0
    async for _ in s:
        seen += 1
        if seen == 3:
            break
    await s.close()
    await wait_for(lambda: h.guard.inflight == 0, what="the guard to notice the agent left")
    assert h.guard.ledger.tokens_reserved == 0 and h.guard.tasks.active == 0
    records = await h.audit_records()
    assert next(r for r in records if r["kind"] == "llm_call")["reason"] == "client_disconnected"


async def test_state_stays_bounded_under_a_fault_storm(make_guard: MakeGuard, fake: FakeLLM) -> None:
    h = await make_guard(
        tuning=replace(FAST, max_tasks=50, max_attempts=2, breaker_threshold=10**6),
        budgets={"tokens_per_hour": 10**9, "latency": {"per_call_deadline": "2s"}},
    )
    faults = [  # an odd number, so each fault meets both streaming and non-streaming requests
        "error",
        "unavailable",
        "reset",
        '{"mode": "truncate", "truncate_after": 0}',
        '{"mode": "truncate", "truncate_after": 3}',
        "garbage",
        "hang",
        '{"mode": "error", "status": 429}',
        "ok",
    ]
    client = h.client(timeout=10)

    async def one(i: int) -> None:
        msg = [{"role": "user", "content": f"[[fake:{faults[i % len(faults)]}]] #{i}"}]
        headers = {"X-Agentfleet-Task": f"storm-{i}"}
        with contextlib.suppress(openai.APIError):
            if i % 2:
                s = await client.chat.completions.create(model="x", messages=msg, stream=True, extra_headers=headers)
                async for _ in s:
                    pass
            else:
                await client.chat.completions.create(model="x", messages=msg, extra_headers=headers)

    await asyncio.gather(*(one(i) for i in range(360)))
    g = h.guard
    await wait_for(lambda: g.inflight == 0, what="all requests to finish")
    assert len(g.tasks) <= 50
    assert (g.tasks.active, g.ledger.tokens_reserved, g.ledger.cost_reserved) == (0, 0, 0)
    errors = {r: h.metric("agentfleet_upstream_errors_total", reason=r) for r in ("timeout", "http_5xx")}
    assert h.metric("agentfleet_requests_total", outcome="error") > 0 and all(errors.values()), errors
    reply = await client.chat.completions.create(model="x", messages=USER)  # still serving
    assert reply.choices[0].message.content
