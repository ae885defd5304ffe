"""HTTP plumbing shared by the guard's HTTP adapters: error rendering and bounded JSON bodies.

Every refusal the guard sends over HTTP, whatever the route, is an OpenAI-style error object
``{"error": {"message", "type", "code"}}`` with ``x-should-retry`` (and ``Retry-After`` when
waiting helps), so the SDKs the agents use raise their usual exceptions with ``.code`` set.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

from aiohttp import web

from agentfleet.guard.errors import Code, GuardError, invalid

if TYPE_CHECKING:
    from agentfleet.guard.core import CallLog
    from agentfleet.guard.state import Guard
    from agentfleet.guard.upstream import Reply

_TYPES = {400: "invalid_request_error", 403: "permission_error", 404: "not_found_error", 429: "rate_limit_error"}


def error_type(err: GuardError) -> str:
    """OpenAI-style error type derived from the status."""
    return _TYPES.get(err.status, "server_error" if err.status >= 500 else "invalid_request_error")


def error_body(err: GuardError) -> dict[str, dict[str, str]]:
    """The OpenAI error object."""
    return {"error": {"message": err.message, "type": error_type(err), "code": err.code.value}}


def error_headers(err: GuardError) -> dict[str, str]:
    """Retry-After (whole seconds, at least 1) when meaningful, and x-should-retry."""
    headers = {"x-should-retry": "true" if err.should_retry else "false"}
    if err.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(err.retry_after)))
    return headers


def error_response(err: GuardError) -> web.Response:
    """The HTTP response for the agent."""
    return web.Response(
        status=err.status,
        body=json.dumps(error_body(err)).encode(),
        content_type="application/json",
        headers=error_headers(err),
    )


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """The JSON object in a request body (400 otherwise, also for absurdly deep nesting)."""
    try:
        payload = json.loads(raw)
    except (ValueError, RecursionError):
        raise invalid("request body is not valid JSON (or nests too deeply)") from None
    if not isinstance(payload, dict):
        raise invalid("request body must be a JSON object")
    return payload


async def read_body(request: web.Request) -> bytes:
    """The raw request body (413 beyond the application's ``client_max_size``)."""
    try:
        return await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise GuardError(Code.INVALID_REQUEST, f"request body too large: {exc.text}", 413) from None


async def read_json(request: web.Request) -> tuple[bytes, dict[str, Any]]:
    """The raw request body and its JSON object (400/413 otherwise)."""
    raw = await read_body(request)
    return raw, parse_json_object(raw)


def passed_through(call: CallLog, reply: Reply) -> web.Response | None:
    """A non-200 upstream answer handed to the agent unchanged (and recorded as such), or None."""
    call.attempts = reply.attempts
    if reply.status == 200:
        return None
    call.passthrough(reply.status)
    return web.Response(status=reply.status, body=reply.body, content_type=reply.content_type)


def answer_list(guard: Guard, data: dict[str, Any], key: str, what: str) -> list[Any]:
    """The list an answer carries its output in (``choices``, ``output``, ``content``); an answer
    without it is the upstream's fault: counted, and a retryable 502 naming ``what`` it should be."""
    items = data.get(key)
    if not isinstance(items, list):
        guard.metrics.upstream["invalid_response"].inc()
        raise GuardError(Code.UPSTREAM_UNAVAILABLE, f"upstream returned an invalid {what}", 502, should_retry=True)
    return items
