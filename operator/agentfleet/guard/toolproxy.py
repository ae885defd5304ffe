"""``/tools/NAME``: the proxy route for declared HTTP tools.

Model-issued tool calls are judged in the chat response; an agent can also call a tool
directly. Routing HTTP tools through the guard applies the same rules on that path (allowlist,
per-task and per-tool caps, loop detection, task duration and concurrency) and lets the guard
see the results: failures count as tool errors (and repeated identical errors end the task),
and results are scanned for prompt injection before the agent reads them.

When the agent executes a call the model issued, it may send the call's id in
``X-Agentfleet-Tool-Call-Id``; a call the guard already counted in the response is then not
counted twice. Tools are not retried: a tool call may not be idempotent.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from agentfleet.guard.checks import admit, check_injection, resolve_task
from agentfleet.guard.config import TOOL_CALL_ID_HEADER
from agentfleet.guard.errors import Code, GuardError
from agentfleet.guard.loops import tool_error_text
from agentfleet.guard.tasks import Task
from agentfleet.guard.toolgate import ToolCall
from agentfleet.guard.upstream import ResponseTooLarge, read_limited

if TYPE_CHECKING:
    from agentfleet.guard.app import Guard

_TEXT_TYPES = ("application/json", "text/", "application/xml", "application/x-ndjson")


async def tool_call(guard: Guard, request: web.Request) -> web.StreamResponse:
    """Forward one call of a declared HTTP tool after the guard's checks."""
    name = request.match_info["name"]
    t0 = time.perf_counter()
    task: Task | None = None
    began = False
    outcome, reason, status = "error", None, 0
    call_id = request.headers.get(TOOL_CALL_ID_HEADER)
    body = b""
    result: bytes = b""
    try:
        with guard.slot():
            info = guard.limits.tools.get(name)
            if not guard.gate.permitted(name):
                guard.metrics.tool_call(name, "refused")
                raise guard.gate.not_permitted(name)
            if info is None or info.endpoint is None:
                raise GuardError(Code.TOOL_NOT_FOUND, f"tool {name!r} has no HTTP endpoint declared", 404)
            body = await request.read()
            task = resolve_task(guard, request, None)
            admit(guard, task, llm_call=False)
            if not (call_id and task.was_issued(call_id)):
                args = body.decode("utf-8", "replace")
                refusal = guard.gate.judge(task, [ToolCall(name, args, call_id)])
                guard.metrics.tool_call(name, "allowed" if refusal is None else "refused")
                if refusal is not None:
                    raise refusal
            guard.tasks.begin(task)
            began = True
            url = info.endpoint + (f"?{request.query_string}" if request.query_string else "")
            headers = {"Content-Type": request.headers.get("Content-Type", "application/json")}
            try:
                async with asyncio.timeout(guard.limits.call_deadline):
                    async with guard.upstream.session.request(request.method, url, data=body, headers=headers) as resp:
                        status = resp.status
                        content_type = resp.content_type
                        result = await read_limited(resp, guard.tuning.max_response_bytes)
            except TimeoutError:
                raise _tool_failure(
                    guard, task, name, f"tool {name!r} did not answer within {guard.limits.call_deadline:g}s", "timeout"
                ) from None
            except (aiohttp.ClientError, OSError, ResponseTooLarge) as exc:
                raise _tool_failure(
                    guard, task, name, f"tool {name!r} failed: {type(exc).__name__}: {exc}", type(exc).__name__
                ) from None
            text = result.decode("utf-8", "replace") if content_type.startswith(_TEXT_TYPES) else ""
            error_text = f"HTTP {status}: {text[:2000]}" if status >= 400 else tool_error_text(text)
            if error_text is not None:
                guard.metrics.tool_call(name, "error")
                refusal = guard.gate.repeated_error(task, name, task.count_error(name, error_text))
                if refusal is not None:
                    raise refusal
            if text:
                check_injection(guard, task, text, "tool result", name)
            outcome = "ok" if status < 400 else "error"
            return web.Response(status=status, body=result, content_type=content_type)
    except GuardError as err:
        outcome = "rejected" if err.is_rejection else "error"
        reason, status = err.code.value, err.status
        if err.budget is not None:
            guard.metrics.budget[err.budget].inc()
        return err.response()
    finally:
        if began and task is not None:
            guard.tasks.end(task)
        guard.audit.record(
            "tool_call",
            task=task.id if task is not None and task.named else None,
            tool=name,
            route="proxy",
            call_id=call_id,
            decision={"ok": "allow", "rejected": "refuse"}.get(outcome, "error"),
            reason=reason,
            status=status,
            latency_ms=round((time.perf_counter() - t0) * 1000, 3),
            arguments=guard.audit.content(body),
            result=guard.audit.content(result) if result else None,
        )


def _tool_failure(guard: Guard, task: Task, name: str, message: str, kind: str) -> GuardError:
    """A failed tool call: counted as a tool error (and towards a repeated-error loop)."""
    guard.metrics.tool_call(name, "error")
    refusal = guard.gate.repeated_error(task, name, task.count_error(name, kind))
    return refusal or GuardError(Code.TOOL_UNAVAILABLE, message, 502, should_retry=False)
