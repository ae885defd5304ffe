"""Per-request bookkeeping and the checks shared by the LLM and tool routes.

``CallLog`` collects what happened to one call and, in ``finish`` (always run), settles the
budget reservation, counts metrics and writes the audit record, so no path can leak a
reservation or an in-flight slot. The check functions raise ``GuardError``; they never await,
so a check and the reservation or slot it guards cannot be interleaved with another request.
"""

from __future__ import annotations

import json
import time
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from aiohttp import web

from agentfleet.api.types import InjectionMode
from agentfleet.guard.budgets import Reservation
from agentfleet.guard.config import TASK_HEADER
from agentfleet.guard.errors import Code, GuardError, invalid
from agentfleet.guard.injection import scan
from agentfleet.guard.loops import error_signature, text_of, tool_error_text
from agentfleet.guard.tasks import Task, task_from_history, tool_names_by_call_id
from agentfleet.guard.toolgate import ToolCall, describe

if TYPE_CHECKING:
    from agentfleet.guard.app import Guard

MAX_TASK_ID = 256


# ------------------------------------------------------------------------------ bookkeeping


class CallLog:
    """What happened to one request; ``finish`` settles, counts and audits it exactly once."""

    __slots__ = (
        "attempts",
        "began",
        "completion",
        "detail",
        "guard",
        "kind",
        "outcome",
        "prompt",
        "reason",
        "removed",
        "res",
        "status",
        "stream",
        "t0",
        "task",
        "tin",
        "tout",
        "upstream",
    )

    def __init__(self, guard: Guard, kind: str) -> None:
        self.guard = guard
        self.kind = kind
        self.t0 = time.perf_counter()
        self.task: Task | None = None
        self.res: Reservation | None = None
        self.tin = 0
        self.tout = 0
        self.outcome = "error"
        self.reason: str | None = None
        self.detail: str | None = None
        self.status = 0
        self.attempts = 0
        self.stream = False
        self.removed: list[str] | None = None
        self.prompt: dict[str, Any] | None = None
        self.completion: dict[str, Any] | None = None
        self.began = False
        self.upstream = False

    def reserve(self, tokens_in: int, tokens_out: int) -> None:
        """Reserve the worst case of this call against the budgets (raises 429)."""
        g = self.guard
        self.res = g.ledger.reserve(tokens_in + tokens_out, g.limits.cost(tokens_in, tokens_out))

    def begin(self, task: Task) -> None:
        """Count the task as in flight until ``finish``."""
        self.guard.tasks.begin(task)
        self.began = True

    def ok(self) -> None:
        self.outcome, self.status = "ok", 200

    def fail(self, err: GuardError) -> None:
        """Record a refusal or failure (counts the budget rejection if it was one)."""
        self.outcome = "rejected" if err.is_rejection else "error"
        self.reason, self.status, self.detail = err.code.value, err.status, err.message
        if err.budget is not None:
            self.guard.metrics.budget[err.budget].inc()

    def passthrough(self, status: int) -> None:
        """A non-retryable upstream error handed to the agent as is."""
        self.outcome, self.status, self.reason = "error", status, f"upstream_http_{status}"

    def finish(self) -> None:
        g, m = self.guard, self.guard.metrics
        cost = Decimal(0)
        if self.res is not None:
            cost = g.limits.cost(self.tin, self.tout)
            g.ledger.settle(self.res, self.tin + self.tout, cost)
            if self.tin:
                m.tok_in.inc(self.tin)
            if self.tout:
                m.tok_out.inc(self.tout)
            if cost:
                m.cost_c.inc(float(cost))
        if self.began and self.task is not None:
            g.tasks.end(self.task)
        m.req[self.outcome].inc()
        elapsed = time.perf_counter() - self.t0
        if self.upstream:
            m.duration_h.observe(elapsed)
        decision = {"ok": "allow", "rejected": "reject"}.get(self.outcome, "error")
        g.audit.record(
            self.kind,
            task=self.task.id if self.task is not None and self.task.named else None,
            model=g.model,
            decision=decision,
            reason=self.reason,
            detail=self.detail,
            status=self.status,
            stream=self.stream or None,
            attempts=self.attempts or None,
            tokens_in=self.tin,
            tokens_out=self.tout,
            cost=str(cost),
            latency_ms=round(elapsed * 1000, 3),
            tools_removed=self.removed or None,
            prompt=self.prompt,
            completion=self.completion,
        )


# ------------------------------------------------------------------------------ request checks


async def read_json(request: web.Request) -> tuple[bytes, dict[str, Any]]:
    """The raw request body and its JSON object (400/413 otherwise)."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise GuardError(Code.INVALID_REQUEST, f"request body too large: {exc.text}", 413) from None
    try:
        payload = json.loads(raw)
    except ValueError:
        raise invalid("request body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise invalid("request body must be a JSON object")
    return raw, payload


def resolve_task(guard: Guard, request: web.Request, messages: list[Any] | None) -> Task:
    """The named task from the header, or the conversation as an unnamed task."""
    task_id = request.headers.get(TASK_HEADER)
    if task_id:
        if len(task_id) > MAX_TASK_ID:
            raise invalid(f"{TASK_HEADER} is longer than {MAX_TASK_ID} characters")
        task, created = guard.tasks.get(task_id)
    else:
        now = time.monotonic()
        task = task_from_history(messages or [], now)
        created = messages is not None and task.iterations == 0
    if created:
        guard.metrics.tasks_c.inc()
    return task


def admit(guard: Guard, task: Task, *, llm_call: bool) -> None:
    """Task-level checks before any work: ended, duration, iterations, concurrency."""
    lim = guard.limits
    if task.ended:
        raise GuardError(Code.LOOP_DETECTED, f"{describe(task)} was ended ({task.ended}); start a new task", 429)
    if task.named and time.monotonic() - task.started > lim.max_task_duration:
        raise GuardError(
            Code.TASK_DURATION_EXCEEDED,
            f"{describe(task)} exceeded its maximum duration of {lim.max_task_duration:g}s",
            429,
            budget="task_duration",
        )
    if llm_call and task.iterations >= lim.max_iterations:
        raise GuardError(
            Code.ITERATION_LIMIT,
            f"{describe(task)} reached its limit of {lim.max_iterations} LLM calls",
            429,
            budget="iterations",
        )
    if task.inflight == 0 and guard.tasks.active >= lim.max_concurrent_tasks:
        raise GuardError(
            Code.CONCURRENCY_LIMIT,
            f"{lim.max_concurrent_tasks} tasks are already in flight; try again shortly",
            429,
            retry_after=1,
            should_retry=True,
            budget="concurrency",
        )


def check_injection(guard: Guard, task: Task, text: str, source: str, tool: str | None) -> None:
    """Flag (count + audit) or block a suspected prompt injection."""
    mode = guard.cfg.guard.injection
    if mode is InjectionMode.OFF:
        return
    verdict = scan(text, guard.tuning.injection_scan_bytes)
    if not verdict.suspicious:
        return
    guard.metrics.injections_c.inc()
    block = mode is InjectionMode.BLOCK
    guard.audit.record(
        "injection",
        task=task.id if task.named else None,
        tool=tool,
        source=source,
        decision="reject" if block else "flag",
        reason=Code.INJECTION_DETECTED.value,
        score=verdict.score,
        signals=list(verdict.signals),
        content=guard.audit.content(text),
    )
    if block:
        raise GuardError(
            Code.INJECTION_DETECTED,
            f"suspected prompt injection in {source}{f' of tool {tool!r}' if tool else ''} "
            f"({', '.join(verdict.signals)}); the request was blocked",
            403,
        )


def inspect_messages(guard: Guard, task: Task, messages: list[Any]) -> None:
    """Look at what is new since the model last spoke: tool results (injection, repeated
    errors) and, if enabled, the user's message."""
    last_assistant = -1
    for i in range(len(messages) - 1, -1, -1):
        msg = messages[i]
        if isinstance(msg, dict) and msg.get("role") == "assistant":
            last_assistant = i
            break
    names: dict[str, str] | None = None
    for msg in messages[last_assistant + 1 :]:
        if not isinstance(msg, dict):
            continue
        role = msg.get("role")
        if role == "tool":
            call_id = str(msg.get("tool_call_id", ""))
            if task.named and task.saw_result(call_id):
                continue
            if names is None:
                names = tool_names_by_call_id(messages)
            tool = names.get(call_id, "")
            content = msg.get("content")
            check_injection(guard, task, text_of(content), "tool result", tool or None)
            err = tool_error_text(content)
            if err is not None:
                guard.metrics.tool_call(tool, "error")
                # Unnamed tasks counted their whole history in task_from_history already.
                count = task.count_error(tool, err) if task.named else task.errors.get(error_signature(tool, err), 0)
                refusal = guard.gate.repeated_error(task, tool, count)
                if refusal is not None:
                    raise refusal
            if task.named:
                task.mark_result(call_id)  # only once its checks passed: a blocked result stays blocked
        elif role == "user" and guard.tuning.scan_user_content:
            check_injection(guard, task, text_of(msg.get("content")), "user message", None)


def _tool_name(tool: Any) -> str | None:
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


def filter_tools(guard: Guard, payload: dict[str, Any]) -> list[str]:
    """Remove tools the agent may not use from the request; returns the removed names."""
    if "functions" in payload or "function_call" in payload:
        raise invalid("the legacy functions/function_call parameters are not supported by the guard; use tools")
    removed: list[str] = []
    tools = payload.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise invalid("tools must be a list")
        kept = []
        for tool in tools:
            name = _tool_name(tool)
            if name is not None and guard.gate.permitted(name):
                kept.append(tool)
            else:
                removed.append(name or str(tool.get("type") if isinstance(tool, dict) else tool))
        if kept:
            payload["tools"] = kept
        else:
            for key in ("tools", "tool_choice", "parallel_tool_calls"):
                payload.pop(key, None)
    choice = payload.get("tool_choice")
    if isinstance(choice, dict):
        fn = choice.get("function") or choice.get("custom")
        name = fn.get("name") if isinstance(fn, dict) else None
        if isinstance(name, str) and not guard.gate.permitted(name):
            raise guard.gate.not_permitted(name)
    return removed


def judge_calls(guard: Guard, task: Task, calls: list[ToolCall]) -> GuardError | None:
    """Judge a batch of model tool calls; count and audit each one."""
    err = guard.gate.judge(task, calls)
    outcome = "refused" if err else "allowed"
    for call in calls:
        guard.metrics.tool_call(call.name, outcome)
        guard.audit.record(
            "tool_call",
            task=task.id if task.named else None,
            tool=call.name,
            route="model",
            call_id=call.id,
            decision="allow" if err is None else "refuse",
            reason=err.code.value if err is not None else None,
            arguments=guard.audit.content(
                call.arguments if isinstance(call.arguments, str) else json.dumps(call.arguments)
            ),
        )
    return err


def usage_tokens(usage: Any) -> tuple[int, int] | None:
    """(prompt, completion) tokens from an OpenAI ``usage`` object, if it has them."""
    if not isinstance(usage, dict):
        return None
    tin, tout = usage.get("prompt_tokens"), usage.get("completion_tokens", 0)
    if isinstance(tin, int) and isinstance(tout, int):
        return tin, tout
    return None


def legacy_call_refusal() -> GuardError:
    """The refusal for a legacy ``function_call`` answer (the guard only judges ``tool_calls``)."""
    return GuardError(Code.TOOL_NOT_PERMITTED, "the model answered with a legacy function_call; refused", 403)
