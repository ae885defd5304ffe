"""The guard as a real process, as in its pod: config file, key file, signals, files on disk.

The fake upstream runs as its own process too (the way the demo and the benchmark use it). No
Kubernetes cluster is involved.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import openai
import pytest
import pytest_asyncio

from tests.guard.support import AGENT_KEY, AGENTFLEET, UPSTREAM_KEY, get, promtool_check, run, start, write_config

pytestmark = pytest.mark.integration


@dataclass
class Proc:
    proc: subprocess.Popen[bytes]
    url: str
    audit: Path

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)


@pytest_asyncio.fixture(loop_scope="session")
async def guard_process(fake_process: str, tmp_path: Path) -> AsyncIterator[Proc]:
    await reset_fake(fake_process)
    config = write_config(tmp_path, fake_process, max_concurrent_tasks=1000)
    proc, line = await asyncio.to_thread(
        start,
        [AGENTFLEET, "guard", "--config", str(config), "--port", "0", "--drain-timeout", "10s"],
        '"event": "listening"',
        tmp_path / "guard.log",
        "stderr",
    )
    p = Proc(proc, json.loads(line)["url"], tmp_path / "audit" / "audit.jsonl")
    yield p
    if proc.poll() is None:
        proc.kill()
        proc.wait()


async def reset_fake(url: str) -> None:
    async with aiohttp.ClientSession() as s, s.post(f"{url}/_control/reset") as r:
        assert r.status == 200


async def test_the_guard_process_serves_enforces_and_audits(guard_process: Proc, fake_process: str) -> None:
    client = openai.AsyncOpenAI(base_url=guard_process.url + "/v1", api_key=AGENT_KEY)
    try:
        reply = await client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        assert reply.choices[0].message.content
        stream = await client.chat.completions.create(
            model="gpt-4o", stream=True, messages=[{"role": "user", "content": "hi"}]
        )
        assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices]).startswith("Hello")
        with pytest.raises(openai.PermissionDeniedError):
            await client.chat.completions.create(
                model="gpt-4o",
                messages=[
                    {
                        "role": "user",
                        "content": '[[fake:{"mode": "tool_call", "tool_calls": [{"name": "rm", "arguments": "{}"}]}]]',
                    }
                ],
            )
    finally:
        await client.close()
    status, ready = await get(guard_process.url + "/readyz")
    assert status == 200 and json.loads(ready)["status"] == "ready"
    status, text = await get(guard_process.url + "/metrics")
    code, output = await promtool_check(text)
    assert code == 0, output
    assert (
        'agentfleet_requests_total{agent="support",model="gpt-test",namespace="team-a",outcome="ok",'
        'revision="rev7"} 2.0' in text
    )
    assert guard_process.stop() == 0
    code, output = await run(AGENTFLEET, "audit", "verify", str(guard_process.audit))
    assert code == 0 and output.startswith("OK: "), output
    rows = guard_process.audit.read_text().splitlines()
    kinds = [json.loads(r)["kind"] for r in rows]
    assert kinds[0] == "start" and kinds[-1] == "stop" and kinds.count("llm_call") == 3
    assert UPSTREAM_KEY not in guard_process.audit.read_text()
    del rows[2]
    guard_process.audit.write_text("\n".join(rows) + "\n")
    code, output = await run(AGENTFLEET, "audit", "verify", str(guard_process.audit))
    assert code == 1 and "audit.jsonl:3 (seq 3)" in output and "deleted" in output


async def test_sigterm_drains_requests_in_flight(guard_process: Proc) -> None:
    client = openai.AsyncOpenAI(base_url=guard_process.url + "/v1", api_key=AGENT_KEY, max_retries=0)
    slow = [{"role": "user", "content": '[[fake:{"latency_ms": 2000}]] take your time'}]
    try:
        pending = asyncio.create_task(client.chat.completions.create(model="m", messages=slow))

        async def in_flight() -> bool:
            _, text = await get(guard_process.url + "/metrics")
            return "agentfleet_inflight_requests" in text and any(
                line.startswith("agentfleet_inflight_requests{") and not line.endswith(" 0.0")
                for line in text.splitlines()
            )

        deadline = time.monotonic() + 10
        while not await in_flight():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        assert not pending.done()
        guard_process.proc.send_signal(signal.SIGTERM)

        async def refused() -> bool:
            try:
                await get(guard_process.url + "/healthz")
            except aiohttp.ClientConnectionError:
                return True
            return False

        while not await refused():  # no new connections while draining
            assert time.monotonic() < deadline + 5, "the guard kept accepting connections after SIGTERM"
            await asyncio.sleep(0.02)
        assert not pending.done()
        reply = await pending  # the request in flight still completes
        assert reply.choices[0].message.content
    finally:
        await client.close()
    code = await asyncio.to_thread(guard_process.proc.wait, 15)
    assert code == 0
    assert json.loads(guard_process.audit.read_text().splitlines()[-1])["kind"] == "stop"


async def test_memory_stays_flat_under_upstream_faults(fake_process: str, tmp_path: Path) -> None:
    await reset_fake(fake_process)
    config = write_config(tmp_path, fake_process, max_concurrent_tasks=1000)
    proc, line = await asyncio.to_thread(
        start,
        [
            AGENTFLEET,
            "guard",
            "--config",
            str(config),
            "--port",
            "0",
            "--max-attempts",
            "2",
            "--breaker-threshold",
            "1000000",
        ],
        '"event": "listening"',
        tmp_path / "guard.log",
        "stderr",
    )
    url = json.loads(line)["url"]
    faults = ["error", "reset", "truncate", "garbage", '{"mode": "error", "status": 429}', "unavailable", "ok"]

    def rss_kb() -> int:
        for row in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
            if row.startswith("VmRSS:"):
                return int(row.split()[1])
        raise AssertionError("no VmRSS")

    async def storm(session: aiohttp.ClientSession, rounds: int) -> None:
        sem = asyncio.Semaphore(64)

        async def one(i: int) -> None:
            body = {
                "model": "m",
                "stream": bool(i % 2),
                "messages": [{"role": "user", "content": f"[[fake:{faults[i % len(faults)]}]] {i}"}],
            }
            async with (
                sem,
                session.post(f"{url}/v1/chat/completions", json=body, headers={"X-Agentfleet-Task": f"task-{i}"}) as r,
            ):
                await r.read()

        await asyncio.gather(*(one(i) for i in range(rounds)))

    try:
        async with aiohttp.ClientSession() as session:
            await storm(session, 1000)  # warm up: caches, pools, allocator arenas
            before = rss_kb()
            await storm(session, 2000)
            after = rss_kb()
        status, text = await get(url + "/readyz")
        assert status == 200 and json.loads(text)["inflight"] == 0
        print(f"RSS before {before} kB after {after} kB")
        assert after - before < 12 * 1024, f"RSS grew by {(after - before) / 1024:.1f} MiB under faults"
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0


async def test_a_bad_config_file_fails_clearly(tmp_path: Path) -> None:
    path = tmp_path / "guard.yaml"
    path.write_text("namespace: a\nagent: b\nrevision: c\nmodel: {name: m, endpoint: 'not a url'}\n")
    code, output = await run(AGENTFLEET, "guard", "--config", str(path))
    assert code == 2 and "model.endpoint" in output and "Traceback" not in output
