"""The agent of the test and demo agent image: a real program with the official ``openai`` SDK.

Configured only by what the operator injects into the agent container (see
``operator/agentfleet/render/workload.py``): ``OPENAI_BASE_URL`` (its guard on loopback),
``OPENAI_API_KEY`` (a placeholder: the guard holds the real key), ``AGENTFLEET_MODEL``,
``AGENTFLEET_SYSTEM_PROMPT``, ``AGENTFLEET_AGENT``, ``AGENTFLEET_NAMESPACE``,
``AGENTFLEET_REVISION``, ``AGENTFLEET_TOOLS_URL``, plus the env the AgentDeployment declares
(``AGENT_TASK``, ``AGENT_INTERVAL_SECONDS``, ``AGENT_TOOLS``, ``AGENT_MAX_TASKS``; the operator
drops declared names starting with ``AGENTFLEET_``).

    python3 agent.py                 run a task now and then every AGENT_INTERVAL_SECONDS (default 30);
                                     after AGENT_MAX_TASKS tasks (default: no limit) print
                                     {"outcome": "done", "tasks": N} and idle until stopped
    python3 agent.py ask "question"  one task (for `kubectl exec`); prints its result as JSON

A task: the system prompt and the question, with the tools named in ``AGENT_TOOLS`` offered; each
tool call the model makes is run through the guard's tool proxy (``AGENTFLEET_TOOLS_URL/<name>``)
and its result fed back, for at most ``MAX_STEPS`` model calls. Every task names itself with the
``X-Agentfleet-Task`` header, so the guard counts it as one task. Each result is one JSON line
on stdout (``kubectl logs`` shows them). A guard that cannot be reached (restarting) is an
``error`` outcome like any other: the agent goes on with its next task.

The task text may carry a ``[[fake:PRESET]]`` directive for the fake LLM of the tests (``loop``:
the model calls the same tool every time; ``error``: it answers HTTP 500), which is how e2e tests
make a real agent misbehave.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import urllib.request
import uuid
from typing import Any

# Importing the SDK can take seconds on a busy node; a TERM in that time must stop us too (as
# PID 1 of the container, a signal without a handler is ignored: the pod would wait out its grace).
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))

import openai  # noqa: E402

MAX_STEPS = 8
TIMEOUT = 30.0
"""Seconds per model or tool call: the guard answers within its own deadlines."""
DEFAULT_TASK = "Say hello in one short sentence."
TOOL_PARAMETERS = {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}


def tools_offered() -> list[str]:
    """Tool names to offer the model (``AGENT_TOOLS``, comma separated; the guard decides)."""
    return [t for t in os.environ.get("AGENT_TOOLS", "").split(",") if t]


def call_tool(name: str, arguments: str, task: str) -> str:
    """A tool call through the guard's tool proxy; the guard decides whether it may run."""
    base = os.environ.get("AGENTFLEET_TOOLS_URL", "")
    if not base:
        return json.dumps({"error": "no tool proxy configured"})
    request = urllib.request.Request(
        f"{base}/{name}",
        data=arguments.encode(),
        headers={"Content-Type": "application/json", "X-Agentfleet-Task": task},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as resp:
            return str(resp.read(64 * 1024).decode("utf-8", "replace"))
    except OSError as exc:
        return json.dumps({"error": str(exc)})


def run_task(client: openai.OpenAI, question: str) -> dict[str, Any]:
    """One task to its end: an answer, a refusal by the guard, or too many steps."""
    task = str(uuid.uuid4())
    model = os.environ.get("AGENTFLEET_MODEL", "gpt-4o-mini")
    messages: list[dict[str, Any]] = []
    if os.environ.get("AGENTFLEET_SYSTEM_PROMPT"):
        messages.append({"role": "system", "content": os.environ["AGENTFLEET_SYSTEM_PROMPT"]})
    messages.append({"role": "user", "content": question})
    tools = [
        {"type": "function", "function": {"name": t, "description": f"the {t} tool", "parameters": TOOL_PARAMETERS}}
        for t in tools_offered()
    ]
    result: dict[str, Any] = {"task": task, "agent": os.environ.get("AGENTFLEET_AGENT", ""), "steps": 0}
    started = time.monotonic()
    try:
        for _ in range(MAX_STEPS):
            result["steps"] += 1
            extra: dict[str, Any] = {"tools": tools} if tools else {}
            completion = client.chat.completions.create(
                model=model,
                messages=messages,  # type: ignore[arg-type]
                max_tokens=256,
                extra_headers={"X-Agentfleet-Task": task},
                **extra,
            )
            choice = completion.choices[0].message
            if completion.usage is not None:
                result["tokens"] = result.get("tokens", 0) + completion.usage.total_tokens
            if not choice.tool_calls:
                result.update(outcome="answered", answer=choice.content or "")
                break
            messages.append(choice.model_dump(exclude_none=True))
            for call in choice.tool_calls:
                fn = call.function  # type: ignore[union-attr]
                output = call_tool(fn.name, fn.arguments, task)
                messages.append({"role": "tool", "tool_call_id": call.id, "content": output})
        else:
            result["outcome"] = "too_many_steps"
    except openai.APIStatusError as exc:
        result.update(outcome="refused", status=exc.status_code, error=str(exc.message)[:500])
    except openai.APIError as exc:
        result.update(outcome="error", error=str(exc)[:500])
    result["seconds"] = round(time.monotonic() - started, 3)
    return result


def client() -> openai.OpenAI:
    # The SDK reads OPENAI_BASE_URL and OPENAI_API_KEY itself; its own retries are off so what
    # happens is the guard's doing.
    return openai.OpenAI(timeout=TIMEOUT, max_retries=0)


def main(argv: list[str]) -> int:
    if argv[:1] == ["ask"]:
        question = " ".join(argv[1:]) or DEFAULT_TASK
        result = run_task(client(), question)
        print(json.dumps(result), flush=True)
        return 0 if result.get("outcome") == "answered" else 1
    interval = float(os.environ.get("AGENT_INTERVAL_SECONDS", "30"))
    question = os.environ.get("AGENT_TASK", DEFAULT_TASK)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    limit = int(os.environ.get("AGENT_MAX_TASKS", "0"))
    llm = client()
    done = 0
    while not stop.is_set():
        if limit and done >= limit:
            print(json.dumps({"outcome": "done", "tasks": done}), flush=True)
            stop.wait()
            break
        print(json.dumps(run_task(llm, question)), flush=True)
        done += 1
        stop.wait(interval)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
