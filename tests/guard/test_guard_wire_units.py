"""The pure mapping of the Responses and Messages wire formats to the guard's neutral shapes."""

from __future__ import annotations

from typing import Any

import pytest

from agentfleet.guard import anthropic_wire as aw
from agentfleet.guard import responses_wire as rw
from agentfleet.guard.errors import GuardError
from agentfleet.guard.shapes import Usage
from agentfleet.render.workload import RESERVED_ENV
from tests.guard.wire_formats import a_tool_use, a_usage, function_call, message, usage

pytestmark = pytest.mark.unit


# ------------------------------------------------------------------------------ Responses


@pytest.mark.parametrize(
    ("tool", "name"),
    [
        ({"type": "function", "name": "search"}, "search"),
        ({"type": "custom", "name": "grammar"}, "grammar"),
        ({"type": "web_search_preview"}, "web_search"),
        ({"type": "web_search_2025_08_26"}, "web_search"),
        ({"type": "file_search", "vector_store_ids": ["vs"]}, "file_search"),
        ({"type": "code_interpreter"}, "code_interpreter"),
        ({"type": "computer_use_preview"}, "computer_use"),
        ({"type": "mcp", "server_label": "docs"}, "mcp:docs"),
        ({"type": "mcp"}, None),
        ({"type": "function"}, None),
        ({"type": "brand_new_tool"}, None),
        ("search", None),
    ],
)
def test_responses_tools_are_named_for_the_allowlist(tool: Any, name: str | None) -> None:
    assert rw.offered_tool_name(tool) == name


def test_responses_output_items_map_to_calls() -> None:
    fn = rw.output_call(function_call("search", '{"q": 1}', "call_7", "fc_7"))
    assert fn is not None and (fn.name, fn.arguments, fn.id, fn.kind, fn.known) == (
        "search",
        '{"q": 1}',
        "call_7",
        "function",
        True,
    )
    mcp = rw.output_call({"type": "mcp_call", "id": "m1", "server_label": "docs", "name": "read", "arguments": "{}"})
    assert mcp is not None and (mcp.name, mcp.kind, mcp.id) == ("mcp:docs", "mcp_call", "m1")
    web = rw.output_call({"type": "web_search_call", "id": "ws", "action": {"query": "q"}, "status": "completed"})
    assert web is not None and (web.name, web.arguments) == ("web_search", {"action": {"query": "q"}})
    assert rw.output_call(message("hi")) is None
    assert rw.output_call({"type": "reasoning", "id": "r", "summary": []}) is None
    for odd in ({"type": "teleport_call"}, {"type": "function_call", "name": ""}, "text"):
        call = rw.output_call(odd)
        assert call is not None and not call.known


def test_a_responses_input_list_is_read_as_turns_calls_and_new_results() -> None:
    items: list[Any] = [
        {"role": "user", "content": "hi"},
        {"type": "reasoning", "id": "r1", "summary": []},
        function_call("search", '{"q": 1}', "call_1"),
        {"type": "function_call_output", "call_id": "call_1", "output": "error: index offline"},
        message("sorry"),
        {"role": "user", "content": [{"type": "input_text", "text": "try lookup"}]},
        function_call("lookup", '{"id": 2}', "call_2", "fc_2"),
        {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "found"}]},
        {"role": "user", "content": "thanks"},
    ]
    turn = rw.responses_turn({"input": items, "tools": [{"type": "web_search"}]}, None)
    assert turn.history is not None
    assert turn.history.iterations == 3  # reasoning + call, the message, the second call
    assert [c.name for c in turn.history.calls] == ["search", "lookup"]
    assert [(r.call_id, r.tool, r.text) for r in turn.history.results] == [
        ("call_1", "search", "error: index offline"),
        ("call_2", "lookup", "found"),
    ]
    assert [(r.tool, r.text) for r in turn.new_results] == [("lookup", "found")]
    assert turn.user_texts == ["thanks"] and turn.offered == ["web_search"]
    chained = rw.responses_turn({"input": "go on"}, "response:resp_1")
    assert chained.history is None and chained.user_texts == ["go on"]


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        ({}, "input is required"),
        ({"input": 3}, "string or a list"),
        ({"input": "x", "background": True}, "background"),
        ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
        ({"input": "x", "tools": {}}, "tools must be a list"),
        ({"input": "x", "previous_response_id": "r" * 300}, "previous_response_id"),
    ],
)
def test_responses_requests_the_guard_cannot_check_are_refused(payload: dict[str, Any], words: str) -> None:
    with pytest.raises(GuardError) as exc:
        rw.chain_of(payload)
        rw.responses_turn(payload, None)
    assert exc.value.status == 400 and words in exc.value.message


def test_responses_usage_and_forced_tools() -> None:
    assert rw.usage_of(usage(1000, 200, cached=400, reasoning=50)) == Usage(1000, 200, 400, 50)
    assert rw.usage_of(usage(10, 5, cached=99)) == Usage(10, 5, 10, 0)  # clamped to the whole
    assert rw.usage_of({"prompt_tokens": 3}) is None
    assert rw.forced_tool_name({"type": "function", "name": "shell"}) == "shell"
    assert rw.forced_tool_name({"type": "mcp", "server_label": "evil"}) == "mcp:evil"
    assert rw.forced_tool_name({"type": "web_search_preview"}) == "web_search"
    assert rw.forced_tool_name("required") is None
    assert rw.chain_of({"conversation": {"id": "conv_1"}, "previous_response_id": None}) == ("conv_1", None)


def test_responses_approved_mcp_calls_are_not_judged_twice() -> None:
    approved = {"type": "mcp_call", "id": "m2", "server_label": "docs", "name": "r", "approval_request_id": "apr_1"}
    answer = rw.answer([message("x"), approved, function_call("search")])
    assert [c.name for c in answer.fresh(lambda ref: ref == "apr_1")] == ["search"]
    assert [c.name for c in answer.fresh(lambda ref: False)] == ["mcp:docs", "search"]


# ------------------------------------------------------------------------------ Messages


def test_anthropic_usage_counts_the_prompt_cache() -> None:
    assert aw.usage_of(a_usage(100, 20, write=50, read=1000)) == Usage(1150, 20, 1000, 0)
    assert aw.usage_of({"output_tokens": 3}) is None
    merged = aw.merge_usage(a_usage(100, 1, read=7), {"output_tokens": 42, "input_tokens": None})
    assert aw.usage_of(merged) == Usage(107, 42, 7, 0)


def test_anthropic_blocks_map_to_calls() -> None:
    call = aw.block_call(a_tool_use("search", {"q": 1}, "toolu_1"))
    assert call is not None and (call.name, call.arguments, call.id, call.kind) == (
        "search",
        {"q": 1},
        "toolu_1",
        "tool_use",
    )
    mcp = aw.block_call({"type": "mcp_tool_use", "id": "m", "name": "read", "server_name": "docs", "input": {}})
    assert mcp is not None and mcp.name == "mcp:docs"
    for plain in ({"type": "text", "text": "x"}, {"type": "web_search_tool_result", "content": []}):
        assert aw.block_call(plain) is None
    odd = aw.block_call({"type": "teleport_use"})
    assert odd is not None and not odd.known


def test_a_messages_conversation_is_read_as_turns_calls_and_new_results() -> None:
    messages: list[Any] = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [{"type": "text", "text": "let me"}, a_tool_use("search", {"q": 1})]},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "offline", "is_error": True},
                {"type": "text", "text": "hurry"},
            ],
        },
    ]
    payload: dict[str, Any] = {
        "max_tokens": 10,
        "messages": messages,
        "tools": [{"name": "search"}, {"name": "shell"}],
        "mcp_servers": [{"type": "url", "url": "u", "name": "docs"}],
        "tool_choice": {"type": "tool", "name": "shell"},
    }
    turn = aw.messages_turn(payload, None)
    assert turn.history is not None and turn.history.iterations == 1
    assert [c.name for c in turn.history.calls] == ["search"]
    [result] = turn.new_results
    assert (result.tool, result.text) == ("search", '{"error": "offline"}')  # is_error reads as an error
    assert turn.user_texts == ["hurry"]
    assert (turn.offered, turn.forced) == (["search", "shell", "mcp:docs"], "shell")
    removed = aw.apply_tool_filter(payload, [True, False, False])
    assert removed == ["shell", "mcp:docs"]
    assert [t["name"] for t in payload["tools"]] == ["search"] and "mcp_servers" not in payload


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        ({"messages": [], "max_tokens": 1}, "non-empty"),
        ({"messages": [{"role": "user", "content": "x"}]}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": True}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 1, "mcp_servers": {}}, "mcp_servers"),
    ],
)
def test_messages_requests_the_guard_cannot_check_are_refused(payload: dict[str, Any], words: str) -> None:
    with pytest.raises(GuardError) as exc:
        aw.messages_turn(payload, None)
    assert exc.value.status == 400 and words in exc.value.message


def test_anthropic_refusals_read_as_anthropic_errors() -> None:
    from agentfleet.guard.errors import Code

    body = aw.error_body(GuardError(Code.BUDGET_EXHAUSTED, "out of budget", 429))
    assert body == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "out of budget", "code": "budget_exhausted"},
    }


def test_the_agent_cannot_point_its_sdks_elsewhere() -> None:
    assert {"ANTHROPIC_BASE_URL", "ANTHROPIC_API_KEY", "OPENAI_BASE_URL"} <= RESERVED_ENV
