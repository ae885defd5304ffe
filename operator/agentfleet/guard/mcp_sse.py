"""The older MCP HTTP+SSE transport (2024-11-05) through the guard, for servers declared with
``mcp.transport: SSE``.

The agent ``GET``s ``/mcp/<server>``: the guard opens the server's event stream (with the
credential) and relays it. The stream's first ``endpoint`` event names where the client POSTs its
messages; the guard keeps that URL (it must be on the server's own origin) and gives the agent
its own instead, ``/mcp/<server>/messages?session=<id>``. Answers come back on the stream, not on
the POST, so:

- a ``POST`` is judged like a streamable-HTTP message (``mcp_proxy.open_call`` for
  ``tools/call``, the same filters for ``tools/list`` and ``initialize``); a refused message never
  reaches the server, and its JSON-RPC error is put into the agent's stream;
- the guard remembers each forwarded request it must judge the answer of (bounded, and for at
  most the per-call deadline: a call the server never answers is then a tool failure, answered
  with an error in the stream); the answer is judged (filtered, scanned) before it is relayed.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from agentfleet.guard import mcp_proxy as proxy
from agentfleet.guard import mcp_wire as wire
from agentfleet.guard.errors import Code, GuardError
from agentfleet.guard.httpio import read_body
from agentfleet.guard.sse import Event, SSEError, SSEParser
from agentfleet.guard.state import Guard, log

MAX_PENDING = 1024
"""Requests of one session awaiting their answer on the stream; more are refused."""


@dataclass(slots=True)
class Pending:
    transform: proxy.Transform
    finish: Callable[[], None] | None
    timer: asyncio.TimerHandle | None = None


@dataclass(slots=True)
class Session:
    """One agent's event stream from one SSE server."""

    route: proxy.Route
    post_url: str
    sid: str
    """The guard's id of the session (its task, unless the agent names one)."""
    queue: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)
    """Events to write to the agent that the guard made (refusals); None ends the relay."""
    pending: dict[str, Pending] = field(default_factory=dict)


_SESSIONS: dict[str, Session] = {}
"""Open sessions by the guard's id (at most ``mcp_proxy.MAX_STREAMS``, one per open stream)."""


def _key(msg_id: Any) -> str:
    return json.dumps(msg_id)


def _inject(session: Session, message: dict[str, Any]) -> None:
    session.queue.put_nowait(b"event: message\ndata: " + json.dumps(message).encode() + b"\n\n")


def _same_origin(a: str, b: str) -> bool:
    x, y = urlsplit(a), urlsplit(b)
    return (x.scheme, x.netloc) == (y.scheme, y.netloc)


async def stream(guard: Guard, request: web.Request, route: proxy.Route) -> web.StreamResponse:
    """``GET /mcp/<server>`` of an SSE server: relay its event stream, judging what it answers."""
    state = proxy.state_of(guard)
    if state.streams >= proxy.MAX_STREAMS:
        raise GuardError(
            Code.CONCURRENCY_LIMIT, f"{proxy.MAX_STREAMS} MCP event streams are already open", 429, retry_after=1
        )
    state.streams += 1
    sid = secrets.token_urlsafe(18)
    session: Session | None = None
    out: web.StreamResponse | None = None
    reader: asyncio.Task[None] | None = None
    try:
        headers = proxy.upstream_headers(request, route, await state.credential(route))
        headers["Accept"] = "text/event-stream"
        async with guard.upstream.session.get(route.endpoint, headers=headers, allow_redirects=False) as resp:
            if resp.status != 200 or resp.content_type != "text/event-stream":
                body = await resp.content.read(4096)
                return web.Response(status=resp.status if resp.status >= 400 else 502, body=body)
            out = web.StreamResponse(status=200, headers={"Cache-Control": "no-cache"})
            out.content_type = "text/event-stream"
            await out.prepare(request)
            parser = SSEParser(guard.tuning.max_response_bytes)
            events: asyncio.Queue[Event | None] = asyncio.Queue(maxsize=64)

            async def read() -> None:
                try:
                    async for chunk in resp.content.iter_any():
                        for event in parser.feed(chunk):
                            await events.put(event)
                except (aiohttp.ClientError, OSError, SSEError) as exc:
                    log("mcp_stream_cut", server=route.server, error=type(exc).__name__)
                finally:
                    await events.put(None)

            reader = asyncio.create_task(read())
            while True:
                injected = asyncio.ensure_future(session.queue.get()) if session is not None else None
                upstream = asyncio.ensure_future(events.get())
                waiting: set[asyncio.Future[Any]] = {upstream} if injected is None else {upstream, injected}
                done, _ = await asyncio.wait(waiting, timeout=1.0, return_when=asyncio.FIRST_COMPLETED)
                if not done and (request.transport is None or request.transport.is_closing()):
                    for f in waiting:
                        f.cancel()
                    break  # the agent hung up: close the server's stream too
                if injected is not None and injected not in done:
                    injected.cancel()
                if upstream not in done:
                    upstream.cancel()
                if injected is not None and injected in done:
                    data = injected.result()
                    if data is None:
                        break
                    await out.write(data)
                if upstream in done:
                    event = upstream.result()
                    if event is None:
                        break
                    if session is None and event.type == b"endpoint":
                        post_url = urljoin(route.endpoint, event.data.decode("utf-8", "replace").strip())
                        if not _same_origin(post_url, route.endpoint):
                            log("mcp_sse_foreign_endpoint", server=route.server)
                            break
                        session = _SESSIONS[sid] = Session(route, post_url, sid)
                        mine = f"/mcp/{route.server}/messages?session={sid}"
                        await out.write(b"event: endpoint\ndata: " + mine.encode() + b"\n\n")
                        continue
                    await out.write(await _judged(session, event))
            await out.write_eof()
            return out
    except GuardError:
        raise
    except (aiohttp.ClientError, OSError) as exc:
        if out is None:
            raise GuardError(Code.TOOL_UNAVAILABLE, f"MCP server {route.tool!r} failed: {exc!s}"[:300], 502) from None
        out.force_close()
        return out
    finally:
        state.streams -= 1
        if reader is not None:
            reader.cancel()
        if session is not None:
            _SESSIONS.pop(sid, None)
            for pending in session.pending.values():
                if pending.timer is not None:
                    pending.timer.cancel()
                if pending.finish is not None:
                    pending.finish()
            session.pending.clear()


async def _judged(session: Session | None, event: Event) -> bytes:
    """The event to write: a ``message`` answering a remembered request, judged first."""
    data = event.data
    if session is not None and event.type == b"message" and data.startswith(b"{"):
        try:
            message = json.loads(data)
        except ValueError:
            message = None
        if isinstance(message, dict) and "id" in message and ("result" in message or "error" in message):
            pending = session.pending.pop(_key(message.get("id")), None)
            if pending is not None:
                if pending.timer is not None:
                    pending.timer.cancel()
                try:
                    data = json.dumps(await pending.transform(message)).encode()
                finally:
                    if pending.finish is not None:
                        pending.finish()
    head = b"event: " + event.type + b"\n" if event.type != b"message" else b"event: message\n"
    return head + b"".join(b"data: " + line + b"\n" for line in data.split(b"\n")) + b"\n"


async def get(guard: Guard, request: web.Request) -> web.StreamResponse:
    """``GET /mcp/<server>`` (both transports)."""
    return await proxy.get(guard, request, stream)


async def message(guard: Guard, request: web.Request) -> web.StreamResponse:
    """``POST /mcp/<server>/messages?session=<id>``: one message of an SSE session."""
    state = proxy.state_of(guard)
    session = _SESSIONS.get(request.query.get("session", ""))
    server = request.match_info["server"]
    if session is None or session.route.server != server:
        return web.Response(status=404, text="no such MCP session")
    route = session.route
    method, outcome = "_other", "error"
    try:
        with guard.slot():
            raw = await read_body(request)
            try:
                msg = wire.classify(json.loads(raw))
            except (ValueError, RecursionError):
                outcome = "rejected"
                return web.Response(status=400, text="the body is not valid JSON")
            except wire.WireError as exc:
                outcome = "rejected"
                return web.Response(status=400, text=exc.message)
            method = wire.method_label(msg)
            if msg.kind == "request":
                if len(session.pending) >= MAX_PENDING:
                    raise GuardError(Code.CONCURRENCY_LIMIT, "too many MCP requests awaiting answers", 429)
                if msg.method == "tools/call":
                    method = "tools/call"
                    return await _tool_call(guard, state, session, request, raw, msg)
                if msg.method not in wire.FORWARDED_METHODS:
                    outcome, method = "rejected", "refused"
                    _inject(session, wire.error(msg.id, wire.METHOD_NOT_FOUND, "not served through the guard"))
                    return web.Response(status=202, text="Accepted")
                if msg.method == "tools/list":
                    session.pending[_key(msg.id)] = Pending(proxy.list_filter(guard, route), None)
                elif msg.method == "initialize":
                    session.pending[_key(msg.id)] = Pending(proxy.capabilities_filter, None)
            resp = await _post(guard, state, session, request, raw)
            outcome = "ok" if resp.status < 400 else "error"
            return resp
    except GuardError as err:
        outcome = "rejected" if err.is_rejection else "error"
        return web.Response(status=err.status, text=err.message)
    finally:
        if method != "tools/call":
            state.count(server, method, outcome)


async def _post(
    guard: Guard, state: proxy.McpState, session: Session, request: web.Request, raw: bytes
) -> web.StreamResponse:
    """Forward one message to the server's POST endpoint; its answer is only an acknowledgement."""
    route = session.route
    headers = proxy.upstream_headers(request, route, await state.credential(route))
    try:
        async with (
            asyncio.timeout(guard.limits.call_deadline),
            guard.upstream.session.post(session.post_url, data=raw, headers=headers, allow_redirects=False) as resp,
        ):
            body = await resp.content.read(4096)
            return web.Response(status=resp.status, body=body)
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        raise GuardError(Code.TOOL_UNAVAILABLE, f"MCP server {route.tool!r} failed: {exc!s}"[:300], 502) from None


async def _tool_call(
    guard: Guard, state: proxy.McpState, session: Session, request: web.Request, raw: bytes, msg: wire.Message
) -> web.StreamResponse:
    route = session.route
    try:
        headers = CIMultiDict(request.headers)
        headers[proxy.SESSION_HEADER] = session.sid  # one session, one task (as with streamable HTTP)
        call, task = proxy.open_call(guard, state, route, headers, msg)
    except wire.WireError as exc:
        state.count(route.server, "tools/call", "rejected")
        _inject(session, wire.error(msg.id, exc.code, exc.message))
        return web.Response(status=202, text="Accepted")
    except GuardError as err:
        _inject(session, wire.refusal(msg.id, err))
        return web.Response(status=202, text="Accepted")
    key = _key(msg.id)
    pending = session.pending[key] = Pending(proxy.result_judge(guard, route, task, call), call.finish)

    def expire() -> None:
        if session.pending.pop(key, None) is None:
            return
        err = proxy.failed_call(
            guard, route, call, GuardError(Code.TOOL_UNAVAILABLE, f"MCP server {route.tool!r} did not answer", 504)
        )
        call.finish()
        _inject(session, wire.refusal(msg.id, err))

    pending.timer = asyncio.get_running_loop().call_later(guard.limits.call_deadline, expire)
    try:
        resp = await _post(guard, state, session, request, raw)
    except GuardError as err:
        if session.pending.pop(key, None) is not None:
            if pending.timer is not None:
                pending.timer.cancel()
            err = proxy.failed_call(guard, route, call, err)
            call.finish()
            _inject(session, wire.refusal(msg.id, err))
        return web.Response(status=202, text="Accepted")
    call.status = resp.status
    return resp
