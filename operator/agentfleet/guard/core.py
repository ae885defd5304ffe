"""The control core: every check the guard makes, on the protocol-neutral shapes.

Adapters map a protocol's request to a ``Turn`` (or a tool call to a ``ToolCall``), ask the core
whether it may proceed, and map the upstream's answer to ``ToolCall``s and ``Usage`` for the
core to judge and settle. Nothing here knows a wire format or HTTP, so a new protocol adapter
reuses the checks instead of copying them.

``CallLog`` collects what happened to one call and, in ``finish`` (always run), settles the
budget reservation, counts metrics and writes the audit record, so no path can leak a
reservation or an in-flight slot. The check functions raise ``GuardError``; they never await,
so a check and the slot it guards cannot be interleaved with another request. The one await is
the budget reservation (``commit_turn``): the ledger makes it atomic (on this event loop, or on
the shared ledger's server), and the task's own counters are taken before it and given back if
it is refused.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from agentfleet.api.types import InjectionMode
from agentfleet.guard import tracing
from agentfleet.guard.config import TASK_HEADER, ToolInfo
from agentfleet.guard.errors import Code, GuardError, invalid
from agentfleet.guard.injection import CLASSIFIER, CLASSIFIER_UNAVAILABLE, Verdict, scan, signals, steps, verdict
from agentfleet.guard.ledger import Charge, Hold, task_exhausted
from agentfleet.guard.loops import error_signature, tool_error_text
from agentfleet.guard.shapes import ToolCall, ToolResult, Turn, Usage
from agentfleet.guard.state import Guard
from agentfleet.guard.tasks import Task, task_from_history
from agentfleet.guard.toolgate import describe
from agentfleet.guard.tracing import event, response_facts

MAX_TASK_ID = 256
MAX_CALL_ID = 256


# ------------------------------------------------------------------------------ bookkeeping


class CallLog:
    """What happened to one LLM call; ``finish`` settles, counts and audits it exactly once."""

    __slots__ = (
        "attempts",
        "began",
        "cached",
        "completion",
        "detail",
        "finish_reasons",
        "first_event",
        "guard",
        "kind",
        "model",
        "outcome",
        "prompt",
        "protocol",
        "reason",
        "reasoning",
        "removed",
        "res",
        "response_model",
        "span",
        "status",
        "stream",
        "t0",
        "task",
        "task_charge",
        "tin",
        "tout",
        "upstream",
    )

    def __init__(self, guard: Guard, kind: str, protocol: str | None = None) -> None:
        self.guard = guard
        self.kind = kind
        self.protocol = protocol
        """The API the agent spoke, for the audit trail (None: OpenAI chat completions)."""
        self.model = guard.model
        """The model the call was pinned to (for the audit trail)."""
        self.t0 = time.perf_counter()
        self.task: Task | None = None
        self.res: Hold | None = None
        self.task_charge: Charge | None = None
        """What this call holds of its task's budgets.perTask until it settles."""
        self.tin = 0
        self.cached = 0
        self.reasoning = 0
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
        self.first_event: float | None = None
        """When a stream's first event arrived (``perf_counter``), for time to first token."""
        self.response_model: str | None = None
        self.finish_reasons: list[str] = []
        self.span = guard.tracing.start_llm(self.operation, self.model)

    @property
    def operation(self) -> str:
        """``gen_ai.operation.name`` of the call."""
        return "embeddings" if self.kind == "embeddings" else "chat"

    def answered(self, data: Any) -> None:
        """Note the model that answered and why it stopped, from the upstream's response body."""
        self.response_model, self.finish_reasons = response_facts(data)

    async def reserve(self, tokens_in: int, tokens_out: int) -> None:
        """Reserve the worst case of this call against the budgets (raises 429, or 503 when the
        shared ledger cannot decide). The request id makes the shared ledger's settle idempotent."""
        g = self.guard
        worst = g.limits.worst_cost(tokens_in, tokens_out)
        charge = Charge.of(tokens_in + tokens_out, worst)
        self._hold_task(charge)
        try:
            self.res = await g.ledger.reserve(uuid.uuid4().hex, charge)
        except BaseException:
            self._settle_task(Charge(0, 0))
            raise
        event("agentfleet.budget.reserved", **{"agentfleet.tokens": charge.tokens, "agentfleet.cost": str(worst)})
        g.note_levels(self.res)

    def _hold_task(self, charge: Charge) -> None:
        """Reserve ``charge`` against budgets.perTask before the ledger (429 task_tokens/task_cost)."""
        lim, task = self.guard.limits, self.task
        if task is None or (lim.task_tokens is None and lim.task_nanos is None):
            return
        over = task.over_spend(charge.tokens, charge.nanos, lim.task_tokens, lim.task_nanos)
        if over is not None:
            tokens = over == "tokens"
            raise task_exhausted(
                describe(task),
                over,
                task.used_tokens if tokens else task.used_nanos,
                task.held_tokens if tokens else task.held_nanos,
                charge.tokens if tokens else charge.nanos,
                (lim.task_tokens if tokens else lim.task_nanos) or 0,
            )
        self.task_charge = charge

    def _settle_task(self, used: Charge) -> None:
        if self.task is not None and self.task_charge is not None:
            held, self.task_charge = self.task_charge, None
            self.task.settle_spend(held.tokens, held.nanos, used.tokens, used.nanos)

    def begin(self, task: Task) -> None:
        """Count the task as in flight until ``finish``."""
        self.guard.tasks.begin(task)
        self.began = True

    def used(self, usage: Usage | None, prompt_estimate: int, out_chars: int) -> None:
        """What the call used: the upstream's usage, else the prompt estimate and the output seen."""
        if usage is not None:
            self.tin, self.tout = usage.tokens_in, usage.tokens_out
            self.cached, self.reasoning = usage.cached_in, usage.reasoning_out
        else:
            self.tin, self.tout = prompt_estimate, -(-out_chars // 3)

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
            cost = g.limits.cost(self.tin, self.tout, self.cached, self.reasoning)
            g.ledger.settle(self.res, Charge.of(self.tin + self.tout, cost))
            self._settle_task(Charge.of(self.tin + self.tout, cost))
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
        op = self.operation
        if self.upstream:
            m.duration_h.observe(elapsed)
            m.genai_duration_h[op].observe(elapsed)
            if self.res is not None:
                m.genai_tokens_h[(op, "input")].observe(self.tin)
                if op == "chat":
                    m.genai_tokens_h[(op, "output")].observe(self.tout)
        if self.first_event is not None:
            m.genai_ttft_h[op].observe(self.first_event - self.t0)
        decision = {"ok": "allow", "rejected": "reject"}.get(self.outcome, "error")
        if self.span is not None:
            self._end_span(decision, cost)
        g.audit.record(
            self.kind,
            task=self.task.id if self.task is not None and self.task.named else None,
            model=self.model,
            protocol=self.protocol,
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

    def _end_span(self, decision: str, cost: Decimal) -> None:
        span = self.span
        assert span is not None
        t = self.guard.tracing
        if self.res is not None:
            span.add_event(
                "agentfleet.budget.settled",
                {"agentfleet.tokens": self.tin + self.tout, "agentfleet.cost": str(cost)},
            )
        if self.first_event is not None:
            span.set_attribute("gen_ai.server.time_to_first_token", self.first_event - self.t0)
        span.update_name(f"{self.operation} {self.model}")
        t.content(span, "gen_ai.input.messages", self.prompt)
        t.content(span, "gen_ai.output.messages", self.completion)
        tracing.end(
            span,
            decision=decision,
            reason=self.reason,
            detail=self.detail,
            task=self.task.id if self.task is not None and self.task.named else None,
            attributes={
                "gen_ai.request.model": self.model,
                "gen_ai.response.model": self.response_model,
                "gen_ai.response.finish_reasons": self.finish_reasons or None,
                "gen_ai.usage.input_tokens": self.tin if self.upstream else None,
                "gen_ai.usage.output_tokens": self.tout if self.upstream else None,
                "agentfleet.protocol": self.protocol
                or ("openai-embeddings" if self.kind == "embeddings" else "openai-chat"),
                "agentfleet.stream": self.stream,
                "agentfleet.attempts": self.attempts or None,
                "agentfleet.cost": str(cost),
                "agentfleet.tools_removed": self.removed or None,
                "http.response.status_code": self.status or None,
            },
        )


class ToolLog:
    """What happened to one call of ``/tools/NAME``; ``finish`` counts and audits it once."""

    __slots__ = (
        "arguments",
        "began",
        "call_id",
        "guard",
        "name",
        "outcome",
        "reason",
        "result",
        "span",
        "status",
        "t0",
        "task",
    )

    def __init__(self, guard: Guard, name: str, call_id: str | None) -> None:
        self.guard = guard
        self.name = name
        self.call_id = call_id
        self.t0 = time.perf_counter()
        self.task: Task | None = None
        self.began = False
        self.outcome = "error"
        self.reason: str | None = None
        self.status = 0
        self.arguments: bytes = b""
        self.result: bytes = b""
        self.span = guard.tracing.start_tool(name, call_id)

    def fail(self, err: GuardError) -> None:
        self.outcome = "rejected" if err.is_rejection else "error"
        self.reason, self.status = err.code.value, err.status
        if err.budget is not None:
            self.guard.metrics.budget[err.budget].inc()

    def finish(self) -> None:
        g = self.guard
        if self.began and self.task is not None:
            g.tasks.end(self.task)
        g.audit.record(
            "tool_call",
            task=self.task.id if self.task is not None and self.task.named else None,
            tool=self.name,
            route="proxy",
            call_id=self.call_id,
            decision={"ok": "allow", "rejected": "refuse"}.get(self.outcome, "error"),
            reason=self.reason,
            status=self.status,
            latency_ms=round((time.perf_counter() - self.t0) * 1000, 3),
            arguments=g.audit.content(self.arguments),
            result=g.audit.content(self.result) if self.result else None,
        )
        self.end_span()

    def end_span(self, **attributes: Any) -> None:
        """Close the call's span with the decision (every subclass's ``finish`` calls it)."""
        span = self.span
        if span is None:
            return
        self.span = None
        t = self.guard.tracing
        t.content(span, "gen_ai.tool.call.arguments", self.arguments)
        t.content(span, "gen_ai.tool.call.result", self.result or None)
        tracing.end(
            span,
            decision={"ok": "allow", "rejected": "refuse"}.get(self.outcome, "error"),
            reason=self.reason,
            detail=None,
            task=self.task.id if self.task is not None and self.task.named else None,
            attributes={"http.response.status_code": self.status or None, **attributes},
        )


# ------------------------------------------------------------------------------ tasks


def resolve_task(g: Guard, task_id: str | None, turn: Turn | None) -> Task:
    """The named task, or the conversation the turn carries as an unnamed task."""
    if task_id:
        if len(task_id) > MAX_TASK_ID:
            raise invalid(f"{TASK_HEADER} is longer than {MAX_TASK_ID} characters")
        task, created = g.tasks.get(task_id)
    else:
        history = turn.history if turn is not None else None
        task = task_from_history(history, time.monotonic()) if history is not None else _lone_task()
        created = history is not None and task.iterations == 0
    if created:
        g.metrics.tasks_c.inc()
    return task


def _lone_task() -> Task:
    now = time.monotonic()
    return Task(id="", named=False, started=now, last_seen=now)


def admit(g: Guard, task: Task, *, llm_call: bool) -> None:
    """Task-level checks before any work: ended, duration, iterations, concurrency."""
    lim = g.limits
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
    if task.inflight == 0 and g.tasks.active >= lim.max_concurrent_tasks:
        raise GuardError(
            Code.CONCURRENCY_LIMIT,
            f"{lim.max_concurrent_tasks} tasks are already in flight; try again shortly",
            429,
            retry_after=1,
            should_retry=True,
            budget="concurrency",
        )


# ------------------------------------------------------------------------------ inputs


Scans = dict[str, Verdict]
"""Verdicts of texts scanned ahead of the checks (by ``scan_turn`` / ``scan_text``)."""


def _scannable(g: Guard, text: str, source: str) -> None:
    """A text too long to scan is refused: an attack must not hide in what goes unread."""
    limit = g.tuning.injection_scan_bytes
    if len(text) > limit:
        raise GuardError(
            Code.INVALID_REQUEST,
            f"{source} of {len(text)} characters is longer than the {limit} the guard checks for prompt "
            "injection; truncate it",
            413,
        )


async def scan_text(g: Guard, text: str, source: str, tool: str | None = None) -> Verdict:
    """Scan one text, giving the event loop a turn between windows (a long text never stalls
    other requests), and ask the classifier if one is configured."""
    _scannable(g, text, source)
    found: set[str] = set()
    for i, (window, raw) in enumerate(steps(text)):
        if i:
            await asyncio.sleep(0)
        found |= signals(window, raw=raw)
    if g.classifier is not None and text:
        answer = await g.classifier.classify(text, source, tool)
        if answer.injection:
            found.add(CLASSIFIER)
        elif answer.injection is None:
            g.audit.record(
                "classifier_error",
                decision="allow" if g.classifier.fail_open else "flag",
                reason=answer.error,
                source=source,
                tool=tool,
            )
            if not g.classifier.fail_open:
                found.add(CLASSIFIER_UNAVAILABLE)
    return verdict(found)


async def scan_turn(g: Guard, turn: Turn) -> Scans:
    """Scan a turn's new inputs before its checks run (the checks then never await)."""
    scans: Scans = {}
    if g.cfg.guard.injection is InjectionMode.OFF:
        return scans
    task = g.tasks.peek(turn.task_id) if turn.task_id else None
    for result in turn.new_results:
        if result.text not in scans and not (task is not None and task.saw_result(result.call_id)):
            scans[result.text] = await scan_text(g, result.text, "tool result", result.tool or None)
    if g.tuning.scan_user_content:
        for text in turn.user_texts:
            if text not in scans:
                scans[text] = await scan_text(g, text, "user message")
    return scans


def check_injection(g: Guard, task: Task, text: str, source: str, tool: str | None, scans: Scans | None = None) -> None:
    """Flag (count + audit) or block a suspected prompt injection."""
    mode = g.cfg.guard.injection
    if mode is InjectionMode.OFF:
        return
    found = scans.get(text) if scans else None
    if found is None:
        _scannable(g, text, source)
        found = scan(text)
    if not found.suspicious:
        return
    g.metrics.injections_c.inc()
    block = mode is InjectionMode.BLOCK
    event(
        "agentfleet.injection_suspected",
        **{
            "agentfleet.decision": "reject" if block else "flag",
            "agentfleet.source": source,
            "gen_ai.tool.name": tool,
            "agentfleet.score": found.score,
            "agentfleet.signals": list(found.signals),
        },
    )
    g.audit.record(
        "injection",
        task=task.id if task.named else None,
        tool=tool,
        source=source,
        decision="reject" if block else "flag",
        reason=Code.INJECTION_DETECTED.value,
        score=found.score,
        signals=list(found.signals),
        content=g.audit.content(text),
    )
    if block:
        raise GuardError(
            Code.INJECTION_DETECTED,
            f"suspected prompt injection in {source}{f' of tool {tool!r}' if tool else ''} "
            f"({', '.join(found.signals)}); the request was blocked",
            403,
        )


def inspect_inputs(
    g: Guard, task: Task, results: Sequence[ToolResult], user_texts: Sequence[str], scans: Scans | None = None
) -> None:
    """Look at what is new since the model last spoke: tool results (injection, repeated
    errors) and, if enabled, the user's text."""
    for result in results:
        if task.named and task.saw_result(result.call_id):
            continue
        tool = result.tool
        check_injection(g, task, result.text, "tool result", tool or None, scans)
        err = tool_error_text(result.text)
        if err is not None:
            g.metrics.tool_call(tool, "error")
            # Unnamed tasks counted their whole history in task_from_history already.
            count = task.count_error(tool, err) if task.named else task.errors.get(error_signature(tool, err), 0)
            refusal = g.gate.repeated_error(task, tool, count)
            if refusal is not None:
                raise refusal
        if task.named:
            task.mark_result(result.call_id)  # only once its checks passed: a blocked result stays blocked
    if g.tuning.scan_user_content:
        for text in user_texts:
            check_injection(g, task, text, "user message", None, scans)


# ------------------------------------------------------------------------------ an LLM call


def open_turn(g: Guard, call: CallLog, turn: Turn, scans: Scans | None = None) -> list[bool]:
    """Every check before an LLM call may reserve budget: the task, the new inputs, the tools
    offered. Returns which offered tools the model may see (the adapter removes the others)."""
    task = call.task = resolve_task(g, turn.task_id, turn)
    admit(g, task, llm_call=True)
    inspect_inputs(g, task, turn.new_results, turn.user_texts, scans)
    if turn.forced is not None and not g.gate.permitted(turn.forced):
        raise g.gate.not_permitted(turn.forced)
    return [name is not None and g.gate.permitted(name) for name in turn.offered]


async def commit_turn(g: Guard, call: CallLog, prompt_tokens: int, completion_tokens: int) -> None:
    """Count the call as an iteration of its task in flight, then reserve its worst case. The
    iteration is taken before the reservation's await (so concurrent calls of one task cannot
    all pass its cap) and given back if the reservation is refused."""
    task = call.task
    assert task is not None, "open_turn first"
    if task.named:
        task.iterations += 1
    call.begin(task)
    try:
        await call.reserve(prompt_tokens, completion_tokens)
    except BaseException:
        if task.named:
            task.iterations -= 1
        raise


def judge_calls(g: Guard, task: Task, calls: Sequence[ToolCall]) -> GuardError | None:
    """Judge a batch of model tool calls; count and audit each one."""
    err = g.gate.judge(task, calls)
    outcome = "refused" if err else "allowed"
    span = tracing.current()
    for call in calls:
        g.metrics.tool_call(call.name, outcome)
        if span is not None:
            g.tracing.issued(span, call.id)
            span.add_event(
                "gen_ai.tool.call",
                {
                    k: v
                    for k, v in {
                        "gen_ai.tool.name": call.name,
                        "gen_ai.tool.call.id": call.id,
                        "agentfleet.decision": "allow" if err is None else "refuse",
                        "agentfleet.reason": err.code.value if err is not None else None,
                    }.items()
                    if v is not None
                },
            )
        g.audit.record(
            "tool_call",
            task=task.id if task.named else None,
            tool=call.name,
            call_kind=call.kind if call.kind != "function" else None,
            route="model",
            call_id=call.id,
            decision="allow" if err is None else "refuse",
            reason=err.code.value if err is not None else None,
            arguments=g.audit.content(
                call.arguments if isinstance(call.arguments, str) else json.dumps(call.arguments)
            ),
        )
    return err


# ------------------------------------------------------------------------------ a direct tool call


def tool_route(g: Guard, name: str) -> ToolInfo:
    """The declared HTTP tool ``name`` if the agent may call it directly (403/404 otherwise)."""
    info = g.limits.tools.get(name)
    if not g.gate.permitted(name):
        g.metrics.tool_call(name, "refused")
        raise g.gate.not_permitted(name)
    if info is None or info.endpoint is None:
        raise GuardError(Code.TOOL_NOT_FOUND, f"tool {name!r} has no HTTP endpoint declared", 404)
    return info


def open_tool_call(g: Guard, log: ToolLog, task_id: str | None, arguments: str, call: ToolCall | None = None) -> Task:
    """Task checks and the tool gate for a direct tool call; the task is in flight afterwards.
    A call the model issued (and the guard counted) in a response is not counted again. ``call``
    is the call as the gate judges it when it is not ``log.name(arguments)`` (an MCP tool is
    judged as its server, ``mcp:<server>``, like the hosted MCP calls of the other adapters)."""
    if log.call_id is not None and len(log.call_id) > MAX_CALL_ID:
        raise invalid(f"the tool call id is longer than {MAX_CALL_ID} characters")
    task = log.task = resolve_task(g, task_id, None)
    admit(g, task, llm_call=False)
    if not (log.call_id and task.was_issued(log.call_id)):
        judged = call or ToolCall(log.name, arguments, log.call_id)
        refusal = g.gate.judge(task, [judged])
        g.metrics.tool_call(judged.name, "allowed" if refusal is None else "refused")
        if refusal is not None:
            raise refusal
    g.tasks.begin(task)
    log.began = True
    return task


def tool_failure(g: Guard, task: Task, name: str, message: str, kind: str) -> GuardError:
    """A tool call that failed to execute: counted as a tool error (and towards a repeated-error loop)."""
    g.metrics.tool_call(name, "error")
    refusal = g.gate.repeated_error(task, name, task.count_error(name, kind))
    return refusal or GuardError(Code.TOOL_UNAVAILABLE, message, 502, should_retry=False)


def tool_answer(g: Guard, task: Task, name: str, status: int, text: str, scans: Scans | None = None) -> None:
    """Judge a tool's answer before the agent reads it: errors count (a repeated one ends the
    task), and the text is scanned for injection."""
    error_text = f"HTTP {status}: {text[:2000]}" if status >= 400 else tool_error_text(text)
    if error_text is not None:
        g.metrics.tool_call(name, "error")
        refusal = g.gate.repeated_error(task, name, task.count_error(name, error_text))
        if refusal is not None:
            raise refusal
    if text:
        check_injection(g, task, text, "tool result", name, scans)
