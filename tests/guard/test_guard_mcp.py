"""MCP through the guard: the official ``mcp`` SDK client, unmodified but for its URL, against a
real MCP server built with the same SDK (streamable HTTP, its own process), through a real guard
process running a config like the one the operator renders.

The server requires a bearer token the client does not have (the guard adds it from a file, as
from a mounted Secret) and records every call that reached it, so each test can check what the
guard let through, not only what the client was told.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import aiohttp
import httpx2
import pytest
import pytest_asyncio
import yaml
from mcp import Client
from mcp.client.session import ClientSession
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import RequestParamsMeta
from prometheus_client.parser import text_string_to_metric_families

from agentfleet.api.guardconfig import AuditSink, GuardConfig
from agentfleet.api.types import Budgets, LatencyBudget, ModelSpec, ToolSpec
from tests.guard.support import AGENTFLEET, get, run, start

pytestmark = pytest.mark.integration

TOKEN = "mcp-server-credential-the-agent-never-sees"
SERVER_CAP = 20
"""``maxCallsPerTask`` of the server: all its tools together, per task."""
VISIBLE = {"search", "fetch_page", "slow", "broken", "read_file"}


@dataclass
class McpServerProc:
    url: str
    proc: subprocess.Popen[bytes]

    async def received(self) -> dict[str, Any]:
        status, body = await get(f"{self.url}/_received")
        assert status == 200
        result: dict[str, Any] = json.loads(body)
        return result

    async def reset(self) -> None:
        async with aiohttp.ClientSession() as s, s.post(f"{self.url}/_reset") as r:
            assert r.status == 200


@dataclass
class GuardProc:
    url: str
    metrics_url: str
    audit: Path
    proc: subprocess.Popen[bytes]


@pytest.fixture(scope="module")
def mcp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[McpServerProc]:
    tmp = tmp_path_factory.mktemp("mcp-server")
    proc, line = start(
        [sys.executable, "-m", "tests.guard.mcp_server", TOKEN], '"event": "listening"', tmp / "server.log"
    )
    yield McpServerProc(f"http://127.0.0.1:{json.loads(line)['port']}", proc)
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def sse_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[McpServerProc]:
    tmp = tmp_path_factory.mktemp("mcp-sse-server")
    proc, line = start(
        [sys.executable, "-m", "tests.guard.mcp_server", TOKEN, "--sse"], '"event": "listening"', tmp / "server.log"
    )
    yield McpServerProc(f"http://127.0.0.1:{json.loads(line)['port']}", proc)
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def guard(
    mcp_server: McpServerProc, sse_server: McpServerProc, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GuardProc]:
    tmp = tmp_path_factory.mktemp("mcp-guard")
    credential = tmp / "kb-credential"
    credential.write_text(TOKEN + "\n")
    cfg = GuardConfig(
        namespace="team-a",
        agent="support",
        revision="rev1",
        model=ModelSpec(name="gpt-test", endpoint="http://127.0.0.1:9/v1"),
        tools=[
            ToolSpec.model_validate(
                {
                    "name": "mcp:kb",
                    "maxCallsPerTask": SERVER_CAP,
                    "mcp": {
                        "endpoint": f"{mcp_server.url}/mcp",
                        "credentialsSecretRef": {"name": "kb-credential", "key": "token"},
                        "scheme": "Bearer",
                        "tools": sorted(VISIBLE),
                        "argumentRules": [
                            {"tool": "read_file", "argument": "path", "pathPrefixes": ["/srv/kb"]},
                            {"tool": "fetch_page", "argument": "url", "hosts": ["example.com", "*.example.org"]},
                        ],
                    },
                }
            ),
            ToolSpec.model_validate({"name": "mcp:other", "mcp": {"endpoint": f"{mcp_server.url}/mcp"}}),
            ToolSpec.model_validate(
                {
                    "name": "mcp:old",
                    "maxCallsPerTask": SERVER_CAP,
                    "mcp": {
                        "endpoint": f"{sse_server.url}/sse",
                        "transport": "SSE",
                        "credentialsSecretRef": {"name": "kb-credential", "key": "token"},
                        "scheme": "Bearer",
                        "tools": sorted(VISIBLE),
                    },
                }
            ),
        ],
        allowed_tools=["mcp:kb", "mcp:old"],
        mcp_credential_files={"mcp:kb": str(credential), "mcp:old": str(credential)},
        budgets=Budgets(
            latency=LatencyBudget(per_call_deadline="10s"), max_tool_calls_per_task=1000, max_concurrent_tasks=1000
        ),
        audit=AuditSink(stdout=False, file=str(tmp / "audit.jsonl")),
        metrics_host="127.0.0.1",
    )
    path = tmp / "guard.yaml"
    path.write_text(yaml.safe_dump(cfg.wire()))
    proc, line = start(
        [AGENTFLEET, "guard", "--config", str(path), "--port", "0"], '"event": "listening"', tmp / "guard.log", "stderr"
    )
    ready = json.loads(line)
    yield GuardProc(ready["url"], ready["metrics_url"], tmp / "audit.jsonl", proc)
    proc.terminate()
    proc.wait(timeout=30)


@pytest_asyncio.fixture(loop_scope="session")
async def server(mcp_server: McpServerProc) -> McpServerProc:
    await mcp_server.reset()
    return mcp_server


@asynccontextmanager
async def connect(url: str, mode: str = "legacy", headers: dict[str, str] | None = None) -> AsyncIterator[Client]:
    """The SDK's client at ``url``; ``headers`` only for the task header (never a credential)."""
    http = httpx2.AsyncClient(headers=headers or {}, timeout=30)
    async with http, Client(streamable_http_client(url, http_client=http), mode=mode) as client:
        yield client


def refusal_code(exc: MCPError) -> tuple[int, str]:
    data = exc.error.data
    assert isinstance(data, dict), exc.error
    return exc.error.code, str(data["code"])


def audit(guard: GuardProc) -> list[dict[str, Any]]:
    return [json.loads(line) for line in guard.audit.read_text().splitlines()] if guard.audit.exists() else []


async def audited(guard: GuardProc, predicate: Any, within: float = 10.0) -> list[dict[str, Any]]:
    """The audit records matching ``predicate``, once there is one (the writer is a thread)."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        found = [r for r in audit(guard) if predicate(r)]
        if found or asyncio.get_running_loop().time() > deadline:
            return found
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_tools_are_filtered_and_an_allowed_call_works_with_the_guards_credential(
    guard: GuardProc, server: McpServerProc, mode: str
) -> None:
    async with connect(f"{guard.url}/mcp/kb", mode) as client:
        listed = await client.list_tools()
        assert {t.name for t in listed.tools} == VISIBLE  # delete_everything is invisible
        result = await client.call_tool("search", {"query": "refund policy"})
        assert not result.is_error
        assert result.content[0].text == "3 results for refund policy"  # type: ignore[union-attr]
    got = await server.received()
    assert got["calls"] == [{"tool": "search", "arguments": {"query": "refund policy"}}]
    assert got["auth"] == [f"Bearer {TOKEN}"]  # every request carried the guard's credential
    assert TOKEN not in guard.audit.read_text()


async def test_a_disallowed_tool_is_refused_and_never_forwarded(guard: GuardProc, server: McpServerProc) -> None:
    async with connect(f"{guard.url}/mcp/kb") as client:
        with pytest.raises(MCPError) as caught:
            await client.call_tool("delete_everything", {})
        assert refusal_code(caught.value) == (-32602, "tool_not_permitted")
        assert "mcp:kb/delete_everything" in caught.value.error.message
        assert (await client.call_tool("search", {"query": "still fine"})).is_error is False
    assert [c["tool"] for c in (await server.received())["calls"]] == ["search"]
    refused = await audited(guard, lambda r: r.get("tool") == "mcp:kb/delete_everything")
    assert refused and refused[0]["decision"] == "refuse" and refused[0]["route"] == "mcp"


async def test_argument_rules_refuse_paths_and_hosts_outside_them(guard: GuardProc, server: McpServerProc) -> None:
    async with connect(f"{guard.url}/mcp/kb") as client:
        assert not (await client.call_tool("read_file", {"path": "/srv/kb/faq.md"})).is_error
        for tool, arguments in (
            ("read_file", {"path": "/srv/kb/../../etc/passwd"}),
            ("read_file", {"path": "/etc/passwd"}),
            ("fetch_page", {"url": "https://example.com.evil.test/"}),
            ("fetch_page", {"url": "file:///etc/passwd"}),
        ):
            with pytest.raises(MCPError) as caught:
                await client.call_tool(tool, arguments)
            assert refusal_code(caught.value) == (-32602, "tool_not_permitted"), arguments
    assert (await server.received())["calls"] == [{"tool": "read_file", "arguments": {"path": "/srv/kb/faq.md"}}]


async def test_a_server_the_agent_may_not_use_is_refused(guard: GuardProc, server: McpServerProc) -> None:
    for name in ("other", "nonexistent"):
        async with aiohttp.ClientSession() as s:
            body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
            async with s.post(f"{guard.url}/mcp/{name}", json=body) as r:
                assert r.status in (403, 404)
                answer = await r.json()
        assert answer["error"]["data"]["code"] in ("tool_not_permitted", "tool_not_found")
    assert (await server.received())["calls"] == []


async def test_resources_and_prompts_are_not_served(guard: GuardProc, server: McpServerProc) -> None:
    async with connect(f"{guard.url}/mcp/kb") as client:
        with pytest.raises(MCPError) as caught:
            await client.list_resources()
        assert caught.value.error.code == -32601


async def test_a_loop_is_stopped_and_the_task_stays_ended(guard: GuardProc, server: McpServerProc) -> None:
    async with connect(f"{guard.url}/mcp/kb") as client:
        for _ in range(2):
            await client.call_tool("search", {"query": "same"})
        with pytest.raises(MCPError) as caught:
            await client.call_tool("search", {"query": "same"})
        assert refusal_code(caught.value) == (-32050, "loop_detected")
        with pytest.raises(MCPError) as caught:
            await client.call_tool("search", {"query": "something else"})
        assert refusal_code(caught.value) == (-32050, "loop_detected")
    assert len((await server.received())["calls"]) == 2
    async with connect(f"{guard.url}/mcp/kb") as client:  # a new session is a new task
        assert (await client.call_tool("search", {"query": "same"})).is_error is False


async def test_repeated_tool_errors_end_the_task(guard: GuardProc, server: McpServerProc) -> None:
    async with connect(f"{guard.url}/mcp/kb") as client:
        for i in range(2):
            assert (await client.call_tool("broken", {"what": f"x{i}"})).is_error
        with pytest.raises(MCPError) as caught:
            await client.call_tool("broken", {"what": "x2"})
        assert refusal_code(caught.value) == (-32050, "loop_detected")


async def test_the_servers_per_task_cap_counts_all_its_tools(guard: GuardProc, server: McpServerProc) -> None:
    async with connect(f"{guard.url}/mcp/kb") as client:
        for i in range(SERVER_CAP):
            await client.call_tool("search" if i % 2 else "slow", {"query": f"q{i}"} if i % 2 else {"n": i})
        with pytest.raises(MCPError) as caught:
            await client.call_tool("search", {"query": "one too many"})
        assert refusal_code(caught.value) == (-32050, "tool_call_limit")
        assert caught.value.error.data["status"] == 429
    assert len((await server.received())["calls"]) == SERVER_CAP


async def test_a_named_task_spans_connections_of_the_stateless_revision(
    guard: GuardProc, server: McpServerProc
) -> None:
    """2026-07-28 has no session: the task header (or ``_meta``) names the task."""
    headers = {"X-Agentfleet-Task": "ticket-42"}
    for i in range(SERVER_CAP):
        async with connect(f"{guard.url}/mcp/kb", "auto", headers) as client:
            await client.call_tool("search", {"query": f"q{i}"})
    async with connect(f"{guard.url}/mcp/kb", "auto", headers) as client:
        with pytest.raises(MCPError) as caught:
            await client.call_tool("search", {"query": "again"})
        assert refusal_code(caught.value) == (-32050, "tool_call_limit")
    async with connect(f"{guard.url}/mcp/kb", "auto") as client:
        meta = cast("RequestParamsMeta", {"agentfleet.dev/task": "ticket-42"})
        with pytest.raises(MCPError):
            await client.call_tool("search", {"query": "via meta"}, meta=meta)
    assert len((await server.received())["calls"]) == SERVER_CAP


async def test_500_concurrent_calls_never_pass_the_cap(guard: GuardProc, server: McpServerProc) -> None:
    async with connect(f"{guard.url}/mcp/kb") as client:

        async def one(n: int) -> str:
            try:
                await client.call_tool("slow", {"n": n})
                return "ok"
            except MCPError as exc:
                return refusal_code(exc)[1]

        outcomes = await asyncio.gather(*(one(n) for n in range(500)))
    assert outcomes.count("ok") == SERVER_CAP
    assert outcomes.count("tool_call_limit") == 500 - SERVER_CAP
    got = await server.received()
    assert len(got["calls"]) == SERVER_CAP
    assert got["max_inflight"] > 1  # the calls that passed did overlap


async def test_an_injection_in_a_result_is_flagged(guard: GuardProc, server: McpServerProc) -> None:
    async with connect(f"{guard.url}/mcp/kb") as client:
        result = await client.call_tool("fetch_page", {"url": "https://example.com"})
    assert "Ignore all previous instructions" in result.content[0].text  # type: ignore[union-attr]
    flagged = await audited(guard, lambda r: r.get("kind") == "injection" and r.get("tool") == "mcp:kb")
    assert flagged and flagged[0]["decision"] == "flag"


async def test_audit_chain_verifies_and_metrics_are_exported(guard: GuardProc, server: McpServerProc) -> None:
    async with connect(f"{guard.url}/mcp/kb") as client:
        await client.list_tools()
        await client.call_tool("search", {"query": "metrics"})
        await client.call_tool("fetch_page", {"url": "https://www.example.org"})
        with pytest.raises(MCPError):
            await client.call_tool("delete_everything", {})
    await audited(guard, lambda r: r.get("tool") == "mcp:kb/search")
    status, text = await get(f"{guard.metrics_url}/metrics")
    assert status == 200
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    base = {"namespace": "team-a", "agent": "support", "revision": "rev1", "model": "gpt-test"}

    def value(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted({**base, **labels}.items()))), 0.0)

    assert value("agentfleet_tool_call_duration_seconds_count", tool="mcp:kb", protocol="mcp") >= 1
    assert value("agentfleet_mcp_requests_total", server="kb", method="tools/call", outcome="ok") >= 1
    assert value("agentfleet_mcp_requests_total", server="kb", method="tools/call", outcome="rejected") >= 1
    assert value("agentfleet_mcp_requests_total", server="kb", method="tools/list", outcome="ok") >= 1
    assert value("agentfleet_tool_calls_total", tool="mcp:kb", outcome="allowed") >= 1
    assert value("agentfleet_tool_calls_total", tool="mcp:kb", outcome="refused") >= 1
    assert value("agentfleet_injection_suspicions_total") >= 1
    code, output = await run(AGENTFLEET, "audit", "verify", str(guard.audit))
    assert code == 0, output


async def test_the_older_http_sse_transport_is_judged_the_same_way(guard: GuardProc, sse_server: McpServerProc) -> None:
    """2024-11-05 HTTP+SSE: answers arrive on the event stream, refusals too."""
    await sse_server.reset()
    async with sse_client(f"{guard.url}/mcp/old", timeout=10) as streams, ClientSession(*streams) as session:
        await session.initialize()
        assert {t.name for t in (await session.list_tools()).tools} == VISIBLE
        assert not (await session.call_tool("search", {"query": "old transport"})).is_error
        with pytest.raises(MCPError) as caught:
            await session.call_tool("delete_everything", {})
        assert refusal_code(caught.value) == (-32602, "tool_not_permitted")
        page = await session.call_tool("fetch_page", {"url": "https://example.com"})
        assert "Ignore all previous instructions" in page.content[0].text  # type: ignore[union-attr]
        for _ in range(2):
            await session.call_tool("search", {"query": "again"})
        with pytest.raises(MCPError) as caught:
            await session.call_tool("search", {"query": "again"})
        assert refusal_code(caught.value) == (-32050, "loop_detected")
    got = await sse_server.received()
    assert [c["tool"] for c in got["calls"]] == ["search", "fetch_page", "search", "search"]
    assert set(got["auth"]) == {f"Bearer {TOKEN}"}
    flagged = await audited(guard, lambda r: r.get("kind") == "injection" and r.get("tool") == "mcp:old")
    assert flagged
