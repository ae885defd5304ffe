"""Guard overhead against direct calls, and against LiteLLM's proxy, in the same run.

Three targets in front of the same fake upstream (``hack/harness/fake_llm.py``), all on
loopback, sent the same chat requests in alternating rounds after a warm-up of each:

- **direct**: the fake upstream itself (the baseline);
- **guard**: ``agentfleet guard`` with budgets on (tokens per hour, cost per day, tool allowlist,
  loop detection, audit trail to a file);
- **LiteLLM**: ``litellm --config`` (the PyPI ``litellm[proxy]``, installed on first use into a
  separate venv, never the project's) with an equivalent limit on: the deployment's rpm/tpm,
  enforced by its usage-based router, and a proxy-wide ``max_budget``. No database: per-key
  budgets need Postgres, so the closest in-memory limits are used.

Added latency = target percentile - direct percentile at the same concurrency. Throughput per
core = requests served / CPU-seconds the proxy process (and its children) spent in its rounds.
The load generator, the fake and the proxies share the machine's 2 CPUs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from hack.bench.common import CACHE, cpu_seconds, pct, say
from hack.harness.kube import ROOT, VENV, free_port, http_ok, poll
from hack.harness.processes import FakeLLMProcess, descendants

BENCH_VENV = CACHE / "bench-venv"
LITELLM_SPEC = "litellm[proxy]"
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


def ensure_litellm() -> Path | None:
    """The LiteLLM proxy's entry point in the benchmark's own venv (created on first use)."""
    exe = BENCH_VENV / "bin" / "litellm"
    if exe.exists():
        return exe
    say(f"installing {LITELLM_SPEC} into {BENCH_VENV} (first use only)")
    try:
        subprocess.run([sys.executable, "-m", "venv", str(BENCH_VENV)], check=True)
        subprocess.run([str(BENCH_VENV / "bin" / "pip"), "install", "-q", LITELLM_SPEC], check=True, timeout=1200)
    except (subprocess.SubprocessError, OSError) as exc:
        say(f"LiteLLM could not be installed ({exc}); its rows are skipped")
        return None
    return exe if exe.exists() else None


def litellm_version() -> str:
    try:
        out = subprocess.run(
            [str(BENCH_VENV / "bin" / "pip"), "show", "litellm"], capture_output=True, text=True, check=False
        ).stdout
        return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Version:")), "?")
    except OSError:
        return "?"


def tree_cpu(pid: int) -> float:
    """CPU-seconds of a process and its live descendants."""
    total = 0.0
    for p in (pid, *descendants(pid)):
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += cpu_seconds(p)
    return total


@dataclass
class Run:
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    cpu: float = 0.0

    def add(self, other: Run) -> None:
        self.latencies += other.latencies
        self.seconds += other.seconds

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else float("nan")

    @property
    def per_core(self) -> float:
        return len(self.latencies) / self.cpu if self.cpu else float("nan")


async def load(n: int, concurrency: int, call: Callable[[], Awaitable[float]]) -> Run:
    latencies: list[float] = []
    todo = iter(range(n))

    async def worker() -> None:
        for _ in todo:
            latencies.append(await call())

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Run(latencies, time.perf_counter() - started)


def chat(session: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> Callable[[], Awaitable[float]]:
    payload = json.dumps(BODY).encode()

    async def call() -> float:
        t0 = time.perf_counter()
        async with session.post(url + "/v1/chat/completions", data=payload, headers=headers) as r:
            await r.read()
            if r.status != 200:
                raise RuntimeError(f"HTTP {r.status} from {url}: {(await r.text())[:200]}")
        return time.perf_counter() - t0

    return call


def ttft(session: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> Callable[[], Awaitable[float]]:
    payload = json.dumps({**BODY, "stream": True}).encode()

    async def call() -> float:
        t0 = time.perf_counter()
        first = 0.0
        async with session.post(url + "/v1/chat/completions", data=payload, headers=headers) as r:
            async for line in r.content:
                compact = line.replace(b" ", b"")
                if (
                    not first
                    and line.startswith(b"data: ")
                    and b'"content":"' in compact
                    and b'"content":""' not in compact
                ):
                    first = time.perf_counter() - t0
            if r.status != 200 or not first:
                raise RuntimeError(f"stream from {url} failed (HTTP {r.status})")
        return first

    return call


@dataclass
class Target:
    name: str
    url: str
    pid: int
    headers: dict[str, str]


@dataclass
class Scenario:
    kind: str  # "chat" or "ttft"
    concurrency: int
    runs: dict[str, Run]


async def compare(
    n: int,
    concurrency: int,
    targets: list[Target],
    make: Callable[[aiohttp.ClientSession, str, dict[str, str]], Callable[[], Awaitable[float]]],
    rounds: int = 4,
) -> dict[str, Run]:
    runs = {t.name: Run() for t in targets}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        for t in targets:  # warm-up
            await load(min(200, n), concurrency, make(session, t.url, t.headers))
        for _ in range(rounds):
            for t in targets:
                c0 = tree_cpu(t.pid)
                r = await load(max(n // rounds, concurrency), concurrency, make(session, t.url, t.headers))
                runs[t.name].cpu += tree_cpu(t.pid) - c0
                runs[t.name].add(r)
    return runs


def start(
    cmd: list[str],
    ready: Callable[[str], str | None],
    log: Path,
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> tuple[subprocess.Popen[bytes], str]:
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            found = ready(line)
            if found:
                return proc, found
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"{' '.join(cmd[:3])} did not start; log {log}:\n{log.read_text(errors='replace')[-2000:]}")


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with {proc.returncode}")
        return http_ok(url, timeout=2)

    poll(up, timeout=timeout, interval=0.5, what=url)


@dataclass
class GuardResult:
    scenarios: list[Scenario] = field(default_factory=list)
    requests: int = 0
    litellm: str = ""
    notes: list[str] = field(default_factory=list)


def run(
    work: Path, requests: int, concurrencies: list[int], stream_concurrencies: list[int], with_litellm: bool = True
) -> GuardResult:
    result = GuardResult(requests=requests)
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            fake = FakeLLMProcess.start(work / "guard-fake.log")
            procs.append(fake.proc)
            fake_url = fake.base
            guard, guard_url = start(
                [
                    str(VENV / "agentfleet"),
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
                ],
                lambda s: json.loads(s).get("url") if '"event": "listening"' in s else None,
                work / "guard.log",
            )
            procs.append(guard)
            targets = [
                Target("direct", fake_url, fake.pid, {"Content-Type": "application/json"}),
                Target("guard", guard_url, guard.pid, {"Content-Type": "application/json"}),
            ]
            exe = ensure_litellm() if with_litellm else None
            if exe is not None:
                result.litellm = litellm_version()
                port = free_port()
                cfg = Path(tmp) / "litellm.yaml"
                master_key = "sk-bench-" + os.urandom(16).hex()  # it refuses to start without one
                cfg.write_text(
                    json.dumps(
                        {
                            "model_list": [
                                {
                                    "model_name": "gpt-4o-mini",
                                    "litellm_params": {
                                        "model": "openai/gpt-4o-mini",
                                        "api_base": fake_url + "/v1",
                                        "api_key": "sk-fake",
                                        "rpm": 100_000_000,
                                        "tpm": 10**12,
                                    },
                                }
                            ],
                            "router_settings": {"routing_strategy": "usage-based-routing-v2"},
                            "litellm_settings": {
                                "max_budget": 1_000_000,
                                "budget_duration": "1d",
                                "telemetry": False,
                                "drop_params": True,
                            },
                            "general_settings": {"master_key": master_key},
                        }
                    )
                )
                env = {
                    **os.environ,
                    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                    "LITELLM_LOG": "ERROR",
                    "LITELLM_TELEMETRY": "False",
                    "NO_PROXY": "*",
                    "HTTP_PROXY": "",
                    "HTTPS_PROXY": "",
                }
                with (work / "litellm.log").open("wb") as out:
                    lite = subprocess.Popen(
                        [
                            str(exe),
                            "--config",
                            str(cfg),
                            "--host",
                            "127.0.0.1",
                            "--port",
                            str(port),
                            "--num_workers",
                            "1",
                        ],
                        cwd=tmp,
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                    )
                procs.append(lite)
                wait_http(f"http://127.0.0.1:{port}/health/liveliness", lite, timeout=180)
                targets.append(
                    Target(
                        "litellm",
                        f"http://127.0.0.1:{port}",
                        lite.pid,
                        {"Content-Type": "application/json", "Authorization": f"Bearer {master_key}"},
                    )
                )
            for c in concurrencies:
                runs = asyncio.run(compare(requests, c, targets, chat))
                result.scenarios.append(Scenario("chat", c, runs))
                say(
                    f"  chat c={c}: "
                    + ", ".join(
                        f"{k} p50 {pct(r.latencies, 0.5) * 1000:.2f} p99 {pct(r.latencies, 0.99) * 1000:.2f} ms "
                        f"{r.per_core:.0f} req/s/core"
                        for k, r in runs.items()
                    )
                )
            for c in stream_concurrencies:
                runs = asyncio.run(compare(max(200, requests // 2), c, targets, ttft))
                result.scenarios.append(Scenario("ttft", c, runs))
                say(
                    f"  TTFT c={c}: "
                    + ", ".join(
                        f"{k} p50 {pct(r.latencies, 0.5) * 1000:.2f} p99 {pct(r.latencies, 0.99) * 1000:.2f} ms"
                        for k, r in runs.items()
                    )
                )
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
    return result
