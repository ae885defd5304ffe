"""The OpenAI adapter's streaming chat completions: relay the upstream's server-sent events, holding tool calls.

Content deltas pass through as they arrive (the raw bytes when nothing changed). Tool-call
deltas are stripped from their chunks and assembled; when a call is complete (the next call
starts, or its choice finishes) it is judged like a non-streaming call and then emitted as one
synthesized chunk carrying the whole call, or the stream ends with an error event. So streaming
is enforced exactly as strictly as non-streaming: no fragment of a refused call reaches the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from typing import Any

import aiohttp
from aiohttp import web

from agentfleet.guard.core import CallLog, judge_calls
from agentfleet.guard.errors import Code, GuardError
from agentfleet.guard.httpio import error_body
from agentfleet.guard.openai_wire import legacy_call_refusal, usage_of
from agentfleet.guard.shapes import ToolCall
from agentfleet.guard.state import Guard
from agentfleet.guard.tasks import Task
from agentfleet.guard.upstream import StreamStart, classify

SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


def error_event(err: GuardError) -> bytes:
    """A refusal or failure as a server-sent event, for after a stream has started; the OpenAI
    SDKs raise ``APIError`` on it."""
    return _event(json.dumps(error_body(err)).encode())


async def _write(resp: web.StreamResponse, data: bytes) -> bool:
    """Write to the agent; False if it went away."""
    try:
        await resp.write(data)
    except (ConnectionError, aiohttp.ClientError, RuntimeError):
        return False
    return True


async def relay_stream(
    guard: Guard,
    request: web.Request,
    call: CallLog,
    *,
    task: Task,
    body: bytes,
    deadline: float,
    want_usage: bool,
    prompt_tokens: int,
) -> web.StreamResponse:
    """Open the upstream stream (retried until its first event) and relay it to the agent; on a
    refusal or an upstream failure after the start, end with an error event instead of [DONE]."""
    start: StreamStart = await guard.upstream.open_stream("/chat/completions", body, deadline)
    call.attempts = start.attempts
    if start.reply is not None:
        call.passthrough(start.reply.status)
        r = start.reply
        return web.Response(status=r.status, body=r.body, content_type=r.content_type)
    assert start.reader is not None
    relay = StreamRelay(guard, task, want_usage)
    resp = web.StreamResponse(headers=SSE_HEADERS)
    failure: GuardError | None = None
    client_alive = True
    try:
        try:
            await resp.prepare(request)
        except (ConnectionError, aiohttp.ClientError, RuntimeError):
            client_alive = False
        data: bytes | None = start.first if client_alive else None
        try:
            async with asyncio.timeout_at(deadline):
                while data is not None:
                    out, failure = relay.feed(data)
                    if out and not await _write(resp, out):
                        client_alive = False
                        break
                    if failure is not None or relay.finished:
                        break
                    data = await start.reader.next()
        except TimeoutError:
            guard.metrics.upstream["timeout"].inc()
            failure = GuardError(Code.UPSTREAM_UNAVAILABLE, "the stream exceeded the call deadline", 503)
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            reason, detail = classify(exc)
            guard.metrics.upstream[reason].inc()
            guard.breaker.failure(reason)
            failure = GuardError(Code.UPSTREAM_UNAVAILABLE, f"upstream stream failed mid-way: {detail}", 503)
        if failure is None and client_alive and not relay.finished and data is None:
            guard.metrics.upstream["truncated"].inc()
            guard.breaker.failure("stream truncated")
            failure = GuardError(Code.UPSTREAM_UNAVAILABLE, "upstream stream ended before [DONE] (truncated)", 503)
        if failure is not None and client_alive:
            client_alive = await _write(resp, error_event(failure))
    finally:
        start.close()
        call.used(usage_of(relay.usage), prompt_tokens, relay.out_chars)
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


def _event(data: bytes) -> bytes:
    return b"data: " + data + b"\n\n"


class _Builder:
    __slots__ = ("args", "id", "index", "name")

    def __init__(self, index: int) -> None:
        self.index = index
        self.id: str | None = None
        self.name = ""
        self.args: list[str] = []


class StreamRelay:
    """Re-emits an upstream chat stream, holding each tool call until it is complete.

    ``feed`` takes one event's data and returns the bytes for the agent plus a refusal if the
    stream must stop. Content deltas pass through untouched (raw bytes when nothing changed);
    tool-call deltas are stripped from their chunks, assembled, judged, and emitted as one
    synthesized chunk carrying the complete call.
    """

    def __init__(self, guard: Guard, task: Task, want_usage: bool) -> None:
        self.guard = guard
        self.task = task
        self.want_usage = want_usage
        self.builders: dict[tuple[int, int], _Builder] = {}
        self.envelope: dict[str, Any] = {}
        self.usage: Any = None
        self.out_chars = 0
        self.out_bytes = 0
        self.digest = hashlib.sha256()
        self.content: list[str] = []
        self.emitted_calls: list[dict[str, Any]] = []
        self.finished = False
        """[DONE] (or an upstream error event) was relayed."""
        self.upstream_error = False

    def audit_completion(self) -> dict[str, Any]:
        """The completion for the audit trail: digest of content and tool arguments, or the
        full text when content capture is on."""
        if self.guard.audit.capture_content:
            return {"content": {"content": "".join(self.content), "tool_calls": self.emitted_calls}}
        return {"sha256": self.digest.hexdigest(), "length": self.out_bytes}

    def _account(self, text: str) -> None:
        raw = text.encode()
        self.out_chars += len(text)
        self.out_bytes += len(raw)
        self.digest.update(raw)

    def _call_chunk(self, choice: int, b: _Builder) -> bytes:
        fn = {"name": b.name, "arguments": "".join(b.args)}
        tc = {"index": b.index, "id": b.id, "type": "function", "function": fn}
        if self.guard.audit.capture_content:
            self.emitted_calls.append(tc)
        chunk = {**self.envelope, "choices": [{"index": choice, "delta": {"tool_calls": [tc]}, "finish_reason": None}]}
        return _event(json.dumps(chunk).encode())

    def _complete(self, choice: int) -> tuple[bytes, GuardError | None]:
        """Judge and emit every open call of ``choice``."""
        out: list[bytes] = []
        for key in [k for k in self.builders if k[0] == choice]:
            b = self.builders.pop(key)
            args = "".join(b.args)
            self._account(args)
            refusal = judge_calls(self.guard, self.task, [ToolCall(b.name, args, b.id)])
            if refusal is not None:
                return b"".join(out), refusal
            out.append(self._call_chunk(choice, b))
        return b"".join(out), None

    def _complete_all(self) -> tuple[bytes, GuardError | None]:
        out: list[bytes] = []
        for choice in sorted({k[0] for k in self.builders}):
            part, refusal = self._complete(choice)
            out.append(part)
            if refusal is not None:
                return b"".join(out), refusal
        return b"".join(out), None

    def feed(self, data: bytes) -> tuple[bytes, GuardError | None]:
        """Process one event; returns bytes for the agent and a refusal that ends the stream."""
        if data.strip() == b"[DONE]":
            out, refusal = self._complete_all()
            if refusal is not None:
                return out, refusal
            self.finished = True
            return out + b"data: [DONE]\n\n", None
        try:
            chunk = json.loads(data)
        except ValueError:
            return _event(data), None
        if not isinstance(chunk, dict):
            return _event(data), None
        if chunk.get("error"):
            self.finished = self.upstream_error = True
            return _event(data), None
        modified = False
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
            if not self.want_usage:  # the usage the guard asked for; "usage": null may stay
                del chunk["usage"]
                modified = True
        choices = chunk.get("choices")
        before: list[bytes] = []
        keep = True
        if isinstance(choices, list):
            self.envelope = {
                k: chunk[k] for k in ("id", "object", "created", "model", "system_fingerprint") if k in chunk
            }
            keep = bool(choices) or "usage" in chunk
            has_payload = False
            for choice in choices:
                if not isinstance(choice, dict):
                    continue
                idx = choice.get("index", 0)
                idx = idx if isinstance(idx, int) else 0
                delta = choice.get("delta")
                if isinstance(delta, dict):
                    content = delta.get("content")
                    if isinstance(content, str) and content:
                        self._account(content)
                        if self.guard.audit.capture_content:
                            self.content.append(content)
                    if delta.get("function_call"):
                        return b"".join(before), legacy_call_refusal()
                    calls = delta.pop("tool_calls", None)
                    if calls is not None:
                        modified = True
                        for tc in calls if isinstance(calls, list) else ():
                            part, refusal = self._add(idx, tc)
                            before.append(part)
                            if refusal is not None:
                                return b"".join(before), refusal
                    has_payload = has_payload or bool(delta)
                if choice.get("finish_reason") is not None:
                    has_payload = True
                    part, refusal = self._complete(idx)
                    before.append(part)
                    if refusal is not None:
                        return b"".join(before), refusal
                elif choice.get("logprobs"):
                    has_payload = True
            if modified and not has_payload and "usage" not in chunk:
                keep = False
        prefix = b"".join(before)
        if not keep:
            return prefix, None
        return prefix + _event(json.dumps(chunk).encode() if modified else data), None

    def _add(self, choice: int, tc: Any) -> tuple[bytes, GuardError | None]:
        if not isinstance(tc, dict):
            return b"", None
        index = tc.get("index", 0)
        key = (choice, index if isinstance(index, int) else 0)
        out, refusal = b"", None
        b = self.builders.get(key)
        if b is None:
            out, refusal = self._complete(choice)  # a new call starts: the previous ones are complete
            if refusal is not None:
                return out, refusal
            b = self.builders[key] = _Builder(key[1])
        if tc.get("id"):
            b.id = str(tc["id"])
        fn = tc.get("function")
        if isinstance(fn, dict):
            if isinstance(fn.get("name"), str):
                b.name += fn["name"]
            if isinstance(fn.get("arguments"), str):
                b.args.append(fn["arguments"])
        return out, None
