"""Breach-to-action latency: a fleet of 1,000 agents, 10 of them stuck in a tool-call loop.

990 quiet agents live in ``bench-idle`` (no pods are simulated there; a synthetic exporter
serves their quiet guard series, so every evaluator query returns ~1,000 series). The 10
misbehaving agents live in ``bench-loop``, where the test/demo data plane runs a real guard
process and a scripted looping agent for each pod, scraped by the real Prometheus.

For each misbehaving agent, two instants are recorded:

- **breach visible**: the first time Prometheus answers the evaluator's own query for the rule
  (``sum by (namespace, agent, revision) (increase(agentfleet_loop_detections_total[30s]))``)
  with a value above the threshold for that agent (polled every 0.2 s);
- **action**: the first watch event of its Deployment with ``spec.replicas == 0``.

Latency = action - visible. Several rounds of 10 fresh misbehaving agents give more samples
(the previous round's agents are deleted, so the fleet stays at 1,000).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from hack.bench.common import GUARD_IMAGE, RawKube, cpu_seconds, fresh, operator_flags, pct, say
from hack.bench.fleet import manifest, revision_of
from hack.bench.reconcile import kube_create_namespace, start_exporter
from hack.harness.kube import Cluster, poll
from hack.harness.processes import DataplaneProcess, FakeLLMProcess, OperatorProcess

IDLE, LOOP = "bench-idle", "bench-loop"
INTERVAL = 5.0


@dataclass
class BreachResult:
    fleet: int
    misbehaving: int
    rounds: int
    interval: float = INTERVAL
    latencies: list[float] = field(default_factory=list)
    detect: list[float] = field(default_factory=list)  # pod start -> breach visible (context only)
    cycle_seconds: float = float("nan")
    notes: list[str] = field(default_factory=list)

    @property
    def p50(self) -> float:
        return pct(self.latencies, 0.5)

    @property
    def p99(self) -> float:
        return pct(self.latencies, 0.99)


async def create_all(kube: RawKube, bodies: list[dict[str, object]], concurrency: int = 64) -> None:
    sem = asyncio.Semaphore(concurrency)

    async def one(body: dict[str, object]) -> None:
        ns = body["metadata"]["namespace"]  # type: ignore[index]
        async with sem:
            await kube.call(
                "POST", f"/apis/agentfleet.dev/v1alpha1/namespaces/{ns}/agentdeployments", json.dumps(body).encode()
            )

    await asyncio.gather(*(one(b) for b in bodies))


async def wait_reconciled(kube: RawKube, namespace: str, n: int, within: float) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        items = (await kube.call("GET", f"/apis/agentfleet.dev/v1alpha1/namespaces/{namespace}/agentdeployments"))[
            "items"
        ]
        done = [
            o
            for o in items
            if (o.get("status") or {}).get("observedGeneration") == o["metadata"]["generation"]
            and (o.get("status") or {}).get("currentRevision")
        ]
        if len(done) >= n:
            return
        await asyncio.sleep(2)
    raise RuntimeError(f"{namespace}: agents not reconciled within {within:.0f}s")


async def one_round(
    cluster: Cluster, kube: RawKube, names: list[str], llm_url: str, within: float
) -> tuple[dict[str, float], dict[str, float], float]:
    """Create the misbehaving agents; return when each breach became visible and was acted on."""
    visible: dict[str, float] = {}
    acted: dict[str, float] = {}
    stop = asyncio.Event()
    path = f"/apis/apps/v1/namespaces/{LOOP}/deployments"
    listing = await kube.call("GET", path)

    async def watch_deployments() -> None:
        async for ev in kube.watch(path, listing["metadata"]["resourceVersion"], stop):
            obj = ev["object"]
            name = obj["metadata"]["name"]
            if (
                name in names
                and name not in acted
                and ev["type"] != "DELETED"
                and (obj.get("spec") or {}).get("replicas") == 0
            ):
                acted[name] = time.perf_counter()

    query = (
        f"sum by (namespace, agent, revision) (increase(agentfleet_loop_detections_total"
        f'{{namespace="{LOOP}"}}[30s])) > 0'
    )

    async def poll_prometheus() -> None:
        while not stop.is_set():
            try:
                result = await asyncio.to_thread(cluster.prometheus.query, query)
            except Exception as exc:  # a slow answer is retried, never fatal
                say(f"  prometheus poll: {exc}")
                result = []
            now = time.perf_counter()
            for item in result:
                name = item["metric"].get("agent", "")
                if name in names and name not in visible:
                    visible[name] = now
            await asyncio.sleep(0.2)

    watcher = asyncio.create_task(watch_deployments())
    poller = asyncio.create_task(poll_prometheus())
    t0 = time.perf_counter()
    bodies = [manifest(n, LOOP, prompt="You are helpful. [[sim:loop]]", endpoint=llm_url) for n in names]
    try:
        await create_all(kube, bodies)
        deadline = time.monotonic() + within
        while time.monotonic() < deadline and not (len(acted) == len(names) and set(visible) >= set(acted)):  # noqa: ASYNC110
            await asyncio.sleep(0.2)
    finally:
        stop.set()
        for task in (watcher, poller):
            task.cancel()
        await asyncio.gather(watcher, poller, return_exceptions=True)
    return visible, acted, t0


def run(cluster: Cluster, work: Path, fleet: int = 1000, misbehaving: int = 10, rounds: int = 3) -> BreachResult:
    result = BreachResult(fleet, misbehaving, rounds)
    fresh(cluster)
    prometheus = cluster.prometheus
    llm = FakeLLMProcess.start(work / "fake-llm.log")
    op = OperatorProcess(
        cluster.kubeconfig,
        work / "operator-breach.log",
        operator_flags(cluster, INTERVAL),
        guard_image=GUARD_IMAGE,
    )
    exporter = None
    dp: DataplaneProcess | None = None
    try:
        for ns in (IDLE, LOOP):
            kube_create_namespace(cluster, ns)
        dp = DataplaneProcess.start(
            cluster.kubeconfig, prometheus.targets_dir, work / "dataplane", [LOOP], "--llm-url", llm.url
        )
        op.start()
        idle = fleet - misbehaving
        say(f"breach: creating {idle} quiet agents")

        async def setup() -> None:
            kube = RawKube(cluster.kubeconfig)
            try:
                await create_all(kube, [manifest(f"quiet-{i:04d}", IDLE) for i in range(idle)])
                await wait_reconciled(kube, IDLE, idle, max(300, idle * 0.5))
            finally:
                await kube.close()

        asyncio.run(setup())
        rev = revision_of(manifest("x", IDLE))
        exporter = start_exporter(cluster, [(IDLE, f"quiet-{i:04d}", rev) for i in range(idle)], work, "breach")
        m0 = op.metrics()
        for r in range(rounds):
            names = [f"loop-{r}-{i}" for i in range(misbehaving)]

            async def measure(names: list[str] = names) -> tuple[dict[str, float], dict[str, float], float]:
                kube = RawKube(cluster.kubeconfig)
                try:
                    return await one_round(cluster, kube, names, llm.url, within=240)
                finally:
                    await kube.close()

            visible, acted, t0 = asyncio.run(measure())
            lat = [acted[n] - visible[n] for n in names if n in acted and n in visible]
            missing = [n for n in names if n not in acted or n not in visible]
            if missing:
                result.notes.append(f"round {r}: no measurement for {missing}")
            early = [n for n in names if n in acted and n in visible and acted[n] < visible[n]]
            if early:
                result.notes.append(f"round {r}: acted before our poll saw the breach: {early}")
            result.latencies += lat
            result.detect += [visible[n] - t0 for n in names if n in visible]
            say(
                f"  round {r}: breach-to-action p50 {pct(lat, 0.5):.2f}s max {max(lat, default=float('nan')):.2f}s "
                f"({len(lat)} agents)"
            )
            cluster.kube.kubectl("delete", "agd", "-n", LOOP, *names, "--wait=false")
            poll(lambda: not dp.pods(namespace=LOOP), timeout=120, what="the round's guards to stop")  # type: ignore[union-attr]
        m1 = op.metrics()
        cycles = (
            m1["agentfleet_operator_evaluation_cycle_seconds_count"]
            - m0["agentfleet_operator_evaluation_cycle_seconds_count"]
        )
        if cycles:
            result.cycle_seconds = (
                m1["agentfleet_operator_evaluation_cycle_seconds_sum"]
                - m0["agentfleet_operator_evaluation_cycle_seconds_sum"]
            ) / cycles
        say(
            f"breach: p50 {result.p50:.2f}s p99 {result.p99:.2f}s over {len(result.latencies)} agents; "
            f"operator CPU so far {cpu_seconds(op.pid):.0f}s"
        )
    finally:
        op.stop()
        if dp is not None:
            try:
                dp.stop()
            except RuntimeError as exc:
                say(f"data plane stop: {exc}")
        llm.stop()
        if exporter is not None:
            exporter.terminate()
            exporter.wait(timeout=10)
    return result
