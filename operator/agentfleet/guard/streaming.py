"""Relaying an upstream event stream to the agent, for every streamed protocol (OpenAI chat
completions and Responses, Anthropic Messages).

What differs between those protocols (which events carry tool calls, usage, the end, and how
a refusal is written) is a ``Relay`` the adapter supplies; what is the same (opening the stream
with retries until its first event, the call deadline, a broken or truncated upstream, an agent
that went away, settling the call's usage in ``finally``) is here, once. A relay holds every
event of a tool call until the call is complete and judged, so a refused call never reaches
the agent: the stream ends with the relay's error event instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from typing import Any, Protocol

import aiohttp
from aiohttp import web

from agentfleet.guard.core import CallLog
from agentfleet.guard.errors import Code, GuardError
from agentfleet.guard.shapes import Usage
from agentfleet.guard.sse import Event, encode
from agentfleet.guard.state import Guard
from agentfleet.guard.upstream import StreamStart, classify

SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


class Relay(Protocol):
    """One protocol's view of a stream: ``feed`` an upstream event, get the bytes for the agent
    and a refusal that ends the stream."""

    @property
    def finished(self) -> bool:
        """The stream's last event was relayed (or an upstream error event)."""

    @property
    def upstream_error(self) -> bool:
        """The upstream ended the stream with an error event (relayed alone)."""

    @property
    def out_chars(self) -> int:
        """Characters of output seen (the estimate when the upstream reports no usage)."""

    def feed(self, event: Event) -> tuple[bytes, GuardError | None]: ...

    def usage(self) -> Usage | None: ...

    def error_event(self, err: GuardError) -> bytes: ...

    def audit_completion(self) -> dict[str, Any]: ...


class Transcript:
    """What a stream said, for the audit trail: a digest and length of its text and tool-call
    arguments, or (content capture on) the text and calls themselves, bounded by ``limit``."""

    __slots__ = ("calls", "capture", "captured", "chars", "digest", "length", "limit", "texts")

    def __init__(self, capture: bool, limit: int) -> None:
        self.capture = capture
        self.limit = limit
        self.captured = 0
        self.chars = 0
        self.length = 0
        self.digest = hashlib.sha256()
        self.texts: list[str] = []
        self.calls: list[Any] = []

    def text(self, text: str) -> None:
        raw = text.encode()
        self.chars += len(text)
        self.length += len(raw)
        self.digest.update(raw)
        if self.capture and self.captured + len(raw) <= self.limit:
            self.captured += len(raw)
            self.texts.append(text)

    def call(self, item: Any) -> None:
        raw = json.dumps(item, sort_keys=True, default=str)
        self.chars += len(raw)
        self.length += len(raw.encode())
        self.digest.update(raw.encode())
        if self.capture and self.captured + len(raw) <= self.limit:
            self.captured += len(raw)
            self.calls.append(item)

    def audit(self) -> dict[str, Any]:
        if self.capture:
            return {"content": {"content": "".join(self.texts), "tool_calls": self.calls}}
        return {"sha256": self.digest.hexdigest(), "length": self.length}


def typed_event(kind: str, data: bytes) -> bytes:
    """One server-sent event with an ``event:`` line (both protocols name every event)."""
    return b"event: " + kind.encode() + b"\n" + encode(data)


async def _write(resp: web.StreamResponse, data: bytes) -> bool:
    """Write to the agent; False if it went away."""
    try:
        await resp.write(data)
    except (ConnectionError, aiohttp.ClientError, RuntimeError):
        return False
    return True


async def relay_events(
    guard: Guard,
    request: web.Request,
    call: CallLog,
    start: StreamStart,
    relay: Relay,
    *,
    deadline: float,
    prompt_tokens: int,
    last: str = "its last event",
) -> web.StreamResponse:
    """Relay an opened upstream stream through ``relay``; on a refusal or an upstream failure
    after the start, end with the relay's error event. The call's usage, outcome and completion
    are recorded whatever happens (``call.finish`` settles them)."""
    call.attempts = start.attempts
    call.first_event = time.perf_counter()  # the start holds the stream's first event
    if start.reply is not None:
        call.passthrough(start.reply.status)
        r = start.reply
        return web.Response(status=r.status, body=r.body, content_type=r.content_type)
    assert start.reader is not None
    resp = web.StreamResponse(headers=SSE_HEADERS)
    failure: GuardError | None = None
    client_alive = True
    try:
        try:
            await resp.prepare(request)
        except (ConnectionError, aiohttp.ClientError, RuntimeError):
            client_alive = False
        event: Event | None = start.first if client_alive else None
        try:
            async with asyncio.timeout_at(deadline):
                while event is not None:
                    out, failure = relay.feed(event)
                    if out and not await _write(resp, out):
                        client_alive = False
                        break
                    if failure is not None or relay.finished:
                        break
                    event = await start.reader.next()
        except TimeoutError:
            guard.metrics.upstream["timeout"].inc()
            failure = GuardError(Code.UPSTREAM_UNAVAILABLE, "the stream exceeded the call deadline", 503)
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            reason, detail = classify(exc)
            guard.metrics.upstream[reason].inc()
            guard.breaker.failure(reason)
            failure = GuardError(Code.UPSTREAM_UNAVAILABLE, f"upstream stream failed mid-way: {detail}", 503)
        if failure is None and client_alive and not relay.finished and event is None:
            guard.metrics.upstream["truncated"].inc()
            guard.breaker.failure("stream truncated")
            failure = GuardError(Code.UPSTREAM_UNAVAILABLE, f"upstream stream ended before {last} (truncated)", 503)
        if failure is not None and client_alive:
            client_alive = await _write(resp, relay.error_event(failure))
    finally:
        start.close()
        call.used(relay.usage(), prompt_tokens, relay.out_chars)
        call.completion = relay.audit_completion()
    if failure is not None:
        call.fail(failure)
    elif relay.upstream_error:
        call.outcome, call.status, call.reason = "error", 200, "upstream_stream_error"
    elif not client_alive:
        call.outcome, call.status, call.reason = "error", 200, "client_disconnected"
    else:
        call.ok()
    if client_alive:
        with contextlib.suppress(ConnectionError, aiohttp.ClientError, RuntimeError):
            await resp.write_eof()
    return resp
