"""OpenTelemetry traces from a real guard process into a real Jaeger (all-in-one, OTLP on).

The test plays the agent: it opens its own span with the OpenTelemetry SDK, sends the guard an
LLM call carrying ``traceparent`` (the fake upstream answers with a tool call), then runs that
tool call through ``/tools/search`` with only the call id (no ``traceparent``), and asks Jaeger's
HTTP API for the trace: agent span -> guard LLM span -> tool span, with the GenAI attributes and
the guard's decisions. A guard without ``telemetry`` exports nothing, and by default no prompt,
completion or tool content is on any span.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import yaml
from openai.types.chat import ChatCompletionMessageFunctionToolCall
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import format_span_id, format_trace_id, set_span_in_context
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from agentfleet.guard.config import TASK_HEADER, TOOL_CALL_ID_HEADER
from hack.harness.kube import VERSIONS
from hack.harness.realnode import CACHE
from tests.guard.support import AGENT_KEY, AGENTFLEET, start, write_config

pytestmark = pytest.mark.integration

JAEGER = CACHE / "bin" / f"jaeger-{VERSIONS['JAEGER_VERSION']}" / "jaeger-all-in-one"
TOOL_CALL = (
    '[[fake:{"mode": "tool_call", "tool_calls": [{"name": "search", "arguments": "{\\"q\\": \\"secret-query\\"}"}]}]]'
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Jaeger:
    def __init__(self, otlp: int, query: int) -> None:
        self.otlp = f"http://127.0.0.1:{otlp}"
        self.query = f"http://127.0.0.1:{query}"

    async def get(self, path: str) -> tuple[int, Any]:
        async with aiohttp.ClientSession() as s, s.get(self.query + path, timeout=aiohttp.ClientTimeout(5)) as r:
            return r.status, await r.json() if r.status == 200 else None

    async def trace(self, trace_id: str, spans: int, within: float = 30.0) -> dict[str, Any]:
        """The trace once Jaeger holds ``spans`` spans of it (polls with a deadline)."""
        deadline = time.monotonic() + within
        seen: Any = None
        while time.monotonic() < deadline:
            status, body = await self.get(f"/api/traces/{trace_id}")
            if status == 200 and body["data"] and len(body["data"][0]["spans"]) >= spans:
                return dict(body["data"][0])
            seen = body
            await asyncio.sleep(0.3)
        raise AssertionError(f"trace {trace_id} did not reach {spans} spans in Jaeger: {seen}")


@pytest.fixture(scope="module")
def jaeger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Jaeger]:
    """Jaeger all-in-one on loopback only: OTLP/HTTP receiver and query API on free ports, every
    other listener on a free loopback port too, in-memory storage."""
    assert JAEGER.exists(), f"{JAEGER} is missing: run hack/build"
    ports = {name: free_port() for name in ("otlp_http", "otlp_grpc", "query", "query_grpc", "admin", "coll", "grpc")}
    log = tmp_path_factory.mktemp("jaeger") / "jaeger.log"
    cmd = [
        str(JAEGER),
        "--collector.otlp.enabled=true",
        f"--collector.otlp.http.host-port=127.0.0.1:{ports['otlp_http']}",
        f"--collector.otlp.grpc.host-port=127.0.0.1:{ports['otlp_grpc']}",
        f"--query.http-server.host-port=127.0.0.1:{ports['query']}",
        f"--query.grpc-server.host-port=127.0.0.1:{ports['query_grpc']}",
        f"--admin.http.host-port=127.0.0.1:{ports['admin']}",
        f"--collector.http-server.host-port=127.0.0.1:{ports['coll']}",
        f"--collector.grpc-server.host-port=127.0.0.1:{ports['grpc']}",
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    j = Jaeger(ports["otlp_http"], ports["query"])
    deadline = time.monotonic() + 30
    while True:
        try:
            with (
                socket.create_connection(("127.0.0.1", ports["otlp_http"]), timeout=1),
                socket.create_connection(("127.0.0.1", ports["query"]), timeout=1),
            ):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"jaeger did not start: {log.read_text()[-3000:]}") from None
            time.sleep(0.2)
    yield j
    proc.terminate()
    proc.wait(timeout=20)


def guard_process(
    tmp: Path, fake: str, agent: str, telemetry: dict[str, Any] | None
) -> tuple[subprocess.Popen[bytes], str]:
    path = write_config(tmp, fake, max_concurrent_tasks=100)
    cfg = yaml.safe_load(path.read_text())
    cfg["agent"] = agent
    if telemetry is not None:
        cfg["telemetry"] = telemetry
    path.write_text(yaml.safe_dump(cfg))
    proc, line = start(
        [AGENTFLEET, "guard", "--config", str(path), "--port", "0", "--metrics-port", "0"],
        '"event": "listening"',
        tmp / "guard.log",
        "stderr",
    )
    return proc, json.loads(line)["url"]


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM: the guard drains and flushes its span queue before it exits."""
    proc.terminate()
    assert proc.wait(timeout=30) == 0


def agent_tracer(jaeger: Jaeger) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": "test-agent"}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"{jaeger.otlp}/v1/traces", timeout=5)))
    return provider


def tags(span: dict[str, Any]) -> dict[str, Any]:
    return {t["key"]: t["value"] for t in span["tags"]}


def events(span: dict[str, Any]) -> list[dict[str, Any]]:
    return [{f["key"]: f["value"] for f in log["fields"]} for log in span.get("logs", [])]


def parent_of(span: dict[str, Any]) -> str | None:
    refs = [r["spanID"] for r in span.get("references", []) if r["refType"] == "CHILD_OF"]
    return refs[0] if refs else None


async def agent_task(guard_url: str, provider: TracerProvider, task: str) -> tuple[str, str, str]:
    """One agent task: an LLM call with ``traceparent`` that answers with a tool call, then that
    tool call through the guard (call id only). Returns the trace id, agent span id, call id."""
    tracer = provider.get_tracer("test-agent")
    with tracer.start_as_current_span("agent task") as span:
        carrier: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(carrier, context=set_span_in_context(span))
        client = openai.AsyncOpenAI(base_url=guard_url + "/v1", api_key=AGENT_KEY)
        try:
            reply = await client.chat.completions.create(
                model="gpt-4o",
                messages=[{"role": "user", "content": TOOL_CALL}],
                extra_headers={**carrier, TASK_HEADER: task},
            )
        finally:
            await client.close()
        calls = reply.choices[0].message.tool_calls
        assert calls and isinstance(calls[0], ChatCompletionMessageFunctionToolCall)
        assert calls[0].function.name == "search"
        call_id = calls[0].id
        async with (
            aiohttp.ClientSession() as s,
            s.post(
                f"{guard_url}/tools/search",
                data=calls[0].function.arguments,
                headers={TASK_HEADER: task, TOOL_CALL_ID_HEADER: call_id, "Content-Type": "application/json"},
            ) as r,
        ):
            assert r.status == 200, await r.text()
        ctx = span.get_span_context()
        return format_trace_id(ctx.trace_id), format_span_id(ctx.span_id), call_id


async def test_an_agent_task_is_one_trace_in_jaeger(jaeger: Jaeger, fake_process: str, tmp_path: Path) -> None:
    proc, url = guard_process(tmp_path, fake_process, "support", {"otlp_endpoint": jaeger.otlp})
    provider = agent_tracer(jaeger)
    try:
        trace_id, agent_span, call_id = await agent_task(url, provider, "ticket-42")
    finally:
        provider.shutdown()
        stop(proc)  # flushes the guard's queue now, not after its batch delay

    trace = await jaeger.trace(trace_id, spans=3)
    services = {pid: p["serviceName"] for pid, p in trace["processes"].items()}
    spans = {s["operationName"]: s for s in trace["spans"]}
    assert set(spans) == {"agent task", "chat gpt-test", "execute_tool search"}, list(spans)
    llm, tool = spans["chat gpt-test"], spans["execute_tool search"]
    assert services[llm["processID"]] == services[tool["processID"]] == "support.team-a"
    assert services[spans["agent task"]["processID"]] == "test-agent"

    # Parentage: the agent's span -> the guard's LLM span -> the tool call it issued.
    assert parent_of(llm) == agent_span
    assert parent_of(tool) == llm["spanID"]

    t = tags(llm)
    assert t["span.kind"] == "client"
    assert t["gen_ai.operation.name"] == "chat"
    assert t["gen_ai.provider.name"] == t["gen_ai.system"] == "openai"
    assert t["gen_ai.request.model"] == "gpt-test"
    assert t["gen_ai.response.model"] == "gpt-test"  # the fake echoes the model it was sent
    assert t["gen_ai.usage.input_tokens"] > 0 and t["gen_ai.usage.output_tokens"] > 0
    assert json.loads(t["gen_ai.response.finish_reasons"]) == ["tool_calls"]
    assert t["agentfleet.task.id"] == "ticket-42"
    assert t["agentfleet.decision"] == "allow"
    assert t["agentfleet.protocol"] == "openai-chat"
    evs = events(llm)
    reserved = [e for e in evs if e.get("event") == "agentfleet.budget.reserved"]
    settled = [e for e in evs if e.get("event") == "agentfleet.budget.settled"]
    assert reserved and settled and settled[0]["agentfleet.tokens"] < reserved[0]["agentfleet.tokens"]
    issued = [e for e in evs if e.get("event") == "gen_ai.tool.call"]
    assert issued == [
        {
            "event": "gen_ai.tool.call",
            "gen_ai.tool.name": "search",
            "gen_ai.tool.call.id": call_id,
            "agentfleet.decision": "allow",
        }
    ]

    tt = tags(tool)
    assert tt["gen_ai.operation.name"] == "execute_tool"
    assert tt["gen_ai.tool.name"] == "search"
    assert tt["gen_ai.tool.call.id"] == call_id
    assert tt["agentfleet.task.id"] == "ticket-42"
    assert tt["agentfleet.decision"] == "allow"
    assert tt["http.response.status_code"] == 200

    # No content by default: neither the prompt, the completion nor the tool's arguments.
    everything = json.dumps(trace)
    assert "secret-query" not in everything and "fake:" not in everything
    assert not {"gen_ai.input.messages", "gen_ai.output.messages", "gen_ai.tool.call.arguments"} & (set(t) | set(tt))


async def test_a_refused_call_carries_the_reason(jaeger: Jaeger, fake_process: str, tmp_path: Path) -> None:
    """A tool the agent may not call: the guard's refusal and its reason are on the span."""
    proc, url = guard_process(tmp_path, fake_process, "refusals", {"otlp_endpoint": jaeger.otlp + "/v1/traces"})
    provider = agent_tracer(jaeger)
    try:
        with provider.get_tracer("test-agent").start_as_current_span("agent task") as span:
            carrier: dict[str, str] = {}
            TraceContextTextMapPropagator().inject(carrier, context=set_span_in_context(span))
            async with aiohttp.ClientSession() as s, s.post(f"{url}/tools/rm", data=b"{}", headers=carrier) as r:
                assert r.status == 403
            trace_id, agent_span = (
                format_trace_id(span.get_span_context().trace_id),
                format_span_id(span.get_span_context().span_id),
            )
    finally:
        provider.shutdown()
        stop(proc)
    trace = await jaeger.trace(trace_id, spans=2)
    tool = next(s for s in trace["spans"] if s["operationName"] == "execute_tool rm")
    assert parent_of(tool) == agent_span
    t = tags(tool)
    assert t["agentfleet.decision"] == "refuse"
    assert t["agentfleet.reason"] == t["error.type"] == "tool_not_permitted"
    assert t["otel.status_code"] == "ERROR"


async def test_without_telemetry_nothing_is_exported(jaeger: Jaeger, fake_process: str, tmp_path: Path) -> None:
    proc, url = guard_process(tmp_path, fake_process, "quiet", None)
    provider = agent_tracer(jaeger)
    try:
        trace_id, _, _ = await agent_task(url, provider, "ticket-43")
    finally:
        provider.shutdown()
        stop(proc)
    trace = await jaeger.trace(trace_id, spans=1)  # the agent's own span arrived...
    assert [s["operationName"] for s in trace["spans"]] == ["agent task"]  # ...and nothing of the guard's
    status, services = await jaeger.get("/api/services")
    assert status == 200 and "quiet.team-a" not in services["data"]
