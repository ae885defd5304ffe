"""A real node for the session: ``hack/cluster up --real-node`` on a private port range and
network namespace, down at the end (or earlier, by the test that checks what down leaves).

On it, for every test of the tier (helpers in ``hack/harness/realnode.py``, shared with
``hack/demo``): a real Prometheus in namespace ``monitoring`` that finds the guards with
Kubernetes service discovery (the chart's own scrape job,
``charts/agentfleet/files/prometheus-scrape-config.yaml``), the chart's operator with its
evaluator pointed at that Prometheus, the fake LLM behind a Service, and ``greeter``, an agent
whose guard answers through the fake LLM.

Environment: AGENTFLEET_E2E_PORT_BASE (default 17400), AGENTFLEET_E2E_RUN_DIR (default
$AGENTFLEET_CACHE/e2e-run), AGENTFLEET_E2E_NETNS (default agentfleet-e2e-<port base>). Set
AGENTFLEET_KEEP_CLUSTER=1 to leave the cluster running after the session (for debugging:
``eval "$(AGENTFLEET_RUN_DIR=... AGENTFLEET_PORT_BASE=... AGENTFLEET_NETNS=... hack/cluster env)"``).

AGENTFLEET_E2E_KUBECONFIG=PATH runs the tier against an existing cluster instead (kind: ``hack/kind
up`` then ``hack/kind load``): no node is started or stopped, pod addresses are reached from a
client pod in ``monitoring``, and the two tests that need this project's own node
(``test_chaos_audit.py`` kills a container with ``hack/node ctr``; ``test_zz_down.py`` checks the
machine after the node is gone) are deselected (conftest.py).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hack.harness import realnode
from hack.harness.kube import Kube, poll
from hack.harness.realnode import (
    CACHE,
    HARDENED,
    MONITORING,
    SLEEPER,
    FakeLLM,
    Prometheus,
    RealCluster,
    idle_pod,
    wait_pod_ready,
)
from tests.e2e.machine import Snapshot, snapshot

__all__ = ["HARDENED", "MONITORING", "SLEEPER", "FakeLLM", "Prometheus", "poll", "wait_pod_ready"]

PORT_BASE = os.environ.get("AGENTFLEET_E2E_PORT_BASE", "17400")
RUN_DIR = Path(os.environ.get("AGENTFLEET_E2E_RUN_DIR", CACHE / "e2e-run"))
NETNS = os.environ.get("AGENTFLEET_E2E_NETNS", f"agentfleet-e2e-{PORT_BASE}")
EXISTING = os.environ.get("AGENTFLEET_E2E_KUBECONFIG", "")
"""An existing cluster's kubeconfig (kind): the tier runs there and brings up no node."""


@dataclass(kw_only=True)
class RealNode(RealCluster):
    """The session's cluster with a real node; kubectl and helm run inside its network namespace."""

    env: dict[str, str]
    before: Snapshot | None
    netns_inode: int = 0
    mntns_inode: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    is_down: bool = False

    def cluster(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return realnode.cluster_cmd(self.env, *args, timeout=timeout)

    def down(self) -> subprocess.CompletedProcess[str]:
        assert not EXISTING, "an existing cluster (AGENTFLEET_E2E_KUBECONFIG) is not ours to take down"
        res = realnode.down(self.env)
        self.is_down = True
        return res


_SESSION: list[RealNode] = []


def session_node() -> RealNode:
    assert _SESSION, "the real_node fixture is not set up"
    return _SESSION[0]


@pytest.fixture(scope="session")
def real_node() -> Iterator[RealNode]:
    if EXISTING:
        existing = RealCluster.existing(EXISTING)
        node = RealNode(kubeconfig=EXISTING, images=existing.images, env=dict(os.environ), before=None)
        _SESSION[:] = [node]
        yield node
        return
    env = realnode.node_env(RUN_DIR, PORT_BASE, NETNS)
    if realnode.node_running(RUN_DIR):  # a previous session that was killed: start clean
        realnode.down(env)
    before = snapshot()
    t0 = time.monotonic()
    up = realnode.up(env)
    print(up.stdout[-3000:], up.stderr[-3000:])
    if up.returncode != 0:
        realnode.down(env)
        pytest.fail(f"hack/cluster up --real-node failed:\n{up.stdout[-3000:]}\n{up.stderr[-3000:]}", pytrace=False)
    state = json.loads((RUN_DIR / "node" / "node.json").read_text())
    on_node = RealCluster.of_node(RUN_DIR)
    node = RealNode(
        kubeconfig=on_node.kubeconfig,
        images=on_node.images,
        run_dir=RUN_DIR,
        env=env,
        before=before,
        netns_inode=os.stat(f"/run/netns/{NETNS}").st_ino,
        mntns_inode=int(state["mntns"]),
        timings={"up": time.monotonic() - t0},
    )
    _SESSION[:] = [node]
    poll(
        lambda: node.kube.kubectl("get", "serviceaccount", "default", "-n", "default", check=False).returncode == 0,
        timeout=60,
        what="the default ServiceAccount",
    )
    yield node
    if not node.is_down and os.environ.get("AGENTFLEET_KEEP_CLUSTER") != "1":
        res = node.down()
        assert res.returncode == 0, f"hack/cluster down failed:\n{res.stdout}\n{res.stderr}"


# ----------------------------------------------------------------------------- inside containers

PROBE = r"""
import json, os
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
try:
    open("/probe-write", "w").close()
    root_read_only = False
except OSError as exc:
    root_read_only = exc.errno == 30
key_dir = "/var/run/agentfleet/upstream"
key_files = {}
if os.path.isdir(key_dir):
    for name in os.listdir(key_dir):
        if not name.startswith(".."):
            with open(os.path.join(key_dir, name)) as f:
                key_files[name] = f.read()
sa = "/var/run/secrets/kubernetes.io/serviceaccount"
sa_token = None
if os.path.exists(f"{sa}/token"):
    sa_token = {"namespace": open(f"{sa}/namespace").read(), "length": len(open(f"{sa}/token").read())}
print(json.dumps({
    "uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(),
    "cap_eff": status["CapEff"].strip(), "cap_prm": status["CapPrm"].strip(), "cap_bnd": status["CapBnd"].strip(),
    "no_new_privs": status["NoNewPrivs"].strip(), "seccomp": status["Seccomp"].strip(),
    "root_read_only": root_read_only, "env": dict(os.environ), "key_files": key_files,
    "sa_token": sa_token,
}))
"""


def probe(node: RealNode, pod: str, container: str, namespace: str) -> dict[str, Any]:
    """Facts about a running container, read by python3 inside it."""
    res = node.kube.kubectl("exec", pod, "-n", namespace, "-c", container, "--", "python3", "-c", PROBE)
    result: dict[str, Any] = json.loads(res.stdout)
    return result


def assert_hardened(facts: dict[str, Any], what: str) -> None:
    assert facts["uid"] == 65532 and facts["gid"] == 65532, f"{what}: {facts['uid']}:{facts['gid']}"
    assert int(facts["cap_eff"], 16) == 0, f"{what}: effective capabilities {facts['cap_eff']}"
    assert int(facts["cap_prm"], 16) == 0, f"{what}: permitted capabilities {facts['cap_prm']}"
    assert int(facts["cap_bnd"], 16) == 0, f"{what}: bounding set {facts['cap_bnd']} (capabilities not dropped)"
    assert facts["no_new_privs"] == "1", f"{what}: allowPrivilegeEscalation is not false"
    assert facts["seccomp"] == "2", f"{what}: seccomp mode {facts['seccomp']} (RuntimeDefault is a filter, 2)"
    assert facts["root_read_only"], f"{what}: the root filesystem is writable"


# ----------------------------------------------------------------------------- the fleet on the node

RELEASE, RELEASE_NS = "af", "agentfleet-system"
NS = "e2e-agents"
if EXISTING:  # where the `kubernetes` Service leads on that cluster
    NODE_IP, API_PORT = realnode.api_endpoint(RealCluster(kubeconfig=EXISTING, images={}))
else:
    NODE_IP, API_PORT = realnode.NODE_IP, int(PORT_BASE) + 2
"""The API server's address after kube-proxy's DNAT (hack/node's node IP and the API port)."""
API_KEY = "sk-e2e-upstream-key-only-the-guard-may-see"
FAKE_TEXT = "Hello from the fake LLM. Everything is fine."
"""The fake LLM's default answer (hack/harness/fake_llm.py, DEFAULT_TEXT)."""


def netns_python(code: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run Python code where pod and Service IPs route (the node's network namespace), from the
    host; the test process itself stays outside."""
    return session_node().python(code, *args, timeout=timeout)


def netns_get(url: str, timeout: float = 5) -> str:
    """GET ``url`` from inside the node's network namespace; the body (AssertionError if it fails)."""
    return session_node().get(url, timeout)


def plugin(*args: str, input_text: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``kubectl agentfleet ARGS`` (the installed plugin), run in the node's network namespace
    where the API server listens."""
    return session_node().plugin(*args, input_text=input_text, timeout=timeout)


@pytest.fixture(scope="session")
def prometheus(real_node: RealNode) -> Prometheus:
    """Prometheus as a pod in ``monitoring``, with the RBAC Kubernetes discovery needs (list and
    watch pods), so the guards' NetworkPolicies admit its scrapes the way they would in a cluster."""
    t0 = time.monotonic()
    prom = realnode.start_prometheus(real_node)
    real_node.timings["Prometheus pod Ready"] = time.monotonic() - t0
    return prom


@pytest.fixture(scope="session")
def operator_installed(real_node: RealNode, prometheus: Prometheus) -> dict[str, Any]:
    """The chart, with the local image and the evaluator on the e2e Prometheus; the operator Ready."""
    t0 = time.monotonic()
    realnode.install_chart(
        real_node,
        RELEASE,
        RELEASE_NS,
        prometheus.url,
        "--set=operator.workers=4",
        "--set=operator.apiConcurrency=8",
        f"--set=operator.watchNamespaces={{{NS}}}",
        "--set=evaluator.interval=2",
        "--set=evaluator.rateWindow=30s",
    )
    pod = realnode.wait_operator(real_node, RELEASE_NS)
    real_node.timings["chart install to operator Ready"] = time.monotonic() - t0
    return pod


start_fake_llm = realnode.start_fake_llm


@pytest.fixture(scope="session")
def agents_namespace(real_node: RealNode) -> str:
    """The agents' namespace, with the policy every e2e agent runs under and the LLM key."""
    kube = real_node.kube
    kube.kubectl("create", "namespace", NS)
    kube.apply(
        [
            {
                "apiVersion": "agentfleet.dev/v1alpha1",
                "kind": "AgentPolicy",
                "metadata": {"name": "e2e-agents"},
                "spec": {
                    "namespaces": [NS],
                    "allowedSecrets": ["llm-key"],
                    "allowedEgress": ["10.244.0.0/16", f"{NODE_IP}/32"],
                    "allowedEndpoints": [{"cidr": "10.96.0.0/16", "ports": [8900]}],
                    "allowedKubernetesRules": [
                        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}
                    ],
                },
            },
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "llm-key", "namespace": NS},
                "data": {"api-key": base64.b64encode(API_KEY.encode()).decode()},
            },
        ]
    )
    return NS


@pytest.fixture(scope="session")
def fake_llm(real_node: RealNode, agents_namespace: str) -> FakeLLM:
    """The fake LLM as a pod behind a Service, in the agents' namespace."""
    return start_fake_llm(real_node, "fake-llm", agents_namespace)


def agent_spec(
    name: str,
    image: str,
    llm: FakeLLM,
    *,
    env: dict[str, str] | None = None,
    tools: list[str] | None = None,
    guardrails: list[dict[str, Any]] | None = None,
    kubernetes: list[dict[str, Any]] | None = None,
    egress: list[dict[str, Any]] | None = None,
    stabilization: str = "5m",
) -> dict[str, Any]:
    """An AgentDeployment of the agent image whose model (and tools) are the fake LLM."""
    spec: dict[str, Any] = {
        "replicas": 1,
        "agent": {
            "image": image,
            "model": {
                # No cluster DNS on this node: the Service by its ClusterIP.
                "name": "gpt-4o-mini",
                "endpoint": llm.endpoint,
                "apiKeySecretRef": {"name": "llm-key"},
            },
            "systemPrompt": {"inline": "You are a test agent."},
            "env": [{"name": k, "value": v} for k, v in {"AGENT_INTERVAL_SECONDS": "3600", **(env or {})}.items()],
        },
        "budgets": {"tokensPerHour": 10_000_000, "costPerDay": "100"},
        "permissions": {
            # A NetworkPolicy sees the packet after kube-proxy's DNAT: the egress rule the
            # operator renders for the endpoint (the ClusterIP) alone does not let it through;
            # the Service's pod network does.
            "egress": [{"cidr": "10.244.0.0/16", "ports": [llm.port]}, *(egress or [])],
            "secrets": ["llm-key"],
        },
        "analysis": {"stabilizationWindow": stabilization},
    }
    if tools:
        spec["agent"]["tools"] = [
            {"name": t, "endpoint": f"http://{llm.cluster_ip}:{llm.port}/tools/{t}"} for t in tools
        ]
        spec["agent"]["env"].append({"name": "AGENT_TOOLS", "value": ",".join(tools)})
        spec["permissions"]["tools"] = tools
    if guardrails:
        spec["guardrails"] = guardrails
    if kubernetes:
        spec["permissions"]["kubernetes"] = kubernetes
    return {
        "apiVersion": "agentfleet.dev/v1alpha1",
        "kind": "AgentDeployment",
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
    }


@pytest.fixture(scope="session")
def greeter(real_node: RealNode, operator_installed: dict[str, Any], fake_llm: FakeLLM) -> dict[str, Any]:
    """An agent that only answers when asked (``kubectl exec ... agent.py ask``); its Ready pod."""
    t0 = time.monotonic()
    real_node.kube.apply(agent_spec("greeter", real_node.images["agent"], fake_llm))
    pod = wait_pod_ready(real_node.kube, NS, "agentfleet.dev/agent=greeter", timeout=180)
    real_node.timings["AgentDeployment to agent pod Ready"] = time.monotonic() - t0
    return pod


def probe_pod(real_node: RealNode, name: str, namespace: str) -> dict[str, Any]:
    """An idle pod with python3 (the agent image) from which connections are tried."""
    real_node.ensure_namespace(namespace)
    real_node.kube.apply(idle_pod(name, namespace, real_node.images["agent"]))
    return wait_pod_ready(real_node.kube, namespace, f"app={name}", timeout=120)


CONNECT = """
import socket, sys
s = socket.socket()
s.settimeout(float(sys.argv[3]))
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    print("connected")
except socket.timeout:
    print("timeout")
except ConnectionRefusedError:
    print("refused")
except OSError as exc:
    print(f"error {exc.errno}")
"""


def connect_from(
    real_node: RealNode, pod: str, namespace: str, container: str, host: str, port: int, timeout: float = 2
) -> str:
    """What a TCP connect from inside a pod's container gets: connected, refused, timeout, error N."""
    res = real_node.kube.kubectl(
        "exec", pod, "-n", namespace, "-c", container, "--", "python3", "-c", CONNECT, host, str(port), str(timeout)
    )
    return res.stdout.strip()


def agent_pods(kube: Kube, name: str) -> list[dict[str, Any]]:
    """The agent's pods that are not being deleted."""
    pods = kube.get_json("pods", "-n", NS, "-l", f"agentfleet.dev/agent={name}")["items"]
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == type_), {})
