"""The scripted agent of the test/demo data plane (not part of the product).

A small, deterministic agent that behaves like a real one from the guard's point of view: it
uses the official ``openai`` SDK against the guard's OpenAI-compatible API, names each task with
the ``X-Agentfleet-Task`` header, offers the model its declared tools, "executes" the tool calls
the model makes (locally, with a canned result), feeds the results back and stops when the model
answers, when the guard refuses, or after a bounded number of steps.

Its behaviour comes from the agent's system prompt: a marker ``[[sim:NAME]]`` anywhere in it picks
one (no marker: ``healthy``). The agent turns the behaviour into ``[[fake:...]]`` directives in its
user messages, which the fake LLM (``hack/harness/fake_llm.py``) obeys after the guard forwarded
them, so a "bad prompt rollout" in a test is just a new system prompt containing ``[[sim:error]]``.

========== ==================================================================================
behaviour  what a task does
========== ==================================================================================
healthy    one tool call (first permitted tool), then an answer (no tools: just an answer)
slow       like healthy, each model call takes ~2 s
loop       the model calls the same tool with the same arguments until the guard ends the task
           (``loop_detected`` on the third identical call with the default loopThreshold)
error      every model call fails upstream (500); the guard retries, then gives up
expensive  the model reports 200k completion tokens per call (cost and token budgets trip)
PRESET     any other fake-LLM preset (``unavailable``, ``rate_limit``, ``hang``, ...) on every call
========== ==================================================================================

Aliases: ``ok`` = healthy, ``looping`` = loop, ``erroring`` = error.

Standalone (e.g. as the command of an agent container on a cluster that runs pods, or by hand)::

    python -m hack.harness.dataplane.agent --base-url http://127.0.0.1:4000/v1 --tool search \\
        --system-prompt '... [[sim:loop]]' --tasks-per-second 1 --tasks 20

``OPENAI_BASE_URL``, ``AGENTFLEET_SYSTEM_PROMPT``, ``AGENTFLEET_MODEL`` and
``AGENTFLEET_AGENT`` (the env the operator renders into the agent container) are the defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import re
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import openai
from openai import AsyncOpenAI

from hack.harness.fake_llm import PRESETS

log = logging.getLogger("dataplane.agent")

TASK_HEADER = "X-Agentfleet-Task"
MARKER = re.compile(r"\[\[sim:([A-Za-z0-9_-]+)\]\]")
HEALTHY = "healthy"
ALIASES = {"ok": HEALTHY, "healthy": HEALTHY, "looping": "loop", "erroring": "error"}
BEHAVIOURS = frozenset({HEALTHY, *PRESETS})
SLOW_LATENCY_MS = 2000
MAX_STEPS = 8
"""Model calls per task at most (well under the guard's default maxIterationsPerTask of 50)."""
TOOL_PARAMETERS = {
    "type": "object",
    "properties": {"query": {"type": "string", "description": "what to look up"}},
    "required": ["query"],
}


def behaviour_from_prompt(prompt: str | None) -> str:
    """The behaviour a system prompt asks for: ``[[sim:NAME]]``, or healthy without a marker.

    Raises ValueError for an unknown name, so a typo in a test's prompt is loud.
    """
    match = MARKER.search(prompt or "")
    if match is None:
        return HEALTHY
    name = match.group(1).lower()
    name = ALIASES.get(name, name)
    if name not in BEHAVIOURS:
        raise ValueError(
            f"unknown simulated behaviour {match.group(1)!r} in the system prompt; "
            f"known: {', '.join(sorted(BEHAVIOURS | set(ALIASES)))}"
        )
    return name


def directive(behaviour: str, step: int, tools: list[str]) -> str | None:
    """The ``[[fake:...]]`` directive for the user message that opens ``step`` of a task.

    None means: add no user message at this step (the conversation continues with the tool
    results, and the fake LLM keeps obeying the last user message's directive, which is how a
    looping model keeps calling the same tool).
    """
    if behaviour in (HEALTHY, "slow"):
        if step == 0 and tools:
            beh: dict[str, Any] = {
                "mode": "tool_call",
                "tool_calls": [{"name": tools[0], "arguments": json.dumps({"query": "latest figures"})}],
            }
        else:
            beh = {"mode": "ok", "text": "Here is the summary you asked for: all figures are within range."}
        if behaviour == "slow":
            beh["latency_ms"] = SLOW_LATENCY_MS
        return f"[[fake:{json.dumps(beh)}]]"
    if step > 0:
        return None
    if behaviour == "loop":
        name = tools[0] if tools else "search"
        beh = {"mode": "tool_call", "tool_calls": [{"name": name, "arguments": json.dumps({"query": "same thing"})}]}
        return f"[[fake:{json.dumps(beh)}]]"
    return f"[[fake:{behaviour}]]"


def error_code(exc: openai.APIStatusError) -> str:
    """The guard's stable error code (``loop_detected``, ``budget_exhausted``, ...), else http_STATUS."""
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error")
        code = inner.get("code") if isinstance(inner, dict) else body.get("code")
        if isinstance(code, str) and code:
            return code
    return f"http_{exc.status_code}"


@dataclass
class AgentStats:
    """What the agent did; ``outcomes`` counts finished tasks by how they ended."""

    started: int = 0
    calls: int = 0
    tool_calls: int = 0
    skipped: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)

    def snapshot(self) -> dict[str, Any]:
        return {
            "started": self.started,
            "calls": self.calls,
            "tool_calls": self.tool_calls,
            "skipped": self.skipped,
            "outcomes": dict(self.outcomes),
        }


class ScriptedAgent:
    """One simulated agent replica talking to one guard.

    ``interval`` is called before each task to get the seconds until the next one (the
    simulator uses it to cap the fleet-wide rate); at most ``max_inflight`` tasks run at once
    and a tick that finds them all busy is skipped (counted), so a slow upstream cannot make
    the agent pile up work.
    """

    def __init__(
        self,
        base_url: str,
        *,
        behaviour: str,
        model: str = "gpt-4o-mini",
        tools: list[str] | None = None,
        name: str = "agent",
        system_prompt: str = "You are a helpful agent.",
        interval: Callable[[], float] = lambda: 1.0,
        max_inflight: int = 4,
        call_timeout: float = 70.0,
    ) -> None:
        if behaviour not in BEHAVIOURS:
            raise ValueError(f"unknown behaviour {behaviour!r}")
        self.behaviour = behaviour
        self.model = model
        self.tools = list(tools or [])
        self.name = name
        self.system_prompt = system_prompt
        self.interval = interval
        self.max_inflight = max(1, max_inflight)
        self.stats = AgentStats()
        self.client = AsyncOpenAI(base_url=base_url, api_key="sim", max_retries=0, timeout=call_timeout)
        self._inflight: set[asyncio.Task[None]] = set()
        self._tool_defs: list[dict[str, Any]] = [
            {
                "type": "function",
                "function": {"name": t, "description": f"simulated tool {t}", "parameters": TOOL_PARAMETERS},
            }
            for t in self.tools
        ]

    async def run(self, tasks: int | None = None) -> None:
        """Start tasks at the configured rate until cancelled (or ``tasks`` were started)."""
        try:
            await asyncio.sleep(random.uniform(0, min(1.0, self.interval())))  # de-synchronise replicas
            while tasks is None or self.stats.started < tasks:
                if len(self._inflight) < self.max_inflight:
                    self.stats.started += 1
                    t = asyncio.create_task(self._guarded_task(self.stats.started))
                    self._inflight.add(t)
                    t.add_done_callback(self._inflight.discard)
                else:
                    self.stats.skipped += 1
                await asyncio.sleep(self.interval())
            while self._inflight:
                await asyncio.wait(set(self._inflight))
        finally:
            await self.close()

    async def close(self) -> None:
        """Cancel tasks in flight and close the HTTP client."""
        for t in list(self._inflight):
            t.cancel()
        if self._inflight:
            await asyncio.wait(set(self._inflight), timeout=5)
        await self.client.close()

    async def _guarded_task(self, n: int) -> None:
        try:
            outcome = await self.run_task(n)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug here must not kill the agent loop
            log.exception("%s: task %d failed unexpectedly", self.name, n)
            outcome = f"exception:{type(exc).__name__}"
        self.stats.outcomes[outcome] += 1

    async def run_task(self, n: int) -> str:
        """One task; returns how it ended: ``completed``, ``unfinished``, a guard error code,
        ``http_STATUS`` or ``connection_error``."""
        task_id = str(uuid.uuid4())
        first = directive(self.behaviour, 0, self.tools) or ""
        messages: list[Any] = [
            {"role": "system", "content": self.system_prompt},
            {
                "role": "user",
                "content": f"Task {n} for {self.name}: look up the latest figures and summarise them. {first}",
            },
        ]
        extra: dict[str, Any] = {"tools": self._tool_defs} if self._tool_defs else {}
        for step in range(MAX_STEPS):
            if step:
                follow = directive(self.behaviour, step, self.tools)
                if follow is not None:
                    messages.append({"role": "user", "content": f"Thanks. Now answer. {follow}"})
            self.stats.calls += 1
            try:
                resp = await self.client.chat.completions.create(
                    model=self.model,
                    messages=messages,
                    max_tokens=256,
                    extra_headers={TASK_HEADER: task_id},
                    **extra,
                )
            except openai.APIStatusError as exc:
                return error_code(exc)
            except openai.APIConnectionError:
                return "connection_error"
            if not resp.choices:
                return "empty_response"
            msg = resp.choices[0].message
            if not msg.tool_calls:
                return "completed"
            messages.append(
                {
                    "role": "assistant",
                    "content": msg.content,
                    "tool_calls": [
                        {
                            "id": c.id,
                            "type": "function",
                            "function": {"name": c.function.name, "arguments": c.function.arguments},
                        }
                        for c in msg.tool_calls
                        if c.type == "function"
                    ],
                }
            )
            for call in msg.tool_calls:
                self.stats.tool_calls += 1
                messages.append({"role": "tool", "tool_call_id": call.id, "content": self._execute(call)})
        return "unfinished"

    @staticmethod
    def _execute(call: Any) -> str:
        """A canned tool result (plain data: no error text, nothing that looks like an injection)."""
        try:
            args = json.loads(call.function.arguments or "{}")
        except ValueError:
            args = {}
        query = args.get("query", "") if isinstance(args, dict) else ""
        return json.dumps({"result": f"3 documents match {query!r}", "tool": call.function.name, "count": 3})


async def _main(args: argparse.Namespace) -> int:
    behaviour = args.behaviour or behaviour_from_prompt(args.system_prompt)
    agent = ScriptedAgent(
        args.base_url,
        behaviour=behaviour,
        model=args.model,
        tools=args.tool,
        name=args.name,
        system_prompt=args.system_prompt or "You are a helpful agent.",
        interval=lambda: 1.0 / args.tasks_per_second,
        max_inflight=args.max_inflight,
    )
    started = time.monotonic()
    runner = asyncio.create_task(agent.run(args.tasks))
    loop = asyncio.get_running_loop()
    import signal

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, runner.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await runner
    print(
        json.dumps({"behaviour": behaviour, "seconds": round(time.monotonic() - started, 1), **agent.stats.snapshot()})
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m hack.harness.dataplane.agent",
        description="Scripted test agent (openai SDK) for the agentfleet guard.",
    )
    p.add_argument(
        "--base-url",
        default=os.environ.get("OPENAI_BASE_URL"),
        help="the guard's OpenAI base URL, e.g. http://127.0.0.1:4000/v1 (env OPENAI_BASE_URL)",
    )
    p.add_argument(
        "--system-prompt",
        default=os.environ.get("AGENTFLEET_SYSTEM_PROMPT"),
        help="picks the behaviour with a [[sim:NAME]] marker (env AGENTFLEET_SYSTEM_PROMPT)",
    )
    p.add_argument("--behaviour", help="override the marker: " + ", ".join(sorted(BEHAVIOURS)))
    p.add_argument("--model", default=os.environ.get("AGENTFLEET_MODEL", "gpt-4o-mini"))
    p.add_argument("--name", default=os.environ.get("AGENTFLEET_AGENT", "agent"))
    p.add_argument("--tool", action="append", default=[], help="a tool to offer the model; repeatable")
    p.add_argument("--tasks-per-second", type=float, default=1.0)
    p.add_argument("--max-inflight", type=int, default=4)
    p.add_argument("--tasks", type=int, help="stop after this many tasks (default: run until SIGTERM)")
    args = p.parse_args(argv)
    if not args.base_url:
        p.error("--base-url (or OPENAI_BASE_URL) is required")
    if args.tasks_per_second <= 0:
        p.error("--tasks-per-second must be positive")
    if args.behaviour:
        args.behaviour = ALIASES.get(args.behaviour, args.behaviour)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return asyncio.run(_main(args))


if __name__ == "__main__":
    sys.exit(main())
