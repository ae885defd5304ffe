"""The operator, the guard and an agent in real containers on a real node (hack/node).

One session node (tests/e2e/support.py, as conftest fixtures): the chart is installed with the locally built project
image; the operator must become Ready as uid 65532 and reconcile an AgentDeployment into a real
pod whose agent (hack/images/agent.py, official openai SDK) asks its guard on localhost and gets
the fake LLM's answer, the fake LLM running as a pod behind a Service. Hardening is read from
inside the running containers, and so is the ServiceAccount token: mounted only into the pods
of an agent whose permissions grant Kubernetes access. test_zz_down.py takes the node down last.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.e2e.support import (
    API_KEY,
    API_PORT,
    FAKE_TEXT,
    NODE_IP,
    NS,
    RELEASE_NS,
    FakeLLM,
    RealNode,
    agent_spec,
    assert_hardened,
    probe,
    wait_pod_ready,
)

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.timeout(900)]


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


def test_agent_gets_an_answer_through_its_guard(real_node: RealNode, greeter: dict[str, Any]) -> None:
    kube = real_node.kube
    name = greeter["metadata"]["name"]

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
    # No Kubernetes permissions: no ServiceAccount token in any container of the pod.
    for facts, what in ((agent_facts, "agent"), (guard_facts, "guard")):
        assert facts["sa_token"] is None, f"{what} has a ServiceAccount token without Kubernetes permissions"


def test_an_agent_with_kubernetes_permissions_gets_a_token_that_works(
    real_node: RealNode, operator_installed: dict[str, Any], fake_llm: FakeLLM
) -> None:
    """permissions.kubernetes: the token is mounted, and the API server answers what the Role
    grants (configmaps) and refuses the rest (secrets), asked from inside the agent container."""
    kube = real_node.kube
    kube.apply(
        agent_spec(
            "reader",
            real_node.images["agent"],
            fake_llm,
            kubernetes=[{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}],
            # The operator opens no egress to the API server: the agent's policy must name it
            # (after kube-proxy's DNAT the packet goes to the node IP and the API server's port).
            egress=[{"cidr": f"{NODE_IP}/32", "ports": [API_PORT]}],
        )
    )
    pod = wait_pod_ready(kube, NS, "agentfleet.dev/agent=reader", timeout=180)
    name = pod["metadata"]["name"]
    facts = probe(real_node, name, "agent", NS)
    assert_hardened(facts, "agent with Kubernetes permissions")
    assert facts["sa_token"] is not None and facts["sa_token"]["namespace"] == NS
    asked = kube.kubectl("exec", name, "-n", NS, "-c", "agent", "--", "python3", "-c", ASK_API).stdout
    assert json.loads(asked) == {"configmaps": 200, "secrets": 403}, asked
    kube.kubectl("delete", "agentdeployment", "reader", "-n", NS, "--wait=false")


ASK_API = """
import json, os, ssl, urllib.error, urllib.request
sa = "/var/run/secrets/kubernetes.io/serviceaccount"
token = open(f"{sa}/token").read()
ns = open(f"{sa}/namespace").read()
ctx = ssl.create_default_context(cafile=f"{sa}/ca.crt")
base = f"https://{os.environ['KUBERNETES_SERVICE_HOST']}:{os.environ['KUBERNETES_SERVICE_PORT']}"
out = {}
for what in ("configmaps", "secrets"):
    req = urllib.request.Request(f"{base}/api/v1/namespaces/{ns}/{what}", headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
            out[what] = resp.status
    except urllib.error.HTTPError as exc:
        out[what] = exc.code
print(json.dumps(out))
"""
