"""AgentPolicy enforced by the API server (the ValidatingAdmissionPolicy in ``crds/admission/``),
and the pure reconcile-time check giving the same verdict with the same message for each case.

Every policy here covers only the test's own namespace, so tests running alongside are unaffected.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest

from agentfleet.api.types import AgentDeployment, AgentPolicy
from agentfleet.policy import covers, violations
from hack.harness.kube import Kube, poll

pytestmark = pytest.mark.integration

DENIED = "denied request: "

POLICY_SPEC: dict[str, Any] = {
    "ceilings": {
        "tokensPerHour": 100000,
        "costPerDay": "20",
        "maxToolCallsPerTask": 100,
        "maxIterationsPerTask": 50,
        "maxTaskDuration": "30m",
        "maxConcurrentTasks": 16,
        "maxReplicas": 3,
    },
    "allowedModels": ["gpt-4o-mini"],
    "allowedTools": ["search", "fetch"],
    "allowedEgress": ["203.0.113.0/24"],
    "allowedKubernetesRules": [
        {"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"], "resourceNames": ["agent-config"]},
    ],
    "requiredGuardrails": [{"metric": "loopDetections", "actions": ["Suspend", "Rollback"]}],
}

AGENT_SPEC: dict[str, Any] = {
    "replicas": 2,
    "agent": {
        "image": "example/agent:1",
        "model": {"name": "gpt-4o-mini", "endpoint": "https://api.openai.com/v1"},
        "tools": [{"name": "search"}],
    },
    "budgets": {"tokensPerHour": 50000, "costPerDay": "5", "maxTaskDuration": "10m"},
    "permissions": {
        "egress": [{"cidr": "203.0.113.0/28"}],
        "kubernetes": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}],
    },
    "guardrails": [{"name": "loops", "metric": "loopDetections", "threshold": "0", "action": "Suspend"}],
}


def merged(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """JSON merge patch: ``None`` deletes, dicts merge, anything else replaces."""
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def agent_manifest(namespace: str, patch: dict[str, Any] | None = None, name: str = "agent") -> dict[str, Any]:
    return {
        "apiVersion": "agentfleet.dev/v1alpha1",
        "kind": "AgentDeployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": merged(AGENT_SPEC, patch or {}),
    }


def dry_run(kube: Kube, manifest: dict[str, Any]) -> tuple[bool, str]:
    """(accepted, the API server's message)."""
    res = kube.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(manifest), check=False)
    return res.returncode == 0, res.stderr.strip()


def denial(stderr: str) -> str:
    """The admission policy's own message, without kubectl's and the API server's framing."""
    assert DENIED in stderr, stderr
    return stderr.split(DENIED, 1)[1].strip()


def labels_of(kube: Kube, namespace: str) -> dict[str, str]:
    labels: dict[str, str] = kube.get_json("namespace", namespace)["metadata"].get("labels", {})
    return labels


def stored_policy(kube: Kube, name: str) -> AgentPolicy:
    return AgentPolicy.model_validate(kube.get_json("agentpolicy", name))


def until(kube: Kube, manifest: dict[str, Any], *, accepted: bool, text: str = "") -> str:
    """Wait for the admission policy to see a policy change (its informer lags the write)."""

    def check() -> str | None:
        ok, err = dry_run(kube, manifest)
        return (err or "accepted") if ok == accepted and text in err else None

    result: str = poll(check, timeout=30, what=f"admission to {'accept' if accepted else 'reject'} ({text})")
    return result


class Policies:
    """Creates cluster-scoped AgentPolicies for one test and deletes them afterwards."""

    def __init__(self, kube: Kube, namespace: str) -> None:
        self.kube, self.namespace = kube, namespace
        self.names: list[str] = []

    def create(self, patch: dict[str, Any] | None = None, suffix: str = "p", *, wait: bool = True) -> str:
        name = f"{self.namespace}-{suffix}"[-63:].lstrip("-")
        spec = merged({**POLICY_SPEC, "namespaces": [self.namespace]}, patch or {})
        obj = {"apiVersion": "agentfleet.dev/v1alpha1", "kind": "AgentPolicy", "metadata": {"name": name}, "spec": spec}
        self.kube.kubectl("create", "-f", "-", input=json.dumps(obj))
        self.names.append(name)
        if wait and "namespaces" in spec:  # a probe only this policy rejects: its name is in the message
            probe = agent_manifest(self.namespace, {"replicas": 10000}, name="probe")
            until(self.kube, probe, accepted=False, text=f"AgentPolicy {name}: ")
        return name

    def patch(self, name: str, spec: dict[str, Any]) -> None:
        self.kube.kubectl("patch", "agentpolicy", name, "--type=merge", "-p", json.dumps({"spec": spec}))

    def delete_all(self) -> None:
        for name in self.names:
            self.kube.kubectl("delete", "agentpolicy", name, "--wait=false", check=False)


@pytest.fixture
def policies(crds_installed: Kube, namespace: str) -> Iterator[Policies]:
    p = Policies(crds_installed, namespace)
    yield p
    p.delete_all()


def assert_agree(kube: Kube, manifest: dict[str, Any], policy_name: str, stderr: str, expected: str) -> None:
    """The API server's message is the expected one, and the pure check says the same first."""
    message = denial(stderr)
    assert message == f"AgentPolicy {policy_name}: {expected}"
    agent = AgentDeployment.model_validate(manifest)
    found = violations(agent, [stored_policy(kube, policy_name)], labels_of(kube, manifest["metadata"]["namespace"]))
    assert found, "the pure check admits what the API server rejected"
    assert found[0].message == message


R = "permissions.kubernetes not covered by allowedKubernetesRules: "

# (id, agent patch, policy patch, the message after "AgentPolicy NAME: ")
VIOLATIONS: list[tuple[str, dict[str, Any], dict[str, Any], str]] = [
    (
        "budget above ceiling",
        {"budgets": {"tokensPerHour": 200000}},
        {},
        "budgets.tokensPerHour=200000 exceeds ceilings.tokensPerHour=100000",
    ),
    (
        "budget unset under a ceiling",
        {"budgets": {"tokensPerHour": None}},
        {},
        "budgets.tokensPerHour is unset (unlimited) but ceilings.tokensPerHour=100000",
    ),
    (
        "money above ceiling",
        {"budgets": {"costPerDay": "20.01"}},
        {},
        "budgets.costPerDay=20.01 exceeds ceilings.costPerDay=20",
    ),
    (
        "duration above ceiling",
        {"budgets": {"maxTaskDuration": "1h"}},
        {},
        "budgets.maxTaskDuration=1h exceeds ceilings.maxTaskDuration=30m",
    ),
    (
        "default above ceiling",
        {},
        {"ceilings": {"maxIterationsPerTask": 10}},
        "budgets.maxIterationsPerTask=50 exceeds ceilings.maxIterationsPerTask=10",
    ),
    (
        "concurrency above ceiling",
        {"budgets": {"maxConcurrentTasks": 64}},
        {},
        "budgets.maxConcurrentTasks=64 exceeds ceilings.maxConcurrentTasks=16",
    ),
    ("replicas above ceiling", {"replicas": 5}, {}, "replicas=5 exceeds ceilings.maxReplicas=3"),
    (
        "model not allowed",
        {"agent": {"model": {"name": "gpt-4o"}}},
        {},
        "agent.model.name=gpt-4o is not in allowedModels",
    ),
    (
        "tool beyond policy",
        {"agent": {"tools": [{"name": "search"}, {"name": "shell"}]}},
        {},
        "agent.tools not in allowedTools: shell",
    ),
    (
        "egress beyond policy",
        {"permissions": {"egress": [{"cidr": "0.0.0.0/0"}]}},
        {},
        "permissions.egress not within allowedEgress: 0.0.0.0/0",
    ),
    (
        "rbac wildcard beyond policy",
        {"permissions": {"kubernetes": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]}},
        {},
        R + '{apiGroups: ["*"], resources: ["*"], verbs: ["*"]}',
    ),
    (
        "rbac secrets beyond policy",
        {"permissions": {"kubernetes": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]}},
        {},
        R + '{apiGroups: [""], resources: ["secrets"], verbs: ["get"]}',
    ),
    (
        "rbac object names beyond policy",
        {"permissions": {"kubernetes": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]}},
        {},
        R + '{apiGroups: [""], resources: ["configmaps"], verbs: ["get"]}',
    ),
    (
        "rbac with no allowance",
        {},
        {"allowedKubernetesRules": None},
        "permissions.kubernetes is not allowed: the policy sets no allowedKubernetesRules",
    ),
    (
        "missing required guardrail",
        {"guardrails": None},
        {},
        "guardrails missing requiredGuardrails: loopDetections (action Suspend or Rollback)",
    ),
    (
        "required guardrail with weak action",
        {"guardrails": [{"name": "loops", "metric": "loopDetections", "threshold": "0", "action": "Alert"}]},
        {},
        "guardrails missing requiredGuardrails: loopDetections (action Suspend or Rollback)",
    ),
]


def test_compliant_agent_is_admitted(crds_installed: Kube, namespace: str, policies: Policies) -> None:
    name = policies.create()
    manifest = agent_manifest(namespace)
    crds_installed.kubectl("create", "-f", "-", input=json.dumps(manifest))
    agent = AgentDeployment.model_validate(manifest)
    assert violations(agent, [stored_policy(crds_installed, name)], labels_of(crds_installed, namespace)) == []


@pytest.mark.parametrize("case", VIOLATIONS, ids=[v[0] for v in VIOLATIONS])
def test_violating_agent_is_rejected_naming_the_ceiling(
    crds_installed: Kube, namespace: str, policies: Policies, case: tuple[str, dict[str, Any], dict[str, Any], str]
) -> None:
    _, agent_patch, policy_patch, expected = case
    name = policies.create(policy_patch)
    manifest = agent_manifest(namespace, agent_patch)
    ok, err = dry_run(crds_installed, manifest)
    assert not ok, "a violating AgentDeployment was admitted"
    assert "is forbidden: ValidatingAdmissionPolicy 'agentfleet-agentpolicy'" in err
    assert_agree(crds_installed, manifest, name, err, expected)


def test_only_covered_namespaces_are_restricted(crds_installed: Kube, namespace: str, policies: Policies) -> None:
    policies.create({"namespaces": [f"{namespace}-elsewhere"], "allowedModels": ["none"]}, "other", wait=False)
    policies.create()  # created second: once admission sees it, it has seen the first one too
    manifest = agent_manifest(namespace)
    ok, err = dry_run(crds_installed, manifest)
    assert ok, err
    agent = AgentDeployment.model_validate(manifest)
    stored = [stored_policy(crds_installed, n) for n in policies.names]
    assert violations(agent, stored, labels_of(crds_installed, namespace)) == []


def test_namespace_selector_coverage_follows_labels(crds_installed: Kube, namespace: str, policies: Policies) -> None:
    key = "agentfleet.dev/policy-test"
    name = policies.create({"namespaces": None, "namespaceSelector": {"matchLabels": {key: namespace}}}, wait=False)
    manifest = agent_manifest(namespace, {"agent": {"model": {"name": "gpt-4o"}}})
    policy = stored_policy(crds_installed, name)

    crds_installed.kubectl("label", "namespace", namespace, f"{key}={namespace}")
    err = until(crds_installed, manifest, accepted=False, text=f"AgentPolicy {name}: ")
    assert covers(policy, namespace, labels_of(crds_installed, namespace))
    assert_agree(crds_installed, manifest, name, err, "agent.model.name=gpt-4o is not in allowedModels")

    crds_installed.kubectl("label", "namespace", namespace, f"{key}-")
    until(crds_installed, manifest, accepted=True)
    assert not covers(policy, namespace, labels_of(crds_installed, namespace))


def test_tightened_policy_blocks_spec_changes_but_not_metadata_or_deletion(
    crds_installed: Kube, namespace: str, policies: Policies
) -> None:
    kube = crds_installed
    name = policies.create()
    kube.kubectl("create", "-f", "-", input=json.dumps(agent_manifest(namespace)))
    policies.patch(name, {"ceilings": {"tokensPerHour": 1000}})
    expected = "budgets.tokensPerHour=50000 exceeds ceilings.tokensPerHour=1000"
    until(kube, agent_manifest(namespace, name="probe"), accepted=False, text=expected)

    # What kopf and kubectl do to an existing agent still works: finalizers, annotations, labels.
    patch = {"metadata": {"finalizers": ["agentfleet.dev/test"], "annotations": {"a": "b"}, "labels": {"c": "d"}}}
    kube.kubectl("patch", "agd", "agent", "-n", namespace, "--type=merge", "-p", json.dumps(patch))
    # A spec change is judged against the policy as it is now.
    res = kube.kubectl(
        "patch", "agd", "agent", "-n", namespace, "--type=merge", "-p", '{"spec":{"suspended":true}}', check=False
    )
    assert res.returncode != 0
    assert denial(res.stderr) == f"AgentPolicy {name}: {expected}"
    # Deletion completes: removing the finalizer of a terminating agent is not a spec change.
    kube.kubectl("delete", "agd", "agent", "-n", namespace, "--wait=false")
    kube.kubectl("patch", "agd", "agent", "-n", namespace, "--type=merge", "-p", '{"metadata":{"finalizers":null}}')
    gone = lambda: kube.kubectl("get", "agd", "agent", "-n", namespace, check=False).returncode != 0  # noqa: E731
    poll(gone, what="the agent to be deleted")


def test_scale_subresource_respects_max_replicas(crds_installed: Kube, namespace: str, policies: Policies) -> None:
    kube = crds_installed
    name = policies.create()
    kube.kubectl("create", "-f", "-", input=json.dumps(agent_manifest(namespace)))
    kube.kubectl("scale", "agd/agent", "-n", namespace, "--replicas=3")
    res = kube.kubectl("scale", "agd/agent", "-n", namespace, "--replicas=5", check=False)
    assert res.returncode != 0
    assert "ValidatingAdmissionPolicy 'agentfleet-agentpolicy-scale'" in res.stderr
    assert denial(res.stderr) == f"AgentPolicy {name}: replicas=5 exceeds ceilings.maxReplicas=3"
    assert kube.get_json("agd", "agent", "-n", namespace)["spec"]["replicas"] == 3

    # Scaling down is always allowed, even while still above a ceiling that was lowered since.
    policies.patch(name, {"ceilings": {"maxReplicas": 1}})
    until(kube, agent_manifest(namespace, {"replicas": 2}, name="probe"), accepted=False, text="maxReplicas=1")
    kube.kubectl("scale", "agd/agent", "-n", namespace, "--replicas=2")
    assert kube.get_json("agd", "agent", "-n", namespace)["spec"]["replicas"] == 2
