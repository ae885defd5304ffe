"""Reconcile throughput against the raw floor; evaluator cost, operator memory and idle CPU.

For each N, on a fresh private control plane each time:

1. **raw floor**: a tight aiohttp client creates the N AgentDeployments and, for each, writes
   exactly the children ``agentfleet.render.render()`` produces (plus the ControllerRevision) with
   server-side apply and the status the operator would write, at a few concurrencies; the best
   one is the floor. No operator runs.
2. **operator**: the operator runs as a process; the same client creates the N AgentDeployments
   at the floor's best concurrency, and the clock stops when the last one is reconciled.

"Reconciled" is the same test in both runs, seen through one watch: ``status.observedGeneration
== metadata.generation`` and ``status.currentRevision`` set; afterwards every child kind is
counted (the clock is extended if any were missing). Both runs include creating the
AgentDeployments, and both trigger the same downstream work (ReplicaSets, KWOK pods).

After the operator run the fleet is left to settle, then over a quiet window the operator's own
metrics give PromQL queries and seconds per evaluation cycle, and /proc gives its RSS and CPU.
A synthetic exporter (``fleet.py``) serves quiet guard metrics for all N agents, so evaluator
queries return N series each, like a real fleet's.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agentfleet.api import conditions as cond
from agentfleet.api.types import AgentDeployment
from agentfleet.kube.wire import apply_patch_body
from agentfleet.render import RenderSettings, render, render_controller_revision, selector
from hack.bench.common import (
    GUARD_IMAGE,
    RawKube,
    apiserver_requests,
    cpu_seconds,
    fresh,
    machine_busy,
    operator_flags,
    rss_mb,
    say,
)
from hack.bench.fleet import manifest, revision_of
from hack.harness.kube import PYTHON, ROOT, Cluster, free_port, poll
from hack.harness.processes import OperatorProcess

NS = "bench"
AGD_PATH = f"/apis/agentfleet.dev/v1alpha1/namespaces/{NS}/agentdeployments"
PLURALS = {
    "ServiceAccount": "/api/v1/namespaces/{ns}/serviceaccounts",
    "ConfigMap": "/api/v1/namespaces/{ns}/configmaps",
    "Service": "/api/v1/namespaces/{ns}/services",
    "NetworkPolicy": "/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies",
    "Deployment": "/apis/apps/v1/namespaces/{ns}/deployments",
    "ControllerRevision": "/apis/apps/v1/namespaces/{ns}/controllerrevisions",
    "Role": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles",
    "RoleBinding": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
}
SETTINGS = RenderSettings(guard_image=GUARD_IMAGE)
TIMELINE: dict[str, Any] = {}  # of the last timed run: when creation ended, when each agent was done


@dataclass
class Timed:
    seconds: float
    cpu: dict[str, float]  # CPU-seconds per component during the run
    requests: float  # API requests the API server served during the run
    agd_requests: float  # ... of which on AgentDeployments


@dataclass
class ReconcileResult:
    n: int
    floor: Timed | None = None
    floor_concurrency: int = 0
    floor_trials: dict[int, Timed] = field(default_factory=dict)
    operator: Timed | None = None
    queries_per_cycle: float = float("nan")
    cycle_seconds: float = float("nan")
    cycles: int = 0
    rss_start_mb: float = float("nan")
    idle_cpu_start: float = float("nan")
    rss_mb: float = float("nan")
    idle_cpu: float = float("nan")
    idle_window: float = 0.0
    settle_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def names(n: int) -> list[str]:
    return [f"agent-{i:05d}" for i in range(n)]


def floor_status(body: dict[str, Any], revision: str) -> dict[str, Any]:
    """The status the operator writes after a first reconcile (same fields and conditions)."""
    gen = body["metadata"]["generation"]
    now = cond.now_rfc3339()
    conditions: cond.Conditions = []
    for type_, ok, reason, msg in (
        (cond.POLICY_VIOLATION, False, "WithinPolicy", "all covering AgentPolicies allow this agent"),
        (cond.ROLLED_BACK, False, "NotRolledBack", "running the revision the spec describes"),
        (cond.SUSPENDED, False, "Running", "running 1 replica(s)"),
        (cond.PROGRESSING, True, "RevisionApplied", f"revision {revision} applied"),
    ):
        conditions = cond.set_condition(conditions, type_, ok, reason, msg, gen, now)
    name = body["metadata"]["name"]
    return {
        "status": {
            "observedGeneration": gen,
            "currentRevision": revision,
            "revisionStartedAt": now,
            "phase": "Running",
            "selector": ",".join(f"{k}={v}" for k, v in sorted(selector(name).items())),
            "conditions": sorted(conditions, key=lambda c: str(c["type"])),
        },
        "metadata": {"resourceVersion": body["metadata"]["resourceVersion"]},
    }


async def floor_one(kube: RawKube, sem: asyncio.Semaphore, body: dict[str, Any]) -> None:
    async def call(*args: Any, **kwargs: Any) -> dict[str, Any]:
        async with sem:
            return await kube.call(*args, **kwargs)

    created = await call("POST", AGD_PATH, json.dumps(body).encode())
    agent = AgentDeployment.model_validate(created)
    rendered = render(agent, SETTINGS)
    objs = [*rendered.objects, render_controller_revision(agent, rendered, 1)]
    params = {"fieldManager": "agentfleet", "force": "true"}
    await asyncio.gather(
        *(
            call(
                "PATCH",
                PLURALS[o["kind"]].format(ns=NS) + "/" + o["metadata"]["name"],
                apply_patch_body(o).encode(),
                "application/apply-patch+yaml; charset=utf-8",
                params,
            )
            for o in objs
        )
    )
    await call(
        "PATCH",
        f"{AGD_PATH}/{agent.metadata.name}/status",
        json.dumps(floor_status(created, rendered.revision)).encode(),
        "application/merge-patch+json",
    )


async def create_only(kube: RawKube, sem: asyncio.Semaphore, body: dict[str, Any]) -> None:
    async with sem:
        await kube.call("POST", AGD_PATH, json.dumps(body).encode())


class Watcher:
    """One watch on the benchmark namespace's AgentDeployments; records when all N are reconciled."""

    def __init__(self, kube: RawKube, n: int) -> None:
        self.kube, self.n = kube, n
        self.done: set[str] = set()
        self.times: list[float] = []
        self.finished = asyncio.Event()
        self.stop = asyncio.Event()
        self.t_done = 0.0
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        listing = await self.kube.call("GET", AGD_PATH)
        self.task = asyncio.create_task(self._run(listing["metadata"]["resourceVersion"]))

    async def _run(self, rv: str) -> None:
        async for ev in self.kube.watch(AGD_PATH, rv, self.stop):
            obj = ev["object"]
            st = obj.get("status") or {}
            if st.get("observedGeneration") == obj["metadata"].get("generation") and st.get("currentRevision"):
                if obj["metadata"]["name"] not in self.done:
                    self.times.append(time.perf_counter())
                self.done.add(obj["metadata"]["name"])
                if len(self.done) >= self.n and not self.finished.is_set():
                    self.t_done = time.perf_counter()
                    self.finished.set()

    async def close(self) -> None:
        self.stop.set()
        if self.task:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


async def count_children(kube: RawKube, n: int) -> dict[str, int]:
    out = {}
    for kind in ("ServiceAccount", "ConfigMap", "Service", "NetworkPolicy", "Deployment", "ControllerRevision"):
        listing = await kube.call(
            "GET", PLURALS[kind].format(ns=NS), params={"labelSelector": "app.kubernetes.io/managed-by=agentfleet"}
        )
        out[kind] = len(listing.get("items", []))
    return out


def component_pids(cluster: Cluster) -> dict[str, int]:
    out = {}
    for name in ("kube-apiserver", "etcd", "kube-controller-manager", "kube-scheduler", "kwok", "prometheus"):
        out[name] = int((cluster.run_dir / "pids" / f"{name}.pid").read_text().split()[0])
    return out


async def timed_creation(
    cluster: Cluster, n: int, concurrency: int, floor: bool, within: float, operator_pid: int | None = None
) -> Timed:
    """From the first create to the last agent reconciled (and every child present)."""
    kube = RawKube(cluster.kubeconfig, limit=max(concurrency, 8))
    watcher = Watcher(kube, n)
    pids = component_pids(cluster)
    if operator_pid:
        pids["operator"] = operator_pid
    try:
        await watcher.start()
        req0 = await apiserver_requests(kube)
        cpu0 = {k: cpu_seconds(p) for k, p in pids.items()}
        me0, busy0 = os.times(), machine_busy()
        sem = asyncio.Semaphore(concurrency)
        bodies = [manifest(name, NS) for name in names(n)]
        t0 = time.perf_counter()
        work = floor_one if floor else create_only
        await asyncio.gather(*(work(kube, sem, b) for b in bodies))
        TIMELINE["created"] = time.perf_counter() - t0
        await asyncio.wait_for(watcher.finished.wait(), within)
        t_end = watcher.t_done
        cpu1 = {k: cpu_seconds(p) for k, p in pids.items()}
        me1, busy1 = os.times(), machine_busy()
        req1 = await apiserver_requests(kube)
        deadline = time.monotonic() + 120
        while True:  # children must exist too (the operator writes status after applying them)
            counts = await count_children(kube, n)
            if all(c >= n for c in counts.values()):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"children missing after reconcile: {counts}")
            await asyncio.sleep(0.5)
            t_end = time.perf_counter()
        TIMELINE["done"] = [t - t0 for t in watcher.times]
        cpu = {k: cpu1[k] - cpu0[k] for k in pids}
        cpu["bench client"] = me1.user + me1.system - me0.user - me0.system
        cpu["other (not this benchmark)"] = max(0.0, busy1 - busy0 - sum(cpu.values()))
        delta = {k: v - req0.get(k, 0.0) for k, v in req1.items()}
        return Timed(
            t_end - t0, cpu, sum(delta.values()), sum(v for k, v in delta.items() if k[1] == "agentdeployments")
        )
    finally:
        await watcher.close()
        await kube.close()


def start_exporter(
    cluster: Cluster, agents: list[tuple[str, str, str]], work: Path, tag: str
) -> subprocess.Popen[bytes]:
    """The synthetic exporter for ``agents`` [(namespace, name, revision)], registered with Prometheus."""
    agents_file = work / f"exporter-{tag}.json"
    agents_file.write_text(json.dumps(agents))
    port = free_port()
    with (work / f"exporter-{tag}.log").open("wb") as log:
        proc = subprocess.Popen(
            [PYTHON, "-m", "hack.bench.fleet", "--agents", str(agents_file), "--port", str(port)],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    prometheus = cluster.prometheus
    prometheus.add_target(f"bench-exporter-{tag}", f"127.0.0.1:{port}", {})

    def scraped() -> bool:
        res = prometheus.query('count(agentfleet_requests_total{pod!=""})')
        return bool(res) and float(res[0]["value"][1]) >= 2 * len(agents)

    if agents:
        poll(scraped, timeout=90, interval=0.5, what="Prometheus to scrape the synthetic exporter")
    return proc


def kube_create_namespace(cluster: Cluster, namespace: str = NS) -> None:
    kube = cluster.kube
    kube.kubectl("create", "namespace", namespace)
    # the controller-manager makes the default ServiceAccount; Deployments' pods need it
    poll(
        lambda: kube.kubectl("get", "sa", "default", "-n", namespace, check=False).returncode == 0,
        timeout=30,
        what="the default ServiceAccount",
    )


def run_floor(cluster: Cluster, n: int, concurrencies: list[int], result: ReconcileResult) -> None:
    for c in concurrencies:
        fresh(cluster)
        kube_create_namespace(cluster)
        timed = asyncio.run(timed_creation(cluster, n, c, floor=True, within=max(120, n * 0.5)))
        result.floor_trials[c] = timed
        say(
            f"  floor N={n} concurrency={c}: {timed.seconds:.2f}s ({n / timed.seconds:.0f} agents/s); "
            f"{timed.requests / n:.1f} API requests/agent; CPU s: {fmt_cpu(timed.cpu)}"
        )
    best = min(result.floor_trials, key=lambda k: result.floor_trials[k].seconds)
    result.floor_concurrency, result.floor = best, result.floor_trials[best]


def fmt_cpu(cpu: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.1f}" for k, v in cpu.items())


def settle(op: OperatorProcess, max_seconds: float, slice_s: float = 5.0, quiet: float = 0.15) -> float:
    """Wait until the operator has spent < ``quiet`` of a core over a slice and done no reconcile."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < max_seconds:
        c0, r0 = cpu_seconds(op.pid), op.metrics().get("agentfleet_operator_reconciles_total", 0)
        time.sleep(slice_s)
        c1, r1 = cpu_seconds(op.pid), op.metrics().get("agentfleet_operator_reconciles_total", 0)
        if (c1 - c0) / slice_s < quiet and r1 == r0:
            break
    return time.monotonic() - t0


def cycle_boundary(op: OperatorProcess, within: float = 30.0) -> dict[str, float]:
    """The operator's metrics right after an evaluation cycle ends."""
    key = "agentfleet_operator_evaluation_cycle_seconds_count"
    start = op.metrics().get(key, 0.0)
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        m = op.metrics()
        if m.get(key, 0.0) != start:
            return m
        time.sleep(0.05)
    return op.metrics()


def run_operator(
    cluster: Cluster,
    n: int,
    concurrency: int,
    work: Path,
    result: ReconcileResult,
    idle_window: float,
    operator_args: list[str],
    operator_source: str | None = None,
) -> None:
    fresh(cluster)
    exporter: subprocess.Popen[bytes] | None = None
    op = OperatorProcess(
        cluster.kubeconfig,
        work / f"operator-{n}.log",
        [*operator_flags(cluster, 5), *operator_args],
        guard_image=GUARD_IMAGE,
    )
    if operator_source:  # A/B: the same harness, the operator's code from another tree
        op.command = [
            PYTHON,
            "-c",
            f"import sys; sys.path.insert(0, {operator_source!r}); "
            "from agentfleet.cli.main import main; sys.exit(main())",
        ]
    try:
        kube_create_namespace(cluster)
        op.start()
        time.sleep(5)
        c0, t0 = cpu_seconds(op.pid), time.monotonic()
        time.sleep(10)
        result.idle_cpu_start = (cpu_seconds(op.pid) - c0) / (time.monotonic() - t0)
        result.rss_start_mb = rss_mb(op.pid)
        timed = asyncio.run(
            timed_creation(cluster, n, concurrency, floor=False, within=max(180, n * 1.0), operator_pid=op.pid)
        )
        result.operator = timed
        say(
            f"  operator N={n}: {timed.seconds:.2f}s ({n / timed.seconds:.0f} agents/s); "
            f"{timed.requests / n:.1f} API requests/agent ({timed.agd_requests / n:.1f} on AgentDeployments); "
            f"CPU s: {fmt_cpu(timed.cpu)}"
        )
        # New agents have no metrics yet; from now on, the synthetic guards' series are scraped.
        rev = revision_of(manifest("x", NS))
        exporter = start_exporter(cluster, [(NS, name, rev) for name in names(n)], work, f"reconcile-{n}")
        # Let the tail (Deployment status mirroring, first evaluation writes, usage) finish, then
        # watch a quiet window: evaluator cost per cycle, idle CPU, RSS.
        time.sleep(40)  # past one usage-refresh cycle (6 x 5 s) of the evaluator
        result.settle_seconds = 40 + settle(op, 240)
        # The window opens and closes as a cycle ends (queries are counted when a cycle starts, the
        # cycle when it ends), so queries / cycles is exact.
        m0 = cycle_boundary(op)
        c0, t0 = cpu_seconds(op.pid), time.monotonic()
        time.sleep(idle_window)
        m1 = cycle_boundary(op)
        c1, t1 = cpu_seconds(op.pid), time.monotonic()
        cycles = (
            m1["agentfleet_operator_evaluation_cycle_seconds_count"]
            - m0["agentfleet_operator_evaluation_cycle_seconds_count"]
        )
        result.cycles = int(cycles)
        if cycles:
            result.queries_per_cycle = (
                m1["agentfleet_operator_prometheus_queries_total"] - m0["agentfleet_operator_prometheus_queries_total"]
            ) / cycles
            result.cycle_seconds = (
                m1["agentfleet_operator_evaluation_cycle_seconds_sum"]
                - m0["agentfleet_operator_evaluation_cycle_seconds_sum"]
            ) / cycles
        result.idle_cpu = (c1 - c0) / (t1 - t0)
        result.idle_window = t1 - t0
        result.rss_mb = rss_mb(op.pid)
        evaluated = m1.get("agentfleet_operator_evaluated_agents", 0)
        if evaluated != n:
            result.notes.append(f"evaluator saw {evaluated:.0f} agents")
        say(
            f"  N={n}: {result.queries_per_cycle:.1f} queries/cycle, {result.cycle_seconds * 1000:.0f} ms/cycle, "
            f"RSS {result.rss_mb:.0f} MB (start {result.rss_start_mb:.0f}), idle CPU {result.idle_cpu:.1%} "
            f"(settled after {result.settle_seconds:.0f}s)"
        )
    finally:
        op.stop()
        if exporter is not None:
            exporter.terminate()
            exporter.wait(timeout=10)


def run(
    cluster: Cluster,
    sizes: list[int],
    work: Path,
    idle_window: float,
    floor_concurrencies: list[int],
    operator_args: list[str],
    skip_floor: bool = False,
    operator_source: str | None = None,
) -> list[ReconcileResult]:
    """Floor concurrencies: all of them at the smallest N, the two best at the next, then the best."""
    results = []
    candidates = list(floor_concurrencies)
    for n in sizes:
        res = ReconcileResult(n)
        say(f"reconcile N={n}")
        if not skip_floor:
            run_floor(cluster, n, candidates, res)
            ranked = sorted(res.floor_trials, key=lambda c: res.floor_trials[c].seconds)
            candidates = ranked[:2] if len(candidates) > 2 else ranked[:1]
        run_operator(
            cluster, n, res.floor_concurrency or candidates[0], work, res, idle_window, operator_args, operator_source
        )
        results.append(res)
    return results
