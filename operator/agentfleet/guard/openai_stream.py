"""The OpenAI adapter's streaming chat completions: relay the upstream's events, holding tool calls.

Content deltas pass through as they arrive (the same data when nothing changed). Tool-call
deltas (of every kind: ``function``, ``custom``, and kinds the guard cannot read, which are
refused) are stripped from their chunks and assembled; when a call is complete (the next call
starts, or its choice finishes) it is judged like a non-streaming call and then emitted as one
synthesized chunk carrying the whole call, or the stream ends with an error event. So streaming
is enforced exactly as strictly as non-streaming: no fragment of a refused call reaches the agent.

An upstream error (a chunk with ``error``, or an ``event: error``) ends the stream: the agent
gets the error alone, never the tool calls that rode on it or were still held.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from aiohttp import web

from agentfleet.guard.core import CallLog, judge_calls
from agentfleet.guard.errors import Code, GuardError
from agentfleet.guard.httpio import error_body
from agentfleet.guard.openai_wire import legacy_call_refusal, usage_of
from agentfleet.guard.shapes import ToolCall, Usage
from agentfleet.guard.sse import Event, encode
from agentfleet.guard.state import Guard
from agentfleet.guard.streaming import relay_events
from agentfleet.guard.tasks import Task


def error_event(err: GuardError) -> bytes:
    """A refusal or failure as a server-sent event, for after a stream has started; the OpenAI
    SDKs raise ``APIError`` on it."""
    return encode(json.dumps(error_body(err)).encode())


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
    """Open the upstream stream (retried until its first event) and relay it to the agent
    (``streaming.relay_events``); on a refusal or an upstream failure after the start, end with an
    error event instead of [DONE]."""
    start = await guard.upstream.open_stream("/chat/completions", body, deadline)
    relay = StreamRelay(guard, task, want_usage, held_limit=guard.tuning.max_response_bytes)
    return await relay_events(
        guard, request, call, start, _AsRelay(relay), deadline=deadline, prompt_tokens=prompt_tokens, last="[DONE]"
    )


class _AsRelay:
    """A chat ``StreamRelay`` as the ``streaming.Relay`` the shared stream loop drives."""

    __slots__ = ("relay",)

    def __init__(self, relay: StreamRelay) -> None:
        self.relay = relay

    @property
    def finished(self) -> bool:
        return self.relay.finished

    @property
    def upstream_error(self) -> bool:
        return self.relay.upstream_error

    @property
    def out_chars(self) -> int:
        return self.relay.out_chars

    def feed(self, event: Event) -> tuple[bytes, GuardError | None]:
        return self.relay.feed(event)

    def usage(self) -> Usage | None:
        return usage_of(self.relay.usage)

    def error_event(self, err: GuardError) -> bytes:
        return error_event(err)

    def audit_completion(self) -> dict[str, Any]:
        return self.relay.audit_completion()


class _Builder:
    """One tool call being assembled from its deltas."""

    __slots__ = ("args", "broken", "id", "index", "kind", "name")

    def __init__(self, index: int) -> None:
        self.index = index
        self.id: str | None = None
        self.kind: str | None = None
        self.name = ""
        self.args: list[str] = []
        self.broken = False
        """A delta the guard could not read: the call is refused, not passed on."""

    def add(self, tc: dict[str, Any]) -> int:
        """Take one delta; returns the bytes of arguments it added."""
        if tc.get("id"):
            self.id = str(tc["id"])
        kind = tc.get("type")
        if kind is not None:
            if self.kind is not None and kind != self.kind:
                self.broken = True
            self.kind = str(kind)
        added = 0
        for key, arg_key in (("function", "arguments"), ("custom", "input")):
            part = tc.get(key)
            if part is None:
                continue
            if not isinstance(part, dict):
                self.broken = True
                continue
            if self.kind is None:
                self.kind = key
            elif self.kind != key:
                self.broken = True
            if isinstance(part.get("name"), str):
                self.name += part["name"]
            if isinstance(part.get(arg_key), str):
                self.args.append(part[arg_key])
                added += len(part[arg_key])
        return added

    def call(self) -> ToolCall:
        kind = self.kind or "function"
        known = not self.broken and kind in ("function", "custom") and bool(self.name)
        return ToolCall(self.name, "".join(self.args), self.id, kind=kind, known=known)

    def delta(self, call: ToolCall) -> dict[str, Any]:
        """The whole call as one ``tool_calls`` delta, in the shape of its kind."""
        if call.kind == "custom":
            return {
                "index": self.index,
                "id": self.id,
                "type": "custom",
                "custom": {"name": call.name, "input": call.arguments},
            }
        fn = {"name": call.name, "arguments": call.arguments}
        return {"index": self.index, "id": self.id, "type": "function", "function": fn}


class StreamRelay:
    """Re-emits an upstream chat stream, holding each tool call until it is complete.

    ``feed`` takes one event and returns the bytes for the agent plus a refusal if the stream
    must stop. Content deltas pass through untouched (the same data when nothing changed);
    tool-call deltas are stripped from their chunks, assembled, judged, and emitted as one
    synthesized chunk carrying the complete call. What is held is bounded by ``held_limit``.
    """

    def __init__(self, guard: Guard, task: Task, want_usage: bool, *, held_limit: int = 64 * 1024 * 1024) -> None:
        self.guard = guard
        self.task = task
        self.want_usage = want_usage
        self.held_limit = held_limit
        self.held = 0
        self.builders: dict[tuple[int, int], _Builder] = {}
        self.envelope: dict[str, Any] = {}
        self.usage: Any = None
        self.out_chars = 0
        self.out_bytes = 0
        self.digest = hashlib.sha256()
        self.content: list[str] = []
        self.captured = 0
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

    def _capture(self, item: str | dict[str, Any], size: int) -> None:
        """Keep content for the audit trail when capture is on (bounded like the stream)."""
        if self.guard.audit.capture_content and self.captured + size <= self.held_limit:
            self.captured += size
            if isinstance(item, str):
                self.content.append(item)
            else:
                self.emitted_calls.append(item)

    def _call_chunk(self, choice: int, delta: dict[str, Any]) -> bytes:
        self._capture(delta, len(json.dumps(delta)))
        chunk = {
            **self.envelope,
            "choices": [{"index": choice, "delta": {"tool_calls": [delta]}, "finish_reason": None}],
        }
        return encode(json.dumps(chunk).encode())

    def _complete(self, choice: int) -> tuple[bytes, GuardError | None]:
        """Judge and emit every open call of ``choice``."""
        out: list[bytes] = []
        for key in [k for k in self.builders if k[0] == choice]:
            b = self.builders.pop(key)
            call = b.call()
            self.held -= sum(len(a) for a in b.args)
            self._account(call.arguments)
            refusal = judge_calls(self.guard, self.task, [call])
            if refusal is not None:
                return b"".join(out), refusal
            out.append(self._call_chunk(choice, b.delta(call)))
        return b"".join(out), None

    def _complete_all(self) -> tuple[bytes, GuardError | None]:
        out: list[bytes] = []
        for choice in sorted({k[0] for k in self.builders}):
            part, refusal = self._complete(choice)
            out.append(part)
            if refusal is not None:
                return b"".join(out), refusal
        return b"".join(out), None

    def _upstream_error(self, error: Any) -> bytes:
        """End the stream with the upstream's error alone: held calls never reach the agent."""
        self.builders.clear()
        self.held = 0
        self.finished = self.upstream_error = True
        if not isinstance(error, dict):
            error = {"message": str(error)[:2000], "type": "server_error", "code": "upstream_stream_error"}
        return encode(json.dumps({"error": error}).encode())

    def feed(self, event: Event) -> tuple[bytes, GuardError | None]:
        """Process one event; returns bytes for the agent and a refusal that ends the stream."""
        data = event.data
        if event.type == b"error":
            try:
                parsed = json.loads(data)
            except (ValueError, RecursionError):
                parsed = None
            inner = parsed.get("error") if isinstance(parsed, dict) else None
            return self._upstream_error(inner or data.decode("utf-8", "replace")), None
        if data.strip() == b"[DONE]":
            out, refusal = self._complete_all()
            if refusal is not None:
                return out, refusal
            self.finished = True
            return out + b"data: [DONE]\n\n", None
        try:
            chunk = json.loads(data)
        except (ValueError, RecursionError):
            return encode(data), None
        if not isinstance(chunk, dict):
            return encode(data), None
        if chunk.get("error"):
            return self._upstream_error(chunk["error"]), None
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
                        self._capture(content, len(content))
                    if delta.get("function_call"):
                        return b"".join(before), legacy_call_refusal()
                    calls = delta.pop("tool_calls", None)
                    if calls is not None:
                        modified = True
                        for tc in calls if isinstance(calls, list) else (calls,):
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
        return prefix + encode(json.dumps(chunk).encode() if modified else data), None

    def _add(self, choice: int, tc: Any) -> tuple[bytes, GuardError | None]:
        index = tc.get("index", 0) if isinstance(tc, dict) else 0
        key = (choice, index if isinstance(index, int) else 0)
        out, refusal = b"", None
        b = self.builders.get(key)
        if b is None:
            out, refusal = self._complete(choice)  # a new call starts: the previous ones are complete
            if refusal is not None:
                return out, refusal
            b = self.builders[key] = _Builder(key[1])
        if not isinstance(tc, dict):
            b.broken = True
            return out, None
        self.held += b.add(tc)
        if self.held > self.held_limit:
            return out, GuardError(
                Code.UPSTREAM_UNAVAILABLE, f"upstream tool-call arguments exceed {self.held_limit} bytes", 502
            )
        return out, None
