"""``/tools/NAME``: the HTTP adapter for declared HTTP tools.

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

import aiohttp
from aiohttp import web

from agentfleet.api.types import InjectionMode
from agentfleet.guard import core
from agentfleet.guard.approvals import REASON_HEADER
from agentfleet.guard.config import TASK_HEADER, TOOL_CALL_ID_HEADER
from agentfleet.guard.core import ToolLog
from agentfleet.guard.errors import GuardError
from agentfleet.guard.httpio import error_response, read_body
from agentfleet.guard.state import Guard
from agentfleet.guard.upstream import ResponseTooLarge, read_limited

_MEDIA_TYPES = ("image/", "audio/", "video/")
"""Results the injection heuristics cannot read; every other type (JSON variants, YAML, octet
streams, a missing or made-up type) is decoded and checked as text."""
_ENCODINGS = frozenset({"", "identity", "gzip", "deflate"})
"""Content encodings the client decodes, so the guard checks what the agent will read."""


class UnreadableResult(Exception):
    """A tool answer the guard cannot decode, so cannot check."""


async def tool_call(guard: Guard, request: web.Request) -> web.StreamResponse:
    """Forward one call of a declared HTTP tool after the guard's checks."""
    name = request.match_info["name"]
    log = ToolLog(guard, name, request.headers.get(TOOL_CALL_ID_HEADER))
    approval: str | None = None
    try:
        with guard.slot():
            info = core.tool_route(guard, name)
            body = log.arguments = await read_body(request)
            task = core.open_tool_call(guard, log, request.headers.get(TASK_HEADER), body.decode("utf-8", "replace"))
            headers_in = request.headers
            approval = await guard.approvals.check(  # held here until a person decides (approvals.py)
                name, body.decode("utf-8", "replace"), headers_in.get(TASK_HEADER), headers_in.get(REASON_HEADER)
            )
            assert info.endpoint is not None
            url = info.endpoint + (f"?{request.query_string}" if request.query_string else "")
            headers = {
                "Content-Type": request.headers.get("Content-Type", "application/json"),
                "Accept-Encoding": "gzip, deflate",
            }
            deadline = guard.limits.call_deadline
            try:
                async with asyncio.timeout(deadline):
                    async with guard.upstream.session.request(request.method, url, data=body, headers=headers) as resp:
                        log.status = resp.status
                        content_type = resp.content_type
                        encoding = resp.headers.get("Content-Encoding", "").strip().lower()
                        if encoding not in _ENCODINGS:
                            raise UnreadableResult(f"unsupported content encoding {encoding[:40]!r}")
                        log.result = await read_limited(resp, guard.tuning.max_response_bytes)
            except TimeoutError:
                raise core.tool_failure(
                    guard, task, name, f"tool {name!r} did not answer within {deadline:g}s", "timeout"
                ) from None
            except (aiohttp.ClientError, OSError, ResponseTooLarge, UnreadableResult) as exc:
                raise core.tool_failure(
                    guard, task, name, f"tool {name!r} failed: {type(exc).__name__}: {exc}", type(exc).__name__
                ) from None
            text = "" if content_type.startswith(_MEDIA_TYPES) else log.result.decode("utf-8", "replace")
            scans = {}
            if text and guard.cfg.guard.injection is not InjectionMode.OFF:
                try:
                    scans[text] = await core.scan_text(guard, text, f"the result of tool {name!r}", name)
                except GuardError as exc:
                    raise core.tool_failure(guard, task, name, exc.message, "result_too_large") from None
            core.tool_answer(guard, task, name, log.status, text, scans)
            log.outcome = "ok" if log.status < 400 else "error"
            await guard.approvals.finished(approval, "ran", f"the tool answered {log.status}")
            return web.Response(status=log.status, body=log.result, content_type=content_type)
    except GuardError as err:
        log.fail(err)
        await guard.approvals.finished(approval, "failed", err.message)
        return error_response(err)
    finally:
        log.finish()
