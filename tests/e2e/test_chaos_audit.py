"""A real guard killed under load, then its whole pod deleted under load; and its audit trail read
with ``kubectl agentfleet audit`` from the real container logs.

The agent (``worker``) runs ``AGENT_MAX_TASKS`` tasks back to back against a fake LLM of its own,
so every count can be compared once the agent is done: what the fake LLM served, what the agent
got, what the guard audited and what its metrics say.

- Guard container SIGKILLed (a crash): the agent's calls fail cleanly (``error`` outcomes, the agent
  container never restarts) and recover once the kubelet restarted the guard; the restarted guard
  goes on with the chain of its audit file, so its new log starts mid-chain: alone it is BROKEN,
  vouched for by an anchor (``GET :9090/audit/head``) it is OK, and ``audit NAME`` (the previous
  run's log first) verifies it from seq 0. Nothing is counted twice: the guard never records more
  upstream attempts than the fake LLM served, nor more answers than the agent got; the one call in
  flight at the kill is the only one that may be served and not recorded.
- Pod deleted (graceful): the old pod finishes its call in flight and its guard drains; its logs
  are followed to the end (as a log pipeline would); with the new pod's, the counts match exactly.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from agentfleet.render.guard import AUDIT_FILE
from hack.harness.kube import HACK, Kube
from tests.e2e.support import (
    NS,
    FakeLLM,
    RealNode,
    agent_pods,
    agent_spec,
    netns_get,
    plugin,
    poll,
    start_fake_llm,
    wait_pod_ready,
)

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.timeout(600)]

TASKS = 40
CHAT = "/v1/chat/completions"


def lines(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            out.append(value)
    return out


def agent_results(text: str) -> list[dict[str, Any]]:
    return [r for r in lines(text) if "outcome" in r and "hash" not in r]


def llm_records(text: str) -> list[dict[str, Any]]:
    return [r for r in lines(text) if r.get("kind") == "llm_call" and "hash" in r]


def attempts(records: list[dict[str, Any]]) -> int:
    return sum(int(r.get("attempts") or 0) for r in records)


def answered(records: list[dict[str, Any]]) -> int:
    return sum(1 for r in records if r.get("decision") == "allow")


def container_status(pod: dict[str, Any], name: str) -> dict[str, Any]:
    statuses = pod["status"].get("initContainerStatuses", []) + pod["status"].get("containerStatuses", [])
    return next(s for s in statuses if s["name"] == name)


def served(llm: FakeLLM) -> int:
    return int(llm.stats()["by_path"].get(CHAT, 0))


def test_guard_and_pod_killed_under_load_fail_cleanly_recover_and_count_once(
    real_node: RealNode, operator_installed: dict[str, Any], agents_namespace: str
) -> None:
    kube = real_node.kube
    llm = start_fake_llm(real_node, "fake-llm-load", NS)
    kube.apply(
        agent_spec(
            "worker",
            real_node.images["agent"],
            llm,
            env={"AGENT_TASK": "Say hello.", "AGENT_INTERVAL_SECONDS": "0.2", "AGENT_MAX_TASKS": str(TASKS)},
        )
    )
    pod = wait_pod_ready(kube, NS, "agentfleet.dev/agent=worker", timeout=180)
    name, ip = pod["metadata"]["name"], pod["status"]["podIP"]

    def agent_log(pod_name: str) -> list[dict[str, Any]]:
        """The agent's results so far (none while its container has not started)."""
        res = kube.kubectl("logs", pod_name, "-n", NS, "-c", "agent", check=False)
        return agent_results(res.stdout) if res.returncode == 0 else []

    # ------------------------------------------------------------------ the guard crashes
    poll(lambda: len(agent_log(name)) >= 8, timeout=60, what="the worker's first tasks")
    guard_id = container_status(pod, "guard")["containerID"].removeprefix("containerd://")
    killed = subprocess.run(
        [str(HACK / "node"), "ctr", "tasks", "kill", "--signal", "SIGKILL", guard_id],
        env=real_node.env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert killed.returncode == 0, killed.stderr

    def restarted() -> dict[str, Any] | None:
        current = kube.get_json("pod", name, "-n", NS)
        st = container_status(current, "guard")
        return current if st["restartCount"] == 1 and st.get("ready") else None

    pod = poll(restarted, timeout=90, interval=0.5, what="the kubelet to restart the guard")
    done = poll(
        lambda: (rs := agent_log(name)) and rs[-1]["outcome"] == "done" and rs,
        timeout=120,
        interval=1,
        what=f"the worker to finish its {TASKS} tasks",
    )
    results = done[:-1]
    assert len(results) == TASKS
    assert container_status(pod, "agent")["restartCount"] == 0, "the agent crashed with its guard"
    outcomes = [r["outcome"] for r in results]
    assert set(outcomes) <= {"answered", "error"}, outcomes
    assert "error" in outcomes, "no call failed while the guard was down"
    last_error = max(i for i, o in enumerate(outcomes) if o == "error")
    assert "answered" in outcomes[last_error:], "the agent never got an answer again"
    assert all("Connection" in r["error"] or "connect" in r["error"] for r in results if r["outcome"] == "error")

    # Counts: the whole trail of both guard runs is in the audit file (an emptyDir).
    trail = kube.kubectl("exec", name, "-n", NS, "-c", "guard", "--", "cat", AUDIT_FILE).stdout
    records = llm_records(trail)
    agent_answers = outcomes.count("answered")
    upstream = served(llm)
    assert attempts(records) <= upstream <= attempts(records) + 1, (attempts(records), upstream)
    assert answered(records) <= agent_answers <= answered(records) + (upstream - attempts(records))
    assert agent_answers <= upstream
    # The restarted guard's metrics count exactly what it audited (its run's records).
    current_log = kube.kubectl("logs", name, "-n", NS, "-c", "guard").stdout
    since_restart = llm_records(current_log)
    metrics = netns_get(f"http://{ip}:9090/metrics")
    counted = sum(
        float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith("agentfleet_requests_total{")
    )
    assert counted == len(since_restart) > 0, (counted, len(since_restart))

    # ------------------------------------------------------------------ the audit trail
    report = plugin("audit", "worker", "-n", NS, "-o", "json")
    assert report.returncode == 0, report.stderr
    (source,) = json.loads(report.stdout)["sources"]
    assert source["ok"] and "seq 0.." in source["message"], source
    assert source["records"] == len(lines(trail)), (source["records"], len(lines(trail)))
    # The current run's log alone starts mid-chain: broken without an anchor...
    alone = plugin("audit", "worker", "-n", NS, "--file", "-", input_text=current_log)
    assert alone.returncode == 1 and "starts at seq" in alone.stderr, alone.stderr
    # ...and vouched for by the head the guard publishes on its metrics port.
    head = json.loads(netns_get(f"http://{ip}:9090/audit/head"))
    assert head["agent"] == "worker" and head["namespace"] == NS
    anchored = plugin(
        "audit", "worker", "-n", NS, "--file", "-", "--anchor", head["anchor"], "-o", "json", input_text=current_log
    )
    assert anchored.returncode == 0, anchored.stderr
    (vouched,) = json.loads(anchored.stdout)["sources"]
    assert "vouched for by the anchor" in vouched["message"], vouched
    one_pod = plugin("audit", "worker", "-n", NS, "--pod", name, "--anchor", head["anchor"])
    assert one_pod.returncode == 0, one_pod.stderr

    # ------------------------------------------------------------------ the pod is deleted under load
    before = served(llm)
    kube.kubectl("delete", "pod", name, "-n", NS, "--wait=false")
    second = poll(
        lambda: next((p for p in agent_pods(kube, "worker") if p["metadata"]["name"] != name), None),
        timeout=60,
        what="the replacement pod",
    )["metadata"]["name"]
    poll(lambda: ready(kube, second), timeout=120, interval=0.5, what=f"pod {second} to be Ready")
    follow = {
        c: subprocess.Popen(
            [kube.kubectl_bin, f"--kubeconfig={kube.kubeconfig}", "logs", "-f", second, "-n", NS, "-c", c],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for c in ("agent", "guard")
    }
    poll(lambda: len(agent_log(second)) >= 5, timeout=60, what="the second pod's first tasks")
    kube.kubectl("delete", "pod", second, "-n", NS, "--wait=false")
    followed = {c: p.communicate(timeout=120)[0] for c, p in follow.items()}
    second_results = agent_results(followed["agent"])
    assert 5 <= len(second_results) < TASKS, "the pod was not deleted under load"
    assert {r["outcome"] for r in second_results} == {"answered"}, second_results
    second_records = llm_records(followed["guard"])

    third = poll(
        lambda: next((p for p in agent_pods(kube, "worker") if p["metadata"]["name"] not in {name, second}), None),
        timeout=60,
        what="the third pod",
    )["metadata"]["name"]
    third_done = poll(
        lambda: (rs := agent_log(third)) and rs[-1]["outcome"] == "done" and rs,
        timeout=120,
        interval=1,
        what="the third pod's worker to finish",
    )[:-1]
    assert {r["outcome"] for r in third_done} == {"answered"}
    third_records = llm_records(kube.kubectl("logs", third, "-n", NS, "-c", "guard").stdout)
    # A graceful stop loses nothing: served = audited attempts, answers = audited answers.
    assert served(llm) - before == attempts(second_records) + attempts(third_records)
    assert len(second_results) + len(third_done) == answered(second_records) + answered(third_records)
    kube.kubectl("delete", "agentdeployment", "worker", "-n", NS, "--wait=false")


def ready(kube: Kube, pod: str) -> bool:
    conditions = kube.get_json("pod", pod, "-n", NS)["status"].get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
