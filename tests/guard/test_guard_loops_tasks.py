"""Loop signatures and the task table (pure)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentfleet.guard.loops import call_signature, canonical_arguments, error_signature, tool_error_text
from agentfleet.guard.openai_wire import history, text_of
from agentfleet.guard.tasks import TaskTable, task_from_history

pytestmark = pytest.mark.unit

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=12,
)


@given(st.dictionaries(st.text(max_size=8), json_values, max_size=6), st.randoms())
def test_signature_ignores_key_order_and_whitespace(args: dict[str, Any], rnd: Any) -> None:
    items = list(args.items())
    rnd.shuffle(items)
    shuffled = json.dumps(dict(items), indent=rnd.choice([None, 2]))
    assert call_signature("search", json.dumps(args)) == call_signature("search", shuffled)
    assert canonical_arguments(shuffled) == canonical_arguments(args)


def test_signature_separates_tools_and_arguments() -> None:
    assert call_signature("search", '{"q": 1}') != call_signature("lookup", '{"q": 1}')
    assert call_signature("search", '{"q": 1}') != call_signature("search", '{"q": 2}')
    assert call_signature("run", "ls   -la") == call_signature("run", "ls -la")  # non-JSON: whitespace folded


@pytest.mark.parametrize(
    ("content", "is_error"),
    [
        ('{"error": "not found"}', True),
        ('{"result": [], "ok": false}', True),
        ('{"isError": true, "content": "boom"}', True),
        ("Error: connection refused", True),
        ("Traceback (most recent call last):", True),
        ([{"type": "text", "text": "ERROR 500"}], True),
        ('{"result": "fine", "error": null}', False),
        ("The error rate was 2% last week.", False),
        ("42 results", False),
    ],
)
def test_tool_error_classification(content: Any, is_error: bool) -> None:
    assert (tool_error_text(text_of(content)) is not None) is is_error


def test_error_signature_masks_ids_and_numbers() -> None:
    a = error_signature("db", "Error: timeout after 3012 ms (request 9f8e7d6c5b4a)")
    b = error_signature("db", "error: timeout after 2999 ms (request 0a1b2c3d4e5f)")
    assert a == b
    assert a != error_signature("db", "Error: permission denied")
    assert a != error_signature("cache", "Error: timeout after 3012 ms (request 9f8e7d6c5b4a)")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_task_table_is_bounded_and_keeps_tasks_in_flight() -> None:
    clock = Clock()
    table = TaskTable(max_tasks=100, idle_ttl=60, clock=clock)
    busy, created = table.get("busy")
    assert created
    table.begin(busy)
    for i in range(1000):
        table.get(f"t{i}")
        assert len(table) <= 101
    assert table.get("busy") == (busy, False)  # never evicted while in flight
    assert table.active == 1
    table.end(busy)
    assert table.active == 0


def test_idle_tasks_expire() -> None:
    clock = Clock()
    table = TaskTable(max_tasks=100, idle_ttl=60, clock=clock)
    old, _ = table.get("old")
    old.iterations = 5
    clock.now = 61
    table.get("new")
    fresh, created = table.get("old")
    assert created and fresh.iterations == 0 and len(table) == 2


def test_task_counters_are_bounded() -> None:
    table = TaskTable(max_tasks=10, idle_ttl=60)
    task, _ = table.get("t")
    for i in range(10000):
        task.count_call("search", {"i": i})
        task.issue(f"call-{i}")
    assert len(task.calls) <= 4096 and len(task.issued_ids) <= 1024
    assert task.tool_calls == 10000 and task.was_issued("call-9999") and not task.was_issued("call-0")


def test_history_reconstructs_an_unnamed_task() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "search", "arguments": '{"q": "x"}'}}
    messages = [
        {"role": "user", "content": "find x"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "Error: backend down"},
        {"role": "assistant", "content": None, "tool_calls": [{**call, "id": "c2"}]},
        {"role": "tool", "tool_call_id": "c2", "content": "Error: backend down"},
    ]
    task = task_from_history(history(messages), 0.0)
    assert (task.named, task.iterations, task.tool_calls, task.per_tool) == (False, 2, 2, {"search": 2})
    assert max(task.calls.values()) == 2 and max(task.errors.values()) == 2
