"""Fixtures for the guard tests: the fake upstream and in-process guards on loopback ports.

One fake upstream serves the whole session (reset before each test that asks for it); each
test gets its own guards, built from a ``GuardConfig`` like the operator renders, plus an
official ``openai.AsyncOpenAI`` client whose only change is ``base_url``.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import pytest_asyncio

from agentfleet.guard.app import Server
from agentfleet.guard.config import Tuning, build_config, listeners
from agentfleet.guard.state import Guard
from hack.harness.fake_llm import FakeLLM
from tests.guard.scripted import ScriptedUpstream

ROOT = Path(__file__).resolve().parents[2]
UPSTREAM_KEY = "sk-upstream-secret-never-shown-to-agents"
AGENT_KEY = "sk-agent-placeholder"
FAST = Tuning(
    backoff_base=0.01, backoff_cap=0.05, breaker_open_seconds=0.2, breaker_max_open_seconds=1.0, drain_timeout=5.0
)


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


async def wait_for(check: Callable[[], Any], within: float = 10.0, what: str = "condition") -> Any:
    """Poll ``check`` until truthy, failing after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}; last value {value!r}")
        await asyncio.sleep(0.01)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def fake_server() -> AsyncIterator[FakeLLM]:
    server = FakeLLM()
    await server.start()
    yield server
    await server.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def fake(fake_server: FakeLLM) -> FakeLLM:
    """The session's fake upstream, reset for this test."""
    fake_server.reset()
    return fake_server


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def scripted_server() -> AsyncIterator[ScriptedUpstream]:
    server = ScriptedUpstream()
    await server.start()
    yield server
    await server.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def scripted(scripted_server: ScriptedUpstream) -> ScriptedUpstream:
    """The session's byte-exact scripted upstream, emptied for this test."""
    scripted_server.reset()
    return scripted_server


MakeGuard = Callable[..., Awaitable[Harness]]


@pytest_asyncio.fixture(loop_scope="session")
async def make_guard(fake: FakeLLM, tmp_path: Path) -> AsyncIterator[MakeGuard]:
    """Factory: ``await make_guard(tuning=..., **config_overrides)`` -> a running ``Harness``."""
    made: list[Harness] = []

    async def factory(tuning: Tuning = FAST, api_key: str | None = UPSTREAM_KEY, **overrides: Any) -> Harness:
        audit_file = tmp_path / f"audit-{len(made)}.jsonl"
        cfg = build_config(None, merge(base_config(fake.url, audit_file), overrides))
        guard = Guard(cfg, tuning, api_key=api_key)
        server = Server(guard, listeners(cfg, api_port=0, metrics_port=0))
        await server.start()
        harness = Harness(guard, server.api_url, server, audit_file)
        made.append(harness)
        return harness

    yield factory
    for h in made:
        await h.close()


@pytest.fixture
def tools() -> list[dict[str, Any]]:
    """Tool schemas an agent offers: two allowed, one (shell) declared but not allowed."""

    def tool(name: str) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {
                "name": name,
                "description": f"{name} tool",
                "parameters": {"type": "object", "properties": {}},
            },
        }

    return [tool("search"), tool("lookup"), tool("shell")]


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


@pytest.fixture(scope="session")
def fake_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The fake LLM as its own process (as the demo and the benchmark run it); its base URL."""
    log = tmp_path_factory.mktemp("fake") / "fake.log"
    proc, line = start([sys.executable, "hack/harness/fake_llm.py", "--port", "0"], "listening on", log)
    yield line.rsplit(" ", 1)[1].strip()
    proc.terminate()
    proc.wait(timeout=10)
