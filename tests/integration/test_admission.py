"""AgentPolicy enforced by the API server (the ValidatingAdmissionPolicy in ``crds/admission/``),
and the pure reconcile-time check giving the same verdict with the same message for each case
(``tests/support/policy_cases.py``, which ``tests/unit/test_policy.py`` checks too).

Every policy here covers only the test's own namespace, so tests running alongside are unaffected.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from agentfleet.api.types import AgentDeployment, AgentPolicy
from agentfleet.policy import covers, violations
from hack.harness.kube import Kube, poll
from tests.support.policy_cases import AGENT_SPEC, ALLOWED, POLICY_SPEC, REFUSED, PolicyCase, merged

pytestmark = pytest.mark.integration

DENIED = "denied request: "


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


PROBES: list[dict[str, Any]] = [{"replicas": 10000}, {"agent": {"model": {"name": "probe-model"}}}]


def probe_for(namespace: str, policy: dict[str, Any]) -> dict[str, Any]:
    """An agent that ``policy`` rejects (by the pure check), to see when admission has loaded it."""
    stored = AgentPolicy.model_validate(policy)
    for patch in PROBES:
        probe = agent_manifest(namespace, patch, name="probe")
        if violations(AgentDeployment.model_validate(probe), [stored], {}):
            return probe
    raise AssertionError(f"no probe is rejected by {policy}")


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
            until(self.kube, probe_for(self.namespace, obj), accepted=False, text=f"AgentPolicy {name}: ")
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


def test_compliant_agent_is_admitted(crds_installed: Kube, namespace: str, policies: Policies) -> None:
    name = policies.create()
    manifest = agent_manifest(namespace)
    crds_installed.kubectl("create", "-f", "-", input=json.dumps(manifest))
    agent = AgentDeployment.model_validate(manifest)
    assert violations(agent, [stored_policy(crds_installed, name)], labels_of(crds_installed, namespace)) == []


@pytest.mark.parametrize("case", REFUSED, ids=[c.id for c in REFUSED])
def test_violating_agent_is_rejected_naming_the_ceiling(
    crds_installed: Kube, namespace: str, policies: Policies, case: PolicyCase
) -> None:
    assert case.refusal is not None
    name = policies.create(case.policy)
    manifest = agent_manifest(namespace, case.agent)
    ok, err = dry_run(crds_installed, manifest)
    assert not ok, "a violating AgentDeployment was admitted"
    assert "is forbidden: ValidatingAdmissionPolicy 'agentfleet-agentpolicy'" in err
    assert_agree(crds_installed, manifest, name, err, case.refusal)


@pytest.mark.parametrize("case", ALLOWED, ids=[c.id for c in ALLOWED])
def test_agent_within_policy_is_admitted(
    crds_installed: Kube, namespace: str, policies: Policies, case: PolicyCase
) -> None:
    name = policies.create(case.policy)  # waits until admission enforces it
    manifest = agent_manifest(namespace, case.agent)
    ok, err = dry_run(crds_installed, manifest)
    assert ok, err
    agent = AgentDeployment.model_validate(manifest)
    assert violations(agent, [stored_policy(crds_installed, name)], labels_of(crds_installed, namespace)) == []


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
