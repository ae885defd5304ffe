"""The OpenAI-compatible LLM routes: ``/v1/chat/completions`` and ``/v1/embeddings``.

Order of enforcement for a chat call, cheapest and most final first, so that a refused call
costs neither money nor an upstream round trip:

1. the task (header, or the conversation itself): ended by a loop? past its duration? out of
   iterations? would it exceed the concurrent-task cap?
2. the tool results the agent sends back: injection heuristics, repeated identical errors;
3. the tools offered to the model: disallowed ones are removed, a forced disallowed one refused;
4. budgets: reserve the worst case (prompt estimate + completion cap) or refuse with 429;
5. the upstream call (deadline, retries, breaker), then the response's tool calls are judged
   before the agent sees them (for streams see ``stream``).
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING

from aiohttp import web

from agentfleet.guard.budgets import completion_cap, estimate_embedding_tokens, estimate_prompt_tokens
from agentfleet.guard.checks import (
    CallLog,
    admit,
    filter_tools,
    inspect_messages,
    judge_calls,
    legacy_call_refusal,
    read_json,
    resolve_task,
    usage_tokens,
)
from agentfleet.guard.errors import Code, GuardError, invalid
from agentfleet.guard.stream import relay_stream
from agentfleet.guard.toolgate import ToolCall

if TYPE_CHECKING:
    from agentfleet.guard.app import Guard


# ------------------------------------------------------------------------------ chat completions


async def chat_completions(guard: Guard, request: web.Request) -> web.StreamResponse:
    """``POST /v1/chat/completions``."""
    call = CallLog(guard, "llm_call")
    try:
        with guard.slot():
            return await _chat(guard, request, call)
    except GuardError as err:
        call.fail(err)
        return err.response()
    finally:
        call.finish()


async def _chat(guard: Guard, request: web.Request, call: CallLog) -> web.StreamResponse:
    raw, payload = await read_json(request)
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid("messages must be a non-empty list")
    task = call.task = resolve_task(guard, request, messages)
    admit(guard, task, llm_call=True)
    inspect_messages(guard, task, messages)
    call.removed = filter_tools(guard, payload)
    payload["model"] = guard.model
    stream = call.stream = payload.get("stream") is True
    want_usage = False
    if stream:
        opts = payload.get("stream_options")
        opts = dict(opts) if isinstance(opts, dict) else {}
        want_usage = opts.get("include_usage") is True
        opts["include_usage"] = True  # so the guard can account the stream exactly
        payload["stream_options"] = opts
    prompt_tokens = estimate_prompt_tokens(messages, payload.get("tools"))
    call.reserve(prompt_tokens, completion_cap(payload, guard.tuning.default_completion_tokens))
    call.prompt = guard.audit.content(messages if guard.audit.capture_content else raw)
    if task.named:
        task.iterations += 1
    call.begin(task)
    body = json.dumps(payload).encode()
    deadline = asyncio.get_running_loop().time() + guard.limits.call_deadline
    call.upstream = True
    if stream:
        return await relay_stream(
            guard,
            request,
            call,
            task=task,
            body=body,
            deadline=deadline,
            want_usage=want_usage,
            prompt_tokens=prompt_tokens,
        )

    reply = await guard.upstream.call("/chat/completions", body, deadline)
    call.attempts = reply.attempts
    if reply.status != 200:
        call.passthrough(reply.status)
        return web.Response(status=reply.status, body=reply.body, content_type=reply.content_type)
    data = reply.data
    choices = data.get("choices")
    if not isinstance(choices, list):
        guard.metrics.upstream["invalid_response"].inc()
        raise GuardError(
            Code.UPSTREAM_UNAVAILABLE, "upstream returned an invalid chat completion", 502, should_retry=True
        )
    calls: list[ToolCall] = []
    out_chars = 0
    legacy = False
    for choice in choices:
        msg = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(msg, dict):
            continue
        content = msg.get("content")
        out_chars += len(content) if isinstance(content, str) else 0
        legacy = legacy or bool(msg.get("function_call"))
        for tc in msg.get("tool_calls") or ():
            fn = tc.get("function") if isinstance(tc, dict) else None
            if isinstance(fn, dict):
                calls.append(ToolCall(str(fn.get("name", "")), fn.get("arguments", ""), tc.get("id")))
    usage = usage_tokens(data.get("usage"))
    call.tin, call.tout = usage if usage else (prompt_tokens, -(-out_chars // 3))
    call.completion = guard.audit.content(choices if guard.audit.capture_content else reply.body)
    if legacy:
        raise legacy_call_refusal()
    if calls:
        refusal = judge_calls(guard, task, calls)
        if refusal is not None:
            raise refusal
    call.ok()
    return web.Response(body=reply.body, content_type="application/json")


# ------------------------------------------------------------------------------ embeddings


async def embeddings(guard: Guard, request: web.Request) -> web.StreamResponse:
    """``POST /v1/embeddings``: budgets, deadline, retries and breaker; the body passes as is."""
    call = CallLog(guard, "embeddings")
    try:
        with guard.slot():
            raw, payload = await read_json(request)
            if "input" not in payload:
                raise invalid("embeddings request needs an input")
            estimate = estimate_embedding_tokens(payload["input"])
            call.reserve(estimate, 0)
            call.prompt = guard.audit.content(raw)
            call.upstream = True
            deadline = asyncio.get_running_loop().time() + guard.limits.call_deadline
            reply = await guard.upstream.call("/embeddings", raw, deadline)
            call.attempts = reply.attempts
            if reply.status != 200:
                call.passthrough(reply.status)
                return web.Response(status=reply.status, body=reply.body, content_type=reply.content_type)
            usage = reply.data.get("usage")
            tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
            call.tin = tokens if isinstance(tokens, int) else estimate
            call.ok()
            return web.Response(body=reply.body, content_type="application/json")
    except GuardError as err:
        call.fail(err)
        return err.response()
    finally:
        call.finish()
