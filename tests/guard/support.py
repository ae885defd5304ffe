"""Helpers the guard tests share: keys, tuning, the in-process ``Harness``, a guard config file,
processes, and the request shapes several test modules send.

Not a test module and no fixtures (those stay in ``conftest.py``), so that test modules import
from here and never from each other or from ``conftest``. Generic process and polling helpers
live in ``hack.harness``; what is here is particular to the guard.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import openai
import yaml

from agentfleet.api.guardconfig import AuditSink, GuardConfig
from agentfleet.api.types import Budgets, LatencyBudget, ModelSpec, Pricing, ToolSpec
from agentfleet.guard.app import Server
from agentfleet.guard.config import Tuning
from agentfleet.guard.state import Guard
from hack.harness.kube import ROOT, VENV

UPSTREAM_KEY = "sk-upstream-secret-never-shown-to-agents"
AGENT_KEY = "sk-agent-placeholder"
FAST = Tuning(
    backoff_base=0.01, backoff_cap=0.05, breaker_open_seconds=0.2, breaker_max_open_seconds=1.0, drain_timeout=5.0
)
AGENTFLEET = str(VENV / "agentfleet")
PROMTOOL = "/usr/bin/promtool"
USER = [{"role": "user", "content": "What is the status of ticket 42?"}]


def merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge two config mappings (``extra`` wins)."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) else value
    return out


def base_config(endpoint: str, audit_file: Path) -> dict[str, Any]:
    """A guard config for tests: two declared tools, generous defaults, audit to a file."""
    return {
        "namespace": "team-a",
        "agent": "support",
        "revision": "rev1",
        "model": {"name": "gpt-test", "endpoint": endpoint},
        "pricing": {"input_per_million": "1", "output_per_million": "2"},
        "tools": [{"name": "search"}, {"name": "lookup"}, {"name": "shell"}],
        "allowed_tools": ["search", "lookup"],
        "budgets": {
            "max_concurrent_tasks": 100000,
            "max_iterations_per_task": 1000,
            "max_tool_calls_per_task": 1000,
            "latency": {"per_call_deadline": "5s"},
        },
        "audit": {"stdout": False, "file": str(audit_file)},
        "metrics_host": "127.0.0.1",
    }


@dataclass
class Harness:
    """One in-process guard on a loopback port."""

    guard: Guard
    url: str
    server: Server
    audit_file: Path
    clients: list[openai.AsyncOpenAI] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def client(self, **kwargs: Any) -> openai.AsyncOpenAI:
        """The official SDK pointed at the guard (no SDK retries, so each call is one request)."""
        kwargs.setdefault("max_retries", 0)
        c = openai.AsyncOpenAI(base_url=self.base_url, api_key=AGENT_KEY, **kwargs)
        self.clients.append(c)
        return c

    async def post(
        self, path: str, body: Any, headers: Mapping[str, str] | None = None, method: str = "POST"
    ) -> tuple[int, Mapping[str, str], Any]:
        """A raw HTTP request; returns status, headers and the decoded JSON (or text) body."""
        async with (
            aiohttp.ClientSession() as s,
            s.request(method, self.url + path, json=body, headers=dict(headers or {})) as r,
        ):
            raw = await r.read()
            try:
                parsed: Any = json.loads(raw)
            except ValueError:
                parsed = raw.decode("utf-8", "replace")
            return r.status, r.headers, parsed

    def metric(self, name: str, **labels: str) -> float:
        """Current value of a sample (0 if absent)."""
        base = {"namespace": "team-a", "agent": "support", "revision": "rev1", "model": "gpt-test"}
        value = self.guard.metrics.registry.get_sample_value(name, {**base, **labels})
        return value or 0.0

    async def audit_records(self) -> list[dict[str, Any]]:
        """Records written so far (waits for the writer thread to catch up)."""
        await wait_for(lambda: self.guard.audit.caught_up, what="the audit writer to catch up")
        if not self.audit_file.exists():
            return []
        return [json.loads(line) for line in self.audit_file.read_text().splitlines()]

    async def close(self) -> None:
        for c in self.clients:
            await c.close()
        await self.server.stop()

    @property
    def metrics_url(self) -> str:
        return self.server.metrics_url


MakeGuard = Callable[..., Awaitable[Harness]]
"""The ``make_guard`` fixture: ``await make_guard(tuning=..., **config_overrides)`` -> a running ``Harness``."""


async def wait_for(check: Callable[[], Any], within: float = 10.0, what: str = "condition") -> Any:
    """Poll ``check`` until truthy, failing after ``within`` seconds (``hack.harness.kube.poll``
    without blocking the event loop)."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}; last value {value!r}")
        await asyncio.sleep(0.01)


def code_of(exc: openai.APIError) -> str:
    """The guard's error code in an SDK exception."""
    body = exc.body
    assert isinstance(body, dict), body
    inner = body.get("error", body)
    return str(inner["code"])


def fn_call(cid: str, name: str = "search", args: str = "{}") -> dict[str, Any]:
    """An OpenAI ``function`` tool call."""
    return {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}


def start(cmd: list[str], ready: str, log: Path, stream: str = "stdout") -> tuple[subprocess.Popen[bytes], str]:
    """Start a process and return it with the first output line containing ``ready``."""
    out = log.open("wb")
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE if stream == "stdout" else out,
        stderr=subprocess.PIPE if stream == "stderr" else out,
        cwd=ROOT,
    )
    pipe = proc.stdout if stream == "stdout" else proc.stderr
    assert pipe is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = pipe.readline().decode()
        out.write(line.encode())
        if ready in line:
            return proc, line
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"{cmd[:3]} did not become ready: {log.read_text()[-2000:]}")


def write_config(tmp: Path, fake_url: str, **budgets: Any) -> Path:
    """A guard config file (and its API key file) as the operator renders it, against ``fake_url``."""
    key = tmp / "api-key"
    key.write_text(UPSTREAM_KEY + "\n")
    cfg = GuardConfig(
        namespace="team-a",
        agent="support",
        revision="rev7",
        model=ModelSpec(name="gpt-test", endpoint=f"{fake_url}/v1"),
        pricing=Pricing(input_per_million="1", output_per_million="2"),
        api_key_file=str(key),
        tools=[ToolSpec(name="search", endpoint=f"{fake_url}/tools/search")],
        budgets=Budgets(latency=LatencyBudget(per_call_deadline="5s"), **budgets),
        audit=AuditSink(stdout=False, file=str(tmp / "audit" / "audit.jsonl")),
    )
    path = tmp / "guard.yaml"
    path.write_text(yaml.safe_dump(cfg.wire()))
    return path


async def get(url: str) -> tuple[int, str]:
    """A GET: status and body text."""
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return r.status, await r.text()


async def run(*cmd: str, stdin: str | None = None) -> tuple[int, str]:
    """Run a command to its end (``stdin`` fed to it); its exit code and output (stderr included)."""
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        stdin=None if stdin is None else asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate(None if stdin is None else stdin.encode())
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def promtool_check(text: str) -> tuple[int, str]:
    """``promtool check metrics`` on an exposition."""
    return await run(PROMTOOL, "check", "metrics", stdin=text)
