"""Failover: two operator replicas with leader election on a Lease (5 s); SIGKILL the leader and
time how long the fleet goes without a controller, twice over:

- **kill -> first reconcile**: a change made right after the kill (an agent's new system prompt)
  until the new leader has reconciled it (``status.observedGeneration == metadata.generation``);
- **kill -> first action**: that new prompt makes the agent loop (``[[sim:loop]]``: the test data
  plane runs a real guard and a scripted looping agent for its pod, scraped by the cluster's
  Prometheus); its guardrail ``loopDetections > 0 -> Suspend`` must fire, and the clock stops at
  the first watch event of its Deployment with ``spec.replicas == 0``. Only the leader acts, so
  this is the new leader's first evaluator action (its audit file is checked to say so).

Each trial's agent is created healthy and waited for until the evaluator has judged it stable, so
the rule, the series and the stable revision all exist before the kill. The **baseline**, in the
same run and cluster, is the identical prompt switch with both replicas alive (no kill): what the
breach itself costs (rollout, the guard's loop detection, scrapes, an evaluation cycle, the
suspension). Failover trials and baseline trials alternate, so both see the same machine.
"Failover minus baseline" is what losing the leader adds; the Lease duration is roughly its
floor: a standby takes over once the Lease has gone unrenewed that long, counted from the last
renewal before the kill (so a takeover can come slightly less than a lease after the kill).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from hack.bench.common import RawKube, fresh, pct, say
from hack.harness.agents import BIG_BUDGETS, agent
from hack.harness.kube import Cluster, Kube, poll
from hack.harness.processes import DEV_PLATFORM, DataplaneProcess, FakeLLMProcess, OperatorProcess

LEASE_NS = "agentfleet-system"
NS = "failover"
LEASE_DURATION = 5.0
EVALUATION_INTERVAL = 1.0
"""As the chaos suite's decisions tests: a short interval keeps the evaluator's cadence (a breach
waits 0-interval for the next cycle) from drowning the failover cost in both series."""
RATE_WINDOW = "20s"
HEALTHY, LOOPING = "Triage tickets.", "Triage tickets. [[sim:loop]]"
RULES = [{"name": "loops", "metric": "loopDetections", "threshold": "0", "action": "Suspend"}]
WITHIN = 120.0
"""Seconds a trial may take before it counts as failed (no sample, a note instead)."""


@dataclass
class FailoverResult:
    seconds: list[float] = field(default_factory=list)
    """Leader SIGKILL -> the new leader's first reconcile (one per failover trial)."""
    action: list[float] = field(default_factory=list)
    """Leader SIGKILL -> the new leader's first action (the looping agent's Deployment at 0)."""
    baseline: list[float] = field(default_factory=list)
    """No kill: prompt switch -> the same action."""
    baseline_reconcile: list[float] = field(default_factory=list)
    """No kill: prompt switch -> its reconcile."""
    decided: list[float] = field(default_factory=list)
    """Leader SIGKILL -> the new leader's Suspend decision (its audit record's time; context)."""
    baseline_decided: list[float] = field(default_factory=list)
    """No kill: prompt switch -> the Suspend decision (context)."""
    lease_duration: float = LEASE_DURATION
    evaluation_interval: float = EVALUATION_INTERVAL
    notes: list[str] = field(default_factory=list)

    def quantile(self, q: float, values: list[float] | None = None) -> float:
        """Nearest rank, as every other benchmark (with 10 samples p99 is the maximum)."""
        return pct(self.seconds if values is None else values, q)


def _holder(kube: Kube) -> str:
    res = kube.kubectl("get", "lease", "agentfleet-operator", "-n", LEASE_NS, "-o", "json", check=False)
    return str((json.loads(res.stdout).get("spec") or {}).get("holderIdentity") or "") if res.returncode == 0 else ""


def _body(name: str, llm: str, prompt: str) -> dict[str, Any]:
    return agent(
        name,
        NS,
        endpoint=llm,
        prompt=prompt,
        replicas=1,
        budgets=BIG_BUDGETS,
        guardrails=RULES,
        analysis={"stabilizationWindow": "5s"},
    )


def _stable(kube: Kube, dp: DataplaneProcess, name: str) -> bool:
    """Reconciled, judged stable by the evaluator, and its one pod's guard serving traffic."""
    res = kube.kubectl("get", "agd", name, "-n", NS, "-o", "json", check=False)
    if res.returncode != 0:
        return False
    obj = json.loads(res.stdout)
    st = obj.get("status") or {}
    current = st.get("currentRevision")
    return bool(
        st.get("observedGeneration") == obj["metadata"]["generation"]
        and current
        and st.get("stableRevision") == current
        and dp.running(name, 1, namespace=NS)
    )


def _audited(path: Path, name: str) -> list[dict[str, Any]]:
    """The action records an operator replica's audit file holds for agent ``name``."""
    lines = path.read_text().splitlines() if path.exists() else []
    return [
        r
        for r in map(json.loads, lines)
        if r.get("kind") == "operator_action" and r.get("namespace") == NS and r.get("agent") == name
    ]


def _decided(audits: list[Path], name: str, since: float) -> float | None:
    """Seconds from ``since`` (epoch) to the first Suspend of ``name`` in the audit files: when
    the evaluator decided, before the status write and the reconcile that scale to 0."""
    times = [
        datetime.fromisoformat(str(r["ts"]).replace("Z", "+00:00")).timestamp()
        for path in audits
        for r in _audited(path, name)
        if r.get("action") == "Suspend" and r.get("ts")
    ]
    return min(times) - since if times else None


async def _switch(kubeconfig: str, name: str, kill: OperatorProcess | None) -> tuple[float | None, float | None, float]:
    """Watch the agent and its Deployment, SIGKILL ``kill`` (if any), switch the agent's prompt
    to the looping one; return (seconds to its reconcile, seconds to its suspension), from the
    kill (or the switch), or None for what did not happen within WITHIN; and that start as
    seconds since the epoch."""
    kube = RawKube(kubeconfig, limit=8)
    stop = asyncio.Event()
    reconciled: list[float] = []
    acted: list[float] = []
    agd_path = f"/apis/agentfleet.dev/v1alpha1/namespaces/{NS}/agentdeployments"
    dep_path = f"/apis/apps/v1/namespaces/{NS}/deployments"
    try:
        agds = await kube.call("GET", agd_path)
        deps = await kube.call("GET", dep_path)
        before = next(o for o in agds["items"] if o["metadata"]["name"] == name)["metadata"]["generation"]

        async def watch_agent() -> None:
            async for ev in kube.watch(agd_path, agds["metadata"]["resourceVersion"], stop):
                obj = ev["object"]
                gen = obj["metadata"].get("generation", 0)
                seen = (obj.get("status") or {}).get("observedGeneration")
                if obj["metadata"]["name"] == name and gen > before and seen == gen and not reconciled:
                    reconciled.append(time.perf_counter())

        async def watch_deployment() -> None:
            async for ev in kube.watch(dep_path, deps["metadata"]["resourceVersion"], stop):
                obj = ev["object"]
                if (
                    obj["metadata"]["name"] == name
                    and ev["type"] != "DELETED"
                    and (obj.get("spec") or {}).get("replicas") == 0
                    and not acted
                ):
                    acted.append(time.perf_counter())

        watchers = [asyncio.create_task(watch_agent()), asyncio.create_task(watch_deployment())]
        await asyncio.sleep(0.3)  # both watches open before the clock starts
        t0, wall0 = time.perf_counter(), time.time()
        if kill is not None:
            await asyncio.to_thread(kill.stop, True)
        patch = {"spec": {"agent": {"systemPrompt": {"inline": LOOPING}}}}
        await kube.call("PATCH", f"{agd_path}/{name}", json.dumps(patch).encode(), "application/merge-patch+json")
        deadline = time.monotonic() + WITHIN
        while time.monotonic() < deadline and not (reconciled and acted):
            if any(w.done() for w in watchers):
                for w in watchers:
                    if w.done() and w.exception() is not None:
                        raise RuntimeError(f"watch failed: {w.exception()!r}")
            await asyncio.sleep(0.1)
        stop.set()
        for w in watchers:
            w.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        return (
            reconciled[0] - t0 if reconciled else None,
            acted[0] - t0 if acted else None,
            wall0,
        )
    finally:
        stop.set()
        await kube.close()


def _seconds(x: float | None) -> str:
    return "-" if x is None else f"{x:.1f} s"


def _trial(
    kube: Kube,
    dp: DataplaneProcess,
    llm: str,
    trial: int,
    trials: int,
    replicas: dict[str, OperatorProcess],
    replica: Callable[[str], OperatorProcess],
    audits: dict[str, Path],
    result: FailoverResult,
) -> None:
    """One baseline switch and one failover switch, on two fresh agents judged stable first."""
    fname, bname = f"f{trial:02d}", f"b{trial:02d}"
    kube.apply([_body(n, llm, HEALTHY) for n in (fname, bname)])
    poll(
        lambda: _stable(kube, dp, fname) and _stable(kube, dp, bname),
        timeout=WITHIN,
        interval=0.5,
        what=f"trial {trial}'s agents judged stable",
    )

    # Baseline: the same switch with both replicas alive.
    base_rec, base_act, wall0 = asyncio.run(_switch(kube.kubeconfig, bname, None))
    base_dec = _decided(list(audits.values()), bname, wall0)
    if base_rec is not None:
        result.baseline_reconcile.append(base_rec)
    if base_act is not None:
        result.baseline.append(base_act)
    else:
        result.notes.append(f"trial {trial}: baseline agent not suspended within {WITHIN:.0f}s")
    if base_dec is not None:
        result.baseline_decided.append(base_dec)

    # Failover: the switch right after the leader's SIGKILL.
    leader = _holder(kube)
    standby = "b" if leader == "a" else "a"
    rec, act, wall0 = asyncio.run(_switch(kube.kubeconfig, fname, replicas[leader]))
    dec = _decided([audits[standby]], fname, wall0)
    if rec is not None:
        result.seconds.append(rec)
    else:
        result.notes.append(f"trial {trial}: no reconcile by the new leader within {WITHIN:.0f}s")
    if act is not None:
        result.action.append(act)
        if dec is None:
            result.notes.append(f"trial {trial}: the suspension is not in the new leader's ({standby}) audit")
    else:
        result.notes.append(f"trial {trial}: no action by the new leader within {WITHIN:.0f}s")
    if dec is not None:
        result.decided.append(dec)
    say(
        f"failover trial {trial + 1}/{trials} ({leader} -> {standby}): kill->reconcile {_seconds(rec)}, "
        f"->decision {_seconds(dec)}, ->action {_seconds(act)}; no kill: switch->reconcile {_seconds(base_rec)}, "
        f"->decision {_seconds(base_dec)}, ->action {_seconds(base_act)}"
    )
    replicas[leader] = replica(leader)  # back as the standby for the next trial
    kube.kubectl("delete", "agd", "-n", NS, fname, bname, "--wait=false")
    poll(lambda: not dp.pods(namespace=NS), timeout=120, what="the trial's guards to stop")


def run(cluster: Cluster, work: Path, trials: int = 10) -> FailoverResult:
    fresh(cluster)
    kube = cluster.kube
    for ns in (LEASE_NS, NS):
        kube.kubectl("create", "namespace", ns)
    flags = [
        f"--platform={DEV_PLATFORM}",
        f"--prometheus-url={cluster.prometheus.url}",
        f"--evaluation-interval={EVALUATION_INTERVAL:g}",
        f"--rate-window={RATE_WINDOW}",
        f"--leader-election-namespace={LEASE_NS}",
        f"--lease-duration={LEASE_DURATION:g}",
    ]
    audits = {r: work / f"failover-audit-{r}.jsonl" for r in ("a", "b")}

    def replica(name: str) -> OperatorProcess:
        op = OperatorProcess(
            kube.kubeconfig,
            work / f"failover-{name}.log",
            [*flags, f"--audit-file={audits[name]}"],
            env={"POD_NAME": name},
        )
        op.start()
        return op

    result = FailoverResult()
    llm = FakeLLMProcess.start(work / "failover-llm.log")
    try:
        dp = DataplaneProcess.start(
            cluster.kubeconfig,
            cluster.prometheus.targets_dir,
            work / "failover-dataplane",
            [NS],
            "--llm-url",
            llm.url,
            "--tasks-per-second",
            "2",
        )
    except BaseException:
        llm.stop()
        raise
    replicas: dict[str, OperatorProcess] = {}
    try:
        replicas["a"] = replica("a")
        poll(lambda: _holder(kube) == "a", timeout=30, what="a first leader")
        replicas["b"] = replica("b")
        for trial in range(trials):
            _trial(kube, dp, llm.url, trial, trials, replicas, replica, audits, result)
    finally:
        for op in replicas.values():
            op.stop(kill=True)
        try:
            dp.stop()
        except RuntimeError as exc:
            say(f"data plane stop: {exc}")
        llm.stop()
    p = result.quantile
    say(
        f"failover over {len(result.seconds)}/{len(result.action)}/{len(result.baseline)} trials: "
        f"kill->reconcile p50 {p(0.5):.1f} s p99 {p(0.99):.1f} s; "
        f"kill->action p50 {p(0.5, result.action):.1f} s p99 {p(0.99, result.action):.1f} s; "
        f"baseline switch->action p50 {p(0.5, result.baseline):.1f} s p99 {p(0.99, result.baseline):.1f} s"
    )
    for label, values in (
        ("kill->decision", result.decided),
        ("no kill: switch->reconcile", result.baseline_reconcile),
        ("no kill: switch->decision", result.baseline_decided),
    ):
        say(f"failover context: {label} p50 {p(0.5, values):.1f} s p99 {p(0.99, values):.1f} s ({len(values)})")
    for note in result.notes:
        say(f"failover: {note}")
    return result
