"""The test/demo data plane: real guard processes for KWOK pods, scraped by the real Prometheus.

The simulator runs as a process (``python -m hack.harness.dataplane``) against the real
control plane, with the operator running as a process; the fake LLM runs as a process too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hack.harness.agents import BIG_BUDGETS, agent, objects_of, wait_reconciled
from hack.harness.dataplane.agent import HEALTHY, behaviour_from_prompt, directive
from hack.harness.dataplane.simulator import local_config, runnable_pod, target_document
from hack.harness.kube import Kube, Prometheus, poll
from hack.harness.processes import DataplaneProcess, OperatorProcess, alive, descendants


def _is_guard(pid: int) -> bool:
    """A live guard: forked from the fork server, or (``--launcher exec``) ``agentfleet guard``."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return False
    return (b"agentfleet guard" in cmdline or b"dataplane/zygote.py" in cmdline) and alive(pid)


def query(prometheus: Prometheus, promql: str) -> dict[tuple[str, ...], float]:
    """Instant vector as {(namespace, agent, revision): value}."""
    return {
        (r["metric"].get("namespace", ""), r["metric"].get("agent", ""), r["metric"].get("revision", "")): float(
            r["value"][1]
        )
        for r in prometheus.query(promql)
    }


def spec_for(namespace: str, name: str, endpoint: str, prompt: str, replicas: int) -> dict[str, Any]:
    return agent(name, namespace, endpoint=endpoint, prompt=prompt, replicas=replicas, budgets=BIG_BUDGETS)


# ----------------------------------------------------------------------------- integration


@pytest.mark.integration
def test_guards_follow_pods_and_prometheus_sees_them(
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
            spec_for(ns, "worker", fake_llm, "You are helpful.", 2),
            spec_for(ns, "looper", fake_llm, "You are helpful. [[sim:loop]]", 1),
        ]
    )
    rev = wait_reconciled(kube, ns, "worker")["currentRevision"]
    loop_rev = wait_reconciled(kube, ns, "looper")["currentRevision"]

    # One real guard per Running pod, each registered with Prometheus under the pod's labels.
    workers = poll(lambda: dataplane.running("worker", 2, rev), timeout=60, what="2 worker guards")
    poll(lambda: dataplane.running("looper", 1, loop_rev), timeout=60, what="1 looper guard")
    listed = objects_of(kube, "pods", ns, "worker")
    pods = {p["metadata"]["name"] for p in listed}
    assert {k.split("/", 1)[1] for k in workers} == pods
    for key, pod in workers.items():
        assert _is_guard(pod["guard_pid"]), key
        assert pod["behaviour"] == HEALTHY
        doc = json.loads(Path(pod["target"]).read_text())
        assert doc[0]["labels"] | {"__dataplane_pid": "x"} == {
            "namespace": ns,
            "agent": "worker",
            "revision": rev,
            "pod": key.split("/", 1)[1],
            "__dataplane_pid": "x",
        }
        assert doc[0]["targets"] == [pod["guard_url"].removeprefix("http://")]
    assert len(dataplane.targets()) == 3

    # The evaluator's query shape returns the right (namespace, agent, revision) groups.
    by_agent = f'sum by (namespace, agent, revision) (agentfleet_requests_total{{namespace="{ns}",outcome="ok"}})'
    poll(
        lambda: query(prometheus, by_agent).get((ns, "worker", rev), 0) > 0,
        timeout=60,
        what="Prometheus to see the worker's successful requests",
    )
    poll(
        lambda: (
            query(prometheus, f'count by (namespace, agent, revision) (up{{namespace="{ns}"}} == 1)')
            == {(ns, "worker", rev): 2.0, (ns, "looper", loop_rev): 1.0}
        ),
        timeout=30,
        what="3 healthy scrape targets",
    )
    rate = f'sum by (namespace, agent, revision) (rate(agentfleet_requests_total{{namespace="{ns}"}}[1m]))'
    poll(lambda: query(prometheus, rate).get((ns, "worker", rev), 0) > 0, timeout=30, what="a request rate")

    # The behaviour comes from the system prompt: the looping agent trips loop detection.
    loops = f'sum by (namespace, agent, revision) (agentfleet_loop_detections_total{{namespace="{ns}"}})'
    seen = poll(
        lambda: (v := query(prometheus, loops)).get((ns, "looper", loop_rev), 0) > 0 and v,
        timeout=60,
        what="loop detections for the looping agent",
    )
    assert seen.get((ns, "worker", rev)) == 0.0
    assert all(o == "completed" for p in dataplane.pods("worker").values() for o in p["stats"]["outcomes"])

    # A bad prompt rollout: new revision, new guards, errors under the new revision's labels.
    kube.apply(spec_for(ns, "worker", fake_llm, "You are terse. [[sim:error]]", 2))
    new_rev = poll(
        lambda: (r := wait_reconciled(kube, ns, "worker")["currentRevision"]) != rev and r,
        timeout=60,
        what="a new revision",
    )
    errs = poll(lambda: dataplane.running("worker", 2, new_rev), timeout=60, what="guards of the new revision")
    assert all(p["behaviour"] == "error" for p in errs.values())
    errors = f'sum by (namespace, agent, revision) (agentfleet_requests_total{{namespace="{ns}",outcome="error"}})'
    poll(
        lambda: query(prometheus, errors).get((ns, "worker", new_rev), 0) > 0,
        timeout=60,
        what="upstream errors under the new revision",
    )
    poll(
        lambda: (ns, "worker", rev) not in query(prometheus, f'up{{namespace="{ns}"}}'),
        timeout=30,
        what="the old revision's targets to disappear from Prometheus",
    )

    # Scaled to zero: processes stop, targets go; the other agent is untouched.
    stopped = [p["guard_pid"] for p in errs.values()]
    kube.kubectl("patch", "agd", "worker", "-n", ns, "--type=merge", "-p", '{"spec": {"suspended": true}}')
    poll(lambda: not dataplane.pods("worker"), timeout=60, what="worker pods to stop being simulated")
    poll(lambda: not any(_is_guard(p) for p in stopped), timeout=30, what="worker guards to exit")
    assert [t.name.split("__", 1)[1].split("-", 1)[0] for t in dataplane.targets()] == ["looper"]
    assert dataplane.running("looper", 1, loop_rev)
    poll(
        lambda: set(query(prometheus, f'up{{namespace="{ns}"}}')) == {(ns, "looper", loop_rev)},
        timeout=30,
        what="only the looper to be scraped",
    )


@pytest.mark.integration
def test_remote_endpoints_go_to_the_started_fake_llm(
    operator: OperatorProcess, kube: Kube, prometheus: Prometheus, namespace: str, tmp_path: Path
) -> None:
    """``--start-llm``: a non-loopback model endpoint is replaced by the simulator's own fake LLM,
    and SIGTERM stops the fake as well as the guards."""
    ns = namespace
    kube.apply(spec_for(ns, "remote", "https://api.openai.com/v1", "You are helpful. [[sim:expensive]]", 1))
    rev = wait_reconciled(kube, ns, "remote")["currentRevision"]
    dp = DataplaneProcess.start(
        kube.kubeconfig, prometheus.targets_dir, tmp_path / "dp", [ns], "--start-llm", "--launcher", "exec"
    )
    try:
        pods = poll(lambda: dp.running("remote", 1, rev), timeout=90, what="the remote agent's guard")
        [key] = pods
        assert b"agentfleet guard --config" in Path(f"/proc/{pods[key]['guard_pid']}/cmdline").read_bytes().replace(
            b"\0", b" "
        )
        config = json.loads((dp.work_dir / key / "guard.json").read_text())
        llm = dp.state()["llm_url"]
        assert llm.startswith("http://127.0.0.1:") and config["model"]["endpoint"] == llm
        assert config["listenHost"] == "127.0.0.1"
        assert config["apiKeyFile"] == str(dp.work_dir / key / "api-key")
        assert (dp.work_dir / key / "api-key").read_text().strip() == f"sim-{ns}-remote"
        tokens = f'sum by (namespace, agent, revision) (agentfleet_tokens_total{{namespace="{ns}",kind="output"}})'
        poll(
            lambda: query(prometheus, tokens).get((ns, "remote", rev), 0) >= 200_000,
            timeout=60,
            what="the expensive agent's output tokens in Prometheus",
        )
        children = descendants(dp.proc.pid)
        assert len(children) == 2  # the guard and the fake LLM
    finally:
        dp.stop()  # raises if anything is left behind
    assert not [p for p in children if alive(p)]
    assert dp.state().get("stopped") is True


# ----------------------------------------------------------------------------- pure parts


@pytest.mark.unit
def test_behaviour_marker() -> None:
    assert behaviour_from_prompt(None) == HEALTHY
    assert behaviour_from_prompt("Be nice.") == HEALTHY
    assert behaviour_from_prompt("Be nice. [[sim:looping]]") == "loop"
    assert behaviour_from_prompt("[[sim:rate_limit]] hi") == "rate_limit"
    with pytest.raises(ValueError, match="unknown simulated behaviour"):
        behaviour_from_prompt("[[sim:lopo]]")
    assert directive(HEALTHY, 1, ["search"]) is not None  # healthy answers after the tool result
    assert directive("loop", 1, ["search"]) is None  # a loop keeps the same directive
    assert directive("error", 0, []) == "[[fake:error]]"


def _pod(**over: Any) -> dict[str, Any]:
    pod: dict[str, Any] = {
        "metadata": {
            "namespace": "ns",
            "name": "a-1",
            "uid": "u1",
            "labels": {"agentfleet.dev/agent": "a", "agentfleet.dev/revision": "r1"},
        },
        "spec": {
            "containers": [{"name": "agent", "env": [{"name": "AGENTFLEET_SYSTEM_PROMPT", "value": "p [[sim:slow]]"}]}],
            "volumes": [{"name": "guard-config", "configMap": {"name": "a-guard-r1"}}],
        },
        "status": {"phase": "Running"},
    }
    for k, v in over.items():
        pod[k] = {**pod[k], **v}
    return pod


@pytest.mark.unit
def test_runnable_pod() -> None:
    info = runnable_pod(_pod())
    assert info is not None
    assert (info.key, info.agent, info.revision, info.config_map, info.prompt) == (
        "ns/a-1",
        "a",
        "r1",
        "a-guard-r1",
        "p [[sim:slow]]",
    )
    assert runnable_pod(_pod(status={"phase": "Pending"})) is None
    assert runnable_pod(_pod(metadata={"deletionTimestamp": "2026-01-01T00:00:00Z"})) is None
    ref = _pod(
        spec={
            "containers": [
                {
                    "name": "agent",
                    "env": [
                        {
                            "name": "AGENTFLEET_SYSTEM_PROMPT",
                            "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k"}},
                        }
                    ],
                }
            ]
        }
    )
    assert runnable_pod(ref).prompt_ref == ("cm", "k")  # type: ignore[union-attr]
    doc = target_document(4000, info)
    assert doc[0]["targets"] == ["127.0.0.1:4000"]
    assert {k: v for k, v in doc[0]["labels"].items() if not k.startswith("__")} == {
        "namespace": "ns",
        "agent": "a",
        "revision": "r1",
        "pod": "a-1",
    }


@pytest.mark.unit
def test_local_config_stays_on_loopback(tmp_path: Path) -> None:
    base = {
        "namespace": "ns",
        "agent": "a",
        "revision": "r1",
        "listenHost": "0.0.0.0",
        "listenPort": 4000,
        "model": {"name": "m", "endpoint": "https://api.example.com/v1"},
        "tools": [
            {"name": "web", "endpoint": "https://tools.example.com/web"},
            {"name": "calc", "endpoint": "http://127.0.0.1:9/calc"},
        ],
        "audit": {"stdout": True, "file": "/var/log/agentfleet/audit.jsonl"},
    }
    cfg = local_config(
        base, llm_url="http://127.0.0.1:8900/v1", api_key_file=tmp_path / "k", audit_file=tmp_path / "audit.jsonl"
    )
    assert cfg.model.endpoint == "http://127.0.0.1:8900/v1"
    assert cfg.listen_host == "127.0.0.1"
    assert [t.endpoint for t in cfg.tools] == ["http://127.0.0.1:8900/tools/web", "http://127.0.0.1:9/calc"]
    assert cfg.audit.stdout is False and cfg.audit.file == str(tmp_path / "audit.jsonl")
    assert cfg.api_key_file == str(tmp_path / "k")
    assert cfg.peer is None
    auth = {"issuer": "https://kubernetes.default.svc", "jwks": '{"keys": []}', "audience": "agentfleet.dev/agent/ns/a"}
    peer = {"host": "0.0.0.0", "port": 9443, "agentUrl": "http://127.0.0.1:8000", "auth": auth}
    called = local_config(
        {**base, "peer": peer},
        llm_url="http://127.0.0.1:8900/v1",
        api_key_file=tmp_path / "k",
        audit_file=tmp_path / "a",
    )
    assert called.peer is not None and (called.peer.host, called.peer.port) == ("127.0.0.1", 0)
    loopback = {**base, "model": {"name": "m", "endpoint": "http://localhost:1234/v1"}}
    kept = local_config(
        loopback, llm_url="http://127.0.0.1:8900/v1", api_key_file=tmp_path / "k", audit_file=tmp_path / "a"
    )
    assert kept.model.endpoint == "http://localhost:1234/v1"
    with pytest.raises(ValueError, match="not on loopback"):
        local_config(base, llm_url=None, api_key_file=tmp_path / "k", audit_file=tmp_path / "a")
