"""The operator, as a process, reconciles AgentDeployments on the real control plane."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from hack.harness.agents import agent, agent_policy, condition, objects_of, phase_is, status, wait_reconciled
from hack.harness.kube import ROOT, Kube, poll
from hack.harness.processes import OperatorProcess

pytestmark = pytest.mark.integration


def test_create_renders_every_child_and_pods_run(operator: OperatorProcess, kube: Kube, namespace: str) -> None:
    kube.apply(agent("alpha", namespace))
    st = wait_reconciled(kube, namespace, "alpha")
    rev = st["currentRevision"]
    assert st["phase"] == "Running"
    assert condition(st, "Ready")["status"] == "True"
    assert condition(st, "PolicyViolation")["status"] == "False"
    assert st["selector"] == "agentfleet.dev/agent=alpha,app.kubernetes.io/managed-by=agentfleet"
    uid = kube.get_json("agd", "alpha", "-n", namespace)["metadata"]["uid"]

    children = {
        ("ServiceAccount", "alpha-agent"),
        ("ConfigMap", f"alpha-guard-{rev}"),
        ("Service", "alpha-metrics"),
        ("NetworkPolicy", "alpha"),
        ("Deployment", "alpha"),
        ("ControllerRevision", f"alpha-{rev}"),
    }
    for kind, name in children:
        obj = kube.get_json(kind.lower(), name, "-n", namespace)
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "agentfleet", (kind, name)
        assert obj["metadata"]["labels"]["agentfleet.dev/agent"] == "alpha", (kind, name)
        owner = obj["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["uid"], owner["controller"]) == ("AgentDeployment", uid, True), (kind, name)
    # No Kubernetes permissions were asked for: no Role, no token.
    assert kube.kubectl("get", "role", "alpha-agent", "-n", namespace, check=False).returncode != 0

    dep = kube.get_json("deployment", "alpha", "-n", namespace)
    pod_spec = dep["spec"]["template"]["spec"]
    assert dep["spec"]["replicas"] == 2
    assert pod_spec["automountServiceAccountToken"] is False
    guard = pod_spec["initContainers"][0]
    assert guard["restartPolicy"] == "Always"
    assert guard["image"] == "ghcr.io/agentfleet/agentfleet:test"
    env = {e["name"]: e.get("value") for e in pod_spec["containers"][0]["env"]}
    assert env["OPENAI_BASE_URL"].startswith("http://127.0.0.1:")
    for c in [*pod_spec["containers"], guard]:
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
    # The API key is mounted into the guard only.
    key_volumes = {v["name"] for v in pod_spec["volumes"] if "secret" in v}
    assert key_volumes
    assert not [m for m in pod_spec["containers"][0].get("volumeMounts", []) if m["name"] in key_volumes]
    assert [m for m in guard["volumeMounts"] if m["name"] in key_volumes]

    pods = objects_of(kube, "pods", namespace, "alpha")
    assert len(pods) == 2
    for pod in pods:
        assert pod["status"]["phase"] == "Running"
        assert pod["spec"]["nodeName"].startswith("kwok-node-")
        assert pod["metadata"]["labels"]["agentfleet.dev/revision"] == rev
    events = kube.get_json("events", "-n", namespace, "--field-selector", "involvedObject.name=alpha")["items"]
    assert any(e["reason"] == "RevisionApplied" for e in events)


def test_update_makes_a_new_revision_and_rolls_pods(operator: OperatorProcess, kube: Kube, namespace: str) -> None:
    kube.apply(agent("beta", namespace))
    first = wait_reconciled(kube, namespace, "beta")["currentRevision"]
    changed = agent("beta", namespace)
    changed["spec"]["agent"]["systemPrompt"] = {"inline": "You are terse."}
    kube.apply(changed)
    second = poll(
        lambda: (
            (wait_reconciled(kube, namespace, "beta")["currentRevision"] != first)
            and status(kube, namespace, "beta")["currentRevision"]
        ),
        timeout=60,
        what="a new revision",
    )
    revisions = objects_of(kube, "controllerrevisions", namespace, "beta")
    assert sorted((r["revision"], r["metadata"]["labels"]["agentfleet.dev/revision"]) for r in revisions) == [
        (1, first),
        (2, second),
    ]
    poll(
        lambda: (
            {
                p["metadata"]["labels"]["agentfleet.dev/revision"]
                for p in objects_of(kube, "pods", namespace, "beta")
                if not p["metadata"].get("deletionTimestamp")
            }
            == {second}
        ),
        timeout=60,
        what="pods of the new revision",
    )
    # Scaling is not a new revision.
    kube.kubectl("scale", "agd", "beta", "-n", namespace, "--replicas=3")
    poll(
        lambda: kube.get_json("deployment", "beta", "-n", namespace)["spec"]["replicas"] == 3,
        timeout=30,
        what="kubectl scale to reach the Deployment",
    )
    assert wait_reconciled(kube, namespace, "beta")["currentRevision"] == second
    assert status(kube, namespace, "beta")["replicas"] == 3


def test_manual_rollback_pins_an_exact_revision_until_the_spec_changes(
    operator: OperatorProcess, kube: Kube, namespace: str
) -> None:
    kube.apply(agent("gamma", namespace))
    first = wait_reconciled(kube, namespace, "gamma")["currentRevision"]
    changed = agent("gamma", namespace)
    changed["spec"]["agent"]["model"]["name"] = "gpt-4o"
    kube.apply(changed)
    poll(lambda: wait_reconciled(kube, namespace, "gamma")["currentRevision"] != first, timeout=60, what="revision 2")
    kube.kubectl("annotate", "agd", "gamma", "-n", namespace, "agentfleet.dev/rollback-to=1")
    st = poll(
        lambda: (s := status(kube, namespace, "gamma")).get("currentRevision") == first and s,
        timeout=60,
        what="the rollback to revision 1",
    )
    assert condition(st, "RolledBack")["status"] == "True"
    assert condition(st, "RolledBack")["reason"] == "ManualRollback"
    assert st["phase"] == "RolledBack"
    stored = kube.get_json("controllerrevision", f"gamma-{first}", "-n", namespace)["data"]["template"]
    template = kube.get_json("deployment", "gamma", "-n", namespace)["spec"]["template"]
    assert {k: template["metadata"].get(k) for k in ("labels", "annotations")} == {
        k: stored["metadata"].get(k) for k in ("labels", "annotations")
    }
    assert template["spec"]["containers"][0]["image"] == stored["spec"]["containers"][0]["image"]
    assert json.dumps(template["spec"]["containers"][0]["env"], sort_keys=True) == json.dumps(
        stored["spec"]["containers"][0]["env"], sort_keys=True
    )
    assert "agentfleet.dev/rollback-to" not in kube.get_json("agd", "gamma", "-n", namespace)["metadata"].get(
        "annotations", {}
    )
    # A new spec generation is a fresh attempt: the pin is released.
    again = copy.deepcopy(changed)
    again["spec"]["agent"]["systemPrompt"] = {"inline": "Third try."}
    kube.apply(again)
    st = poll(
        lambda: (
            (s := status(kube, namespace, "gamma")).get("currentRevision") not in {first, None}
            and condition(s, "RolledBack").get("status") == "False"
            and s
        ),
        timeout=60,
        what="a fresh attempt",
    )
    assert st["phase"] in {"Running", "Progressing"}


def test_suspend_and_resume(operator: OperatorProcess, kube: Kube, namespace: str) -> None:
    kube.apply(agent("delta", namespace))
    wait_reconciled(kube, namespace, "delta")
    kube.kubectl("patch", "agd", "delta", "-n", namespace, "--type=merge", "-p", '{"spec":{"suspended":true}}')
    st = poll(
        lambda: phase_is(kube, namespace, "delta", "Suspended"),
        timeout=30,
        what="phase Suspended",
    )
    assert condition(st, "Suspended")["reason"] == "ManualSuspend"
    assert kube.get_json("deployment", "delta", "-n", namespace)["spec"]["replicas"] == 0
    poll(
        lambda: not objects_of(kube, "pods", namespace, "delta"),
        timeout=30,
        what="pods to go away",
    )
    kube.kubectl("patch", "agd", "delta", "-n", namespace, "--type=merge", "-p", '{"spec":{"suspended":false}}')
    st = wait_reconciled(kube, namespace, "delta")
    assert condition(st, "Suspended")["status"] == "False"
    assert kube.get_json("deployment", "delta", "-n", namespace)["spec"]["replicas"] == 2
    reasons = {e["reason"] for e in kube.get_json("events", "-n", namespace)["items"]}
    assert {"Suspended", "Resumed"} <= reasons


def test_delete_garbage_collects_children(operator: OperatorProcess, kube: Kube, namespace: str) -> None:
    kube.apply(agent("epsilon", namespace))
    wait_reconciled(kube, namespace, "epsilon")
    kube.kubectl("delete", "agd", "epsilon", "-n", namespace, "--wait=true", "--timeout=60s")
    poll(
        lambda: (
            not any(
                objects_of(kube, kind, namespace, "epsilon")
                for kind in (
                    "deployments",
                    "configmaps",
                    "services",
                    "serviceaccounts",
                    "networkpolicies",
                    "controllerrevisions",
                    "pods",
                )
            )
        ),
        timeout=60,
        what="children to be garbage-collected",
    )


def test_kubernetes_permissions_make_exactly_that_role(operator: OperatorProcess, kube: Kube, namespace: str) -> None:
    rules = [{"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list"]}]
    body = agent("zeta", namespace)
    body["spec"]["permissions"]["kubernetes"] = rules
    kube.apply(body)
    wait_reconciled(kube, namespace, "zeta")
    role = kube.get_json("role", "zeta-agent", "-n", namespace)
    assert [{k: r[k] for k in ("apiGroups", "resources", "verbs")} for r in role["rules"]] == rules
    binding = kube.get_json("rolebinding", "zeta-agent", "-n", namespace)
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "zeta-agent", "namespace": namespace}]
    who = f"--as=system:serviceaccount:{namespace}:zeta-agent"
    poll(
        lambda: kube.kubectl("auth", "can-i", "list", "pods", "-n", namespace, who, check=False).returncode == 0,
        timeout=20,
        what="the agent's Role to take effect",
    )
    assert kube.kubectl("auth", "can-i", "delete", "pods", "-n", namespace, who, check=False).returncode != 0
    assert kube.kubectl("auth", "can-i", "get", "secrets", "-n", namespace, who, check=False).returncode != 0
    dep = kube.get_json("deployment", "zeta", "-n", namespace)
    assert dep["spec"]["template"]["spec"]["automountServiceAccountToken"] is True
    # Withdrawing the permissions deletes the Role and RoleBinding.
    body["spec"]["permissions"].pop("kubernetes")
    kube.apply(body)
    poll(
        lambda: kube.kubectl("get", "role,rolebinding", "zeta-agent", "-n", namespace, check=False).returncode != 0,
        timeout=60,
        what="the Role and RoleBinding to be deleted",
    )


def test_policy_tightened_after_creation_is_enforced_at_reconcile(
    operator: OperatorProcess, kube: Kube, namespace: str
) -> None:
    kube.apply(agent("eta", namespace))
    wait_reconciled(kube, namespace, "eta")
    name = f"cap-{namespace}"[:63]
    kube.apply(agent_policy(name, namespaces=[namespace], ceilings={"tokensPerHour": 5000}))
    try:
        st = poll(
            lambda: phase_is(kube, namespace, "eta", "PolicyViolation"),
            timeout=60,
            what="PolicyViolation at reconcile",
        )
        assert condition(st, "PolicyViolation")["status"] == "True"
        assert "tokensPerHour" in condition(st, "PolicyViolation")["message"]
        assert kube.get_json("deployment", "eta", "-n", namespace)["spec"]["replicas"] == 0
        events = kube.get_json("events", "-n", namespace, "--field-selector", "involvedObject.name=eta")["items"]
        assert any(e["reason"] == "PolicyViolation" and e["type"] == "Warning" for e in events)
    finally:
        kube.kubectl("delete", "agentpolicy", name, check=False)
    poll(
        lambda: condition(status(kube, namespace, "eta"), "PolicyViolation").get("status") == "False",
        timeout=60,
        what="the violation to clear once the policy is gone",
    )
    st = wait_reconciled(kube, namespace, "eta")
    assert st["phase"] == "Running"
    assert kube.get_json("deployment", "eta", "-n", namespace)["spec"]["replicas"] == 2


def test_fleet_kill_switch_suspends_and_lifting_it_resumes(
    operator: OperatorProcess, kube: Kube, namespace: str
) -> None:
    kube.apply(agent("theta", namespace))
    wait_reconciled(kube, namespace, "theta")
    name = f"kill-{namespace}"[:63]
    kube.apply(agent_policy(name, namespaces=[namespace], suspendAll=True))
    try:
        st = poll(
            lambda: phase_is(kube, namespace, "theta", "Suspended"),
            timeout=60,
            what="the kill switch",
        )
        assert condition(st, "Suspended")["reason"] == "FleetKillSwitch"
        assert kube.get_json("deployment", "theta", "-n", namespace)["spec"]["replicas"] == 0
        kube.kubectl("patch", "agentpolicy", name, "--type=merge", "-p", '{"spec":{"suspendAll":false}}')
        poll(
            lambda: condition(status(kube, namespace, "theta"), "Suspended").get("status") == "False",
            timeout=60,
            what="lifting the kill switch to resume the agent",
        )
        st = wait_reconciled(kube, namespace, "theta")
        assert condition(st, "Suspended")["status"] == "False"
        assert kube.get_json("deployment", "theta", "-n", namespace)["spec"]["replicas"] == 2
    finally:
        kube.kubectl("delete", "agentpolicy", name, check=False)


def test_hpa_can_target_an_agent_deployment(operator: OperatorProcess, kube: Kube, namespace: str) -> None:
    kube.apply(agent("iota", namespace))
    wait_reconciled(kube, namespace, "iota")
    scale = json.loads(
        kube.kubectl(
            "get", "--raw", f"/apis/agentfleet.dev/v1alpha1/namespaces/{namespace}/agentdeployments/iota/scale"
        ).stdout
    )
    assert scale["spec"]["replicas"] == 2
    assert scale["status"]["selector"] == "agentfleet.dev/agent=iota,app.kubernetes.io/managed-by=agentfleet"
    kube.apply(
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "iota", "namespace": namespace},
            "spec": {
                "scaleTargetRef": {"apiVersion": "agentfleet.dev/v1alpha1", "kind": "AgentDeployment", "name": "iota"},
                "minReplicas": 3,
                "maxReplicas": 5,
                "metrics": [
                    {
                        "type": "Resource",
                        "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}},
                    }
                ],
            },
        }
    )
    # The HPA controller reads the scale subresource and enforces minReplicas through it.
    poll(
        lambda: kube.get_json("agd", "iota", "-n", namespace)["spec"]["replicas"] == 3,
        timeout=60,
        what="the HPA to scale the AgentDeployment to minReplicas",
    )
    hpa = kube.get_json("hpa", "iota", "-n", namespace)
    able = next(c for c in hpa["status"]["conditions"] if c["type"] == "AbleToScale")
    assert able["status"] == "True", able
    poll(
        lambda: kube.get_json("deployment", "iota", "-n", namespace)["spec"]["replicas"] == 3,
        timeout=30,
        what="the Deployment to follow",
    )


def test_operator_killed_mid_reconcile_converges_without_duplicates(
    operator: OperatorProcess, kube: Kube, namespace: str
) -> None:
    names = [f"fleet-{i}" for i in range(12)]
    operator.stop()
    try:
        kube.apply([agent(n, namespace, replicas=1) for n in names])
        operator.start()
        poll(
            lambda: any(status(kube, namespace, n).get("currentRevision") for n in names),
            timeout=60,
            what="the first reconcile",
        )
        operator.stop(kill=True)  # SIGKILL: no graceful shutdown, some agents half done
    finally:
        operator.start()
    revs = {n: wait_reconciled(kube, namespace, n)["currentRevision"] for n in names}
    crs = kube.get_json("controllerrevisions", "-n", namespace)["items"]
    cms = [
        c
        for c in kube.get_json("configmaps", "-n", namespace)["items"]
        if c["metadata"].get("labels", {}).get("app.kubernetes.io/managed-by") == "agentfleet"
    ]
    deps = kube.get_json("deployments", "-n", namespace)["items"]
    assert sorted(r["metadata"]["name"] for r in crs) == sorted(f"{n}-{revs[n]}" for n in names)
    assert all(r["revision"] == 1 for r in crs)
    assert sorted(c["metadata"]["name"] for c in cms) == sorted(f"{n}-guard-{revs[n]}" for n in names)
    assert sorted(d["metadata"]["name"] for d in deps) == sorted(names)


def test_examples_apply_cleanly_and_reconcile(operator: OperatorProcess, kube: Kube, namespace: str) -> None:
    docs = [d for f in sorted((ROOT / "examples").glob("*.yaml")) for d in yaml.safe_load_all(Path(f).read_text())]
    agents = [d for d in docs if d["kind"] == "AgentDeployment"]
    policy = next(d for d in docs if d["kind"] == "AgentPolicy")
    assert len(agents) >= 3
    policy["metadata"]["name"] = f"examples-{namespace}"[:63]
    policy["spec"]["namespaces"] = [namespace]
    kube.kubectl("create", "secret", "generic", "openai-api-key", "-n", namespace, "--from-literal=api-key=sk-test")
    kube.kubectl("create", "secret", "generic", "pager-token", "-n", namespace, "--from-literal=token=t")
    kube.kubectl("create", "configmap", "research-prompts", "-n", namespace, "--from-literal=system.txt=Research.")
    kube.apply(policy)
    try:
        for a in agents:
            a["metadata"]["namespace"] = namespace
        kube.apply(agents)
        for a in agents:
            st = wait_reconciled(kube, namespace, a["metadata"]["name"])
            assert st["phase"] == "Running", (a["metadata"]["name"], st)
    finally:
        kube.kubectl("delete", "agentpolicy", policy["metadata"]["name"], check=False)
