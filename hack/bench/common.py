"""Shared pieces of the benchmarks: the private cluster, /proc readings, a raw client.

Every benchmark runs on its own private control plane (``AGENTFLEET_BENCH_PORT_BASE`` and
``AGENTFLEET_BENCH_RUN_DIR`` below), never on the shared test cluster, and everything listens on and
connects to loopback only. The cluster, the operator and the data plane are ``hack.harness``'s,
the same the tests run.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from hack.harness.kube import VERSIONS, Cluster, install_crds
from hack.harness.processes import DEV_PLATFORM

CACHE = Path(os.environ.get("AGENTFLEET_CACHE", Path.home() / ".cache" / "agentfleet"))
RUN_DIR = Path(os.environ.get("AGENTFLEET_BENCH_RUN_DIR", CACHE / "bench-run"))
PORT_BASE = int(os.environ.get("AGENTFLEET_BENCH_PORT_BASE", "19400"))
TICKS = os.sysconf("SC_CLK_TCK")
GUARD_IMAGE = "ghcr.io/agentfleet/agentfleet:bench"


def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def bench_cluster() -> Cluster:
    """``hack/cluster`` on the benchmark's own ports and run directory."""
    return Cluster(RUN_DIR, PORT_BASE)


def operator_flags(cluster: Cluster, evaluation_interval: float) -> list[str]:
    """The benchmarks' operator: the cluster's Prometheus, and the development platform file the
    tests run with (without it the default policy refuses agents that reference Secrets)."""
    return [
        f"--prometheus-url={cluster.prometheus.url}",
        f"--evaluation-interval={evaluation_interval:g}",
        "--rate-window=30s",
        f"--platform={DEV_PLATFORM}",
    ]


def fresh(cluster: Cluster) -> None:
    """A fresh cluster for one measurement: whatever a previous run left is taken down first;
    the CRDs and the admission policy are installed and ready."""
    cluster.down()
    cluster.up()
    install_crds(cluster.kube)


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
        "kubernetes": VERSIONS.get("KUBERNETES_VERSION", "?"),
        "etcd": VERSIONS.get("ETCD_VERSION", "?"),
        "kwok": VERSIONS.get("KWOK_VERSION", "?"),
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
