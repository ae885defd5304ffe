"""Automatic suspension and rollback, end to end: real control plane, real Prometheus, real guard
processes (the test data plane), the operator and its evaluator as a process."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from hack.harness.agents import BIG_BUDGETS, agent, condition, phase_is, status, wait_reconciled
from hack.harness.kube import Cluster, Kube, Prometheus, poll
from hack.harness.processes import DataplaneProcess, OperatorProcess
from tests.support.session import EVALUATION_INTERVAL

pytestmark = pytest.mark.integration

SCRAPE_INTERVAL = 2.0  # hack/cluster's Prometheus


FAST_FAILING = {**BIG_BUDGETS, "latency": {"perCallDeadline": "2s"}}  # errors surface in seconds, not a minute


def guarded(
    namespace: str, name: str, llm: str, prompt: str, rules: list[dict[str, Any]], replicas: int = 1, **spec: Any
) -> dict[str, Any]:
    budgets = spec.pop("budgets", FAST_FAILING)
    return agent(
        name, namespace, endpoint=llm, prompt=prompt, replicas=replicas, budgets=budgets, guardrails=rules, **spec
    )


LOOP_RULE = {"name": "stop-loops", "metric": "loopDetections", "threshold": "0", "action": "Suspend", "cooldown": "10m"}
ERROR_RULE = {"name": "errors", "metric": "errorRate", "threshold": "0.3", "for": "4s", "action": "Rollback"}


def contained(expected: Any, actual: Any) -> bool:
    """``expected`` is ``actual`` minus fields the API server defaulted."""
    if isinstance(expected, dict):
        return isinstance(actual, dict) and all(k in actual and contained(v, actual[k]) for k, v in expected.items())
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(expected) == len(actual)
            and all(contained(e, a) for e, a in zip(expected, actual, strict=True))
        )
    return bool(expected == actual)


def deployed(kube: Kube, namespace: str) -> int:
    """How many agents in ``namespace`` have a current revision."""
    return sum(
        1 for a in kube.get_json("agd", "-n", namespace)["items"] if (a.get("status") or {}).get("currentRevision")
    )


def events(kube: Kube, namespace: str, name: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = kube.get_json(
        "events", "-n", namespace, "--field-selector", f"involvedObject.name={name}"
    )["items"]
    return items


def test_looping_agent_is_suspended_with_its_reason_and_latency_is_printed(
    operator: OperatorProcess,
    kube: Kube,
    prometheus: Prometheus,
    namespace: str,
    fake_llm: str,
    dataplane: DataplaneProcess,
) -> None:
    ns = namespace
    kube.apply(
        [
            guarded(ns, "looper", fake_llm, "Triage tickets. [[sim:loop]]", [LOOP_RULE]),
            guarded(ns, "healthy", fake_llm, "Triage tickets.", [LOOP_RULE]),
        ]
    )
    rev = wait_reconciled(kube, ns, "looper")["currentRevision"]
    from kubernetes import client

    apps = client.AppsV1Api(kube.api_client())
    breach_q = f'sum by (namespace, agent, revision) (increase(agentfleet_loop_detections_total{{namespace="{ns}",agent="looper"}}[30s])) > 0'  # noqa: E501
    t_breach = t_action = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and t_action is None:
        if t_breach is None and prometheus.query(breach_q):
            t_breach = time.monotonic()
        if apps.read_namespaced_deployment("looper", ns, _request_timeout=5).spec.replicas == 0:
            t_action = time.monotonic()
        time.sleep(0.1)
    assert t_action is not None, "the looping agent was never suspended"
    st = status(kube, ns, "looper")
    suspended = condition(st, "Suspended")
    assert (suspended["status"], suspended["reason"]) == ("True", "loop_detected")
    assert "stop-loops" in suspended["message"] and "> 0" in suspended["message"] and rev in suspended["message"]
    assert st["phase"] == "Suspended"
    assert st["lastBreach"]["rule"] == "stop-loops" and st["lastBreach"]["action"] == "Suspend"
    assert any(e["reason"] == "loop_detected" and e["type"] == "Warning" for e in events(kube, ns, "looper"))
    latency = (t_action - t_breach) if t_breach is not None else float("nan")
    print(
        f"\nbreach visible in Prometheus -> replicas=0: {latency:.2f} s "
        f"(goal <= interval {EVALUATION_INTERVAL:.0f} s + scrape {SCRAPE_INTERVAL:.0f} s + 2 s)"
    )
    # The healthy neighbour with the same rule is left alone, and stays so.
    assert condition(status(kube, ns, "healthy"), "Suspended").get("status") == "False"
    audit_file = Path(next(a for a in operator.extra if a.startswith("--audit-file=")).split("=", 1)[1])

    def audited() -> list[tuple[str, str, str]]:
        lines = audit_file.read_text().splitlines() if audit_file.exists() else []
        return [(r["agent"], r["action"], r["reason"]) for r in map(json.loads, lines) if r.get("namespace") == ns]

    assert poll(audited, timeout=10, what="the audit record") == [("looper", "Suspend", "loop_detected")]

    # Resume with one annotation: replicas come back; the rule's cooldown keeps it from re-firing at once.
    kube.kubectl("annotate", "agd", "looper", "-n", ns, "agentfleet.dev/resume=now", "--overwrite")
    poll(
        lambda: apps.read_namespaced_deployment("looper", ns, _request_timeout=5).spec.replicas == 1,
        timeout=30,
        what="the resume to restore replicas",
    )
    assert condition(status(kube, ns, "looper"), "Suspended")["status"] == "False"
    assert any(e["reason"] == "Resumed" for e in events(kube, ns, "looper"))


def test_bad_prompt_rollout_is_rolled_back_to_the_exact_stable_revision(
    operator: OperatorProcess,
    kube: Kube,
    prometheus: Prometheus,
    namespace: str,
    fake_llm: str,
    dataplane: DataplaneProcess,
) -> None:
    ns = namespace
    analysis = {"stabilizationWindow": "6s"}
    kube.apply(guarded(ns, "support", fake_llm, "Answer politely.", [ERROR_RULE], analysis=analysis))
    good = wait_reconciled(kube, ns, "support")["currentRevision"]
    poll(
        lambda: status(kube, ns, "support").get("stableRevision") == good,
        timeout=60,
        what="the first revision to become stable",
    )
    kube.apply(guarded(ns, "support", fake_llm, "Answer tersely. [[sim:error]]", [ERROR_RULE], analysis=analysis))
    bad = poll(
        lambda: (r := status(kube, ns, "support").get("currentRevision")) != good and r,
        timeout=60,
        what="the bad revision to roll out",
    )
    st = poll(
        lambda: phase_is(kube, ns, "support", "RolledBack"),
        timeout=90,
        what="the automatic rollback",
    )
    rolled = condition(st, "RolledBack")
    assert rolled["status"] == "True" and rolled["reason"] == "error_rate_high"
    assert f"failed revision {bad}" in rolled["message"] and good in rolled["message"]
    assert st["currentRevision"] == good and st["stableRevision"] == good
    stored = kube.get_json("controllerrevision", f"support-{good}", "-n", ns)["data"]["template"]
    poll(
        lambda: (
            kube.get_json("deployment", "support", "-n", ns)["spec"]["template"]["metadata"]["labels"]
            == stored["metadata"]["labels"]
        ),
        timeout=30,
        what="the Deployment to run the stable template",
    )
    template = kube.get_json("deployment", "support", "-n", ns)["spec"]["template"]
    # Exactly the stored template: every field it sets is what runs (the API server only adds defaults).
    assert contained(stored, template), "the Deployment's pod template differs from the stable revision's"
    # A further spec change is a fresh attempt: RolledBack clears and the new revision runs.
    kube.apply(guarded(ns, "support", fake_llm, "Answer kindly.", [ERROR_RULE], analysis=analysis))
    st = poll(
        lambda: (
            (s := status(kube, ns, "support")).get("currentRevision") not in {good, bad, None}
            and condition(s, "RolledBack").get("status") == "False"
            and s
        ),
        timeout=60,
        what="a fresh attempt",
    )
    assert st["phase"] in {"Running", "Progressing"}


def test_expensive_agent_exceeds_its_budget_and_is_suspended(
    operator: OperatorProcess, kube: Kube, namespace: str, fake_llm: str, dataplane: DataplaneProcess
) -> None:
    ns = namespace
    body = guarded(
        ns,
        "spender",
        fake_llm,
        "Write essays. [[sim:expensive]]",
        [],
        budgets={"costPerDay": "0.50", "tokensPerHour": 100_000_000},
    )
    kube.apply(body)
    st = poll(
        lambda: phase_is(kube, ns, "spender", "Suspended"),
        timeout=120,
        what="the budget suspension",
    )
    assert condition(st, "BudgetExceeded")["status"] == "True"
    assert condition(st, "Suspended")["reason"] == "cost_per_day_exceeded"
    assert "budgets.costPerDay $0.50 per day (UTC)" in condition(st, "Suspended")["message"]
    assert kube.get_json("deployment", "spender", "-n", ns)["spec"]["replicas"] == 0


def _prometheus_pid() -> int:
    return int((Cluster().run_dir / "pids" / "prometheus.pid").read_text().split()[0])


def test_prometheus_down_holds_or_fails_closed_and_recovers(
    operator: OperatorProcess, kube: Kube, prometheus: Prometheus, namespace: str
) -> None:
    ns = namespace
    hold = agent("holder", ns)
    hold["spec"]["guardrails"] = [LOOP_RULE]
    closed = agent("closed", ns)
    closed["spec"]["guardrails"] = [LOOP_RULE]
    closed["spec"]["analysis"] = {"onMetricsUnavailable": "Suspend"}
    kube.apply([hold, closed])
    for name in ("holder", "closed"):
        wait_reconciled(kube, ns, name)
        poll(
            lambda n=name: condition(status(kube, ns, n), "MetricsAvailable").get("status") == "True",
            timeout=30,
            what="MetricsAvailable=True",
        )
    os.kill(_prometheus_pid(), signal.SIGTERM)
    try:
        st = poll(
            lambda: phase_is(kube, ns, "closed", "Suspended"),
            timeout=60,
            what="fail-closed suspension",
        )
        assert condition(st, "Suspended")["reason"] == "metrics_unavailable"
        held = poll(
            lambda: (
                (s := status(kube, ns, "holder")) and condition(s, "MetricsAvailable").get("status") == "False" and s
            ),
            timeout=30,
            what="MetricsAvailable=False",
        )
        assert held["phase"] == "Running" and condition(held, "Suspended")["status"] == "False"
        assert "queries failed" in condition(held, "MetricsAvailable")["message"]
        assert kube.get_json("deployment", "holder", "-n", ns)["spec"]["replicas"] == 2
    finally:
        Cluster().up(timeout=120)
    poll(
        lambda: condition(status(kube, ns, "holder"), "MetricsAvailable").get("status") == "True",
        timeout=60,
        what="MetricsAvailable to recover by itself",
    )
    assert status(kube, ns, "holder")["phase"] == "Running"


def test_operator_killed_mid_action_acts_once_and_converges(
    operator: OperatorProcess, kube: Kube, namespace: str, fake_llm: str, dataplane: DataplaneProcess
) -> None:
    ns = namespace
    kube.apply(guarded(ns, "crasher", fake_llm, "Loop. [[sim:loop]]", [LOOP_RULE], replicas=2))
    wait_reconciled(kube, ns, "crasher")
    try:
        # The evaluator writes Suspended to status first, then scales; kill it the moment status says so.
        recorded = poll(
            lambda: (s := status(kube, ns, "crasher")) and condition(s, "Suspended").get("status") == "True" and s,
            timeout=90,
            interval=0.05,
            what="the suspension to be recorded",
        )
        operator.stop(kill=True)
    finally:
        operator.start()
    poll(
        lambda: kube.get_json("deployment", "crasher", "-n", ns)["spec"]["replicas"] == 0,
        timeout=60,
        what="the suspension to take effect after the restart",
    )
    st = status(kube, ns, "crasher")
    assert st["phase"] == "Suspended" and condition(st, "Suspended")["reason"] == "loop_detected"
    # Let a few evaluation cycles pass after the restart: the decision must not be acted on again.
    cycles = operator.metric("agentfleet_operator_evaluation_cycle_seconds_count")
    poll(
        lambda: operator.metric("agentfleet_operator_evaluation_cycle_seconds_count") >= cycles + 3,
        timeout=60,
        what="three more evaluation cycles",
    )
    assert st["lastBreach"] == recorded["lastBreach"]  # the same action, not a second one
    acted = [e for e in events(kube, ns, "crasher") if e["reason"] == "loop_detected"]
    assert len(acted) <= 1, acted  # at most the one Event (killed before it was posted: none)


def test_two_hundred_agents_one_misbehaving_and_queries_stay_flat(
    operator: OperatorProcess,
    kube: Kube,
    prometheus: Prometheus,
    namespace: str,
    fake_llm: str,
    dataplane: DataplaneProcess,
) -> None:
    """Only the simulated namespace has traffic; the other agents have pods (on KWOK) and rules
    but no traffic, which must not count as a breach."""
    ns = namespace
    quiet_ns = f"{ns[:50]}-quiet"
    kube.kubectl("create", "namespace", quiet_ns)
    try:
        rules = [LOOP_RULE, ERROR_RULE]
        kube.apply([guarded(quiet_ns, f"quiet-{i}", fake_llm, "Be quiet.", rules) for i in range(19)])
        kube.apply(guarded(ns, "bad", fake_llm, "Loop. [[sim:loop]]", rules, analysis={"stabilizationWindow": "1h"}))

        def per_cycle() -> float:
            """Queries of a full cycle that started after everything was reconciled."""
            c0 = operator.metric("agentfleet_operator_evaluation_cycle_seconds_count")
            poll(
                lambda: operator.metric("agentfleet_operator_evaluation_cycle_seconds_count") >= c0 + 2,
                timeout=60,
                what="two evaluation cycles",
            )
            return operator.metric("agentfleet_operator_evaluation_cycle_queries")

        poll(lambda: deployed(kube, quiet_ns) == 19, timeout=120, what="19 quiet agents reconciled")
        at_20 = per_cycle()
        kube.apply([guarded(quiet_ns, f"quiet-{i}", fake_llm, "Be quiet.", rules) for i in range(19, 199)])
        poll(lambda: deployed(kube, quiet_ns) == 199, timeout=300, what="199 quiet agents reconciled")
        at_200 = per_cycle()
        print(f"\nPromQL queries per evaluation cycle: {at_20:.1f} at 20 agents, {at_200:.1f} at 200 agents")
        assert at_200 == at_20
        poll(lambda: status(kube, ns, "bad").get("phase") == "Suspended", timeout=90, what="the bad agent suspended")
        agents = kube.get_json("agd", "-n", quiet_ns)["items"]
        assert len(agents) == 199
        acted = [
            a["metadata"]["name"]
            for a in agents
            if (a.get("status") or {}).get("phase") != "Running" or (a.get("status") or {}).get("lastBreach")
        ]
        assert acted == []
    finally:
        kube.kubectl("delete", "namespace", quiet_ns, "--wait=false", check=False)
