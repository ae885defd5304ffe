"""Decisions on tool calls: allowlist, per-task caps, per-tool caps, loop detection.

The same rules apply wherever a tool call shows up: in a non-streaming response, in a stream
(one call at a time, once its deltas are complete), and on the ``/tools/NAME`` proxy route.
A batch of calls from one response is judged as a whole and committed only if every call
passes, so a refused response leaves the task's counters as they were (except a detected loop,
which ends the task for good).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from agentfleet.guard.config import Limits
from agentfleet.guard.errors import Code, GuardError
from agentfleet.guard.loops import call_signature
from agentfleet.guard.shapes import ToolCall
from agentfleet.guard.tasks import Task


def describe(task: Task) -> str:
    """How a task is named in messages."""
    return f"task {task.id!r}" if task.named else "this conversation (no X-Agentfleet-Task header)"


def loop_error(task: Task, what: str) -> GuardError:
    """End ``task`` because of a loop and build the refusal."""
    task.ended = Code.LOOP_DETECTED.value
    return GuardError(
        Code.LOOP_DETECTED,
        f"loop detected in {describe(task)}: {what}; the task is ended, start a new one",
        429,
    )


class ToolGate:
    """Judges tool calls for one guard; ``on_loop`` is told when a loop ends a task."""

    def __init__(self, limits: Limits, on_loop: Callable[[Task, str], None]) -> None:
        self.limits = limits
        self.on_loop = on_loop

    def permitted(self, name: str) -> bool:
        """Whether the agent may use tool ``name``."""
        return name in self.limits.allowed

    def not_permitted(self, name: str) -> GuardError:
        """The refusal for a tool outside the allowlist."""
        return GuardError(
            Code.TOOL_NOT_PERMITTED, f"tool {name!r} is not permitted for this agent", 403, should_retry=False
        )

    def judge(self, task: Task, calls: Sequence[ToolCall]) -> GuardError | None:
        """Check ``calls`` together; on success count them into ``task``, else return the refusal."""
        lim = self.limits
        total = task.tool_calls
        per_tool: dict[str, int] = {}
        sigs: dict[str, int] = {}
        for call in calls:
            if not call.known:
                return GuardError(
                    Code.TOOL_NOT_PERMITTED,
                    f"the model made a tool call of a kind the guard cannot check ({call.kind!r}); refused",
                    403,
                )
            if not self.permitted(call.name):
                return self.not_permitted(call.name)
            total += 1
            if total > lim.max_tool_calls:
                return GuardError(
                    Code.TOOL_CALL_LIMIT,
                    f"{describe(task)} reached its limit of {lim.max_tool_calls} tool calls",
                    429,
                    budget="tool_calls",
                )
            info = lim.tools.get(call.name)
            n = per_tool[call.name] = per_tool.get(call.name, task.per_tool.get(call.name, 0)) + 1
            if info is not None and info.max_calls_per_task is not None and n > info.max_calls_per_task:
                return GuardError(
                    Code.TOOL_CALL_LIMIT,
                    f"{describe(task)} reached its limit of {info.max_calls_per_task} calls of tool {call.name!r}",
                    429,
                    budget="tool_calls_per_tool",
                )
            sig = call_signature(call.name, call.arguments)
            seen = sigs[sig] = sigs.get(sig, task.calls.get(sig, 0)) + 1
            if seen >= lim.loop_threshold:
                err = loop_error(task, f"tool {call.name!r} called {seen} times with the same arguments")
                self.on_loop(task, call.name)
                return err
        for call in calls:
            task.count_call(call.name, call.arguments)
            if call.id:
                task.issue(call.id)
        return None

    def repeated_error(self, task: Task, tool: str, count: int) -> GuardError | None:
        """The refusal when the same tool error has now been seen ``loop_threshold`` times."""
        if count < self.limits.loop_threshold:
            return None
        err = loop_error(task, f"tool {tool!r} returned the same error {count} times")
        self.on_loop(task, tool)
        return err
