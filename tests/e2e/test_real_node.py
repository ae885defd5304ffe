"""The operator, the guard and an agent in real containers on a real node (hack/node).

One session node (tests/e2e/conftest.py): the chart is installed with the locally built project
image; the operator must become Ready as uid 65532 and reconcile an AgentDeployment into a real
pod whose agent (hack/images/agent.py, official openai SDK) asks its guard on localhost and gets
the fake LLM's answer, the fake LLM running as a pod behind a Service. Hardening is read from
inside the running containers. The last test takes the node down and compares the machine with
the snapshot taken before it came up.

Written against the guard as it is now: it serves the OpenAI API and /metrics on one port
(4000), bound to 0.0.0.0. The agent only ever uses 127.0.0.1:4000, so binding the API to
loopback does not change these tests; the probes the operator renders use that port too.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
from typing import Any

import pytest

from hack.harness.kube import ROOT
from tests.e2e.conftest import NETNS, RUN_DIR, RealNode, wait_pod_ready
from tests.e2e.machine import processes_matching, snapshot

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.timeout(900)]

RELEASE, RELEASE_NS = "af", "agentfleet-system"
NS = "e2e-agents"
API_KEY = "sk-e2e-upstream-key-only-the-guard-may-see"
FAKE_TEXT = "Hello from the fake LLM. Everything is fine."
"""The fake LLM's default answer (hack/harness/fake_llm.py, DEFAULT_TEXT)."""

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
print(json.dumps({
    "uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(),
    "cap_eff": status["CapEff"].strip(), "cap_prm": status["CapPrm"].strip(), "cap_bnd": status["CapBnd"].strip(),
    "no_new_privs": status["NoNewPrivs"].strip(), "seccomp": status["Seccomp"].strip(),
    "root_read_only": root_read_only, "env": dict(os.environ), "key_files": key_files,
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


@pytest.fixture(scope="module")
def operator_installed(real_node: RealNode) -> dict[str, Any]:
    """The chart, with the local image; the operator pod Ready."""
    image = real_node.images["agentfleet"]
    repository, tag = image.rsplit(":", 1)
    t0 = time.monotonic()
    real_node.helm(
        "install",
        RELEASE,
        str(ROOT / "charts" / "agentfleet"),
        "-n",
        RELEASE_NS,
        "--create-namespace",
        f"--set=image.repository={repository}",
        f"--set=image.tag={tag}",
        "--set=operator.workers=4",
        "--set=operator.apiConcurrency=8",
        f"--set=operator.watchNamespaces={{{NS}}}",
    )
    pod = wait_pod_ready(real_node.kube, RELEASE_NS, "app.kubernetes.io/component=operator", timeout=180)
    real_node.timings["chart install to operator Ready"] = time.monotonic() - t0
    return pod


@pytest.fixture(scope="module")
def fake_llm(real_node: RealNode) -> dict[str, str]:
    """The fake LLM as a pod behind a Service, in the agents' namespace."""
    kube = real_node.kube
    kube.kubectl("create", "namespace", NS)
    labels = {"app": "fake-llm"}
    kube.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "fake-llm", "namespace": NS, "labels": labels},
                "spec": {
                    "automountServiceAccountToken": False,
                    "containers": [
                        {
                            "name": "fake-llm",
                            "image": real_node.images["fake-llm"],
                            "ports": [{"containerPort": 8900, "name": "http"}],
                            "readinessProbe": {"httpGet": {"path": "/v1/models", "port": "http"}, "periodSeconds": 1},
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]},
                            },
                        }
                    ],
                },
            },
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "fake-llm", "namespace": NS},
                "spec": {"selector": labels, "ports": [{"port": 8900, "targetPort": "http"}]},
            },
        ]
    )
    pod = wait_pod_ready(kube, NS, "app=fake-llm", timeout=120)
    svc = kube.get_json("service", "fake-llm", "-n", NS)
    return {"cluster_ip": svc["spec"]["clusterIP"], "pod_ip": pod["status"]["podIP"]}


def test_operator_runs_as_nonroot_in_a_hardened_container(
    real_node: RealNode, operator_installed: dict[str, Any]
) -> None:
    pod = operator_installed["metadata"]["name"]
    facts = probe(real_node, pod, "operator", RELEASE_NS)
    assert_hardened(facts, "operator")
    # The kopf identity comes from the downward API (uid 65532 has no passwd entry to ask).
    assert facts["env"]["POD_NAME"] == pod
    logs = real_node.kube.kubectl("logs", pod, "-n", RELEASE_NS, "-c", "operator").stdout
    assert "getpwuid" not in logs and "Traceback" not in logs, logs[-3000:]


def test_agent_gets_an_answer_through_its_guard(
    real_node: RealNode, operator_installed: dict[str, Any], fake_llm: dict[str, str]
) -> None:
    kube = real_node.kube
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "llm-key", "namespace": NS},
        "data": {"api-key": base64.b64encode(API_KEY.encode()).decode()},
    }
    agent = {
        "apiVersion": "agentfleet.dev/v1alpha1",
        "kind": "AgentDeployment",
        "metadata": {"name": "greeter", "namespace": NS},
        "spec": {
            "replicas": 1,
            "agent": {
                "image": real_node.images["agent"],
                "model": {
                    # No cluster DNS on this node: the Service by its ClusterIP.
                    "name": "gpt-4o-mini",
                    "endpoint": f"http://{fake_llm['cluster_ip']}:8900/v1",
                    "apiKeySecretRef": {"name": "llm-key"},
                },
                "systemPrompt": {"inline": "You are a test agent."},
                "env": [{"name": "AGENT_INTERVAL_SECONDS", "value": "3600"}],
            },
            "budgets": {"tokensPerHour": 100000, "costPerDay": "10"},
            "permissions": {
                # A NetworkPolicy sees the packet after kube-proxy's DNAT: the egress rule the
                # operator renders for the endpoint (the ClusterIP) alone does not let it
                # through; the Service's pod network does.
                "egress": [{"cidr": "10.244.0.0/16", "ports": [8900]}],
                "secrets": ["llm-key"],
            },
        },
    }
    policy = {
        "apiVersion": "agentfleet.dev/v1alpha1",
        "kind": "AgentPolicy",
        "metadata": {"name": "e2e-agents"},
        "spec": {
            "namespaces": [NS],
            "allowedSecrets": ["llm-key"],
            "allowedEgress": ["10.244.0.0/16"],
            "allowedEndpoints": [{"cidr": "10.96.0.0/16", "ports": [8900]}],
        },
    }
    t0 = time.monotonic()
    kube.apply([policy, secret, agent])
    pod = wait_pod_ready(kube, NS, "agentfleet.dev/agent=greeter", timeout=180)
    real_node.timings["AgentDeployment to agent pod Ready"] = time.monotonic() - t0
    name = pod["metadata"]["name"]

    # The agent program itself, through its guard on localhost, with the openai SDK.
    res = kube.kubectl("exec", name, "-n", NS, "-c", "agent", "--", "python3", "/app/agent.py", "ask", "Hello?")
    answer = json.loads(res.stdout.strip().splitlines()[-1])
    assert answer["outcome"] == "answered", answer
    assert answer["answer"] == FAKE_TEXT, answer
    assert answer["tokens"] > 0, answer

    agent_facts = probe(real_node, name, "agent", NS)
    guard_facts = probe(real_node, name, "guard", NS)
    assert_hardened(agent_facts, "agent")
    assert_hardened(guard_facts, "guard")
    # The key: in the guard's projected Secret, nowhere in the agent.
    assert guard_facts["key_files"] == {"api-key": API_KEY}
    assert agent_facts["key_files"] == {}
    assert API_KEY not in json.dumps(agent_facts["env"])
    assert agent_facts["env"]["OPENAI_API_KEY"] != API_KEY
    assert agent_facts["env"]["OPENAI_BASE_URL"].startswith("http://127.0.0.1:")


def test_down_leaves_the_machine_as_it_was(real_node: RealNode, fake_llm: dict[str, str]) -> None:
    """Runs last: the node is taken down with pods still running; no process, mount, network
    namespace, cgroup, firewall rule, ipset, link, sysctl or state directory may remain."""
    node_ctr = [str(ROOT / "hack" / "node"), "ctr", "containers", "ls", "-q"]
    listed = subprocess.run(node_ctr, env=real_node.env, capture_output=True, text=True, timeout=30, check=True)
    containers = listed.stdout.split()
    assert len(containers) >= 2, f"expected running containers to be cleaned up, got {containers}"
    t0 = time.monotonic()
    res = real_node.down()
    real_node.timings["down"] = time.monotonic() - t0
    print("timings:", json.dumps({k: round(v, 1) for k, v in real_node.timings.items()}))
    assert res.returncode == 0, f"hack/cluster down failed:\n{res.stdout}\n{res.stderr}"
    left = processes_matching(
        real_node.netns_inode, real_node.mntns_inode, (str(RUN_DIR), f"/run/netns/{NETNS}", *containers)
    )
    assert left == [], f"processes left behind: {left}"
    deadline = time.monotonic() + 10  # a cgroup can stay busy for a moment after its last process
    diff = real_node.before.diff(snapshot())
    while diff and time.monotonic() < deadline:
        time.sleep(0.2)
        diff = real_node.before.diff(snapshot())
    assert diff == {}, f"the machine changed: {json.dumps(diff, indent=1, default=str)[:5000]}"
    assert not RUN_DIR.exists()
