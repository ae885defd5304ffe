"""The evaluator acts on real guards' metrics: Prometheus (Kubernetes discovery, the chart's scrape
job) scrapes the guards of real pods, and the operator's evaluator (``evaluator.prometheusURL``)
suspends an agent whose model loops and rolls back a revision whose calls fail. The pods really
stop, and really come back: after a resume, and on the stable revision after the rollback.

The agent image misbehaves on request: its task carries a ``[[fake:...]]`` directive that the fake
LLM obeys (``loop``: the same tool call every time; ``error``: HTTP 500).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.support import (
    NS,
    FakeLLM,
    Prometheus,
    RealNode,
    agent_pods,
    agent_spec,
    condition,
    plugin,
    poll,
    wait_pod_ready,
)

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.timeout(600)]


def agd(real_node: RealNode, name: str) -> dict[str, Any]:
    result: dict[str, Any] = real_node.kube.get_json("agentdeployment", name, "-n", NS)
    return result


def test_a_looping_agent_is_suspended_and_its_pod_stops_then_resumes(
    real_node: RealNode, operator_installed: dict[str, Any], fake_llm: FakeLLM, prometheus: Prometheus
) -> None:
    kube = real_node.kube
    kube.apply(
        agent_spec(
            "looper",
            real_node.images["agent"],
            fake_llm,
            env={"AGENT_TASK": "[[fake:loop]] Find the order.", "AGENT_INTERVAL_SECONDS": "1"},
            tools=["search"],
            guardrails=[
                {
                    "name": "stop-loops",
                    "metric": "loopDetections",
                    "threshold": "0",
                    "action": "Suspend",
                    "cooldown": "5m",
                }
            ],
        )
    )
    first = wait_pod_ready(kube, NS, "agentfleet.dev/agent=looper", timeout=180)["metadata"]["name"]
    # The guard ends the looping tasks, Prometheus sees it under the pod's own labels...
    poll(
        lambda: prometheus.query(f'agentfleet_loop_detections_total{{namespace="{NS}",agent="looper"}} > 0'),
        timeout=90,
        interval=1,
        what="loop detections of looper in Prometheus",
    )
    # ...and the evaluator suspends the agent: the condition, zero replicas, and no pod left.
    suspended = poll(
        lambda: (c := condition(agd(real_node, "looper"), "Suspended")).get("status") == "True" and c,
        timeout=60,
        interval=1,
        what="looper to be suspended",
    )
    assert suspended["reason"] == "loop_detected", suspended
    assert "stop-loops" in suspended["message"], suspended
    assert kube.get_json("deployment", "looper", "-n", NS)["spec"]["replicas"] == 0
    poll(lambda: not agent_pods(kube, "looper"), timeout=60, what="looper's pod to terminate")
    poll(
        lambda: kube.kubectl("get", "pod", first, "-n", NS, check=False).returncode != 0,
        timeout=60,
        what=f"pod {first} to be gone",
    )

    res = plugin("resume", "looper", "-n", NS)
    assert res.returncode == 0, res.stderr
    assert "was suspended: loop_detected" in res.stdout, res.stdout
    back = wait_pod_ready(kube, NS, "agentfleet.dev/agent=looper", timeout=120)
    assert back["metadata"]["name"] != first
    kube.kubectl("delete", "agentdeployment", "looper", "-n", NS, "--wait=false")


def test_a_failing_revision_is_rolled_back_to_the_stable_one(
    real_node: RealNode, operator_installed: dict[str, Any], fake_llm: FakeLLM, prometheus: Prometheus
) -> None:
    kube = real_node.kube
    rules = [{"name": "errors", "metric": "errorRate", "threshold": "0.3", "action": "Rollback", "cooldown": "5m"}]
    good = agent_spec(
        "roller",
        real_node.images["agent"],
        fake_llm,
        env={"AGENT_TASK": "Say hello.", "AGENT_INTERVAL_SECONDS": "1"},
        guardrails=rules,
        stabilization="6s",
    )
    kube.apply(good)
    stable_pod = wait_pod_ready(kube, NS, "agentfleet.dev/agent=roller", timeout=180)
    stable = poll(
        lambda: agd(real_node, "roller").get("status", {}).get("stableRevision"),
        timeout=90,
        interval=1,
        what="roller's first revision to become stable",
    )
    assert stable_pod["metadata"]["labels"]["agentfleet.dev/revision"] == stable

    bad = agent_spec(
        "roller",
        real_node.images["agent"],
        fake_llm,
        env={"AGENT_TASK": "[[fake:error]] Say hello.", "AGENT_INTERVAL_SECONDS": "1"},
        guardrails=rules,
        stabilization="6s",
    )
    kube.apply(bad)
    bad_revision = poll(
        lambda: (r := agd(real_node, "roller").get("status", {}).get("currentRevision")) != stable and r,
        timeout=60,
        what="the failing revision to roll out",
    )
    bad_pod = poll(
        lambda: next(
            (
                p["metadata"]["name"]
                for p in agent_pods(kube, "roller")
                if p["metadata"]["labels"]["agentfleet.dev/revision"] == bad_revision
            ),
            None,
        ),
        timeout=60,
        what="a pod of the failing revision",
    )
    rolled = poll(
        lambda: (c := condition(agd(real_node, "roller"), "RolledBack")).get("status") == "True" and c,
        timeout=90,
        interval=1,
        what="roller to be rolled back",
    )
    assert rolled["reason"] == "error_rate_high", rolled
    assert agd(real_node, "roller")["status"]["currentRevision"] == stable
    # The failing revision's pod is gone; a new pod of the stable revision runs.

    def stable_again() -> list[str]:
        pods = agent_pods(kube, "roller")
        revisions = {p["metadata"]["labels"]["agentfleet.dev/revision"] for p in pods}
        ready = [
            p["metadata"]["name"]
            for p in pods
            if any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))
        ]
        return ready if revisions == {stable} and ready else []

    (back,) = poll(stable_again, timeout=120, interval=1, what="only Ready pods of the stable revision")
    assert back not in {stable_pod["metadata"]["name"], bad_pod}
    poll(
        lambda: kube.kubectl("get", "pod", bad_pod, "-n", NS, check=False).returncode != 0,
        timeout=60,
        what=f"the failing revision's pod {bad_pod} to be gone",
    )
    kube.kubectl("delete", "agentdeployment", "roller", "-n", NS, "--wait=false")
