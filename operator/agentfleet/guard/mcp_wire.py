"""MCP's wire format (JSON-RPC 2.0 over streamable HTTP) mapped to the control core's shapes.

Pure functions, no I/O: what a message is, which tool a ``tools/call`` calls and how the core
judges it, which tools a ``tools/list`` result may show, the text of a result to scan, and how a
refusal is written as a JSON-RPC error.

Naming: an MCP server declared as the tool ``mcp:<server>`` is one entry of the allowlist, as
the OpenAI Responses and Anthropic Messages adapters name a remote MCP server. A ``tools/call``
of its tool ``T`` with arguments ``A`` is judged by the core as the call
``mcp:<server>({"name": T, "input": A})`` -- the same shape the Anthropic adapter gives an
``mcp_tool_use`` block -- so the server's ``maxCallsPerTask`` caps all its tools together and a
loop is the same tool called with the same arguments, whichever protocol carried it. The audit
trail names the tool ``mcp:<server>/<T>``.
"""

from __future__ import annotations

import json
import math
import posixpath
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from agentfleet.api.types import McpArgumentRule
from agentfleet.guard.errors import Code, GuardError
from agentfleet.guard.shapes import ToolCall

# JSON-RPC error codes (JSON-RPC 2.0 and the MCP specification).
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
HEADER_MISMATCH = -32020
"""MCP 2026-07-28: an ``Mcp-Method``/``Mcp-Name`` header disagrees with the body."""
GUARD_REFUSED = -32050
"""A refusal by the guard's policy (a cap, a loop, an injection...): ``data.code`` says which."""

TASK_META = "agentfleet.dev/task"
"""``params._meta`` key naming the task of a request (when the HTTP header cannot be set per call)."""
CALL_ID_META = "agentfleet.dev/toolCallId"
"""``params._meta`` key: the id of the model's tool call this ``tools/call`` executes."""

FORWARDED_METHODS = frozenset(
    {"initialize", "ping", "server/discover", "logging/setLevel", "subscriptions/listen", "tools/list"}
)
"""Requests relayed to the server (``tools/call`` is judged first; ``tools/list`` is filtered)."""
STREAM_METHODS = frozenset({"subscriptions/listen"})
"""Requests whose answer is a long-lived event stream (no per-call deadline)."""
HIDDEN_CAPABILITIES = ("resources", "prompts", "completions")
"""Server capabilities removed from what the agent sees: the guard serves tools only (resources
and prompts would reach the agent unchecked), so a client never tries them."""
METHOD_LABELS = (*sorted(FORWARDED_METHODS), "tools/call", "notification", "response", "refused", "_other")
"""The ``method`` label values of the MCP request counter (bounded)."""
MAX_TOOL_NAME = 128


class WireError(Exception):
    """A message the guard cannot relay: the JSON-RPC error code and message to answer with."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Message:
    """One JSON-RPC message from the client."""

    kind: str
    """``request``, ``notification`` or ``response`` (to a request of the server)."""
    method: str | None
    id: Any
    params: dict[str, Any]

    @property
    def meta(self) -> dict[str, Any]:
        meta = self.params.get("_meta")
        return meta if isinstance(meta, dict) else {}


def classify(payload: Any) -> Message:
    """What a POSTed body is (``WireError`` when it is not one JSON-RPC message: batches were
    removed from MCP in 2025-06-18 and are refused)."""
    if isinstance(payload, list):
        raise WireError(INVALID_REQUEST, "JSON-RPC batches are not supported (MCP removed them in 2025-06-18)")
    if not isinstance(payload, dict) or payload.get("jsonrpc") != "2.0":
        raise WireError(INVALID_REQUEST, "the body is not a JSON-RPC 2.0 message")
    params = payload.get("params")
    if params is not None and not isinstance(params, dict):
        raise WireError(INVALID_REQUEST, "params must be an object")
    method = payload.get("method")
    has_id = "id" in payload
    msg_id = payload.get("id")
    if (has_id and not (msg_id is None or isinstance(msg_id, str | int))) or isinstance(msg_id, bool):
        raise WireError(INVALID_REQUEST, "id must be a string or a number")
    if method is None:
        if not has_id or ("result" not in payload and "error" not in payload):
            raise WireError(INVALID_REQUEST, "a message without a method must be a response (id and result or error)")
        return Message("response", None, msg_id, {})
    if not isinstance(method, str) or not method or len(method) > 128:
        raise WireError(INVALID_REQUEST, "method must be a non-empty string of at most 128 characters")
    return Message("request" if has_id else "notification", method, msg_id, params or {})


def method_label(msg: Message) -> str:
    """The bounded ``method`` metric label of a message."""
    if msg.kind != "request":
        return msg.kind
    return msg.method if msg.method in METHOD_LABELS else "_other"


def called_tool(msg: Message) -> tuple[str, Any]:
    """The tool a ``tools/call`` names and its arguments (``WireError`` when malformed)."""
    name = msg.params.get("name")
    if not isinstance(name, str) or not 0 < len(name) <= MAX_TOOL_NAME:
        raise WireError(INVALID_PARAMS, f"tools/call needs params.name, a string of 1 to {MAX_TOOL_NAME} characters")
    arguments = msg.params.get("arguments")
    if arguments is not None and not isinstance(arguments, dict):
        raise WireError(INVALID_PARAMS, "tools/call params.arguments must be an object")
    return name, arguments or {}


def core_call(server_tool: str, tool: str, arguments: Any, call_id: str | None) -> ToolCall:
    """The call as the core judges it (see the module docstring)."""
    return ToolCall(server_tool, {"name": tool, "input": arguments}, call_id, kind="mcp_tool_call")


def visible(tools: frozenset[str] | None, name: str) -> bool:
    """Whether the server's declaration (``mcp.tools``) lets the agent see tool ``name``."""
    return tools is None or name in tools


def argument_violation(rules: Sequence[McpArgumentRule], tool: str, arguments: dict[str, Any]) -> str | None:
    """What breaks the server's argument rules in a call of ``tool`` (None: nothing does)."""
    for rule in rules:
        if rule.tool != tool:
            continue
        value = arguments.get(rule.argument)
        if not isinstance(value, str):
            return f"argument {rule.argument!r} must be a string the guard can check"
        if rule.path_prefixes is not None and not path_allowed(value, rule.path_prefixes):
            return f"argument {rule.argument!r} is not under {', '.join(rule.path_prefixes)}"
        if rule.hosts is not None and not host_allowed(value, rule.hosts):
            return f"argument {rule.argument!r} is not an http(s) URL to {', '.join(rule.hosts)}"
    return None


def path_allowed(value: str, prefixes: Sequence[str]) -> bool:
    """Whether absolute path ``value``, normalized (``..`` resolved), is a prefix or under one."""
    if not value.startswith("/") or "\0" in value:
        return False
    path = posixpath.normpath(value)
    for prefix in prefixes:
        base = posixpath.normpath(prefix)
        if path == base or path.startswith(base.rstrip("/") + "/"):
            return True
    return False


def host_allowed(value: str, hosts: Sequence[str]) -> bool:
    """Whether ``value`` is an http(s) URL whose host is one of ``hosts`` ("*.x": any host under x)."""
    try:
        url = urlsplit(value.strip())
        host = (url.hostname or "").rstrip(".")
    except ValueError:
        return False
    if url.scheme not in ("http", "https") or not host:
        return False
    return any(host == h or (h.startswith("*.") and host.endswith(h[1:])) for h in hosts)


def filter_tools(result: Any, keep: Callable[[str], bool]) -> list[str]:
    """Remove from a ``tools/list`` result every tool ``keep`` refuses (and any entry without a
    name); returns the names removed."""
    if not isinstance(result, dict) or not isinstance(result.get("tools"), list):
        return []
    kept, removed = [], []
    for tool in result["tools"]:
        name = tool.get("name") if isinstance(tool, dict) else None
        if isinstance(name, str) and keep(name):
            kept.append(tool)
        else:
            removed.append(name if isinstance(name, str) else "?")
    result["tools"] = kept
    return removed


def filter_capabilities(result: Any) -> list[str]:
    """Remove the capabilities the guard does not serve from an ``initialize`` or
    ``server/discover`` result; returns those removed."""
    if not isinstance(result, dict) or not isinstance(result.get("capabilities"), dict):
        return []
    caps = result["capabilities"]
    return [c for c in HIDDEN_CAPABILITIES if caps.pop(c, None) is not None]


def result_text(message: dict[str, Any]) -> tuple[bool, str]:
    """Whether a ``tools/call`` answer is a failure, and the text the agent will read (what is
    scanned for injection and compared for repeated errors): the text content items, the text of
    embedded resources, and the structured content."""
    error = message.get("error")
    if error is not None:
        text = error.get("message") if isinstance(error, dict) else None
        return True, text if isinstance(text, str) else json.dumps(error)
    result = message.get("result")
    if not isinstance(result, dict):
        return False, ""
    parts: list[str] = []
    for item in result.get("content") or ():
        if not isinstance(item, dict):
            continue
        if item.get("type") == "text" and isinstance(item.get("text"), str):
            parts.append(item["text"])
        resource = item.get("resource")
        if item.get("type") == "resource" and isinstance(resource, dict) and isinstance(resource.get("text"), str):
            parts.append(resource["text"])
    structured = result.get("structuredContent")
    if structured is not None:
        parts.append(json.dumps(structured, ensure_ascii=False))
    return result.get("isError") is True, "\n".join(parts)


def error(msg_id: Any, code: int, message: str, data: Any = None) -> dict[str, Any]:
    """A JSON-RPC error response."""
    err: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        err["data"] = data
    return {"jsonrpc": "2.0", "id": msg_id, "error": err}


def refusal(msg_id: Any, err: GuardError) -> dict[str, Any]:
    """A guard refusal as a JSON-RPC error: ``INVALID_PARAMS`` for a tool the agent may not use
    (what a server answers for a tool it does not have: the tool is invisible), ``GUARD_REFUSED``
    otherwise; ``data`` carries the guard's code, the HTTP status it would have and the retry hints."""
    data: dict[str, Any] = {"code": err.code.value, "status": err.status, "shouldRetry": err.should_retry}
    if err.retry_after is not None:
        data["retryAfter"] = max(1, math.ceil(err.retry_after))
    code = INVALID_PARAMS if err.code in (Code.TOOL_NOT_PERMITTED, Code.TOOL_NOT_FOUND) else GUARD_REFUSED
    return error(msg_id, code, err.message, data)


def task_key(server: str, header: str | None, meta: dict[str, Any], session: str | None) -> str | None:
    """The task a request belongs to: the ``X-Agentfleet-Task`` header, else ``_meta``'s
    ``agentfleet.dev/task``, else the MCP session (``mcp:<server>:<session id>``); None: the call
    is a task of its own (a stateless server without either)."""
    if header:
        return header
    named = meta.get(TASK_META)
    if isinstance(named, str) and named:
        return named
    if session:
        return f"mcp:{server}:{session[:160]}"
    return None


def call_id_of(header: str | None, meta: dict[str, Any]) -> str | None:
    """The id of the model's tool call this ``tools/call`` executes, if the agent says so."""
    if header:
        return header
    value = meta.get(CALL_ID_META)
    return value if isinstance(value, str) and value else None
