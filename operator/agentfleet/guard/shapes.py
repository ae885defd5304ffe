"""The protocol-neutral shape of what the guard controls.

Every check (budgets, caps, loops, the tool allowlist, injection, audit and metrics) works on
these few types, never on a wire format. A protocol adapter (today: OpenAI chat completions,
embeddings and ``/tools/NAME``; later OpenAI Responses, Anthropic Messages, MCP) maps its
requests and responses to them and back, so a new protocol adds a mapping, not a copy of a check.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A tool call as the model (or the agent, via ``/tools``) issued it.

    ``known`` is False when the adapter met a kind of tool call it cannot map to a declared tool
    (a new wire type): such a call is refused, never passed through unchecked.
    """

    name: str
    arguments: Any
    id: str | None = None
    kind: str = "function"
    """The wire's kind of call (function, custom, ...), for messages and the audit trail."""
    known: bool = True


@dataclass(frozen=True, slots=True)
class ToolResult:
    """A tool's answer that the agent passes back to the model."""

    call_id: str
    tool: str
    """Name of the tool that produced it ("" when the call is not in the conversation)."""
    text: str


@dataclass(slots=True)
class History:
    """What a request carries about its task so far, for tasks without a task header: the
    guard reconstructs counters from it (stateless protocols resend the conversation)."""

    iterations: int = 0
    """Model turns in the conversation."""
    calls: list[ToolCall] = field(default_factory=list)
    """Tool calls the model made in it."""
    results: list[ToolResult] = field(default_factory=list)
    """Tool results in it."""


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens an upstream reported for one call."""

    tokens_in: int
    tokens_out: int
    cached_in: int = 0
    """Of ``tokens_in``, those the upstream served from its prompt cache (priced apart)."""
    reasoning_out: int = 0
    """Of ``tokens_out``, the model's reasoning tokens (priced apart)."""


@dataclass(slots=True)
class Turn:
    """One LLM call, as the checks before the upstream see it."""

    task_id: str | None
    """The task the agent named (a header), or None: the conversation is the task."""
    history: History | None
    """The conversation, for a task without a name (None when the protocol carries none)."""
    new_results: list[ToolResult] = field(default_factory=list)
    """Tool results new since the model last spoke (scanned, counted as errors)."""
    user_texts: list[str] = field(default_factory=list)
    """New user text (scanned for injection only when configured)."""
    offered: list[str | None] = field(default_factory=list)
    """Names of the tools offered to the model, in order (None: a kind the adapter cannot name)."""
    forced: str | None = None
    """The tool the request forces the model to call, if any."""


def filter_offered_tools(payload: dict[str, Any], keep: list[bool], name_of: Callable[[Any], str | None]) -> list[str]:
    """Drop the offered tools the core refused from an OpenAI-style request (``tools``; with none
    left, also ``tool_choice`` and ``parallel_tool_calls``); returns their names."""
    tools = payload.get("tools")
    if not isinstance(tools, list):
        return []
    kept, removed = [], []
    for tool, ok in zip(tools, keep, strict=True):
        if ok:
            kept.append(tool)
        else:
            removed.append(name_of(tool) or str(tool.get("type") if isinstance(tool, dict) else tool))
    if kept:
        payload["tools"] = kept
    else:
        for key in ("tools", "tool_choice", "parallel_tool_calls"):
            payload.pop(key, None)
    return removed
