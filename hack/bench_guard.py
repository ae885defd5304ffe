#!/usr/bin/env python3
"""Benchmark: what the guard sidecar adds on top of calling the LLM API directly.

Starts the fake upstream (tests/support/fake_llm.py) and ``agentfleet guard`` as real processes
on loopback, then sends the same chat requests to each, in the same run, alternating rounds:

- added latency p50/p99 (guard minus direct) at concurrency 1, 64 and 256;
- streaming time-to-first-token overhead at concurrency 1 and 64;
- throughput per core: requests per CPU-second of the guard process (from /proc), next to the
  fake upstream's own requests per CPU-second as a yardstick.

Numbers are ratios against a baseline measured in the same run on the same machine, never
absolute promises; the load generator, the fake and the guard share the machine's CPUs.
Not a test: ``make bench`` or ``.venv/bin/python hack/bench_guard.py [--requests N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")
BODY = {
    "model": "gpt-4o-mini",
    "max_tokens": 64,
    "messages": [
        {"role": "system", "content": "You are a support agent. Answer briefly and cite the ticket."},
        {"role": "user", "content": "Customer 4821 asks where their refund is; the order shipped on Monday."},
    ],
    "tools": [
        {
            "type": "function",
            "function": {
                "name": "search",
                "description": "search tickets",
                "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
            },
        }
    ],
}


def start(cmd: list[str], ready: str, stream: str) -> tuple[subprocess.Popen[bytes], str]:
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=subprocess.PIPE if stream == "stdout" else subprocess.DEVNULL,
        stderr=subprocess.PIPE if stream == "stderr" else subprocess.DEVNULL,
    )
    pipe = proc.stdout if stream == "stdout" else proc.stderr
    assert pipe is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = pipe.readline().decode()
        if ready in line:
            return proc, line
        if not line and proc.poll() is not None:
            break
    proc.kill()
    raise SystemExit(f"bench: {' '.join(cmd[:3])} did not start")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Run:
    latencies: list[float]
    seconds: float

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.seconds


async def load(n: int, concurrency: int, call: Callable[[], Awaitable[float]]) -> Run:
    latencies: list[float] = []
    todo = iter(range(n))

    async def worker() -> None:
        for _ in todo:
            latencies.append(await call())

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Run(latencies, time.perf_counter() - started)


def chat(session: aiohttp.ClientSession, url: str) -> Callable[[], Awaitable[float]]:
    payload = json.dumps(BODY).encode()

    async def call() -> float:
        t0 = time.perf_counter()
        async with session.post(
            url + "/v1/chat/completions", data=payload, headers={"Content-Type": "application/json"}
        ) as r:
            await r.read()
            if r.status != 200:
                raise SystemExit(f"bench: HTTP {r.status} from {url}: {(await r.text())[:200]}")
        return time.perf_counter() - t0

    return call


def ttft(session: aiohttp.ClientSession, url: str) -> Callable[[], Awaitable[float]]:
    payload = json.dumps({**BODY, "stream": True}).encode()

    async def call() -> float:
        t0 = time.perf_counter()
        first = 0.0
        async with session.post(
            url + "/v1/chat/completions", data=payload, headers={"Content-Type": "application/json"}
        ) as r:
            async for line in r.content:
                if (
                    not first
                    and line.startswith(b"data: ")
                    and b'"content":"' in line.replace(b" ", b"")
                    and b'"content":""' not in line.replace(b" ", b"")
                ):
                    first = time.perf_counter() - t0
            if r.status != 200 or not first:
                raise SystemExit(f"bench: stream from {url} failed (HTTP {r.status})")
        return first

    return call


@dataclass
class Comparison:
    direct: Run
    guard: Run
    guard_cpu: float
    """CPU seconds the guard process spent during its rounds."""
    fake_cpu: float
    """CPU seconds the fake upstream spent during the direct rounds."""


async def compare(
    n: int,
    concurrency: int,
    direct: str,
    guard: str,
    make: Callable[[aiohttp.ClientSession, str], Callable[[], Awaitable[float]]],
    guard_pid: int,
    fake_pid: int,
) -> Comparison:
    """Alternate direct and guard rounds (after a warm-up of both) and merge them."""
    rounds = 4
    runs: dict[str, list[Run]] = {"direct": [], "guard": []}
    guard_cpu = fake_cpu = 0.0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        for target in (direct, guard):
            await load(min(200, n), concurrency, make(session, target))
        for _ in range(rounds):
            f0 = cpu_seconds(fake_pid)
            runs["direct"].append(await load(n // rounds, concurrency, make(session, direct)))
            fake_cpu += cpu_seconds(fake_pid) - f0
            g0 = cpu_seconds(guard_pid)
            runs["guard"].append(await load(n // rounds, concurrency, make(session, guard)))
            guard_cpu += cpu_seconds(guard_pid) - g0

    def merged(name: str) -> Run:
        return Run([x for r in runs[name] for x in r.latencies], sum(r.seconds for r in runs[name]))

    return Comparison(merged("direct"), merged("guard"), guard_cpu, fake_cpu)


def ms(x: float) -> str:
    return f"{x * 1000:8.2f}"


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        fake, line = start([sys.executable, "tests/support/fake_llm.py", "--port", "0"], "listening on", "stdout")
        procs = [fake]
        rows: list[tuple[str, Comparison]] = []
        try:
            fake_url = line.rsplit(" ", 1)[1].strip()
            guard_cmd = [
                str(ROOT / ".venv" / "bin" / "agentfleet"),
                "guard",
                "--upstream",
                fake_url + "/v1",
                "--port",
                "0",
                "--no-audit-stdout",
                "--audit-file",
                f"{tmp}/audit.jsonl",
                "--tokens-per-hour",
                str(10**12),
                "--cost-per-day",
                "1000000",
                "--price-input",
                "0.15",
                "--price-output",
                "0.60",
                "--max-concurrent-tasks",
                "100000",
                "--tool",
                "search",
            ]
            guard, line = start(guard_cmd, '"event": "listening"', "stderr")
            procs.append(guard)
            guard_url = json.loads(line)["url"]
            for c in args.concurrency:
                r = await compare(args.requests, c, fake_url, guard_url, chat, guard.pid, fake.pid)
                rows.append((f"chat   c={c}", r))
            for c in args.stream_concurrency:
                r = await compare(max(200, args.requests // 2), c, fake_url, guard_url, ttft, guard.pid, fake.pid)
                rows.append((f"TTFT   c={c}", r))
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(timeout=30)

    print(
        f"\nagentfleet guard benchmark: fake upstream on loopback, {os.cpu_count()} CPUs shared by the load "
        f"generator, the fake and the guard; {args.requests} requests per chat scenario, alternating rounds.\n"
    )
    head = (
        f"{'scenario':<12} {'direct p50':>10} {'guard p50':>10} {'added p50':>10} {'direct p99':>10} "
        f"{'guard p99':>10} {'added p99':>10} {'ratio p50':>9} {'ratio p99':>9} {'direct rps':>10} "
        f"{'guard rps':>10}"
    )
    print(head)
    print("-" * len(head))
    for name, r in rows:
        d, g = r.direct, r.guard
        d50, g50, d99, g99 = (
            pct(d.latencies, 0.5),
            pct(g.latencies, 0.5),
            pct(d.latencies, 0.99),
            pct(g.latencies, 0.99),
        )
        print(
            f"{name:<12} {ms(d50):>10} {ms(g50):>10} {ms(g50 - d50):>10} {ms(d99):>10} {ms(g99):>10} "
            f"{ms(g99 - d99):>10} {g50 / d50:>9.2f} {g99 / d99:>9.2f} {d.rps:>10.0f} {g.rps:>10.0f}"
        )
    print("(latencies in ms; TTFT rows: time to the first content token of a stream)\n")
    print("throughput per core (requests per CPU-second of the process, chat rows):")
    for name, r in rows:
        if not name.startswith("chat"):
            continue
        g_per_core = len(r.guard.latencies) / max(r.guard_cpu, 1e-9)
        f_per_core = len(r.direct.latencies) / max(r.fake_cpu, 1e-9)
        print(
            f"  {name:<12} guard {g_per_core:8.0f} req/s/core ({1000 / g_per_core:.3f} CPU-ms per request)   "
            f"fake upstream {f_per_core:8.0f} req/s/core   guard/fake CPU per request {f_per_core / g_per_core:.2f}x"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per chat scenario and target")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 64, 256])
    parser.add_argument("--stream-concurrency", type=int, nargs="+", default=[1, 64])
    args = parser.parse_args()
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover
        runner = asyncio.Runner()
    with runner:
        runner.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
