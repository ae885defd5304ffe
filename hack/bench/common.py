"""Shared pieces of the benchmarks: the private cluster, processes, /proc readings, a raw client.

Every benchmark runs on its own private control plane (``AGENTFLEET_PORT_BASE`` and
``AGENTFLEET_RUN_DIR`` below), never on the shared test cluster, and everything listens on and
connects to loopback only.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[2]
HACK = ROOT / "hack"
CACHE = Path(os.environ.get("AGENTFLEET_CACHE", Path.home() / ".cache" / "agentfleet"))
RUN_DIR = Path(os.environ.get("AGENTFLEET_BENCH_RUN_DIR", CACHE / "bench-run"))
PORT_BASE = int(os.environ.get("AGENTFLEET_BENCH_PORT_BASE", "19400"))
TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
GUARD_IMAGE = "ghcr.io/agentfleet/agentfleet:bench"


def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- /proc


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def machine_busy() -> float:
    """CPU-seconds the whole machine has been busy (all cores), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / TICKS


def rss_mb(pid: int) -> float:
    """VmRSS from /proc/<pid>/status, in MB (10^6 bytes)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / 1e6
    return float("nan")


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (no interpolation: with 10 samples p99 is the maximum)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, -(-int(q * 1000) * len(ordered) // 1000))  # ceil(q * n)
    return ordered[min(rank, len(ordered)) - 1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


# ----------------------------------------------------------------------------- the private cluster


class Cluster:
    """``hack/cluster`` with the benchmark's own ports and run directory."""

    def __init__(self, run_dir: Path = RUN_DIR, port_base: int = PORT_BASE) -> None:
        self.run_dir = run_dir
        self.port_base = port_base
        self.env = {**os.environ, "AGENTFLEET_RUN_DIR": str(run_dir), "AGENTFLEET_PORT_BASE": str(port_base)}
        self.up_seconds = 0.0

    def _cluster(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            [str(HACK / "cluster"), *args], env=self.env, capture_output=True, text=True, check=False, timeout=600
        )
        if check and res.returncode != 0:
            raise RuntimeError(f"hack/cluster {' '.join(args)} failed:\n{res.stdout}\n{res.stderr}")
        return res

    @property
    def kubeconfig(self) -> str:
        return str(self.run_dir / "kubeconfig")

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.port_base + 6}"

    @property
    def targets_dir(self) -> Path:
        return self.run_dir / "prometheus" / "targets"

    @functools.cached_property
    def kubectl_bin(self) -> str:
        env = self._cluster("env").stdout
        for line in env.splitlines():
            if line.startswith("export PATH="):
                return line.removeprefix("export PATH=").split(":")[0] + "/kubectl"
        raise RuntimeError("hack/cluster env printed no PATH")

    def up(self) -> None:
        """A fresh cluster: whatever a previous run left is taken down first."""
        self.down(quiet=True)
        t0 = time.monotonic()
        self._cluster("up")
        self.up_seconds = time.monotonic() - t0
        self.kubectl(
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            str(ROOT / "crds"),
            "-f",
            str(ROOT / "crds" / "admission"),
        )
        self.kubectl(
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/agentdeployments.agentfleet.dev",
            "crd/agentpolicies.agentfleet.dev",
        )
        # The admission policy's paramKind (AgentPolicy) must be resolvable before agents can be created.
        probe = json.dumps(
            {
                "apiVersion": "agentfleet.dev/v1alpha1",
                "kind": "AgentDeployment",
                "metadata": {"name": "probe", "namespace": "default"},
                "spec": {
                    "agent": {
                        "image": "x",
                        "model": {"name": "m", "endpoint": "http://10.0.0.1/v1", "apiKeySecretRef": {"name": "k"}},
                    }
                },
            }
        )

        def admits() -> bool:
            try:
                self.kubectl("create", "--dry-run=server", "-f", "-", input=probe)
                return True
            except RuntimeError as exc:
                if "paramKind" not in str(exc):
                    raise
                return False

        wait_until(admits, 60, "the AgentPolicy admission policy to be ready", 0.5)

    def down(self, quiet: bool = False) -> None:
        res = self._cluster("down", check=False)
        if res.returncode != 0 and not quiet:
            say(f"hack/cluster down: {res.stdout.strip()} {res.stderr.strip()}")

    def kubectl(self, *args: str, input: str | None = None) -> str:
        res = subprocess.run(
            [self.kubectl_bin, f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if res.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {res.stderr.strip()}")
        return res.stdout

    def prom_query(self, promql: str) -> list[dict[str, Any]]:
        data = urllib.parse.urlencode({"query": promql}).encode()
        with urllib.request.urlopen(f"{self.prometheus_url}/api/v1/query", data=data, timeout=10) as resp:
            body = json.load(resp)
        if body.get("status") != "success":
            raise RuntimeError(f"Prometheus: {body}")
        return list(body["data"]["result"])


# ----------------------------------------------------------------------------- the operator


@dataclass
class Operator:
    """``agentfleet operator`` as a real process, started the way its pod starts it."""

    kubeconfig: str
    log_path: Path
    extra: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    metrics_port: int = 0
    command: list[str] = field(default_factory=lambda: [str(ROOT / ".venv" / "bin" / "agentfleet")])

    def start(self) -> None:
        self.metrics_port = free_port()
        health = free_port()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    *self.command,
                    "operator",
                    f"--metrics-port={self.metrics_port}",
                    "--metrics-address=127.0.0.1",
                    f"--liveness=http://127.0.0.1:{health}/healthz",
                    f"--guard-image={GUARD_IMAGE}",
                    *self.extra,
                ],
                env={**os.environ, "KUBECONFIG": self.kubeconfig},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
            )
        wait_until(lambda: self._healthy(health), 60, "the operator's liveness endpoint")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _healthy(self, port: int) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"operator exited with {self.proc.returncode}; log {self.log_path}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def metrics(self) -> dict[str, float]:
        """The operator's /metrics as {'name{labels}': value}."""
        out: dict[str, float] = {}
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as resp:
            for line in resp.read().decode().splitlines():
                if line and not line.startswith("#"):
                    key, _, value = line.rpartition(" ")
                    with contextlib.suppress(ValueError):
                        out[key] = float(value)
        return out


# ----------------------------------------------------------------------------- a raw API client


def _kubeconfig_ssl(kubeconfig: str) -> tuple[str, ssl.SSLContext]:
    cfg = json.loads(Path(kubeconfig).read_text())  # hack/cluster writes JSON (valid YAML)
    cluster = cfg["clusters"][0]["cluster"]
    user = cfg["users"][0]["user"]
    ctx = ssl.create_default_context(cafile=cluster["certificate-authority"])
    ctx.load_cert_chain(user["client-certificate"], user["client-key"])
    return cluster["server"], ctx


class RawKube:
    """The tightest client we can write: aiohttp, pre-encoded JSON bodies, no models."""

    def __init__(self, kubeconfig: str, limit: int = 256) -> None:
        self.server, ctx = _kubeconfig_ssl(kubeconfig)
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ctx, limit=limit),
            timeout=aiohttp.ClientTimeout(total=120, sock_read=None),
        )

    async def close(self) -> None:
        await self.session.close()

    async def call(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        content_type: str = "application/json",
        params: dict[str, str] | None = None,
        ok404: bool = False,
    ) -> dict[str, Any]:
        for attempt in range(10):  # 429/5xx/conflict from an overloaded server: back off briefly
            async with self.session.request(
                method,
                self.server + path,
                data=body,
                params=params,
                headers={"Content-Type": content_type, "Accept": "application/json"},
            ) as resp:
                data = await resp.read()
                if resp.status < 300:
                    return dict(json.loads(data)) if data else {}
                if resp.status == 404 and ok404:
                    return {}
                if resp.status in {409, 429, 500, 503, 504} and attempt < 9:
                    await asyncio.sleep(0.1 * (attempt + 1))
                    continue
                raise RuntimeError(f"{method} {path}: HTTP {resp.status}: {data[:300]!r}")
        raise AssertionError("unreachable")

    async def watch(self, path: str, resource_version: str, stop: asyncio.Event) -> AsyncIterator[dict[str, Any]]:
        """Watch events (re-watching on timeouts) until ``stop`` is set."""
        rv = resource_version
        while not stop.is_set():
            params = {"watch": "1", "resourceVersion": rv, "timeoutSeconds": "60", "allowWatchBookmarks": "true"}
            async with self.session.get(self.server + path, params=params) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"watch {path}: HTTP {resp.status}")
                async for line in resp.content:
                    if stop.is_set():
                        return
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    rv = event["object"].get("metadata", {}).get("resourceVersion", rv)
                    if event["type"] == "ERROR":
                        raise RuntimeError(f"watch {path}: {event['object']}")
                    if event["type"] != "BOOKMARK":
                        yield event


def pods_left(pids: list[int]) -> list[int]:
    left = []
    for pid in pids:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                left.append(pid)
        except OSError:
            pass
    return left


def machine() -> dict[str, str]:
    """What the numbers were measured on."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown",
    )
    mem = next(
        (
            int(line.split()[1])
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal:")
        ),
        0,
    )
    versions = {}
    for raw in (HACK / "versions.env").read_text().splitlines():
        if "=" in raw and not raw.startswith("#"):
            k, v = raw.strip().split("=", 1)
            versions[k] = v
    prom = subprocess.run(["prometheus", "--version"], capture_output=True, text=True, check=False).stdout
    py = {}
    for pkg in ("kopf", "aiohttp", "uvloop", "pydantic", "kubernetes_asyncio"):
        try:
            from importlib.metadata import version

            py[pkg] = version(pkg.replace("_", "-"))
        except Exception:
            py[pkg] = "?"
    return {
        "cpu": f"{os.cpu_count()} x {cpu}",
        "memory": f"{mem / 1024 / 1024:.0f} GiB",
        "kernel": os.uname().release,
        "python": sys.version.split()[0],
        "kubernetes": versions.get("KUBERNETES_VERSION", "?"),
        "etcd": versions.get("ETCD_VERSION", "?"),
        "kwok": versions.get("KWOK_VERSION", "?"),
        "prometheus": (prom.split()[2] if prom.startswith("prometheus") else "?"),
        "python packages": ", ".join(f"{k} {v}" for k, v in py.items()),
    }


async def apiserver_requests(kube: RawKube) -> dict[tuple[str, str, str, str], float]:
    """apiserver_request_total by (verb, resource, subresource, code): what a run cost the API server."""
    async with kube.session.get(kube.server + "/metrics") as resp:
        text = await resp.text()
    out: dict[tuple[str, str, str, str], float] = {}
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels_part, _, value = line.rpartition(" ")
        labels = dict(kv.split("=", 1) for kv in labels_part[len("apiserver_request_total{") : -1].split(","))
        key = tuple(labels.get(k, '""').strip('"') for k in ("verb", "resource", "subresource", "code"))
        out[key] = out.get(key, 0.0) + float(value)  # type: ignore[index]
    return out  # type: ignore[return-value]
