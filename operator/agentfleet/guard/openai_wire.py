"""The OpenAI wire format, mapped to and from the guard's protocol-neutral shapes (pure).

Everything that knows what an OpenAI chat request or response looks like lives here: where the
tool results and the history are, which tools are offered or forced, where tool calls and usage
sit in a response, and how to estimate tokens. The HTTP handlers (``openai_chat``,
``openai_stream``) call these functions and hand the results to the control core (``core``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from agentfleet.guard.budgets import text_tokens
from agentfleet.guard.errors import Code, GuardError, invalid
from agentfleet.guard.shapes import History, ToolCall, ToolResult, Turn, Usage, filter_offered_tools

MAX_N = 128
"""Choices one request may ask for (OpenAI's own bound)."""
MAX_TOOLS = 128
"""Tools one request may offer (OpenAI's own bound)."""
_MESSAGE_OVERHEAD = 4
_IMAGE_TOKENS = 1500


# ------------------------------------------------------------------------------ content and calls


def text_of(content: Any) -> str:
    """Plain text of a message content (a string, or a list of parts with ``text``)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def tool_call(tc: Any) -> ToolCall:
    """A ``tool_calls`` entry as a ``ToolCall``: ``function`` and ``custom`` calls by name, and
    anything else as an unknown call, which the gate refuses (never passed on unchecked)."""
    if not isinstance(tc, dict):
        return ToolCall("", tc, None, kind=type(tc).__name__, known=False)
    raw_id = tc.get("id")
    call_id = str(raw_id) if raw_id is not None else None
    kind = tc.get("type", "function")
    for key, arg_key in (("function", "arguments"), ("custom", "input")):
        part = tc.get(key)
        if kind == key and isinstance(part, dict) and isinstance(part.get("name"), str) and part["name"]:
            return ToolCall(part["name"], part.get(arg_key, ""), call_id, kind=key)
    inner = tc.get(kind) if isinstance(kind, str) else None
    name = inner.get("name") if isinstance(inner, dict) else None
    return ToolCall(name if isinstance(name, str) else "", tc, call_id, kind=str(kind), known=False)


def message_calls(msg: dict[str, Any]) -> list[ToolCall]:
    """The tool calls of one assistant message (a ``tool_calls`` that is not a list is one
    unreadable call: refused rather than ignored)."""
    calls = msg.get("tool_calls")
    if calls is None or calls == []:
        return []
    return [tool_call(tc) for tc in calls] if isinstance(calls, list) else [tool_call(calls)]


def tool_names_by_call_id(messages: list[Any]) -> dict[str, str]:
    """Map tool_call_id -> tool name from the assistant messages of a history."""
    names: dict[str, str] = {}
    for msg in messages:
        if isinstance(msg, dict) and msg.get("role") == "assistant":
            for call in message_calls(msg):
                if call.known:
                    names[str(call.id)] = call.name
    return names


def history(messages: list[Any]) -> History:
    """The conversation as a ``History``: assistant turns, their tool calls, the tool results."""
    names = tool_names_by_call_id(messages)
    out = History()
    for msg in messages:
        if not isinstance(msg, dict):
            continue
        role = msg.get("role")
        if role == "assistant":
            out.iterations += 1
            out.calls.extend(c for c in message_calls(msg) if c.known)
        elif role in ("tool", "function"):
            out.results.append(_result(msg, names))
    return out


def _result(msg: dict[str, Any], names: dict[str, str]) -> ToolResult:
    """A tool result message (or a legacy ``function`` one, named by itself) as a ``ToolResult``."""
    if msg.get("role") == "function":
        name = msg.get("name")
        name = name if isinstance(name, str) else ""
        return ToolResult(f"function:{name}", name, text_of(msg.get("content")))
    call_id = str(msg.get("tool_call_id", ""))
    return ToolResult(call_id, names.get(call_id, ""), text_of(msg.get("content")))


def new_inputs(messages: list[Any]) -> tuple[list[ToolResult], list[str]]:
    """Tool results and user texts that are new since the model last spoke."""
    last_assistant = -1
    for i in range(len(messages) - 1, -1, -1):
        msg = messages[i]
        if isinstance(msg, dict) and msg.get("role") == "assistant":
            last_assistant = i
            break
    names: dict[str, str] | None = None
    results: list[ToolResult] = []
    users: list[str] = []
    for msg in messages[last_assistant + 1 :]:
        if not isinstance(msg, dict):
            continue
        role = msg.get("role")
        if role in ("tool", "function"):
            if names is None:
                names = tool_names_by_call_id(messages)
            results.append(_result(msg, names))
        elif role == "user":
            users.append(text_of(msg.get("content")))
    return results, users


# ------------------------------------------------------------------------------ the request


def offered_tool_name(tool: Any) -> str | None:
    """Name of a tool in the request's ``tools`` (None for a kind the guard cannot name)."""
    if not isinstance(tool, dict):
        return None
    if tool.get("type", "function") == "function" and isinstance(tool.get("function"), dict):
        name = tool["function"].get("name")
        return name if isinstance(name, str) else None
    if tool.get("type") == "custom":
        inner = tool.get("custom")
        name = inner.get("name") if isinstance(inner, dict) else tool.get("name")
        return name if isinstance(name, str) else None
    return None


def forced_tool_name(choice: Any) -> str | None:
    """The tool a ``tool_choice`` forces, if it names one."""
    if not isinstance(choice, dict):
        return None
    fn = choice.get("function") or choice.get("custom")
    name = fn.get("name") if isinstance(fn, dict) else None
    return name if isinstance(name, str) else None


def chat_turn(
    payload: dict[str, Any], task_id: str | None, *, max_messages: int = 10_000, max_tools: int = MAX_TOOLS
) -> Turn:
    """The neutral view of a chat completion request (400 for what the guard cannot check)."""
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        raise invalid("messages must be a non-empty list")
    if len(messages) > max_messages:
        raise invalid(f"a request may carry at most {max_messages} messages, this one has {len(messages)}")
    if "functions" in payload or "function_call" in payload:
        raise invalid("the legacy functions/function_call parameters are not supported by the guard; use tools")
    tools = payload.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise invalid("tools must be a list")
    if tools is not None and len(tools) > max_tools:
        raise invalid(f"a request may offer at most {max_tools} tools, this one offers {len(tools)}")
    check_sampling(payload)
    results, users = new_inputs(messages)
    return Turn(
        task_id=task_id,
        history=None if task_id else history(messages),
        new_results=results,
        user_texts=users,
        offered=[offered_tool_name(t) for t in tools or ()],
        forced=forced_tool_name(payload.get("tool_choice")),
    )


def apply_tool_filter(payload: dict[str, Any], keep: list[bool]) -> list[str]:
    """Remove the tools the core refused from the request; returns their names."""
    return filter_offered_tools(payload, keep, offered_tool_name)


# ------------------------------------------------------------------------------ estimates


def _content_tokens(content: Any) -> int:
    if isinstance(content, str):
        return text_tokens(content)
    if isinstance(content, list):
        total = 0
        for part in content:
            if isinstance(part, dict):
                if isinstance(part.get("text"), str):
                    total += text_tokens(part["text"])
                elif part.get("type") in {"image_url", "input_image", "input_audio", "file"}:
                    total += _IMAGE_TOKENS
            elif isinstance(part, str):
                total += text_tokens(part)
        return total
    return 0


def estimate_prompt_tokens(messages: Iterable[Any], tools: Any = None) -> int:
    """Estimate prompt tokens of a chat request (messages, tool calls in history, tool schemas)."""
    total = 3
    for msg in messages:
        if not isinstance(msg, dict):
            continue
        total += _MESSAGE_OVERHEAD + _content_tokens(msg.get("content"))
        if msg.get("tool_calls"):
            for call in message_calls(msg):
                total += 4 + text_tokens(call.name) + text_tokens(str(call.arguments))
    if tools:
        total += text_tokens(repr(tools))
    return total


def estimate_embedding_tokens(inputs: Any) -> int:
    """Estimate tokens of an embeddings ``input`` (string, list of strings or token arrays)."""
    if isinstance(inputs, str):
        return text_tokens(inputs) + 1
    if isinstance(inputs, list):
        total = 0
        for item in inputs:
            if isinstance(item, str):
                total += text_tokens(item) + 1
            elif isinstance(item, int):
                total += 1
            elif isinstance(item, list):
                total += len(item)
        return max(total, 1)
    return 1


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_sampling(payload: dict[str, Any]) -> None:
    """The fields that size a completion must be what the reservation can count (400 otherwise):
    ``n`` from 1 to ``MAX_N``, token caps positive integers."""
    n = payload.get("n")
    if n is not None and not (_is_int(n) and 1 <= n <= MAX_N):
        raise invalid(f"n must be an integer from 1 to {MAX_N}, got {json.dumps(n)[:40]}")
    for key in ("max_completion_tokens", "max_tokens"):
        value = payload.get(key)
        if value is not None and not (_is_int(value) and value > 0):
            raise invalid(f"{key} must be a positive integer, got {json.dumps(value)[:40]}")


def completion_cap(payload: dict[str, Any], default: int) -> int:
    """Completion tokens a chat request may produce: its cap (the larger of ``max_tokens`` and
    ``max_completion_tokens``: upstreams differ in which they honour) times ``n``, ``default``
    when it sets none."""
    check_sampling(payload)
    caps = [v for v in (payload.get("max_completion_tokens"), payload.get("max_tokens")) if v is not None]
    n = payload.get("n")
    return (max(caps) if caps else default) * (n if n is not None else 1)


# ------------------------------------------------------------------------------ the response


@dataclass(slots=True)
class ChatAnswer:
    """What the checks need from a non-streamed chat completion."""

    calls: list[ToolCall] = field(default_factory=list)
    out_chars: int = 0
    legacy: bool = False
    """A legacy ``function_call`` answer (refused: the guard judges tool calls only)."""


def chat_answer(choices: list[Any]) -> ChatAnswer:
    """Tool calls, output size and legacy calls of a completion's ``choices``."""
    out = ChatAnswer()
    for choice in choices:
        msg = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(msg, dict):
            continue
        content = msg.get("content")
        out.out_chars += len(content) if isinstance(content, str) else 0
        out.legacy = out.legacy or bool(msg.get("function_call"))
        out.calls.extend(message_calls(msg))
    return out


def usage_of(usage: Any) -> Usage | None:
    """Tokens from an OpenAI ``usage`` object, if it has them."""
    if not isinstance(usage, dict):
        return None
    tin, tout = usage.get("prompt_tokens"), usage.get("completion_tokens", 0)
    if not (isinstance(tin, int) and isinstance(tout, int)):
        return None
    return Usage(
        tin,
        tout,
        _detail(usage, "prompt_tokens_details", "cached_tokens", tin),
        _detail(usage, "completion_tokens_details", "reasoning_tokens", tout),
    )


def _detail(usage: dict[str, Any], group: str, field: str, whole: int) -> int:
    """A detail count (cached, reasoning tokens) when reported, within 0..whole."""
    details = usage.get(group)
    value = details.get(field) if isinstance(details, dict) else None
    return min(max(value, 0), whole) if isinstance(value, int) and not isinstance(value, bool) else 0


def legacy_call_refusal() -> GuardError:
    """The refusal for a legacy ``function_call`` answer (the guard only judges ``tool_calls``)."""
    return GuardError(Code.TOOL_NOT_PERMITTED, "the model answered with a legacy function_call; refused", 403)
