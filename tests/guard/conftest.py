"""Fixtures for the guard tests: the fake upstream and in-process guards on loopback ports.

One fake upstream serves the whole session (reset before each test that asks for it); each
test gets its own guards, built from a ``GuardConfig`` like the operator renders, plus an
official ``openai.AsyncOpenAI`` client whose only change is ``base_url``. The helpers these
fixtures use, and that tests import, are in ``tests/guard/support.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from agentfleet.guard.app import Server
from agentfleet.guard.config import Tuning, build_config, listeners
from agentfleet.guard.state import Guard
from hack.harness.fake_llm import FakeLLM
from hack.harness.processes import FakeLLMProcess
from tests.guard.redisd import RedisServer
from tests.guard.scripted import ScriptedUpstream
from tests.guard.support import FAST, UPSTREAM_KEY, Harness, MakeGuard, base_config, merge


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


@pytest.fixture(scope="session")
def fake_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The fake LLM as its own process (as the demo and the benchmark run it); its base URL."""
    llm = FakeLLMProcess.start(tmp_path_factory.mktemp("fake") / "fake.log")
    yield llm.base
    llm.stop()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server for this test (the shared ledger), killed after it."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.kill()
