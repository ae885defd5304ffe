"""The OpenAI Responses wire format, mapped to and from the guard's neutral shapes (pure).

A Responses request carries ``input`` (a string, or a list of items: messages, the model's
earlier output items replayed, and the agent's tool outputs), ``tools`` (function and custom
tools, and hosted tools the upstream runs itself) and optionally ``previous_response_id`` or
``conversation``, in which case the earlier turns live upstream and not in the request.

Tool names the allowlist sees: a function or custom tool by its ``name``; a hosted tool by its
kind: ``web_search`` (every ``web_search*`` version), ``file_search``, ``code_interpreter``,
``computer_use`` (``computer_use_preview``/``computer``), ``image_generation``, ``local_shell``,
``shell``, ``apply_patch``; a remote MCP server as ``mcp:<server_label>``. Hosted calls run at the
upstream within one response, so the request-side filter (a disallowed hosted tool is removed
before the upstream sees it) is what stops them; the calls in the answer are still counted,
loop-checked and refused like function calls.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agentfleet.guard.budgets import text_tokens
from agentfleet.guard.errors import invalid
from agentfleet.guard.shapes import History, ToolCall, ToolResult, Turn, Usage, filter_offered_tools

MAX_ITEMS = 10_000
MAX_ID = 256
"""Longest ``previous_response_id`` or conversation id accepted (OpenAI's are ~50 characters)."""
_IMAGE_TOKENS = 1500

HOSTED_NAMES = {
    "file_search": "file_search",
    "code_interpreter": "code_interpreter",
    "computer_use_preview": "computer_use",
    "computer_use": "computer_use",
    "computer": "computer_use",
    "image_generation": "image_generation",
    "local_shell": "local_shell",
    "shell": "shell",
    "apply_patch": "apply_patch",
}
"""Hosted tool types (in ``tools`` and ``tool_choice``) -> their allowlist name; ``web_search*``
and ``mcp`` are handled apart."""

CALL_ITEMS = {
    "web_search_call": "web_search",
    "file_search_call": "file_search",
    "code_interpreter_call": "code_interpreter",
    "computer_call": "computer_use",
    "image_generation_call": "image_generation",
    "local_shell_call": "local_shell",
    "shell_call": "shell",
    "apply_patch_call": "apply_patch",
}
"""Output item types of hosted (or built-in) tool calls -> their allowlist name."""

NON_CALL_ITEMS = frozenset({"message", "reasoning", "mcp_list_tools", "compaction"})
"""Output item types that are not tool calls; any other unknown type is refused as an
unreadable call (a new kind of call must never pass unchecked)."""

OUTPUT_ITEMS = frozenset(
    {
        "function_call_output",
        "custom_tool_call_output",
        "computer_call_output",
        "local_shell_call_output",
        "shell_call_output",
        "apply_patch_call_output",
        "mcp_approval_response",
    }
)
"""Input item types the agent sends back after a call (results)."""


# ------------------------------------------------------------------------------ names


def hosted_name(kind: Any) -> str | None:
    """The allowlist name of a hosted tool type (None for a type the guard cannot name)."""
    if not isinstance(kind, str):
        return None
    if kind.startswith("web_search"):
        return "web_search"
    return HOSTED_NAMES.get(kind)


def offered_tool_name(tool: Any) -> str | None:
    """Name of a tool in the request's ``tools`` (None for a kind the guard cannot name: removed)."""
    if not isinstance(tool, dict):
        return None
    kind = tool.get("type")
    if kind in ("function", "custom"):
        name = tool.get("name")
        return name if isinstance(name, str) and name else None
    if kind == "mcp":
        label = tool.get("server_label")
        return f"mcp:{label}" if isinstance(label, str) and label else None
    return hosted_name(kind)


def forced_tool_name(choice: Any) -> str | None:
    """The tool a ``tool_choice`` forces, if it names one."""
    if not isinstance(choice, dict):
        return None
    kind = choice.get("type")
    if kind in ("function", "custom"):
        name = choice.get("name")
        return name if isinstance(name, str) else None
    if kind == "mcp":
        label = choice.get("server_label")
        return f"mcp:{label}" if isinstance(label, str) else None
    return hosted_name(kind)


def output_call(item: Any) -> ToolCall | None:
    """An output item as a ``ToolCall`` (None when it is not a call; an unknown kind of item is an
    unreadable call, which the gate refuses)."""
    if not isinstance(item, dict):
        return ToolCall("", item, None, kind=type(item).__name__, known=False)
    kind = item.get("type")
    item_id = item.get("id")
    item_id = str(item_id) if isinstance(item_id, str) else None
    call_id = item.get("call_id")
    call_id = str(call_id) if isinstance(call_id, str) else item_id
    if kind in NON_CALL_ITEMS:
        return None
    if kind in ("function_call", "custom_tool_call"):
        name = item.get("name")
        args = item.get("arguments" if kind == "function_call" else "input", "")
        known = isinstance(name, str) and bool(name)
        call_kind = "function" if kind == "function_call" else "custom"
        return ToolCall(str(name) if known else "", args, call_id, kind=call_kind, known=known)
    if kind in ("mcp_call", "mcp_approval_request"):
        label = item.get("server_label")
        known = isinstance(label, str) and bool(label)
        args = {"name": item.get("name"), "arguments": item.get("arguments")}
        return ToolCall(f"mcp:{label}" if known else "", args, item_id, kind=str(kind), known=known)
    if isinstance(kind, str) and kind in CALL_ITEMS:
        args = {
            k: v for k, v in item.items() if k in ("action", "queries", "code", "input", "operation", "revised_prompt")
        }
        return ToolCall(CALL_ITEMS[kind], args, call_id, kind=kind)
    return ToolCall("", item, call_id, kind=str(kind), known=False)


def approved_by(item: Any) -> str | None:
    """The approval request an ``mcp_call`` carries out (that request was judged already)."""
    if isinstance(item, dict) and item.get("type") == "mcp_call":
        ref = item.get("approval_request_id")
        return ref if isinstance(ref, str) and ref else None
    return None


# ------------------------------------------------------------------------------ the request


def text_of(content: Any) -> str:
    """Plain text of a content (a string, or a list of parts with ``text``)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def _is_model_item(item: dict[str, Any]) -> bool:
    """An item the model produced (replayed by the agent): its turns."""
    if item.get("role") == "assistant":
        return True
    kind = item.get("type")
    return isinstance(kind, str) and kind not in OUTPUT_ITEMS and kind not in ("message", "item_reference")


def _result(item: dict[str, Any], names: dict[str, str]) -> ToolResult:
    call_id = str(item.get("call_id") or item.get("approval_request_id") or item.get("id") or "")
    output = item.get("output")
    text = output if isinstance(output, str) else text_of(output) if isinstance(output, list) else ""
    if not text and output is not None and not isinstance(output, str | list):
        text = json.dumps(output)
    return ToolResult(call_id, names.get(call_id, ""), text)


def history(items: list[Any]) -> History:
    """The conversation an input list carries: model turns (runs of model items), their calls,
    the tool outputs."""
    out = History()
    names: dict[str, str] = {}
    in_turn = False
    for item in items:
        if not isinstance(item, dict):
            continue
        if _is_model_item(item):
            if not in_turn:
                out.iterations += 1
            in_turn = True
            call = output_call(item) if item.get("type") not in (None, "message") else None
            if call is not None and call.known:
                out.calls.append(call)
                if call.id:
                    names[call.id] = call.name
        else:
            in_turn = False
            if item.get("type") in OUTPUT_ITEMS:
                out.results.append(_result(item, names))
    return out


def new_inputs(items: list[Any]) -> tuple[list[ToolResult], list[str]]:
    """Tool outputs and user texts that are new since the model last spoke."""
    last = -1
    for i in range(len(items) - 1, -1, -1):
        item = items[i]
        if isinstance(item, dict) and _is_model_item(item):
            last = i
            break
    names: dict[str, str] = {}
    for item in items[: last + 1]:
        if isinstance(item, dict):
            call = output_call(item) if item.get("type") not in (None, "message") else None
            if call is not None and call.known and call.id:
                names[call.id] = call.name
    results: list[ToolResult] = []
    users: list[str] = []
    for item in items[last + 1 :]:
        if not isinstance(item, dict):
            continue
        if item.get("type") in OUTPUT_ITEMS:
            results.append(_result(item, names))
        elif item.get("role") == "user":
            users.append(text_of(item.get("content")))
    return results, users


def chain_of(payload: dict[str, Any]) -> tuple[str | None, str | None]:
    """The conversation id and the previous response id a request continues (400 if malformed)."""
    conv = payload.get("conversation")
    if isinstance(conv, dict):
        conv = conv.get("id")
    prev = payload.get("previous_response_id")
    for what, value in (("conversation", conv), ("previous_response_id", prev)):
        if value is not None and not (isinstance(value, str) and 0 < len(value) <= MAX_ID):
            raise invalid(f"{what} must be an id of at most {MAX_ID} characters")
    return conv, prev


def responses_turn(
    payload: dict[str, Any], task_id: str | None, *, max_items: int = MAX_ITEMS, max_tools: int = 128
) -> Turn:
    """The neutral view of a Responses request (400 for what the guard cannot check). ``task_id``
    is the task header or the chain's task; without either the input list is the task."""
    raw = payload.get("input")
    if raw is None and task_id is None:
        raise invalid("input is required")
    if raw is not None and not isinstance(raw, str | list):
        raise invalid("input must be a string or a list of items")
    items: list[Any] = raw if isinstance(raw, list) else []
    if len(items) > max_items:
        raise invalid(f"a request may carry at most {max_items} input items, this one has {len(items)}")
    if payload.get("background") is True:
        raise invalid("background responses are not supported by the guard (their usage cannot be settled)")
    tools = payload.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise invalid("tools must be a list")
    if tools is not None and len(tools) > max_tools:
        raise invalid(f"a request may offer at most {max_tools} tools, this one offers {len(tools)}")
    cap = payload.get("max_output_tokens")
    if cap is not None and not (isinstance(cap, int) and not isinstance(cap, bool) and cap > 0):
        raise invalid(f"max_output_tokens must be a positive integer, got {json.dumps(cap)[:40]}")
    results, users = new_inputs(items)
    if isinstance(raw, str):
        users = [raw]
    return Turn(
        task_id=task_id,
        history=None if task_id else history(items),
        new_results=results,
        user_texts=users,
        offered=[offered_tool_name(t) for t in tools or ()],
        forced=forced_tool_name(payload.get("tool_choice")),
    )


def apply_tool_filter(payload: dict[str, Any], keep: list[bool]) -> list[str]:
    """Remove the tools the core refused from the request; returns their names."""
    return filter_offered_tools(payload, keep, offered_tool_name)


def drop_hosted_tools(payload: dict[str, Any]) -> list[str]:
    """Remove the tools the upstream runs itself; returns their names."""
    tools = payload.get("tools")
    if not isinstance(tools, list):
        return []
    hosted = [isinstance(t, dict) and t.get("type") not in ("function", "custom") for t in tools]
    return apply_tool_filter(payload, [not h for h in hosted])


def has_hosted_tools(payload: dict[str, Any]) -> bool:
    """Whether the request offers a tool that the upstream runs itself."""
    tools = payload.get("tools")
    return isinstance(tools, list) and any(
        isinstance(t, dict) and t.get("type") not in ("function", "custom") for t in tools
    )


# ------------------------------------------------------------------------------ estimates


def _content_tokens(content: Any) -> int:
    if isinstance(content, str):
        return text_tokens(content)
    total = 0
    if isinstance(content, list):
        for part in content:
            if isinstance(part, dict):
                if isinstance(part.get("text"), str):
                    total += text_tokens(part["text"])
                elif part.get("type") in {"input_image", "input_file", "input_audio", "computer_screenshot"}:
                    total += _IMAGE_TOKENS
    return total


def estimate_prompt_tokens(payload: dict[str, Any]) -> int:
    """Estimate the tokens a request adds to its context: instructions, input items, tools."""
    total = 3
    instructions = payload.get("instructions")
    if isinstance(instructions, str):
        total += text_tokens(instructions)
    raw = payload.get("input")
    if isinstance(raw, str):
        total += 4 + text_tokens(raw)
    elif isinstance(raw, list):
        for item in raw:
            if not isinstance(item, dict):
                continue
            total += 4
            if "content" in item:
                total += _content_tokens(item["content"])
            else:
                total += text_tokens(json.dumps(item, default=str))
    tools = payload.get("tools")
    if tools:
        total += text_tokens(repr(tools))
    return total


def completion_cap(payload: dict[str, Any], default: int) -> int:
    """Output tokens the response may produce (reasoning included): ``max_output_tokens``."""
    cap = payload.get("max_output_tokens")
    return cap if isinstance(cap, int) and not isinstance(cap, bool) and cap > 0 else default


# ------------------------------------------------------------------------------ the response


@dataclass(slots=True)
class Answer:
    """What the checks need from a Responses ``response`` object."""

    calls: list[ToolCall] = field(default_factory=list)
    approvals: list[str | None] = field(default_factory=list)
    """For each call, the approval request it carries out (an MCP call approved earlier)."""
    out_chars: int = 0

    def fresh(self, issued: Callable[[str], bool]) -> list[ToolCall]:
        """The calls to judge: all but the MCP calls whose approval request was judged already."""
        return [c for c, ref in zip(self.calls, self.approvals, strict=True) if ref is None or not issued(ref)]


def answer(output: Any) -> Answer:
    """Tool calls and output size of a response's ``output`` items."""
    out = Answer()
    for item in output if isinstance(output, list) else ():
        if isinstance(item, dict) and item.get("type") == "message":
            out.out_chars += len(text_of(item.get("content")))
            continue
        call = output_call(item)
        if call is None:
            continue
        out.approvals.append(approved_by(item))
        out.calls.append(call)
        out.out_chars += len(json.dumps(call.arguments, default=str))
    return out


def usage_of(usage: Any) -> Usage | None:
    """Tokens from a Responses ``usage`` object (cached input and reasoning output included)."""
    if not isinstance(usage, dict):
        return None
    tin, tout = usage.get("input_tokens"), usage.get("output_tokens", 0)
    if not (isinstance(tin, int) and isinstance(tout, int)) or isinstance(tin, bool) or tin < 0 or tout < 0:
        return None
    return Usage(
        tin,
        tout,
        _detail(usage, "input_tokens_details", "cached_tokens", tin),
        _detail(usage, "output_tokens_details", "reasoning_tokens", tout),
    )


def _detail(usage: dict[str, Any], group: str, key: str, whole: int) -> int:
    details = usage.get(group)
    value = details.get(key) if isinstance(details, dict) else None
    return min(max(value, 0), whole) if isinstance(value, int) and not isinstance(value, bool) else 0


def context_tokens(usage: Usage | None) -> int:
    """The context a response leaves for the next turn of its chain (its input and output)."""
    return 0 if usage is None else usage.tokens_in + usage.tokens_out
