"""The OpenAI adapter's HTTP handlers: ``/v1/chat/completions`` and ``/v1/embeddings``.

Order of enforcement for a chat call, cheapest and most final first, so that a refused call
costs neither money nor an upstream round trip (the checks themselves are the core's):

1. the task (header, or the conversation itself): ended by a loop? past its duration? out of
   iterations? would it exceed the concurrent-task cap?
2. the tool results the agent sends back: injection heuristics, repeated identical errors;
3. the tools offered to the model: disallowed ones are removed, a forced disallowed one refused;
4. budgets: reserve the worst case (prompt estimate + completion cap) or refuse with 429;
5. the upstream call (deadline, retries, breaker), then the response's tool calls are judged
   before the agent sees them (for streams see ``openai_stream``).
"""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

from agentfleet.guard import core, openai_wire
from agentfleet.guard.config import TASK_HEADER
from agentfleet.guard.core import CallLog
from agentfleet.guard.errors import GuardError, invalid
from agentfleet.guard.httpio import answer_list, error_response, passed_through, read_json
from agentfleet.guard.openai_stream import relay_stream
from agentfleet.guard.state import Guard

# ------------------------------------------------------------------------------ chat completions


async def chat_completions(guard: Guard, request: web.Request) -> web.StreamResponse:
    """``POST /v1/chat/completions``."""
    call = CallLog(guard, "llm_call")
    try:
        with guard.slot():
            return await _chat(guard, request, call)
    except GuardError as err:
        call.fail(err)
        return error_response(err)
    finally:
        call.finish()


async def _chat(guard: Guard, request: web.Request, call: CallLog) -> web.StreamResponse:
    raw, payload = await read_json(request)
    turn = openai_wire.chat_turn(
        payload,
        request.headers.get(TASK_HEADER),
        max_messages=guard.tuning.max_messages,
        max_tools=guard.tuning.max_tools,
    )
    scans = await core.scan_turn(guard, turn)
    keep = core.open_turn(guard, call, turn, scans)
    call.removed = openai_wire.apply_tool_filter(payload, keep)
    payload["model"] = guard.model
    stream = call.stream = payload.get("stream") is True
    want_usage = False
    if stream:
        opts = payload.get("stream_options")
        opts = dict(opts) if isinstance(opts, dict) else {}
        want_usage = opts.get("include_usage") is True
        opts["include_usage"] = True  # so the guard can account the stream exactly
        payload["stream_options"] = opts
    messages = payload["messages"]
    prompt_tokens = openai_wire.estimate_prompt_tokens(messages, payload.get("tools"))
    completion_tokens = openai_wire.completion_cap(payload, guard.tuning.default_completion_tokens)
    await core.commit_turn(guard, call, prompt_tokens, completion_tokens)
    call.prompt = guard.audit.content(messages if guard.audit.capture_content else raw)
    task = call.task
    assert task is not None
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
    if (passed := passed_through(call, reply)) is not None:
        return passed
    data = reply.data
    choices = answer_list(guard, data, "choices", "chat completion")
    call.answered(data)
    answer = openai_wire.chat_answer(choices)
    call.used(openai_wire.usage_of(data.get("usage")), prompt_tokens, answer.out_chars)
    call.completion = guard.audit.content(choices if guard.audit.capture_content else reply.body)
    if answer.legacy:
        raise openai_wire.legacy_call_refusal()
    if answer.calls:
        refusal = core.judge_calls(guard, task, answer.calls)
        if refusal is not None:
            raise refusal
    call.ok()
    return web.Response(body=reply.body, content_type="application/json")


# ------------------------------------------------------------------------------ embeddings


async def embeddings(guard: Guard, request: web.Request) -> web.StreamResponse:
    """``POST /v1/embeddings``: the configured model, budgets, deadline, retries and breaker."""
    call = CallLog(guard, "embeddings")
    try:
        with guard.slot():
            raw, payload = await read_json(request)
            if "input" not in payload:
                raise invalid("embeddings request needs an input")
            payload["model"] = call.model = guard.cfg.embeddings_model or guard.model  # pinned, like chat
            estimate = openai_wire.estimate_embedding_tokens(payload["input"])
            await call.reserve(estimate, 0)
            call.prompt = guard.audit.content(raw)
            call.upstream = True
            deadline = asyncio.get_running_loop().time() + guard.limits.call_deadline
            reply = await guard.upstream.call("/embeddings", json.dumps(payload).encode(), deadline)
            if (passed := passed_through(call, reply)) is not None:
                return passed
            usage = reply.data.get("usage")
            tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
            call.tin = tokens if isinstance(tokens, int) else estimate
            call.ok()
            return web.Response(body=reply.body, content_type="application/json")
    except GuardError as err:
        call.fail(err)
        return error_response(err)
    finally:
        call.finish()
