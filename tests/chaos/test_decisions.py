"""Decisions under faults, with the data plane (real guards, the fake LLM, the cluster's
Prometheus): a rollback decided while the operator is SIGKILLed and restarted at random points,
with one rule or two rules breaching at once, is carried out exactly once, to the right stable
revision, and sticks."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from hack.harness.agents import BIG_BUDGETS, agent, condition, status
from hack.harness.kube import Kube, Prometheus, poll
from hack.harness.processes import DataplaneProcess, OperatorProcess
from tests.chaos.support import (
    actions_of,
    audited,
    deployment_revision,
    fatal_lines,
    operator,
    scaled,
    warning_events,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

ERRORS = {"name": "errors", "metric": "errorRate", "threshold": "0.3", "for": "3s", "action": "Rollback"}
ERRORS_AT_ONCE = {"name": "any-errors", "metric": "errorRate", "threshold": "0.1", "action": "Rollback"}
WINDOW = {"stabilizationWindow": "5s"}
BUDGETS = {**BIG_BUDGETS, "latency": {"perCallDeadline": "2s"}}
FLAGS = ("--evaluation-interval=1", "--rate-window=20s")


@pytest.fixture
def namespace(kube: Kube, request: pytest.FixtureRequest) -> Iterator[str]:
    name = "dec-" + request.node.callspec.id if hasattr(request.node, "callspec") else "decisions"
    kube.kubectl("create", "namespace", name)
    yield name
    kube.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def dataplane(kube: Kube, prometheus: Prometheus, namespace: str, tmp_path: Path) -> Iterator[DataplaneProcess]:
    dp = DataplaneProcess.start(
        kube.kubeconfig, prometheus.targets_dir, tmp_path / "dataplane", [namespace], "--tasks-per-second", "3"
    )
    try:
        yield dp
    finally:
        dp.stop()


def wall(ts: str) -> float:
    """An audit record's time (RFC 3339) as seconds since the epoch."""
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def support(ns: str, llm: str, prompt: str, rules: list[dict[str, Any]]) -> dict[str, Any]:
    return agent(
        "support", ns, endpoint=llm, prompt=prompt, replicas=1, budgets=BUDGETS, guardrails=rules, analysis=WINDOW
    )


def stable_after(kube: Kube, ns: str, previous: str | None) -> str:
    """Wait for a new revision to roll out and become the stable one; its name."""

    def check() -> str | None:
        st = status(kube, ns, "support")
        current = st.get("currentRevision")
        return current if current and current != previous and st.get("stableRevision") == current else None

    return str(poll(check, timeout=90, interval=0.5, what="the new revision to become stable"))


@pytest.mark.parametrize("rules", [[ERRORS], [ERRORS, ERRORS_AT_ONCE]], ids=["one-rule", "two-rules"])
def test_a_rollback_decided_while_the_operator_restarts_happens_once_and_sticks(
    kube: Kube, prometheus: Prometheus, namespace: str, fake_llm: str, dataplane: DataplaneProcess,
    tmp_path: Path, rules: list[dict[str, Any]],
) -> None:  # fmt: skip
    ns = namespace
    seed = int(time.time())
    rng = random.Random(seed)
    audit = tmp_path / "audit.jsonl"
    op = operator(kube, tmp_path / "operator.log", "decisions", f"--prometheus-url={prometheus.url}", *FLAGS,
                  f"--audit-file={audit}")  # fmt: skip
    op.start()
    try:
        kube.apply(support(ns, fake_llm, "Answer politely.", rules))
        first = stable_after(kube, ns, None)
        kube.apply(support(ns, fake_llm, "Answer politely and briefly.", rules))
        stable = stable_after(kube, ns, first)  # the rollback must go here, not to the first revision
        before = deployment_revision(kube, ns, "support")

        kube.apply(support(ns, fake_llm, "Answer tersely. [[sim:error]]", rules))
        bad = poll(
            lambda: (r := status(kube, ns, "support").get("currentRevision")) not in {first, stable} and r,
            timeout=60,
            what="the bad revision to roll out",
        )
        kills, started = 0, time.monotonic()
        # SIGKILL at random points until the rollback is on status, then twice more: a restarted
        # operator must neither repeat it nor undo it.
        after_action = 0
        while after_action < 2:
            time.sleep(rng.uniform(0.5, 4.0))
            op.stop(kill=True)
            kills += 1
            if status(kube, ns, "support").get("phase") == "RolledBack":
                after_action += 1
            assert time.monotonic() - started < 240, "no rollback within 4 minutes of operator restarts"
            op.start()
        decided = time.monotonic() - started

        # Now let the last operator run undisturbed: the decision must stick through many cycles.
        poll(lambda: status(kube, ns, "support").get("breachAnnounced") is True, timeout=30, what="the announcement")
        quiet_until = time.monotonic() + 12
        while time.monotonic() < quiet_until:
            st = status(kube, ns, "support")
            assert (st["phase"], st["currentRevision"], st["stableRevision"]) == ("RolledBack", stable, stable), st
            time.sleep(1)

        d = kube.get_json("deployment", "support", "-n", ns)
        assert d["spec"]["template"]["metadata"]["labels"]["agentfleet.dev/revision"] == stable
        assert deployment_revision(kube, ns, "support") == before + 2, "the template changed more than bad -> stable"
        st = status(kube, ns, "support")
        assert st["lastBreach"]["revision"] == bad and st["lastBreach"]["action"] == "Rollback", st["lastBreach"]
        assert condition(st, "RolledBack")["status"] == "True"
        records = audited([audit], ns, "support")
        assert actions_of(records) == {("Rollback", bad)}, records
        events = [e for e in warning_events(kube, ns, "support") if bad in e.get("message", "")]
        assert events, "the rollback has no Event"
        assert fatal_lines(op.log_path) == []
        print(
            f"seed {seed}, {len(rules)} rule(s): rollback {bad} -> {stable} decided through {kills} SIGKILLs "
            f"({decided:.1f}s); audit records {len(records)}, Events {sum(e.get('count', 1) for e in events)}"
        )
    finally:
        op.stop(kill=True)


def test_the_leader_killed_under_load_loses_and_repeats_no_action(
    kube: Kube, prometheus: Prometheus, fake_llm: str, tmp_path: Path
) -> None:
    """Agents start looping together; the leader is SIGKILLed as soon as it carried out the first
    suspension of the first wave, and a second wave starts looping at the kill, so the rest are
    decided by the standby: every looper suspended exactly once, no
    healthy agent touched; the time from the kill to the new leader's first action is printed."""
    ns, lease_ns = "underload", "agentfleet-system"
    for n in (ns, lease_ns):
        if kube.kubectl("get", "namespace", n, check=False).returncode != 0:
            kube.kubectl("create", "namespace", n)
    loop = [{"name": "loops", "metric": "loopDetections", "threshold": "0", "action": "Suspend"}]
    loopers = [f"loop{i}" for i in range(scaled(6))]
    healthy = [f"ok{i}" for i in range(scaled(3))]
    flags = (f"--prometheus-url={prometheus.url}", *FLAGS, f"--leader-election-namespace={lease_ns}",
             "--lease-duration=5")  # fmt: skip
    replicas: dict[str, OperatorProcess] = {}
    audits = {r: tmp_path / f"audit-{r}.jsonl" for r in ("a", "b")}
    for r in ("a", "b"):
        replicas[r] = operator(
            kube, tmp_path / f"operator-{r}.log", f"replica-{r}", *flags, f"--audit-file={audits[r]}"
        )
        replicas[r].start()
    dp = DataplaneProcess.start(
        kube.kubeconfig, prometheus.targets_dir, tmp_path / "dataplane", [ns], "--tasks-per-second", "2"
    )

    def body(name: str, prompt: str) -> dict[str, Any]:
        return agent(
            name, ns, endpoint=fake_llm, prompt=prompt, replicas=1, budgets=BUDGETS, guardrails=loop, analysis=WINDOW
        )

    def suspended(name: str) -> bool:
        return bool(kube.get_json("deployment", name, "-n", ns)["spec"]["replicas"] == 0)

    try:
        kube.apply([body(n, "Triage tickets.") for n in loopers + healthy])
        poll(
            lambda: all(status(kube, ns, n).get("stableRevision") for n in loopers + healthy),
            timeout=120,
            what="every agent to be judged healthy",
        )
        # Two waves: the first is in flight when the leader dies; the second starts looping at the
        # kill, so the new leader always has actions to carry out (one cycle can decide a whole wave).
        first, second = loopers[: len(loopers) // 2], loopers[len(loopers) // 2 :]
        kube.apply([body(n, "Triage tickets. [[sim:loop]]") for n in first])
        poll(lambda: any(suspended(n) for n in first), timeout=90, interval=0.1, what="the first suspension")
        leader = next(r for r in replicas if any(audited([audits[r]], ns, n) for n in loopers))
        standby = "b" if leader == "a" else "a"
        before_kill = {n for n in loopers if suspended(n)}
        killed = time.time()
        replicas[leader].stop(kill=True)
        kube.apply([body(n, "Triage tickets. [[sim:loop]]") for n in second])
        poll(lambda: all(suspended(n) for n in loopers), timeout=120, interval=0.2, what="every looper suspended")
        first_by_new = poll(
            lambda: min((wall(r["ts"]) for n in loopers for r in audited([audits[standby]], ns, n)), default=None),
            timeout=10,
            what="an action recorded by the new leader",
        )
        failover = first_by_new - killed
        for n in loopers:
            records = audited(list(audits.values()), ns, n)
            acts = actions_of(records)
            assert len(acts) == 1 and next(iter(acts))[0] == "Suspend", (n, records)
            st = status(kube, ns, n)
            assert st["phase"] == "Suspended" and st["lastBreach"]["rule"] == "loops", (n, st)
        for n in healthy:
            assert not suspended(n) and audited(list(audits.values()), ns, n) == [], n
        assert fatal_lines(replicas[standby].log_path) == []
        print(
            f"leader {leader} killed after {len(before_kill)}/{len(loopers)} suspensions; the new leader's first "
            f"action {failover:.1f}s after the kill; {len(loopers) - len(before_kill)} decided by {standby}"
        )
    finally:
        dp.stop()
        for op in replicas.values():
            op.stop(kill=True)
