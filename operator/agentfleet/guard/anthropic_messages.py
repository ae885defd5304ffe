"""The Anthropic Messages adapter: ``POST /v1/messages`` (streamed or not), on the control core.

An agent built on the Anthropic SDK (or the Claude Agent SDK) reaches the guard through
``ANTHROPIC_BASE_URL``; its own ``x-api-key`` is a placeholder and is never sent upstream: the
guard sends the real key from the Secret it holds (``x-api-key`` to Anthropic, the provider's
usual header to another upstream that speaks Messages, e.g. vLLM), with the agent's
``anthropic-version`` (default ``2023-06-01``) and ``anthropic-beta``.

The order of enforcement is that of chat completions (task, new tool results, tools offered,
budget reservation, upstream, then the answer's tool calls judged before the agent sees them);
refusals are written as Anthropic error objects (``{"type": "error", "error": {"type",
"message", "code"}}``) with ``x-should-retry``, which the Anthropic SDKs obey like OpenAI's.
"""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

from agentfleet.api.types import Provider
from agentfleet.guard import anthropic_wire as wire
from agentfleet.guard import core
from agentfleet.guard.anthropic_stream import MessagesRelay
from agentfleet.guard.config import TASK_HEADER
from agentfleet.guard.core import CallLog
from agentfleet.guard.errors import Code, GuardError
from agentfleet.guard.httpio import answer_list, error_headers, passed_through, read_json
from agentfleet.guard.state import Guard
from agentfleet.guard.streaming import relay_events

OPENAI_ONLY = frozenset({Provider.OPENAI, Provider.AZURE_OPENAI})
"""Providers whose APIs do not speak Messages."""


def error_response(err: GuardError) -> web.Response:
    """A refusal as the Anthropic SDKs read it."""
    return web.Response(
        status=err.status,
        body=json.dumps(wire.error_body(err)).encode(),
        content_type="application/json",
        headers=error_headers(err),
    )


async def messages(guard: Guard, request: web.Request) -> web.StreamResponse:
    """``POST /v1/messages``."""
    call = CallLog(guard, "llm_call", "anthropic-messages")
    try:
        with guard.slot():
            return await _messages(guard, request, call)
    except GuardError as err:
        call.fail(err)
        return error_response(err)
    finally:
        call.finish()


def _provider_speaks_messages(guard: Guard) -> None:
    if guard.cfg.model.provider in OPENAI_ONLY:
        raise GuardError(
            Code.INVALID_REQUEST,
            f"this agent's model is served by provider {guard.cfg.model.provider.value!r}, which does not speak "
            "the Anthropic Messages API; use the OpenAI API (OPENAI_BASE_URL)",
            404,
        )


async def _messages(guard: Guard, request: web.Request, call: CallLog) -> web.StreamResponse:
    _provider_speaks_messages(guard)
    version = wire.header_value(request.headers.get("anthropic-version"), "anthropic-version")
    beta = wire.header_value(request.headers.get("anthropic-beta"), "anthropic-beta")
    raw, payload = await read_json(request)
    turn = wire.messages_turn(
        payload,
        request.headers.get(TASK_HEADER),
        max_messages=guard.tuning.max_messages,
        max_tools=guard.tuning.max_tools,
    )
    scans = await core.scan_turn(guard, turn)
    keep = core.open_turn(guard, call, turn, scans)
    task = call.task
    assert task is not None
    call.removed = wire.apply_tool_filter(payload, keep)
    wire.cap_server_tool_uses(payload, guard.limits.max_tool_calls - task.tool_calls)
    payload["model"] = guard.model
    stream = call.stream = payload.get("stream") is True
    prompt_tokens = wire.estimate_prompt_tokens(payload)
    await core.commit_turn(guard, call, prompt_tokens, wire.completion_cap(payload))
    call.prompt = guard.audit.content(payload["messages"] if guard.audit.capture_content else raw)
    headers = guard.upstream.messages_headers(version or wire.DEFAULT_VERSION, beta)
    body = json.dumps(payload).encode()
    deadline = asyncio.get_running_loop().time() + guard.limits.call_deadline
    call.upstream = True
    if stream:
        start = await guard.upstream.open_stream("/messages", body, deadline, headers)
        relay = MessagesRelay(guard, task, held_limit=guard.tuning.max_response_bytes)
        return await relay_events(guard, request, call, start, relay, deadline=deadline, prompt_tokens=prompt_tokens)

    reply = await guard.upstream.call("/messages", body, deadline, headers)
    if (passed := passed_through(call, reply)) is not None:
        return passed
    data = reply.data
    content = answer_list(guard, data, "content", "message")
    call.answered(data)
    answer = wire.answer(content)
    call.used(wire.usage_of(data.get("usage")), prompt_tokens, answer.out_chars)
    call.completion = guard.audit.content(content if guard.audit.capture_content else reply.body)
    if answer.calls:
        refusal = core.judge_calls(guard, task, answer.calls)
        if refusal is not None:
            raise refusal
    call.ok()
    return web.Response(body=reply.body, content_type="application/json")


async def count_tokens(guard: Guard, request: web.Request) -> web.StreamResponse:
    """``POST /v1/messages/count_tokens``: free at Anthropic and generates nothing, so it spends no
    budget and counts no iteration; forwarded with the model pinned and the real key, within the
    call deadline (agents ask it to size their context before a call)."""
    try:
        with guard.slot():
            _provider_speaks_messages(guard)
            version = wire.header_value(request.headers.get("anthropic-version"), "anthropic-version")
            beta = wire.header_value(request.headers.get("anthropic-beta"), "anthropic-beta")
            _, payload = await read_json(request)
            payload["model"] = guard.model
            headers = guard.upstream.messages_headers(version or wire.DEFAULT_VERSION, beta)
            deadline = asyncio.get_running_loop().time() + guard.limits.call_deadline
            reply = await guard.upstream.call("/messages/count_tokens", json.dumps(payload).encode(), deadline, headers)
            return web.Response(status=reply.status, body=reply.body, content_type=reply.content_type)
    except GuardError as err:
        return error_response(err)
