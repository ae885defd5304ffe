"""Per-task state in a bounded table.

A task is what the agent names with the ``X-Agentfleet-Task`` header: every LLM call and tool
call carrying the same value belongs to it, and the per-task caps (iterations, tool calls, per
tool calls, duration) and loop detection count across them.

Without the header the request's own conversation is the task: an OpenAI chat request carries
the whole history (its adapter maps it to a ``History``), so the guard derives iterations
(assistant turns + 1), tool calls and loop signatures from it. Caps and loop detection thus
still work for agents that only changed their base URL; only the duration cap needs the
header (a history has no start time).

Memory is bounded whatever the agent or the upstream does: the table holds at most
``max_tasks`` named tasks (least recently used are dropped first; a task with requests in
flight is never dropped), idle tasks expire, and each task's signature dicts are capped.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agentfleet.guard.loops import call_signature, error_signature, tool_error_text
from agentfleet.guard.shapes import History

_MAX_SIGNATURES = 4096
_MAX_IDS = 1024


def _bump(counter: dict[str, int], key: str, by: int = 1) -> int:
    value = counter.get(key, 0) + by
    if key not in counter and len(counter) >= _MAX_SIGNATURES:
        counter.pop(next(iter(counter)))
    counter[key] = value
    return value


def _remember(ids: OrderedDict[str, None], key: str) -> bool:
    """Add ``key``; False if it was already there. Bounded, oldest forgotten first."""
    if key in ids:
        return False
    ids[key] = None
    if len(ids) > _MAX_IDS:
        ids.popitem(last=False)
    return True


@dataclass(slots=True, eq=False)
class Task:
    """Counters of one task."""

    id: str
    named: bool
    started: float
    last_seen: float
    iterations: int = 0
    tool_calls: int = 0
    per_tool: dict[str, int] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)
    """Call signature -> times seen."""
    errors: dict[str, int] = field(default_factory=dict)
    """Tool error signature -> times seen."""
    ended: str | None = None
    """Why the task was ended (e.g. loop_detected): every later request is refused."""
    inflight: int = 0
    issued_ids: OrderedDict[str, None] = field(default_factory=OrderedDict)
    """Tool call ids the guard let through to the agent (counted already)."""
    result_ids: OrderedDict[str, None] = field(default_factory=OrderedDict)
    """Tool result ids already inspected (so a retried request is not counted twice)."""
    used_tokens: int = 0
    """Tokens its settled LLM calls used (budgets.perTask)."""
    used_nanos: int = 0
    held_tokens: int = 0
    """Tokens reserved by its LLM calls in flight."""
    held_nanos: int = 0

    def over_spend(self, tokens: int, nanos: int, cap_tokens: int | None, cap_nanos: int | None) -> str | None:
        """Which per-task budget a reservation of ``tokens``/``nanos`` would pass ("tokens" or
        "dollars"), else None and the reservation is held. No await: atomic on the event loop,
        so concurrent calls of one task cannot all pass the cap."""
        if cap_tokens is not None and self.used_tokens + self.held_tokens + tokens > cap_tokens:
            return "tokens"
        if cap_nanos is not None and self.used_nanos + self.held_nanos + nanos > cap_nanos:
            return "dollars"
        self.held_tokens += tokens
        self.held_nanos += nanos
        return None

    def settle_spend(self, held_tokens: int, held_nanos: int, used_tokens: int, used_nanos: int) -> None:
        """Replace a reservation by what the call used (0, 0 when it was refused after all)."""
        self.held_tokens -= held_tokens
        self.held_nanos -= held_nanos
        self.used_tokens += used_tokens
        self.used_nanos += used_nanos

    def count_call(self, tool: str, arguments: Any) -> int:
        """Record an allowed tool call; returns how often this exact call has now been seen."""
        self.tool_calls += 1
        self.per_tool[tool] = self.per_tool.get(tool, 0) + 1
        return _bump(self.calls, call_signature(tool, arguments))

    def count_error(self, tool: str, error_text: str) -> int:
        """Record a tool error; returns how often this error has now been seen for this tool."""
        return _bump(self.errors, error_signature(tool, error_text))

    def issue(self, call_id: str) -> None:
        """Remember a tool call id the guard passed to the agent."""
        _remember(self.issued_ids, call_id)

    def was_issued(self, call_id: str) -> bool:
        """Whether a tool call id came from a model response the guard already counted."""
        return call_id in self.issued_ids

    def saw_result(self, call_id: str) -> bool:
        """Whether a tool result id was already inspected in an earlier request."""
        return call_id in self.result_ids

    def mark_result(self, call_id: str) -> None:
        """Remember that a tool result id has been inspected."""
        _remember(self.result_ids, call_id)


def task_from_history(history: History, now: float) -> Task:
    """An unnamed task reconstructed from the conversation a request carries."""
    task = Task(id="", named=False, started=now, last_seen=now)
    task.iterations = history.iterations
    for call in history.calls:
        task.count_call(call.name, call.arguments)
    for result in history.results:
        err = tool_error_text(result.text)
        if err is not None:
            task.count_error(result.tool, err)
    return task


class TaskTable:
    """Named tasks, bounded by count (LRU) and idle time, plus the in-flight task count.

    Tasks with requests in flight are never dropped, so the table can exceed ``max_tasks`` by
    the number of busy tasks (itself bounded by the guard's in-flight request limit); it shrinks
    back as they finish."""

    def __init__(self, max_tasks: int, idle_ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_tasks = max_tasks
        self.idle_ttl = idle_ttl
        self._clock = clock
        self._tasks: OrderedDict[str, Task] = OrderedDict()
        self.active = 0
        """Tasks with at least one request in flight (named and unnamed)."""

    def __len__(self) -> int:
        return len(self._tasks)

    def get(self, task_id: str) -> tuple[Task, bool]:
        """The task named ``task_id`` and whether it was just created."""
        now = self._clock()
        task = self._tasks.get(task_id)
        if task is not None:
            self._tasks.move_to_end(task_id)
            task.last_seen = now
            return task, False
        self._evict(now)
        task = Task(id=task_id, named=True, started=now, last_seen=now)
        self._tasks[task_id] = task
        return task, True

    def peek(self, task_id: str) -> Task | None:
        """The task named ``task_id`` if it exists (not created, not touched)."""
        return self._tasks.get(task_id)

    def _evict(self, now: float) -> None:
        tasks = self._tasks
        # Idle expiry from the LRU end, then the size bound; tasks in flight are skipped.
        for _ in range(len(tasks)):
            oldest_id, oldest = next(iter(tasks.items()))
            expired = now - oldest.last_seen > self.idle_ttl
            if not expired and len(tasks) < self.max_tasks:
                return
            if oldest.inflight:
                tasks.move_to_end(oldest_id)
                continue
            del tasks[oldest_id]

    def begin(self, task: Task) -> None:
        """A request of ``task`` starts."""
        if task.inflight == 0:
            self.active += 1
        task.inflight += 1

    def end(self, task: Task) -> None:
        """A request of ``task`` ended (always paired with ``begin``)."""
        task.inflight -= 1
        if task.inflight == 0:
            self.active -= 1
            if len(self._tasks) > self.max_tasks:  # grew past the bound while everything was busy
                self._evict(self._clock())
