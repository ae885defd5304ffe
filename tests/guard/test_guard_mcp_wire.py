"""The pure MCP mapping (``guard.mcp_wire``): messages, the call the core judges, filters, the
text scanned, refusals and task identity."""

from __future__ import annotations

from typing import Any

import pytest

from agentfleet.api.types import McpArgumentRule
from agentfleet.guard import mcp_wire as wire
from agentfleet.guard.errors import Code, GuardError
from agentfleet.guard.loops import call_signature
from agentfleet.guard.sse import SSEParser


def test_messages_are_classified_and_batches_refused() -> None:
    call = wire.classify({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "search"}})
    assert (call.kind, call.method, call.id) == ("request", "tools/call", 7)
    assert wire.classify({"jsonrpc": "2.0", "method": "notifications/initialized"}).kind == "notification"
    assert wire.classify({"jsonrpc": "2.0", "id": "s-1", "result": {}}).kind == "response"
    for bad in (
        [{"jsonrpc": "2.0", "id": 1, "method": "ping"}],
        {"id": 1, "method": "ping"},
        {"jsonrpc": "2.0", "id": True, "method": "ping"},
        {"jsonrpc": "2.0", "id": 1, "method": "ping", "params": [1]},
        {"jsonrpc": "2.0", "id": 1},
        {"jsonrpc": "2.0", "id": 1, "method": "x" * 129},
    ):
        with pytest.raises(wire.WireError) as caught:
            wire.classify(bad)
        assert caught.value.code == wire.INVALID_REQUEST


def test_method_labels_are_bounded() -> None:
    msg = wire.classify({"jsonrpc": "2.0", "id": 1, "method": "made/up/" + "x" * 50})
    assert wire.method_label(msg) == "_other"
    assert wire.method_label(wire.classify({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})) == "tools/list"


def test_a_tools_call_is_judged_as_its_server_like_the_other_adapters_mcp_calls() -> None:
    msg = wire.classify(
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "search", "arguments": {"q": 1}}}
    )
    tool, args = wire.called_tool(msg)
    call = wire.core_call("mcp:kb", tool, args, "c1")
    assert (call.name, call.arguments, call.id) == ("mcp:kb", {"name": "search", "input": {"q": 1}}, "c1")
    # The Anthropic adapter maps an mcp_tool_use block to the same shape, so a loop is one loop.
    assert call_signature(call.name, call.arguments) == call_signature("mcp:kb", {"input": {"q": 1}, "name": "search"})
    for params in ({}, {"name": ""}, {"name": "x" * 129}, {"name": "a", "arguments": [1]}):
        with pytest.raises(wire.WireError) as caught:
            wire.called_tool(wire.classify({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}))
        assert caught.value.code == wire.INVALID_PARAMS


def test_tools_list_and_capabilities_are_filtered() -> None:
    result: dict[str, Any] = {"tools": [{"name": "a"}, {"name": "b"}, {"nameless": True}], "nextCursor": "n"}
    assert wire.filter_tools(result, lambda name: wire.visible(frozenset({"a"}), name)) == ["b", "?"]
    assert result == {"tools": [{"name": "a"}], "nextCursor": "n"}
    assert wire.filter_tools({"tools": [{"name": "b"}]}, lambda name: wire.visible(None, name)) == []
    assert wire.filter_tools({"error": 1}, lambda name: False) == []
    init: dict[str, Any] = {"capabilities": {"tools": {}, "resources": {}, "prompts": {}, "logging": {}}}
    assert wire.filter_capabilities(init) == ["resources", "prompts"]
    assert init["capabilities"] == {"tools": {}, "logging": {}}


def test_the_text_of_a_result_is_what_the_agent_reads() -> None:
    ok = {
        "result": {
            "content": [
                {"type": "text", "text": "one"},
                {"type": "image", "data": "AAAA", "mimeType": "image/png"},
                {"type": "resource", "resource": {"uri": "file:///a", "text": "two"}},
            ],
            "structuredContent": {"k": "three"},
        }
    }
    assert wire.result_text(ok) == (False, 'one\ntwo\n{"k": "three"}')
    assert wire.result_text({"result": {"content": [{"type": "text", "text": "bad"}], "isError": True}}) == (
        True,
        "bad",
    )
    assert wire.result_text({"error": {"code": -32602, "message": "Unknown tool"}}) == (True, "Unknown tool")
    assert wire.result_text({"result": None}) == (False, "")


def test_refusals_are_json_rpc_errors_with_the_guards_code() -> None:
    hidden = wire.refusal(3, GuardError(Code.TOOL_NOT_PERMITTED, "tool 'mcp:kb/x' is not permitted", 403))
    assert hidden["id"] == 3 and hidden["error"]["code"] == wire.INVALID_PARAMS
    assert hidden["error"]["data"] == {"code": "tool_not_permitted", "status": 403, "shouldRetry": False}
    busy = wire.refusal(4, GuardError(Code.CONCURRENCY_LIMIT, "busy", 429, retry_after=0.2, should_retry=True))
    assert busy["error"]["code"] == wire.GUARD_REFUSED
    assert busy["error"]["data"] == {"code": "concurrency_limit", "status": 429, "shouldRetry": True, "retryAfter": 1}


def test_task_identity_header_then_meta_then_session() -> None:
    meta = {wire.TASK_META: "from-meta"}
    assert wire.task_key("kb", "from-header", meta, "sid") == "from-header"
    assert wire.task_key("kb", None, meta, "sid") == "from-meta"
    assert wire.task_key("kb", None, {}, "sid") == "mcp:kb:sid"
    assert wire.task_key("kb", None, {}, "s" * 1000) == "mcp:kb:" + "s" * 160
    assert wire.task_key("kb", None, {wire.TASK_META: 5}, None) is None
    assert wire.call_id_of(None, {wire.CALL_ID_META: "c9"}) == "c9"
    assert wire.call_id_of("h", {wire.CALL_ID_META: "c9"}) == "h"


def test_the_event_parser_keeps_ids_and_retry_for_resumption() -> None:
    parser = SSEParser(1024)
    (priming, message) = parser.feed(b"id: ev-1\nretry: 500\ndata:\n\nid: ev-2\ndata: {}\n\n")
    assert (priming.id, priming.retry, priming.data) == (b"ev-1", b"500", b"")
    assert (message.id, message.retry, message.data) == (b"ev-2", None, b"{}")


def test_argument_rules_hold_paths_under_their_prefixes_and_urls_to_their_hosts() -> None:
    assert wire.path_allowed("/data/a.txt", ["/data"])
    assert wire.path_allowed("/data", ["/data/"])
    assert not wire.path_allowed("/data/../etc/passwd", ["/data"])
    assert not wire.path_allowed("/database/x", ["/data"])
    assert not wire.path_allowed("data/x", ["/data"])
    assert wire.host_allowed("https://example.com/x", ["example.com"])
    assert wire.host_allowed("http://docs.example.org:8080/", ["*.example.org"])
    assert not wire.host_allowed("https://example.org/", ["*.example.org"])
    assert not wire.host_allowed("https://example.com.evil.test/", ["example.com"])
    assert not wire.host_allowed("https://evil.test/?u=https://example.com", ["example.com"])
    assert not wire.host_allowed("file:///etc/passwd", ["example.com"])
    assert not wire.host_allowed("https://[::1", ["example.com"])
    rules = [
        McpArgumentRule.model_validate({"tool": "read_file", "argument": "path", "pathPrefixes": ["/srv/kb"]}),
        McpArgumentRule.model_validate({"tool": "fetch", "argument": "url", "hosts": ["example.com"]}),
    ]
    assert wire.argument_violation(rules, "read_file", {"path": "/srv/kb/a.md"}) is None
    assert wire.argument_violation(rules, "other", {"path": "/etc/passwd"}) is None
    assert "not under /srv/kb" in str(wire.argument_violation(rules, "read_file", {"path": "/srv/kb/../../etc"}))
    assert "must be a string" in str(wire.argument_violation(rules, "read_file", {}))
    assert "not an http(s) URL" in str(wire.argument_violation(rules, "fetch", {"url": "https://evil.test"}))
