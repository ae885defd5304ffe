"""``/mcp/<server>``: MCP servers (streamable HTTP) through the guard, on the control core.

An MCP server declared in the spec as the tool ``mcp:<server>`` with an ``mcp`` block is served
to the agent at ``/mcp/<server>`` on the loopback API listener. The guard relays the streamable
HTTP transport -- ``POST`` of one JSON-RPC message answered with JSON or an SSE stream, ``GET``
for the server's event stream, ``DELETE`` to end a session, ``Mcp-Session-Id``,
``MCP-Protocol-Version``, ``Last-Event-ID`` and the 2026-07-28 routing headers passed through --
and on the way:

- ``tools/list`` results lose every tool the agent may not call (``mcp.tools``): it is invisible;
  ``initialize``/``server/discover`` results lose the resources, prompts and completions
  capabilities, whose requests the guard refuses (their content would reach the agent unchecked);
- every ``tools/call`` goes through the same checks as any tool call (``core.open_tool_call``:
  task, duration, concurrency, allowlist, per-task and per-server caps, loop detection); a refused
  call is answered with a JSON-RPC error and never reaches the server;
- the result is scanned for prompt injection and judged for repeated errors
  (``core.tool_answer``) before the agent reads it (in ``Block`` mode a suspicious result becomes
  a JSON-RPC error);
- the server's credential, read from a Secret mounted in the guard container only, is added to
  every request; the agent's own ``Authorization``/``Cookie`` headers are not forwarded.

The older HTTP+SSE transport (2024-11-05: ``GET /sse`` plus a POST endpoint the server names in
an ``endpoint`` event) is not relayed.
"""

from __future__ import annotations

import asyncio
import json
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import Counter, Histogram

from agentfleet.api.types import InjectionMode, McpArgumentRule, McpTransport
from agentfleet.guard import core
from agentfleet.guard import mcp_wire as wire
from agentfleet.guard.config import TASK_HEADER, TOOL_CALL_ID_HEADER, ConfigError
from agentfleet.guard.core import ToolLog
from agentfleet.guard.errors import Code, GuardError
from agentfleet.guard.httpio import read_body
from agentfleet.guard.metrics import BASE, DURATION_BUCKETS
from agentfleet.guard.sse import Event, SSEError, SSEParser
from agentfleet.guard.state import Guard, log
from agentfleet.guard.tasks import Task
from agentfleet.guard.upstream import ResponseTooLarge, read_limited

SESSION_HEADER = "Mcp-Session-Id"
RELAYED_HEADERS = ("Accept", "Mcp-Session-Id", "MCP-Protocol-Version", "Mcp-Method", "Mcp-Name", "Last-Event-ID")
"""Request headers passed to the server (plus every ``Mcp-Param-*``); nothing else of the agent's."""
PARAM_HEADER_PREFIX = "mcp-param-"
MAX_PARAM_HEADERS = 32
CREDENTIAL_TTL = 60.0
"""Seconds a credential read from its file is reused (a rotated Secret is picked up after it)."""
MAX_STREAMS = 64
"""Long-lived event streams (``GET``, ``subscriptions/listen``) open at once, all servers together."""
ACCEPT_BOTH = "application/json, text/event-stream"

Transform = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
SseStream = Callable[[Guard, web.Request, "Route"], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Route:
    """One declared MCP server as the proxy uses it."""

    server: str
    """``github`` (the URL path segment)."""
    tool: str
    """``mcp:github`` (the allowlist name)."""
    endpoint: str
    header: str
    scheme: str | None
    tools: frozenset[str] | None
    credential_file: str | None
    rules: tuple[McpArgumentRule, ...] = ()
    transport: McpTransport = McpTransport.STREAMABLE_HTTP


def routes_of(guard: Guard) -> dict[str, Route]:
    """The declared MCP servers (``ConfigError`` when one with a credential has no file)."""
    files = guard.cfg.mcp_credential_files
    out = {}
    for t in guard.cfg.tools:
        if t.mcp is None:
            continue
        server = t.name.removeprefix("mcp:")
        cred = files.get(t.name)
        if t.mcp.credentials_secret_ref is not None and cred is None:
            raise ConfigError(f"MCP server {t.name!r} has credentialsSecretRef but no file in mcpCredentialFiles")
        tools = frozenset(t.mcp.tools) if t.mcp.tools is not None else None
        endpoint = t.mcp.endpoint.rstrip("/")
        rules = tuple(t.mcp.argument_rules)
        out[server] = Route(server, t.name, endpoint, t.mcp.header, t.mcp.scheme, tools, cred, rules, t.mcp.transport)
    return out


class McpState:
    """The MCP servers of one guard, their credentials and the MCP metrics."""

    def __init__(self, guard: Guard) -> None:
        self.routes = routes_of(guard)
        self.streams = 0
        self._credentials: dict[str, tuple[float, str]] = {}
        base = (guard.cfg.namespace, guard.cfg.agent, guard.cfg.revision, guard.model)
        r = guard.metrics.registry
        self.requests = Counter(
            "agentfleet_mcp_requests",
            "MCP messages the agent sent through the guard, by server, method and outcome (ok, error, rejected).",
            [*BASE, "server", "method", "outcome"],
            registry=r,
        )
        self.latency = Histogram(
            "agentfleet_tool_call_duration_seconds",
            "Duration of tool calls through the guard, by tool and protocol, seconds.",
            [*BASE, "tool", "protocol"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self._base = base
        for route in self.routes.values():
            self.latency.labels(*base, route.tool, "mcp")
            self.requests.labels(*base, route.server, "tools/call", "ok")

    def count(self, server: str, method: str, outcome: str) -> None:
        self.requests.labels(*self._base, server, method, outcome).inc()

    def observe(self, tool: str, seconds: float) -> None:
        self.latency.labels(*self._base, tool, "mcp").observe(seconds)

    async def credential(self, route: Route) -> str | None:
        """The header value carrying the server's credential (None: the server needs none)."""
        path = route.credential_file
        if path is None:
            return None
        now = time.monotonic()
        cached = self._credentials.get(path)
        if cached is None or now - cached[0] > CREDENTIAL_TTL:
            try:
                text = (await asyncio.to_thread(Path(path).read_text, encoding="utf-8")).strip()
            except OSError as exc:
                raise GuardError(
                    Code.TOOL_UNAVAILABLE,
                    f"the credential of MCP server {route.tool!r} cannot be read: {exc.strerror or exc}",
                    503,
                    retry_after=1,
                    should_retry=True,
                ) from None
            if not text or "\n" in text or "\r" in text:
                raise GuardError(Code.TOOL_UNAVAILABLE, f"the credential of MCP server {route.tool!r} is unusable", 503)
            cached = self._credentials[path] = (now, text)
        return f"{route.scheme} {cached[1]}" if route.scheme else cached[1]


_STATES: weakref.WeakKeyDictionary[Guard, McpState] = weakref.WeakKeyDictionary()


def state_of(guard: Guard) -> McpState:
    """The guard's MCP state (``app`` creates it at start, so a bad config fails the start)."""
    state = _STATES.get(guard)
    if state is None:
        state = _STATES[guard] = McpState(guard)
    return state


class McpLog(ToolLog):
    """One ``tools/call``: counted, timed and audited once (as ``mcp:<server>/<tool>``)."""

    __slots__ = ("answered", "route", "state", "tool")

    def __init__(self, guard: Guard, state: McpState, route: Route, tool: str, call_id: str | None) -> None:
        super().__init__(guard, route.tool, call_id)
        self.state = state
        self.route = route
        self.tool = tool
        self.answered = False
        """Whether the server's JSON-RPC answer was judged (its outcome is set then)."""

    def finish(self) -> None:
        g = self.guard
        if self.began and self.task is not None:
            g.tasks.end(self.task)
        elapsed = time.perf_counter() - self.t0
        if self.began:
            self.state.observe(self.route.tool, elapsed)
        self.state.count(self.route.server, "tools/call", self.outcome)
        g.audit.record(
            "tool_call",
            task=self.task.id if self.task is not None and self.task.named else None,
            tool=f"{self.route.tool}/{self.tool}"[:256],
            route="mcp",
            protocol="mcp",
            call_id=self.call_id,
            decision={"ok": "allow", "rejected": "refuse"}.get(self.outcome, "error"),
            reason=self.reason,
            status=self.status,
            latency_ms=round(elapsed * 1000, 3),
            arguments=g.audit.content(self.arguments),
            result=g.audit.content(self.result) if self.result else None,
        )
        self.end_span(**{"gen_ai.tool.name": f"{self.route.tool}/{self.tool}"[:256], "mcp.method.name": "tools/call"})


# ------------------------------------------------------------------------------ HTTP helpers


def _rpc(body: dict[str, Any], status: int = 200, session: str | None = None) -> web.Response:
    headers = {SESSION_HEADER: session} if session else None
    return web.Response(status=status, body=json.dumps(body).encode(), content_type="application/json", headers=headers)


def upstream_headers(request: web.Request, route: Route, credential: str | None) -> dict[str, str]:
    """What the server sees: the transport's headers and the guard's credential, nothing else."""
    headers = {h: request.headers[h] for h in RELAYED_HEADERS if h in request.headers}
    params = [(k, v) for k, v in request.headers.items() if k.lower().startswith(PARAM_HEADER_PREFIX)]
    for k, v in params[:MAX_PARAM_HEADERS]:
        headers[k] = v
    if request.method == "POST":
        headers["Content-Type"] = "application/json"
        headers.setdefault("Accept", ACCEPT_BOTH)
    if credential is not None:
        headers[route.header] = credential
    return headers


def _route(guard: Guard, state: McpState, request: web.Request) -> Route:
    """The server named in the path, if declared and allowed (404/403 otherwise)."""
    name = request.match_info["server"]
    route = state.routes.get(name)
    if route is None:
        raise GuardError(Code.TOOL_NOT_FOUND, f"no MCP server {name[:64]!r} is declared for this agent", 404)
    if not guard.gate.permitted(route.tool):
        guard.metrics.tool_call(route.tool, "refused")
        raise guard.gate.not_permitted(route.tool)
    return route


def _check_routing_headers(request: web.Request, msg: wire.Message) -> None:
    """A 2026-07-28 client mirrors the method and tool in headers; a proxy or server routing on
    them must see what the guard judged, so a mismatch is refused."""
    method = request.headers.get("Mcp-Method")
    if method is not None and method != msg.method:
        raise wire.WireError(wire.HEADER_MISMATCH, "the Mcp-Method header does not match the body's method")
    name = request.headers.get("Mcp-Name")
    # An encoded value (=?base64?...?=) is compared by the server itself.
    if name is not None and msg.method == "tools/call" and name != msg.params.get("name") and "?base64?" not in name:
        raise wire.WireError(wire.HEADER_MISMATCH, "the Mcp-Name header does not match the called tool")


def _encode(event: Event, data: bytes) -> bytes:
    out = b""
    if event.id is not None:
        out += b"id: " + event.id + b"\n"
    if event.retry is not None:
        out += b"retry: " + event.retry + b"\n"
    if event.type != b"message":
        out += b"event: " + event.type + b"\n"
    lines = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
    return out + b"".join(b"data: " + line + b"\n" for line in lines) + b"\n"


def _answers(data: bytes, msg_id: Any) -> dict[str, Any] | None:
    """The JSON-RPC response to request ``msg_id`` in an event's data, if it is one."""
    if not data.startswith(b"{") or msg_id is None:
        return None
    try:
        message = json.loads(data)
    except ValueError:
        return None
    if isinstance(message, dict) and message.get("id") == msg_id and ("result" in message or "error" in message):
        return message
    return None


async def _exchange(
    guard: Guard,
    state: McpState,
    route: Route,
    request: web.Request,
    body: bytes,
    *,
    msg_id: Any = None,
    transform: Transform | None = None,
    within: float | None,
) -> web.StreamResponse:
    """Send one request to the server and relay its answer, applying ``transform`` to the
    JSON-RPC response to ``msg_id`` (in a JSON body or in the event stream). ``within`` bounds the
    whole exchange (None: a long-lived stream, bounded by ``MAX_STREAMS`` instead)."""
    credential = await state.credential(route)
    headers = upstream_headers(request, route, credential)
    limit = guard.tuning.max_response_bytes
    out: web.StreamResponse | None = None
    try:
        async with asyncio.timeout(within):
            async with guard.upstream.session.request(
                request.method, route.endpoint, data=body or None, headers=headers, allow_redirects=False
            ) as resp:
                relay = {k: resp.headers[k] for k in (SESSION_HEADER,) if k in resp.headers}
                if resp.content_type == "text/event-stream" and resp.status == 200:
                    out = web.StreamResponse(status=200, headers={**relay, "Cache-Control": "no-cache"})
                    out.content_type = "text/event-stream"
                    await out.prepare(request)
                    parser = SSEParser(limit)
                    async for chunk in resp.content.iter_any():
                        for event in parser.feed(chunk):
                            data = event.data
                            answer = _answers(data, msg_id) if transform is not None else None
                            if answer is not None and transform is not None:
                                data = json.dumps(await transform(answer)).encode()
                            await out.write(_encode(event, data))
                    await out.write_eof()
                    return out
                raw = await read_limited(resp, limit)
                if transform is not None and resp.content_type == "application/json" and resp.status == 200:
                    answer = _answers(raw, msg_id)
                    if answer is not None:
                        raw = json.dumps(await transform(answer)).encode()
                return web.Response(status=resp.status, body=raw, headers=relay, content_type=resp.content_type or None)
    except (TimeoutError, aiohttp.ClientError, OSError, ResponseTooLarge, SSEError) as exc:
        if out is None:
            what = f"did not answer within {within:g}s" if isinstance(exc, TimeoutError) else f"failed: {exc!s}"[:300]
            raise GuardError(
                Code.TOOL_UNAVAILABLE, f"MCP server {route.tool!r} {what}", 502, should_retry=False
            ) from None
        out.force_close()
        log("mcp_stream_cut", server=route.server, error=type(exc).__name__)
        return out


# ------------------------------------------------------------------------------ handlers


async def post(guard: Guard, request: web.Request) -> web.StreamResponse:
    """``POST /mcp/<server>``: one JSON-RPC message."""
    state = state_of(guard)
    server = request.match_info["server"][:64]
    method, outcome = "_other", "error"
    try:
        with guard.slot():
            route = _route(guard, state, request)
            if route.transport is McpTransport.SSE:
                return _rpc(
                    wire.error(None, wire.INVALID_REQUEST, "this MCP server speaks HTTP+SSE: GET its event stream"), 405
                )
            raw = await read_body(request)
            try:
                payload = json.loads(raw)
            except (ValueError, RecursionError):
                outcome = "rejected"
                return _rpc(wire.error(None, wire.PARSE_ERROR, "the body is not valid JSON"), 400)
            try:
                msg = wire.classify(payload)
                method = wire.method_label(msg)
                _check_routing_headers(request, msg)
            except wire.WireError as exc:
                outcome = "rejected"
                msg_id = payload.get("id") if isinstance(payload, dict) else None
                return _rpc(wire.error(msg_id, exc.code, exc.message), 400)
            if msg.kind == "request" and msg.method == "tools/call":
                method = "tools/call"  # counted by the call's own log
                return await _tool_call(guard, state, route, request, raw, msg)
            if msg.kind == "request" and msg.method not in wire.FORWARDED_METHODS:
                outcome, method = "rejected", "refused"
                return _rpc(
                    wire.error(
                        msg.id,
                        wire.METHOD_NOT_FOUND,
                        f"{str(msg.method)[:64]!r} is not served through the agentfleet guard (it serves tools only)",
                    )
                )
            transform: Transform | None = None
            if msg.method == "tools/list":
                transform = list_filter(guard, route)
            elif msg.method in ("initialize", "server/discover"):
                transform = capabilities_filter
            stream = msg.method in wire.STREAM_METHODS
            if stream:
                return await _stream(guard, state, route, request, raw, msg.id)
            resp = await _exchange(
                guard, state, route, request, raw, msg_id=msg.id, transform=transform, within=guard.limits.call_deadline
            )
            outcome = "ok" if resp.status < 400 else "error"
            return resp
    except GuardError as err:
        outcome = "rejected" if err.is_rejection else "error"
        return _rpc(wire.refusal(None, err), err.status)
    finally:
        if method != "tools/call":
            state.count(server if server in state.routes else "_other", method, outcome)


def list_filter(guard: Guard, route: Route) -> Transform:
    async def transform(message: dict[str, Any]) -> dict[str, Any]:
        removed = wire.filter_tools(message.get("result"), lambda name: wire.visible(route.tools, name))
        if removed:
            guard.audit.record("mcp_tools_hidden", tool=route.tool, tools_removed=removed[:256])
        return message

    return transform


async def capabilities_filter(message: dict[str, Any]) -> dict[str, Any]:
    wire.filter_capabilities(message.get("result"))
    return message


def open_call(
    guard: Guard, state: McpState, route: Route, headers: Mapping[str, str], msg: wire.Message
) -> tuple[McpLog, Task]:
    """Every check before a ``tools/call`` may be forwarded (``WireError`` for a malformed call,
    ``GuardError`` for a refusal, already counted and audited). Afterwards the task is in flight
    until the returned log's ``finish``."""
    tool, arguments = wire.called_tool(msg)
    call_id = wire.call_id_of(headers.get(TOOL_CALL_ID_HEADER), msg.meta)
    call = McpLog(guard, state, route, tool, call_id)
    call.arguments = json.dumps(arguments).encode()
    try:
        if not wire.visible(route.tools, tool):
            guard.metrics.tool_call(route.tool, "refused")
            raise guard.gate.not_permitted(f"{route.tool}/{tool}")
        broken = wire.argument_violation(route.rules, tool, arguments)
        if broken is not None:
            guard.metrics.tool_call(route.tool, "refused")
            raise GuardError(Code.TOOL_NOT_PERMITTED, f"tool {route.tool}/{tool}: {broken}", 403)
        key = wire.task_key(route.server, headers.get(TASK_HEADER), msg.meta, headers.get(SESSION_HEADER))
        judged = wire.core_call(route.tool, tool, arguments, call_id)
        task = core.open_tool_call(guard, call, key, call.arguments.decode(), call=judged)
    except GuardError as err:
        call.fail(err)
        call.finish()
        raise
    return call, task


def failed_call(guard: Guard, route: Route, call: McpLog, err: GuardError) -> GuardError:
    """Record a call that failed after it was let through (an unreachable server counts as a
    tool error, towards a repeated-error loop); returns the refusal to answer with."""
    if err.code is Code.TOOL_UNAVAILABLE and call.task is not None:
        err = core.tool_failure(guard, call.task, route.tool, err.message, "unavailable")
    call.fail(err)
    return err


async def _tool_call(
    guard: Guard, state: McpState, route: Route, request: web.Request, raw: bytes, msg: wire.Message
) -> web.StreamResponse:
    """Judge one ``tools/call`` with the core, forward it, judge its result."""
    try:
        call, task = open_call(guard, state, route, request.headers, msg)
    except wire.WireError as exc:
        state.count(route.server, "tools/call", "rejected")
        return _rpc(wire.error(msg.id, exc.code, exc.message))
    except GuardError as err:
        return _rpc(wire.refusal(msg.id, err))
    try:
        resp = await _exchange(
            guard,
            state,
            route,
            request,
            raw,
            msg_id=msg.id,
            transform=result_judge(guard, route, task, call),
            within=guard.limits.call_deadline,
        )
        if call.reason is None:
            call.status = resp.status
        if resp.status >= 400:
            core.tool_answer(guard, task, route.tool, resp.status, f"HTTP {resp.status} from the MCP server")
        elif not call.answered:  # e.g. an event stream the server ended without the answer
            call.outcome = "error"
        return resp
    except GuardError as err:
        return _rpc(wire.refusal(msg.id, failed_call(guard, route, call, err)))
    finally:
        call.finish()


def result_judge(guard: Guard, route: Route, task: Task, call: McpLog) -> Transform:
    """Judge the server's answer before the agent reads it: a failure counts as a tool error (a
    repeated one ends the task), the text is scanned for injection (``Block``: refused)."""

    async def transform(message: dict[str, Any]) -> dict[str, Any]:
        failed, text = wire.result_text(message)
        call.result = text.encode()
        call.answered = True
        try:
            scans = {}
            if text and guard.cfg.guard.injection is not InjectionMode.OFF:
                scans[text] = await core.scan_text(guard, text, f"the result of MCP tool {call.tool!r}", route.tool)
            core.tool_answer(guard, task, route.tool, 500 if failed else 200, text, scans)
        except GuardError as err:
            call.fail(err)
            return wire.refusal(message.get("id"), err)
        call.outcome = "error" if failed else "ok"
        return message

    return transform


async def _stream(
    guard: Guard, state: McpState, route: Route, request: web.Request, body: bytes, msg_id: Any
) -> web.StreamResponse:
    """A long-lived event stream (``GET``, ``subscriptions/listen``): relayed as is, no deadline,
    at most ``MAX_STREAMS`` at once."""
    if state.streams >= MAX_STREAMS:
        raise GuardError(
            Code.CONCURRENCY_LIMIT,
            f"{MAX_STREAMS} MCP event streams are already open; close one first",
            429,
            retry_after=1,
            should_retry=True,
        )
    state.streams += 1
    try:
        return await _exchange(guard, state, route, request, body, msg_id=msg_id, within=None)
    finally:
        state.streams -= 1


async def get(guard: Guard, request: web.Request, sse: SseStream) -> web.StreamResponse:
    """``GET /mcp/<server>``: the server's event stream for the session (or its 405); of an
    HTTP+SSE server, ``sse`` relays it."""
    state = state_of(guard)
    outcome = "error"
    try:
        route = _route(guard, state, request)
        if route.transport is McpTransport.SSE:
            resp = await sse(guard, request, route)
        else:
            resp = await _stream(guard, state, route, request, b"", None)
        outcome = "ok" if resp.status < 400 else "error"
        return resp
    except GuardError as err:
        outcome = "rejected" if err.is_rejection else "error"
        return _rpc(wire.refusal(None, err), err.status)
    finally:
        server = request.match_info["server"]
        state.count(server if server in state.routes else "_other", "stream", outcome)


async def delete(guard: Guard, request: web.Request) -> web.StreamResponse:
    """``DELETE /mcp/<server>``: end the session at the server."""
    state = state_of(guard)
    try:
        with guard.slot():
            route = _route(guard, state, request)
            return await _exchange(guard, state, route, request, b"", within=guard.limits.call_deadline)
    except GuardError as err:
        return _rpc(wire.refusal(None, err), err.status)
