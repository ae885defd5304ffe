"""The OpenAI-compatible routes through an in-process guard, driven by the official SDK."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

from hack.harness.fake_llm import FakeLLM
from tests.guard.support import AGENT_KEY, UPSTREAM_KEY, USER, MakeGuard, code_of


async def test_chat_is_proxied_with_the_guards_model_and_key(make_guard: MakeGuard, fake: FakeLLM) -> None:
    h = await make_guard()
    raw = await h.client().chat.completions.with_raw_response.create(
        model="gpt-5-super-expensive", messages=USER, max_tokens=100
    )
    reply = raw.parse()
    assert reply.choices[0].message.content == "Hello from the fake LLM. Everything is fine."
    sent = fake.last[-1]
    assert sent["model"] == "gpt-test"  # the agent cannot pick another (pricier) model
    assert sent["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert UPSTREAM_KEY not in raw.http_response.text and AGENT_KEY not in json.dumps(list(fake.last))
    usage = reply.usage
    assert usage is not None
    assert h.metric("agentfleet_requests_total", outcome="ok") == 1
    assert h.metric("agentfleet_tokens_total", kind="input") == usage.prompt_tokens
    assert h.metric("agentfleet_tokens_total", kind="output") == usage.completion_tokens
    expected_cost = usage.prompt_tokens * 1e-6 + usage.completion_tokens * 2e-6
    assert h.metric("agentfleet_cost_dollars_total") == pytest.approx(expected_cost)
    assert h.metric("agentfleet_tasks_total") == 1
    assert h.metric("agentfleet_request_duration_seconds_count") == 1
    records = await h.audit_records()
    call = next(r for r in records if r["kind"] == "llm_call")
    assert (call["decision"], call["tokens_in"], call["status"]) == ("allow", usage.prompt_tokens, 200)
    assert set(call["prompt"]) == {"sha256", "length"} and "ticket 42" not in h.audit_file.read_text()


async def test_streaming_is_relayed_and_accounted(make_guard: MakeGuard, fake: FakeLLM) -> None:
    h = await make_guard()
    client = h.client()
    stream = await client.chat.completions.create(model="x", messages=USER, stream=True)
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from the fake LLM. Everything is fine."
    assert all(c.usage is None for c in chunks)  # not asked for: the guard's own usage chunk is hidden
    assert fake.last[-1]["stream_options"] == {"include_usage": True}
    assert h.metric("agentfleet_tokens_total", kind="output") == 8
    stream = await client.chat.completions.create(
        model="x", messages=USER, stream=True, stream_options={"include_usage": True}
    )
    usage = [c.usage for c in [c async for c in stream] if c.usage is not None]
    assert len(usage) == 1 and usage[0].completion_tokens == 8
    assert h.guard.ledger.tokens_reserved == 0


async def test_models_and_embeddings(make_guard: MakeGuard, fake: FakeLLM) -> None:
    h = await make_guard()
    client = h.client()
    models = await client.models.list()
    assert [m.id for m in models.data] == ["gpt-test"]
    emb = await client.embeddings.create(model="text-embedding-3-small", input=["alpha", "beta gamma"])
    assert len(emb.data) == 2 and fake.last[-1]["path"] == "/v1/embeddings"
    assert h.metric("agentfleet_tokens_total", kind="input") == emb.usage.prompt_tokens


async def test_disallowed_tools_never_reach_the_model(
    make_guard: MakeGuard, fake: FakeLLM, tools: list[dict[str, Any]]
) -> None:
    h = await make_guard()
    client = h.client()
    await client.chat.completions.create(model="x", messages=USER, tools=tools)
    assert fake.last[-1]["tools"] == ["search", "lookup"]
    await client.chat.completions.create(model="x", messages=USER, tools=tools[2:], tool_choice="required")
    assert fake.last[-1]["tools"] == [] and fake.last[-1]["tool_choice"] is None
    before = fake.requests
    with pytest.raises(openai.PermissionDeniedError) as exc:
        await client.chat.completions.create(
            model="x", messages=USER, tools=tools, tool_choice={"type": "function", "function": {"name": "shell"}}
        )
    assert code_of(exc.value) == "tool_not_permitted" and fake.requests == before
    records = await h.audit_records()
    assert [r.get("tools_removed") for r in records if r["kind"] == "llm_call"][:2] == [["shell"], ["shell"]]


@pytest.mark.parametrize("stream", [False, True])
async def test_a_response_calling_a_disallowed_tool_is_refused(
    make_guard: MakeGuard, fake: FakeLLM, tools: list[dict[str, Any]], stream: bool
) -> None:
    h = await make_guard()
    shell = {"name": "shell", "arguments": '{"cmd": "cat /etc/passwd"}'}
    fake.set_default({"mode": "tool_call", "tool_calls": [shell]})
    client = h.client()
    seen: list[Any] = []
    with pytest.raises(openai.APIError) as exc:
        if stream:
            s = await client.chat.completions.create(model="x", messages=USER, tools=tools, stream=True)
            async for chunk in s:
                seen.append(chunk)
        else:
            await client.chat.completions.create(model="x", messages=USER, tools=tools)
    assert code_of(exc.value) == "tool_not_permitted"
    # Not one delta of the refused call reached the agent.
    assert not any(c.choices and c.choices[0].delta.tool_calls for c in seen)
    assert h.metric("agentfleet_tool_calls_total", tool="shell", outcome="refused") == 1
    assert h.metric("agentfleet_requests_total", outcome="rejected") == 1
    assert h.metric("agentfleet_tokens_total", kind="input") > 0  # the tokens were spent all the same
    assert h.guard.ledger.tokens_reserved == 0


async def test_undeclared_tool_names_fold_into_one_label(make_guard: MakeGuard, fake: FakeLLM) -> None:
    h = await make_guard()
    fake.set_default({"mode": "tool_call", "tool_calls": [{"name": "made_up_tool_123", "arguments": "{}"}]})
    with pytest.raises(openai.PermissionDeniedError):
        await h.client().chat.completions.create(model="x", messages=USER)
    assert h.metric("agentfleet_tool_calls_total", tool="_other", outcome="refused") == 1


async def test_streamed_tool_calls_arrive_whole_after_the_check(
    make_guard: MakeGuard, fake: FakeLLM, tools: list[dict[str, Any]]
) -> None:
    h = await make_guard()
    args = json.dumps({"query": "order status", "limit": 5})
    fake.set_default(
        {
            "mode": "tool_call",
            "tool_calls": [{"name": "search", "arguments": args}, {"name": "lookup", "arguments": '{"id": 42}'}],
        }
    )
    s = await h.client().chat.completions.create(model="x", messages=USER, tools=tools, stream=True)
    deltas = [tc for c in [c async for c in s] if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert [(d.index, d.function.name, d.function.arguments) for d in deltas if d.function] == [
        (0, "search", args),
        (1, "lookup", '{"id": 42}'),
    ]
    assert h.metric("agentfleet_tool_calls_total", tool="search", outcome="allowed") == 1


async def test_legacy_functions_are_rejected(make_guard: MakeGuard, fake: FakeLLM) -> None:
    h = await make_guard()
    status, _, body = await h.post(
        "/v1/chat/completions", {"model": "x", "messages": USER, "functions": [{"name": "shell"}]}
    )
    assert status == 400 and body["error"]["code"] == "invalid_request"
    status, _, body = await h.post("/v1/chat/completions", {"model": "x", "messages": []})
    assert status == 400 and "messages" in body["error"]["message"]
    assert fake.requests == 0


async def test_a_bug_costs_one_request_not_the_guard(
    make_guard: MakeGuard, fake: FakeLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = await make_guard()

    def broken(*args: Any) -> None:
        raise KeyError("boom")

    monkeypatch.setattr(h.guard.gate, "judge", broken)
    fake.set_default("tool")
    status, _, body = await h.post("/v1/chat/completions", {"model": "x", "messages": USER})
    assert status == 500 and body["error"]["code"] == "internal_error"
    monkeypatch.undo()
    assert (await h.client().chat.completions.create(model="x", messages=USER)).choices
    assert h.guard.ledger.tokens_reserved == 0 and h.guard.inflight == 0


async def test_health_endpoints(make_guard: MakeGuard, fake: FakeLLM) -> None:
    h = await make_guard(budgets={"tokens_per_hour": 1000})
    assert (await h.post("/healthz", None, method="GET"))[:1] == (200,)
    status, _, body = await h.post("/readyz", None, method="GET")
    assert status == 200 and body["status"] == "ready" and body["budgets"]["tokens_per_hour"]["limit"] == 1000
    h.guard.draining = True
    status, _, body = await h.post("/readyz", None, method="GET")
    assert status == 503 and body["status"] == "draining"
