"""The OpenAI Responses adapter's stream: relay the upstream's typed events, holding tool calls.

Events pass through as they arrive, unchanged, except those of an output item that is a tool
call (of any kind: function, custom, hosted, MCP, or a kind the guard cannot read): from its
``response.output_item.added`` on, every event is held until its ``response.output_item.done``
carries the complete item, which is judged like a non-streamed call; then the held events are
released in their order, or the stream ends with an ``error`` event and nothing of the call
(neither its name nor its arguments) reaches the agent. The terminal event
(``response.completed``, ``.incomplete`` or ``.failed``) carries the whole output and the usage:
any call in it not judged yet is judged before it is released, and the usage settles the call.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from agentfleet.guard import responses_wire as wire
from agentfleet.guard.core import judge_calls
from agentfleet.guard.errors import Code, GuardError
from agentfleet.guard.httpio import error_body
from agentfleet.guard.shapes import ToolCall, Usage
from agentfleet.guard.sse import Event, encode
from agentfleet.guard.state import Guard
from agentfleet.guard.streaming import Transcript, typed_event
from agentfleet.guard.tasks import Task

TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})


def item_key(item: Any, call: ToolCall) -> str:
    """Identity of an output item, so one call is judged once (at its ``done`` or at the end)."""
    if isinstance(item, dict) and isinstance(item.get("id"), str):
        return str(item["id"])
    return call.id or json.dumps(item, sort_keys=True, default=str)


class ResponsesRelay:
    """Re-emits an upstream Responses stream; see the module docstring. ``on_id`` is told the
    response's id as soon as the stream names it (so its chain is known even if it is refused)."""

    def __init__(self, guard: Guard, task: Task, on_id: Callable[[str], None], *, held_limit: int) -> None:
        self.guard = guard
        self.task = task
        self.on_id = on_id
        self.held_limit = held_limit
        self.open: set[Any] = set()
        """Output indices of call items being held."""
        self.held: list[bytes] = []
        self.held_bytes = 0
        self.judged: set[str] = set()
        self.seq = 0
        self.response_id: str | None = None
        self._usage: Usage | None = None
        self.transcript = Transcript(guard.audit.capture_content, held_limit)
        self.finished = False
        self.upstream_error = False

    @property
    def out_chars(self) -> int:
        return self.transcript.chars

    def usage(self) -> Usage | None:
        return self._usage

    def audit_completion(self) -> dict[str, Any]:
        return self.transcript.audit()

    def error_event(self, err: GuardError) -> bytes:
        """A refusal after the stream started: the Responses ``error`` event, plus an ``error``
        object the OpenAI SDKs raise as ``APIError`` (with ``.code``)."""
        body = error_body(err)["error"]
        data = {
            "type": "error",
            "code": body["code"],
            "message": body["message"],
            "param": None,
            "sequence_number": self.seq + 1,
            "error": body,
        }
        return typed_event("error", json.dumps(data).encode())

    def _note_id(self, response: Any) -> None:
        rid = response.get("id") if isinstance(response, dict) else None
        if isinstance(rid, str) and rid and rid != self.response_id:
            self.response_id = rid
            self.on_id(rid)

    def _judge(self, item: Any) -> GuardError | None:
        """Judge one output item if it is a call not judged yet."""
        call = wire.output_call(item)
        if call is None:
            return None
        key = item_key(item, call)
        if key in self.judged:
            return None
        self.judged.add(key)
        self.transcript.call(item)
        ref = wire.approved_by(item)
        if ref is not None and self.task.was_issued(ref):
            return None  # the approval request was judged and counted
        return judge_calls(self.guard, self.task, [call])

    def _release(self) -> bytes:
        out = b"".join(self.held)
        self.held.clear()
        self.held_bytes = 0
        return out

    def feed(self, event: Event) -> tuple[bytes, GuardError | None]:
        """Process one event; returns bytes for the agent and a refusal that ends the stream."""
        raw = event.data
        out = encode(raw) if event.type == b"message" else typed_event(event.type.decode("utf-8", "replace"), raw)
        try:
            data = json.loads(raw)
        except (ValueError, RecursionError):
            data = None
        if not isinstance(data, dict):
            return self._pass(out)
        kind = data.get("type")
        kind = kind if isinstance(kind, str) else event.type.decode("utf-8", "replace")
        seq = data.get("sequence_number")
        if isinstance(seq, int) and not isinstance(seq, bool):
            self.seq = max(self.seq, seq)
        if kind == "error" or event.type == b"error":
            self.held.clear()
            self.open.clear()
            self.finished = self.upstream_error = True
            return out, None  # the upstream's error alone: held calls never reach the agent
        if kind in ("response.created", "response.in_progress"):
            self._note_id(data.get("response"))
        elif kind == "response.output_item.added":
            if wire.output_call(data.get("item")) is not None:
                self.open.add(data.get("output_index"))
        elif kind == "response.output_text.delta":
            delta = data.get("delta")
            if isinstance(delta, str):
                self.transcript.text(delta)
        elif kind == "response.output_item.done":
            refusal = self._judge(data.get("item"))
            if refusal is not None:
                self.held.clear()
                return b"", refusal
            index = data.get("output_index")
            if index in self.open:
                self.open.discard(index)
                self.held.append(out)
                return (self._release() if not self.open else b""), None
        elif kind in TERMINAL:
            response = data.get("response")
            response = response if isinstance(response, dict) else {}
            self._note_id(response)
            self._usage = wire.usage_of(response.get("usage"))
            output = response.get("output")
            for item in output if isinstance(output, list) else ():
                refusal = self._judge(item)
                if refusal is not None:
                    self.held.clear()
                    return b"", refusal
            self.open.clear()
            self.finished = True
            self.upstream_error = kind == "response.failed"
            return self._release() + out, None
        return self._pass(out)

    def _pass(self, out: bytes) -> tuple[bytes, GuardError | None]:
        if not self.open:
            return out, None
        self.held.append(out)
        self.held_bytes += len(out)
        if self.held_bytes > self.held_limit:
            return b"", GuardError(
                Code.UPSTREAM_UNAVAILABLE, f"upstream tool-call events exceed {self.held_limit} bytes", 502
            )
        return b"", None
