"""A hostile tenant, whose only right is to manage AgentDeployments in one namespace, tries every
known way to get more through the operator. Each attempt must be refused with a clear message
(admission, or a status condition and an Event), nothing outside the policy may be created, and
the agent's ServiceAccount may hold no right beyond the policy.

The operator runs with the chart's RBAC and the chart's default platform file (deny by default):
see conftest.py."""

from __future__ import annotations

from typing import Any

import pytest

from hack.harness.agents import agent_policy, condition, status
from hack.harness.kube import Kube, poll
from tests.security.support import API_SERVICE_IP, World, can_i, refused, warning_events

pytestmark = pytest.mark.integration

READ_PODS = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]


def tenant_agent(name: str, ns: str, endpoint: str = "https://api.openai.com/v1", **spec: Any) -> dict[str, Any]:
    """An agent the chart's default policy allows: a public endpoint, no Secret, nothing else."""
    body: dict[str, Any] = {
        "apiVersion": "agentfleet.dev/v1alpha1",
        "kind": "AgentDeployment",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "replicas": 1,
            "agent": {"image": "registry.invalid/agent:1", "model": {"name": "m", "endpoint": endpoint}},
        },
    }
    for key, value in spec.items():
        if key in {"env", "resources"}:
            body["spec"]["agent"][key] = value
        elif key == "apiKey":
            body["spec"]["agent"]["model"]["apiKeySecretRef"] = {"name": value}
        else:
            body["spec"][key] = value
    return body


def exists(kube: Kube, kind: str, name: str, ns: str) -> bool:
    return kube.kubectl("get", kind, name, "-n", ns, "-o", "name", check=False).returncode == 0


def running(kube: Kube, ns: str, name: str) -> dict[str, Any]:
    """Wait until the agent's current revision is applied (Progressing=True)."""
    return poll(
        lambda: (
            (st := status(kube, ns, name)).get("currentRevision")
            and condition(st, "Progressing").get("status") == "True"
            and st
        ),
        timeout=30,
        what=f"{ns}/{name} to be applied",
    )


def test_the_tenant_holds_nothing_but_agentdeployments(world: World) -> None:
    ns, tenant = world.tenant_namespace()
    for verb, resource in [
        ("create", "deployments"),
        ("create", "serviceaccounts"),
        ("create", "roles"),
        ("get", "secrets"),
        ("create", "networkpolicies"),
    ]:
        assert tenant.kubectl("auth", "can-i", verb, resource, "-n", ns, check=False).stdout.strip() == "no"
    assert tenant.kubectl("auth", "can-i", "create", "agentdeployments", "-n", ns).stdout.strip() == "yes"


@pytest.mark.parametrize(
    ("victim_kind", "agent_name", "victim_name"),
    [
        ("serviceaccount", "ops", "ops-agent"),  # a ServiceAccount bound to cluster-admin
        ("networkpolicy", "default-deny", "default-deny"),  # the namespace's default-deny policy
        ("role", "app", "app-agent"),  # another workload's Role
        ("deployment", "web", "web"),  # someone's Deployment
        ("service", "db", "db-metrics"),
    ],
)
def test_a_name_collision_never_takes_an_object_over(
    world: World, victim_kind: str, agent_name: str, victim_name: str
) -> None:
    ns, tenant = world.tenant_namespace()
    admin = world.admin
    victims: dict[str, dict[str, Any]] = {
        "serviceaccount": {"apiVersion": "v1", "kind": "ServiceAccount"},
        "networkpolicy": {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
        },
        "role": {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "rules": READ_PODS},
        "deployment": {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "web", "image": "registry.invalid/web:1"}]},
                },
            },
        },
        "service": {"apiVersion": "v1", "kind": "Service", "spec": {"ports": [{"port": 5432}]}},
    }
    victim = {**victims[victim_kind], "metadata": {"name": victim_name, "namespace": ns}}
    admin.apply(victim)
    if victim_kind == "serviceaccount":
        admin.apply(
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": f"admin-{ns}"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
                "subjects": [{"kind": "ServiceAccount", "name": victim_name, "namespace": ns}],
            }
        )
    before = admin.get_json(victim_kind, victim_name, "-n", ns)

    spec: dict[str, Any] = {"permissions": {"kubernetes": READ_PODS}} if victim_kind == "role" else {}
    tenant.apply(tenant_agent(agent_name, ns, **spec))
    found = refused(tenant, ns, agent_name, "Progressing", "NameConflict")
    assert f"{victim_name} already exists and is not owned by this AgentDeployment" in found["message"]
    assert any(e["reason"] == "NameConflict" for e in warning_events(tenant, ns, agent_name))
    assert status(tenant, ns, agent_name)["phase"] == "Degraded"

    after = admin.get_json(victim_kind, victim_name, "-n", ns)
    assert after["metadata"].get("ownerReferences") is None
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"], "the victim was modified"
    # Nothing of the agent was created next to it: the check runs before the first apply.
    assert not exists(admin, "deployment", agent_name, ns) or victim_kind == "deployment"
    assert not exists(admin, "serviceaccount", f"{agent_name}-agent", ns) or victim_kind == "serviceaccount"

    tenant.kubectl("delete", "agd", agent_name, "-n", ns, "--wait=true", "--timeout=30s")
    assert exists(admin, victim_kind, victim_name, ns), "deleting the agent garbage-collected the victim"


def test_an_uncovered_namespace_delegates_only_the_default_policy(world: World) -> None:
    ns, tenant = world.tenant_namespace()
    greedy = [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["create"]},
        {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["rolebindings"], "verbs": ["create"]},
        {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": ["patch"]},
    ]
    tenant.apply(tenant_agent("greedy", ns, permissions={"kubernetes": greedy}))
    found = refused(tenant, ns, "greedy", "PolicyViolation", "PolicyViolation")
    assert "no AgentPolicy covers namespace" in found["message"]
    assert "agentPermissionsCeiling" in found["message"]  # the platform's own check, not only the API server's
    assert not exists(world.admin, "role", "greedy-agent", ns)
    assert not exists(world.admin, "deployment", "greedy", ns)
    assert not can_i(world.admin, ns, "greedy-agent", "create", "pods")

    tenant.apply(tenant_agent("reader", ns, permissions={"kubernetes": READ_PODS}))
    running(tenant, ns, "reader")
    assert can_i(world.admin, ns, "reader-agent", "get", "pods")
    for verb, resource in [("create", "pods"), ("get", "secrets"), ("create", "rolebindings"), ("delete", "pods")]:
        assert not can_i(world.admin, ns, "reader-agent", verb, resource), (verb, resource)


def test_secrets_are_refused_by_default(world: World) -> None:
    ns, tenant = world.tenant_namespace()
    env = [{"name": "DB", "secretKeyRef": {"name": "db-password", "key": "password"}}]
    tenant.apply(tenant_agent("thief", ns, apiKey="db-password", env=env, permissions={"secrets": ["db-password"]}))
    found = refused(tenant, ns, "thief", "PolicyViolation", "PolicyViolation")
    assert "Secrets not in allowedSecrets: db-password" in found["message"]
    assert not exists(world.admin, "deployment", "thief", ns)


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://169.254.169.254/latest/meta-data",
        "http://[::ffff:169.254.169.254]/latest",
        f"https://{API_SERVICE_IP}/api",
        "http://127.0.0.1:4000/v1",
        "http://localhost:8080/v1",
        "http://metadata.google.internal/computeMetadata/v1",
    ],
)
def test_endpoints_into_the_node_metadata_or_cluster_are_refused(world: World, endpoint: str) -> None:
    ns, tenant = world.tenant_namespace()
    tenant.apply(tenant_agent("probe", ns, endpoint=endpoint))
    found = refused(tenant, ns, "probe", "PolicyViolation", "PolicyViolation")
    assert (
        "platform: agent.model.endpoint" in found["message"] and "must name it in allowedEndpoints" in found["message"]
    )
    assert not exists(world.admin, "networkpolicy", "probe", ns)


def test_a_hostname_endpoint_opens_its_port_to_public_addresses_only(world: World) -> None:
    ns, tenant = world.tenant_namespace()
    tenant.apply(tenant_agent("public", ns))
    running(tenant, ns, "public")
    netpol = world.admin.get_json("networkpolicy", "public", "-n", ns)["spec"]
    https = [r for r in netpol["egress"] if r.get("ports") == [{"protocol": "TCP", "port": 443}]]
    assert len(https) == 1, netpol["egress"]
    block = https[0]["to"][0]["ipBlock"]
    assert block["cidr"] == "0.0.0.0/0"
    assert {"169.254.0.0/16", "127.0.0.0/8", "10.96.0.0/16"} <= set(block["except"])
    assert all(r.get("ports") for r in netpol["egress"]), "an egress rule without ports opens every port"


def test_a_rollback_never_restores_withdrawn_permissions(world: World) -> None:
    ns, tenant = world.tenant_namespace()
    policy = f"rb-{ns}"
    world.admin.apply(agent_policy(policy, namespaces=[ns], allowedKubernetesRules=READ_PODS))
    try:
        tenant.apply(tenant_agent("rb", ns, permissions={"kubernetes": READ_PODS}))
        first = running(tenant, ns, "rb")["currentRevision"]
        assert exists(world.admin, "role", "rb-agent", ns)
        tenant.apply(tenant_agent("rb", ns))  # revision 2: no permissions
        poll(lambda: status(tenant, ns, "rb").get("currentRevision") not in {None, first}, timeout=30, what="rev 2")
        poll(lambda: not exists(world.admin, "role", "rb-agent", ns), timeout=30, what="the Role withdrawn")
        # The platform withdraws the permission for good; the tenant asks for revision 1 back.
        world.admin.apply(agent_policy(policy, namespaces=[ns]))
        tenant.kubectl("annotate", "agd", "rb", "-n", ns, "agentfleet.dev/rollback-to=1")
        found = refused(tenant, ns, "rb", "PolicyViolation", "PolicyViolation")
        assert "pinned revision 1" in found["message"]
        assert not exists(world.admin, "role", "rb-agent", ns)
        assert not can_i(world.admin, ns, "rb-agent", "get", "pods")
    finally:
        world.admin.kubectl("delete", "agentpolicy", policy, check=False)


def test_a_namespace_that_becomes_covered_is_judged_again_at_once(world: World) -> None:
    ns, tenant = world.tenant_namespace()
    tenant.apply(tenant_agent("late", ns, permissions={"kubernetes": READ_PODS}))
    running(tenant, ns, "late")
    assert exists(world.admin, "role", "late-agent", ns)
    policy = f"late-{ns}"
    world.admin.apply(agent_policy(policy, namespaceSelector={"matchLabels": {"tier": f"strict-{ns}"}}))
    try:
        world.admin.kubectl("label", "namespace", ns, f"tier=strict-{ns}")
        found = refused(tenant, ns, "late", "PolicyViolation", "PolicyViolation", timeout=20)
        assert f"AgentPolicy {policy}: permissions.kubernetes is not allowed" in found["message"]
        poll(lambda: not exists(world.admin, "role", "late-agent", ns), timeout=20, what="the Role withdrawn")
        assert world.admin.get_json("deployment", "late", "-n", ns)["spec"]["replicas"] == 0
    finally:
        world.admin.kubectl("delete", "agentpolicy", policy, check=False)


def test_specs_the_operator_cannot_carry_out_are_refused_clearly(world: World) -> None:
    ns, tenant = world.tenant_namespace()
    bad_quantity = tenant_agent("lots", ns, resources={"requests": {"cpu": "lots"}})
    res = tenant.kubectl("apply", "-f", "-", input=_json(bad_quantity), check=False)
    assert res.returncode != 0 and "must be a resource quantity" in res.stderr
    overflow = tenant_agent("forever", ns, analysis={"stabilizationWindow": "99999999999h"})
    res = tenant.kubectl("apply", "-f", "-", input=_json(overflow), check=False)
    assert res.returncode != 0 and "stabilizationWindow" in res.stderr
    too_long = tenant_agent("year", ns, analysis={"stabilizationWindow": "9000h"})
    res = tenant.kubectl("apply", "-f", "-", input=_json(too_long), check=False)
    assert res.returncode != 0 and "at most 8760h" in res.stderr

    # Legal at admission, too big to record once escaped: refused on status, nothing applied,
    # and the operator's bookkeeping stays small (no annotation overflow, no slowdown).
    env = [{"name": f"V{i}", "value": "<" * 30000} for i in range(5)]  # 900 KB stored: under etcd's limit
    tenant.kubectl("apply", "--server-side", "-f", "-", input=_json(tenant_agent("huge", ns, env=env)))
    found = refused(tenant, ns, "huge", "Progressing", "InvalidSpec")
    assert "bytes once encoded" in found["message"]
    assert any(e["reason"] == "InvalidSpec" for e in warning_events(tenant, ns, "huge"))
    assert not exists(world.admin, "deployment", "huge", ns)
    annotations = tenant.get_json("agd", "huge", "-n", ns)["metadata"].get("annotations") or {}
    assert sum(len(k) + len(v) for k, v in annotations.items()) < 1024, annotations.keys()

    # The manual kill switch of a neighbour still works at once.
    tenant.apply(tenant_agent("neighbour", ns))
    running(tenant, ns, "neighbour")
    tenant.kubectl("patch", "agd", "neighbour", "-n", ns, "--type=merge", "-p", '{"spec":{"suspended":true}}')
    poll(
        lambda: world.admin.get_json("deployment", "neighbour", "-n", ns)["spec"]["replicas"] == 0,
        timeout=15,
        what="the kill switch",
    )


def _json(obj: Any) -> str:
    import json

    return json.dumps(obj)


def test_zz_the_operator_needed_nothing_beyond_the_charts_rbac(world: World) -> None:
    """Runs last in this module: every refusal above came from the operator's own checks, never
    from an API server 403 (which would mean the chart's RBAC and the operator disagree)."""
    log = world.operator.log_path.read_text(errors="replace").lower()
    problems = [line for line in log.splitlines() if "forbidden" in line or "not enough permissions" in line]
    assert problems == [], "\n".join(problems[:5])
