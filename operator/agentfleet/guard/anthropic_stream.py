"""The Anthropic Messages adapter's stream: relay the upstream's typed events, holding tool calls.

Events pass through as they arrive, unchanged, except those of a content block that is a tool
call (``tool_use``, ``server_tool_use``, ``mcp_tool_use``, or a block type the guard cannot
read): from its ``content_block_start`` on, every event is held while its ``input_json_delta``
fragments are assembled; at its ``content_block_stop`` the complete call is judged like a
non-streamed one, and the held events are released in their order, or the stream ends with an
``error`` event and nothing of the call (neither its name nor its input) reaches the agent. The
usage is ``message_start``'s, overlaid by ``message_delta``'s (cumulative output tokens; the
cache fields when the upstream repeats them there).
"""

from __future__ import annotations

import json
from typing import Any

from agentfleet.guard import anthropic_wire as wire
from agentfleet.guard.core import judge_calls
from agentfleet.guard.errors import Code, GuardError
from agentfleet.guard.shapes import ToolCall, Usage
from agentfleet.guard.sse import Event
from agentfleet.guard.state import Guard
from agentfleet.guard.streaming import Transcript, typed_event
from agentfleet.guard.tasks import Task


class _Block:
    """A call block being assembled from its deltas."""

    __slots__ = ("block", "parts")

    def __init__(self, block: Any) -> None:
        self.block = block
        self.parts: list[str] = []

    def complete(self) -> tuple[Any, ToolCall | None]:
        """The whole block (its input from the fragments) and its call."""
        block = self.block
        if isinstance(block, dict) and self.parts:
            text = "".join(self.parts)
            try:
                value: Any = json.loads(text)
            except (ValueError, RecursionError):
                value = text
            block = {**block, "input": value}
        return block, wire.block_call(block)


class MessagesRelay:
    """Re-emits an upstream Messages stream; see the module docstring."""

    def __init__(self, guard: Guard, task: Task, *, held_limit: int) -> None:
        self.guard = guard
        self.task = task
        self.held_limit = held_limit
        self.open: dict[Any, _Block] = {}
        self.held: list[bytes] = []
        self.held_bytes = 0
        self._usage: dict[str, Any] | None = None
        self.transcript = Transcript(guard.audit.capture_content, held_limit)
        self.finished = False
        self.upstream_error = False

    @property
    def out_chars(self) -> int:
        return self.transcript.chars

    def usage(self) -> Usage | None:
        return wire.usage_of(self._usage)

    def audit_completion(self) -> dict[str, Any]:
        return self.transcript.audit()

    def error_event(self, err: GuardError) -> bytes:
        """A refusal after the stream started: Anthropic's ``error`` event (the SDKs raise it)."""
        return typed_event("error", json.dumps(wire.error_body(err)).encode())

    def _judge(self, entry: _Block) -> GuardError | None:
        block, call = entry.complete()
        if call is None:
            return None
        self.transcript.call(block)
        return judge_calls(self.guard, self.task, [call])

    def _release(self) -> bytes:
        out = b"".join(self.held)
        self.held.clear()
        self.held_bytes = 0
        return out

    def _refuse(self, refusal: GuardError) -> tuple[bytes, GuardError | None]:
        self.held.clear()
        self.open.clear()
        return b"", refusal

    def feed(self, event: Event) -> tuple[bytes, GuardError | None]:
        """Process one event; returns bytes for the agent and a refusal that ends the stream."""
        raw = event.data
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            data = None
        kind = data.get("type") if isinstance(data, dict) else None
        kind = kind if isinstance(kind, str) else event.type.decode("utf-8", "replace")
        out = typed_event(event.type.decode("utf-8", "replace") if event.type != b"message" else kind, raw)
        if not isinstance(data, dict):
            return self._pass(out)
        if kind == "error" or event.type == b"error":
            self.held.clear()
            self.open.clear()
            self.finished = self.upstream_error = True
            return out, None  # the upstream's error alone: held calls never reach the agent
        index = data.get("index")
        if kind == "message_start":
            message = data.get("message")
            if isinstance(message, dict):
                self._usage = wire.merge_usage(self._usage, message.get("usage"))
        elif kind == "message_delta":
            self._usage = wire.merge_usage(self._usage, data.get("usage"))
        elif kind == "content_block_start":
            block = data.get("content_block")
            if wire.block_call(block) is not None:
                self.open[index] = _Block(block)
            elif isinstance(block, dict) and isinstance(block.get("text"), str):
                self.transcript.text(block["text"])
        elif kind == "content_block_delta":
            delta = data.get("delta")
            delta = delta if isinstance(delta, dict) else {}
            entry = self.open.get(index)
            if entry is not None:
                part = delta.get("partial_json")
                if isinstance(part, str):
                    entry.parts.append(part)
            else:
                for key in ("text", "thinking"):
                    if isinstance(delta.get(key), str):
                        self.transcript.text(delta[key])
        elif kind == "content_block_stop":
            entry = self.open.pop(index, None)
            if entry is not None:
                refusal = self._judge(entry)
                if refusal is not None:
                    return self._refuse(refusal)
                self.held.append(out)
                return (self._release() if not self.open else b""), None
        elif kind == "message_stop":
            for entry in list(self.open.values()):  # calls the upstream never closed: judged as they are
                refusal = self._judge(entry)
                if refusal is not None:
                    return self._refuse(refusal)
            self.open.clear()
            self.finished = True
            return self._release() + out, None
        return self._pass(out)

    def _pass(self, out: bytes) -> tuple[bytes, GuardError | None]:
        if not self.open:
            return out, None
        self.held.append(out)
        self.held_bytes += len(out)
        if self.held_bytes > self.held_limit:
            return self._refuse(
                GuardError(Code.UPSTREAM_UNAVAILABLE, f"upstream tool-call events exceed {self.held_limit} bytes", 502)
            )
        return b"", None
