"""AgentApproval decisions on the real API server: RBAC decides who may decide, the admission
policy (gen/approvals.py) that the recorded decider is the writer, that the agent's own
ServiceAccount never decides and creates approvals only for its own agent, and the CRD's rules
that the request is immutable and a decision final. Identities are real (impersonation, and a
ServiceAccount)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from hack.harness.kube import Kube, poll

pytestmark = pytest.mark.integration

VERBS = ["get", "list", "watch", "create", "update", "patch"]


def approval(namespace: str, name: str, agent: str = "support", decision: dict[str, str] | None = None) -> str:
    spec: dict[str, Any] = {
        "request": {
            "agent": agent,
            "revision": "r1",
            "pod": "support-0",
            "tool": "refund",
            "arguments": '{"amount": 500}',
            "argumentsSha256": "0" * 64,
            "deadline": "2030-01-01T00:00:00Z",
        }
    }
    if decision is not None:
        spec["decision"] = decision
    obj = {
        "apiVersion": "agentfleet.dev/v1alpha1",
        "kind": "AgentApproval",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }
    return json.dumps(obj)


def setup(kube: Kube, ns: str) -> None:
    kube.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/agentapprovals.agentfleet.dev")
    rule = {"apiGroups": ["agentfleet.dev"], "resources": ["agentapprovals", "agentapprovals/status"], "verbs": VERBS}
    kube.apply(
        [
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "support-agent", "namespace": ns}},
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": {"name": "approvals", "namespace": ns},
                "rules": [rule],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "RoleBinding",
                "metadata": {"name": "approvals", "namespace": ns},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "approvals"},
                "subjects": [
                    {"kind": "User", "name": "alice", "apiGroup": "rbac.authorization.k8s.io"},
                    {"kind": "ServiceAccount", "name": "support-agent", "namespace": ns},
                ],
            },
        ]
    )


def as_(kube: Kube, who: str, *args: str, input: str | None = None) -> tuple[bool, str]:
    res = kube.kubectl(f"--as={who}", *args, input=input, check=False)
    return res.returncode == 0, res.stderr.strip()


def decide(kube: Kube, who: str, ns: str, name: str, state: str, decided_by: str) -> tuple[bool, str]:
    patch = json.dumps({"spec": {"decision": {"state": state, "decidedBy": decided_by}}})
    return as_(kube, who, "-n", ns, "patch", "agentapproval", name, "--type=merge", "-p", patch)


def test_who_may_decide(crds_installed: Kube, namespace: str) -> None:
    kube, ns = crds_installed, namespace
    setup(kube, ns)
    sa = f"system:serviceaccount:{ns}:support-agent"
    # RBAC propagates quickly but not instantly: wait until the agent's ServiceAccount may create
    poll(lambda: as_(kube, sa, "create", "-f", "-", input=approval(ns, "a1"))[0], timeout=30, what="RBAC")
    ok, err = as_(kube, sa, "create", "-f", "-", input=approval(ns, "a2"))
    assert ok, err
    # a ServiceAccount creates approvals only for its own agent, and nobody creates one decided
    ok, err = as_(kube, sa, "create", "-f", "-", input=approval(ns, "x1", agent="billing"))
    assert not ok and "only for its own agent" in err, err
    decided = approval(ns, "x2", decision={"state": "Approved", "decidedBy": sa})
    ok, err = as_(kube, sa, "create", "-f", "-", input=decided)
    assert not ok and "created pending" in err, err
    decided = approval(ns, "x3", decision={"state": "Approved", "decidedBy": "alice"})
    ok, err = as_(kube, "alice", "create", "-f", "-", input=decided)
    assert not ok and "created pending" in err, err
    # the agent's own ServiceAccount never decides, even with RBAC rights to update approvals
    ok, err = decide(kube, sa, ns, "a1", "Approved", sa)
    assert not ok and "cannot decide its own approvals" in err, err
    # a user without the RBAC right cannot decide
    ok, err = decide(kube, "bob", ns, "a1", "Approved", "bob")
    assert not ok and "forbidden" in err.lower(), err
    # an approver cannot record someone else's name
    ok, err = decide(kube, "alice", ns, "a1", "Approved", "carol")
    assert not ok and "decidedBy must be alice" in err, err
    ok, err = decide(kube, "alice", ns, "a1", "Approved", "alice")
    assert ok, err
    stored = kube.get_json("-n", ns, "agentapproval", "a1")
    assert stored["spec"]["decision"] == {"state": "Approved", "decidedBy": "alice"}
    # a decision is final, and the request never changes
    ok, err = decide(kube, "alice", ns, "a1", "Denied", "alice")
    assert not ok and "final" in err, err
    patch = json.dumps({"spec": {"request": {"tool": "delete_everything"}}})
    ok, err = as_(kube, "alice", "-n", ns, "patch", "agentapproval", "a2", "--type=merge", "-p", patch)
    assert not ok and "immutable" in err, err
    ok, err = as_(kube, sa, "-n", ns, "patch", "agentapproval", "a2", "--type=merge", "-p", patch)
    assert not ok and "immutable" in err, err
    assert "decision" not in kube.get_json("-n", ns, "agentapproval", "a2")["spec"]
