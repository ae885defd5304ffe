"""The Anthropic Messages wire format, mapped to and from the guard's neutral shapes (pure).

A Messages request carries the whole conversation (``messages``, alternating ``user`` and
``assistant``; a tool call is a ``tool_use`` block of an assistant message, its answer a
``tool_result`` block of the next user message), ``tools`` and the required ``max_tokens``.

Tool names the allowlist sees: every tool by the ``name`` the model calls it (client tools,
Anthropic-defined tools such as ``bash`` or ``computer``, and server tools such as
``web_search``, ``web_fetch`` or ``code_execution``); a remote MCP server of the MCP connector
(``mcp_servers``, or an ``mcp_toolset`` tool) as ``mcp:<server name>``. Usage: Anthropic reports
``input_tokens`` *without* the prompt-cache reads and writes, so the input the guard counts is
``input_tokens + cache_creation_input_tokens + cache_read_input_tokens``, of which the reads are
priced as cached input (``pricing.cachedInputPerMillion``) and the writes as input.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from agentfleet.guard.budgets import text_tokens
from agentfleet.guard.errors import GuardError, invalid
from agentfleet.guard.shapes import History, ToolCall, ToolResult, Turn, Usage

MAX_TOOLS = 128
MAX_HEADER = 1024
"""Longest ``anthropic-version`` / ``anthropic-beta`` value passed upstream."""
DEFAULT_VERSION = "2023-06-01"
_IMAGE_TOKENS = 1600

CALL_BLOCKS = frozenset({"tool_use", "server_tool_use", "mcp_tool_use"})
NON_CALL_BLOCKS = frozenset({"text", "thinking", "redacted_thinking", "container_upload"})
"""Content block types of an answer that are not calls; a ``*_tool_result`` block is a result of
a server-side call. Any other type is refused as an unreadable call."""

SERVER_TOOLS = ("web_search_", "web_fetch_")
"""Types of Anthropic's server tools that take ``max_uses``."""

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
}


# ------------------------------------------------------------------------------ blocks


def blocks(content: Any) -> list[Any]:
    """A message content as a list of blocks (a string is one text block)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return content if isinstance(content, list) else []


def text_of(content: Any) -> str:
    """Plain text of a content (a string, or blocks with ``text``)."""
    if isinstance(content, str):
        return content
    return "\n".join(b["text"] for b in blocks(content) if isinstance(b, dict) and isinstance(b.get("text"), str))


def block_call(block: Any) -> ToolCall | None:
    """A content block as a ``ToolCall`` (None when it is not a call; an unknown kind of block
    is an unreadable call, which the gate refuses)."""
    if not isinstance(block, dict):
        return ToolCall("", block, None, kind=type(block).__name__, known=False)
    kind = block.get("type")
    if kind in NON_CALL_BLOCKS or (isinstance(kind, str) and kind.endswith("_tool_result")):
        return None
    raw_id = block.get("id")
    call_id = raw_id if isinstance(raw_id, str) else None
    name = block.get("name")
    if kind in ("tool_use", "server_tool_use") and isinstance(name, str) and name:
        return ToolCall(name, block.get("input", {}), call_id, kind=str(kind))
    if kind == "mcp_tool_use":
        server = block.get("server_name")
        if isinstance(server, str) and server:
            return ToolCall(f"mcp:{server}", {"name": name, "input": block.get("input")}, call_id, kind=kind)
    return ToolCall(name if isinstance(name, str) else "", block, call_id, kind=str(kind), known=False)


def _result(block: dict[str, Any], names: dict[str, str]) -> ToolResult:
    """A ``tool_result`` block; one marked ``is_error`` reads as an error to loop detection."""
    call_id = str(block.get("tool_use_id", ""))
    text = text_of(block.get("content"))
    if block.get("is_error") is True:
        text = json.dumps({"error": text or "tool error"})
    return ToolResult(call_id, names.get(call_id, ""), text)


def _message_blocks(msg: Any, role: str) -> list[Any]:
    return blocks(msg.get("content")) if isinstance(msg, dict) and msg.get("role") == role else []


def _names(messages: list[Any]) -> dict[str, str]:
    names: dict[str, str] = {}
    for msg in messages:
        for block in _message_blocks(msg, "assistant"):
            call = block_call(block)
            if call is not None and call.known and call.id:
                names[call.id] = call.name
    return names


def history(messages: list[Any]) -> History:
    """The conversation as a ``History``: assistant turns, their tool calls, the tool results."""
    names = _names(messages)
    out = History()
    for msg in messages:
        if not isinstance(msg, dict):
            continue
        if msg.get("role") == "assistant":
            out.iterations += 1
            for block in _message_blocks(msg, "assistant"):
                call = block_call(block)
                if call is not None and call.known:
                    out.calls.append(call)
        for block in _message_blocks(msg, "user"):
            if isinstance(block, dict) and block.get("type") == "tool_result":
                out.results.append(_result(block, names))
    return out


def new_inputs(messages: list[Any]) -> tuple[list[ToolResult], list[str]]:
    """Tool results and user texts that are new since the model last spoke."""
    last = -1
    for i in range(len(messages) - 1, -1, -1):
        if isinstance(messages[i], dict) and messages[i].get("role") == "assistant":
            last = i
            break
    names = _names(messages[: last + 1])
    results: list[ToolResult] = []
    users: list[str] = []
    for msg in messages[last + 1 :]:
        texts = []
        for block in _message_blocks(msg, "user"):
            if isinstance(block, dict) and block.get("type") == "tool_result":
                results.append(_result(block, names))
            elif isinstance(block, dict) and isinstance(block.get("text"), str):
                texts.append(block["text"])
        if texts:
            users.append("\n".join(texts))
    return results, users


# ------------------------------------------------------------------------------ the request


def offered_tool_name(tool: Any) -> str | None:
    """Name of a tool in ``tools`` (None for one the guard cannot name: removed)."""
    if not isinstance(tool, dict):
        return None
    if tool.get("type") == "mcp_toolset":
        server = tool.get("mcp_server_name")
        return f"mcp:{server}" if isinstance(server, str) and server else None
    name = tool.get("name")
    return name if isinstance(name, str) and name else None


def mcp_server_name(server: Any) -> str | None:
    """Allowlist name of an MCP connector server (``mcp_servers``)."""
    name = server.get("name") if isinstance(server, dict) else None
    return f"mcp:{name}" if isinstance(name, str) and name else None


def forced_tool_name(choice: Any) -> str | None:
    """The tool a ``tool_choice`` of type ``tool`` forces."""
    if isinstance(choice, dict) and choice.get("type") == "tool":
        name = choice.get("name")
        return name if isinstance(name, str) else None
    return None


def messages_turn(
    payload: dict[str, Any], task_id: str | None, *, max_messages: int = 10_000, max_tools: int = MAX_TOOLS
) -> Turn:
    """The neutral view of a Messages request (400 for what the guard cannot check). The tools
    offered are ``tools`` then ``mcp_servers``, in order."""
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid("messages must be a non-empty list")
    if len(messages) > max_messages:
        raise invalid(f"a request may carry at most {max_messages} messages, this one has {len(messages)}")
    cap = payload.get("max_tokens")
    if not (isinstance(cap, int) and not isinstance(cap, bool) and cap > 0):
        raise invalid(f"max_tokens must be a positive integer, got {json.dumps(cap)[:40]}")
    tools = payload.get("tools")
    servers = payload.get("mcp_servers")
    for what, value in (("tools", tools), ("mcp_servers", servers)):
        if value is not None and not isinstance(value, list):
            raise invalid(f"{what} must be a list")
    offered = [offered_tool_name(t) for t in tools or ()] + [mcp_server_name(s) for s in servers or ()]
    if len(offered) > max_tools:
        raise invalid(f"a request may offer at most {max_tools} tools and MCP servers, this one offers {len(offered)}")
    results, users = new_inputs(messages)
    return Turn(
        task_id=task_id,
        history=None if task_id else history(messages),
        new_results=results,
        user_texts=users,
        offered=offered,
        forced=forced_tool_name(payload.get("tool_choice")),
    )


def apply_tool_filter(payload: dict[str, Any], keep: list[bool]) -> list[str]:
    """Remove the tools and MCP servers the core refused; returns their names."""
    removed: list[str] = []
    offset = 0
    for key, namer in (("tools", offered_tool_name), ("mcp_servers", mcp_server_name)):
        entries = payload.get(key)
        if not isinstance(entries, list):
            continue
        flags = keep[offset : offset + len(entries)]
        offset += len(entries)
        kept = [e for e, ok in zip(entries, flags, strict=True) if ok]
        removed += [
            namer(e) or str(e.get("type") if isinstance(e, dict) else e)
            for e, ok in zip(entries, flags, strict=True)
            if not ok
        ]
        if kept:
            payload[key] = kept
        else:
            payload.pop(key)
            if key == "tools":
                payload.pop("tool_choice", None)
    return removed


def cap_server_tool_uses(payload: dict[str, Any], left: int) -> None:
    """Lower each server tool's ``max_uses`` (web search, web fetch: run by Anthropic within one
    answer) to the tool calls the task has left, so the upstream stops where the guard would."""
    for tool in payload.get("tools") or ():
        if isinstance(tool, dict) and isinstance(tool.get("type"), str) and tool["type"].startswith(SERVER_TOOLS):
            asked = tool.get("max_uses")
            valid = isinstance(asked, int) and not isinstance(asked, bool) and asked > 0
            tool["max_uses"] = max(1, min(int(asked or 0), left) if valid else left)


# ------------------------------------------------------------------------------ estimates


def _content_tokens(content: Any) -> int:
    total = 0
    for block in blocks(content):
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if isinstance(block.get("text"), str):
            total += text_tokens(block["text"])
        elif kind in ("image", "document"):
            total += _IMAGE_TOKENS
        elif kind == "tool_result":
            total += 4 + _content_tokens(block.get("content"))
        else:
            total += 4 + text_tokens(json.dumps(block, default=str))
    return total


def estimate_prompt_tokens(payload: dict[str, Any]) -> int:
    """Estimate the input tokens of a Messages request: system, messages, tools."""
    total = 3 + _content_tokens(payload.get("system"))
    for msg in payload.get("messages") or ():
        if isinstance(msg, dict):
            total += 4 + _content_tokens(msg.get("content"))
    for key in ("tools", "mcp_servers"):
        if payload.get(key):
            total += text_tokens(repr(payload[key]))
    return total


def completion_cap(payload: dict[str, Any]) -> int:
    """Output tokens the answer may produce: ``max_tokens`` (thinking included)."""
    cap = payload.get("max_tokens")
    return cap if isinstance(cap, int) else 1


# ------------------------------------------------------------------------------ the response


@dataclass(slots=True)
class Answer:
    """What the checks need from a Messages response."""

    calls: list[ToolCall] = field(default_factory=list)
    out_chars: int = 0


def answer(content: Any) -> Answer:
    """Tool calls and output size of a response's ``content`` blocks."""
    out = Answer()
    for block in content if isinstance(content, list) else ():
        call = block_call(block)
        if call is not None:
            out.calls.append(call)
            out.out_chars += len(json.dumps(call.arguments, default=str))
        elif isinstance(block, dict):
            for key in ("text", "thinking"):
                if isinstance(block.get(key), str):
                    out.out_chars += len(block[key])
    return out


def _count(usage: dict[str, Any], key: str) -> int:
    value = usage.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def usage_of(usage: Any) -> Usage | None:
    """Tokens from an Anthropic ``usage`` object: input counts the cache reads and writes."""
    if not isinstance(usage, dict) or not isinstance(usage.get("input_tokens"), int):
        return None
    read = _count(usage, "cache_read_input_tokens")
    tin = _count(usage, "input_tokens") + _count(usage, "cache_creation_input_tokens") + read
    return Usage(tin, _count(usage, "output_tokens"), read, 0)


def merge_usage(base: dict[str, Any] | None, update: Any) -> dict[str, Any] | None:
    """A stream's usage: ``message_start``'s, overlaid by each ``message_delta``'s (cumulative)."""
    if not isinstance(update, dict):
        return base
    merged = dict(base or {})
    merged.update({k: v for k, v in update.items() if v is not None})
    return merged


# ------------------------------------------------------------------------------ errors


def error_type(err: GuardError) -> str:
    """Anthropic's error type for a status."""
    return _ERROR_TYPES.get(err.status, "api_error" if err.status >= 500 else "invalid_request_error")


def error_body(err: GuardError) -> dict[str, Any]:
    """A refusal as Anthropic's error object (the guard's stable ``code`` beside its fields)."""
    return {"type": "error", "error": {"type": error_type(err), "message": err.message, "code": err.code.value}}


def header_value(value: str | None, what: str) -> str | None:
    """A version or beta header to pass upstream, bounded."""
    if value is None:
        return None
    if len(value) > MAX_HEADER:
        raise invalid(f"{what} is longer than {MAX_HEADER} characters")
    return value
