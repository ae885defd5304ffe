"""render: table-driven expectations for each child, plus properties over generated specs."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from agentfleet.api.guardconfig import GuardConfig
from agentfleet.api.types import AgentDeployment, Pricing
from agentfleet.kube.wire import apply_patch_body
from agentfleet.render import (
    CHILD_KINDS,
    RenderError,
    RenderSettings,
    child_names,
    label_selector,
    labels,
    object_key,
    render,
    render_controller_revision,
    revision_hash,
    selector,
)
from tests.support.strategies import agent_deployments

pytestmark = pytest.mark.unit

UID = "0b6f8a4e-3c1d-4f7e-9a51-2d8c7e6b5a40"
BASE: dict[str, Any] = {
    "metadata": {"name": "support", "namespace": "team-a", "uid": UID},
    "spec": {
        "agent": {
            "image": "ghcr.io/acme/support-agent:1.0",
            "model": {"name": "gpt-4o-mini", "endpoint": "https://api.openai.com/v1"},
        }
    },
}


def merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in patch.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def agent(**spec: Any) -> AgentDeployment:
    """BASE with ``spec`` merged in (camelCase keys, as in a manifest)."""
    return AgentDeployment.model_validate(merge(BASE, {"spec": spec}))


def with_key(**spec: Any) -> AgentDeployment:
    return agent(**merge({"agent": {"model": {"apiKeySecretRef": {"name": "openai", "key": "token"}}}}, spec))


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind]
    return found


def kinds(objects: list[dict[str, Any]]) -> list[str]:
    return [o["kind"] for o in objects]


def pod(agent_: AgentDeployment, **kw: Any) -> dict[str, Any]:
    spec: dict[str, Any] = render(agent_, **kw).pod_template["spec"]
    return spec


def containers(pod_spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod_spec["initContainers"], *pod_spec["containers"]]


def container(pod_spec: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in containers(pod_spec) if c["name"] == name]
    return found


def env_of(pod_spec: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(pod_spec, "agent")["env"]}


def egress_peers(np: dict[str, Any]) -> list[tuple[tuple[str, ...], tuple[int, ...]]]:
    """(ipBlock CIDRs, TCP ports) of each ipBlock egress rule."""
    out = []
    for rule in np["spec"]["egress"]:
        cidrs = tuple(p["ipBlock"]["cidr"] for p in rule["to"] if "ipBlock" in p)
        if cidrs:
            out.append((cidrs, tuple(p["port"] for p in rule.get("ports", []))))
    return out


K8S_READ = [{"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list"]}]


# --------------------------------------------------------------------------- object set


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({}, ["ServiceAccount", "ConfigMap", "Service", "NetworkPolicy", "Deployment"]),
        (
            {"permissions": {"kubernetes": K8S_READ}},
            ["ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Service", "NetworkPolicy", "Deployment"],
        ),
    ],
    ids=["no-k8s-permissions", "k8s-permissions"],
)
def test_objects_in_apply_order(spec: dict[str, Any], expected: list[str]) -> None:
    assert kinds(render(agent(**spec)).objects) == expected


def test_every_object_is_labelled_namespaced_and_owned() -> None:
    rendered = render(with_key(permissions={"kubernetes": K8S_READ}))
    for obj in rendered.objects:
        meta = obj["metadata"]
        assert meta["namespace"] == "team-a"
        assert meta["labels"].items() >= selector("support").items()
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "agentfleet.dev/v1alpha1",
                "kind": "AgentDeployment",
                "name": "support",
                "uid": UID,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        assert (obj["apiVersion"], obj["kind"]) in CHILD_KINDS


@pytest.mark.parametrize(
    ("kind", "name", "has_revision"),
    [
        ("ServiceAccount", "support-agent", False),
        ("Role", "support-agent", False),
        ("RoleBinding", "support-agent", False),
        ("ConfigMap", "support-guard-{rev}", True),
        ("Service", "support-metrics", False),
        ("NetworkPolicy", "support", False),
        ("Deployment", "support", True),
    ],
)
def test_names_and_revision_labels(kind: str, name: str, has_revision: bool) -> None:
    rendered = render(agent(permissions={"kubernetes": K8S_READ}))
    obj = by_kind(rendered.objects, kind)
    assert obj["metadata"]["name"] == name.format(rev=rendered.revision)
    assert (obj["metadata"]["labels"].get("agentfleet.dev/revision") == rendered.revision) is has_revision


def test_labels_selector_and_child_names() -> None:
    assert selector("a") == {"app.kubernetes.io/managed-by": "agentfleet", "agentfleet.dev/agent": "a"}
    assert labels("a", "0123456789") == {**selector("a"), "agentfleet.dev/revision": "0123456789"}
    assert labels("a") == selector("a")
    assert label_selector("a") == "app.kubernetes.io/managed-by=agentfleet,agentfleet.dev/agent=a"
    names = child_names("a")
    assert (names.config_map("r1"), names.controller_revision("r1")) == ("a-guard-r1", "a-r1")
    support = child_names("support")
    rendered = render(agent())
    assert [object_key(o)[2] for o in rendered.objects] == [
        support.service_account,
        support.config_map(rendered.revision),
        support.service,
        support.network_policy,
        support.deployment,
    ]


@pytest.mark.parametrize(
    ("name", "service"),
    [
        ("support", "support-metrics"),
        ("7eleven", "a7eleven-metrics"),
        ("a" * 63, None),
    ],
)
def test_service_name_is_a_valid_dns1035_label(name: str, service: str | None) -> None:
    got = child_names(name).service
    assert len(got) <= 63 and got[0].isalpha() and got.endswith("-metrics")
    if service is not None:
        assert got == service
    assert child_names(name).service == got  # deterministic


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ({"name": "Bad_Name"}, "DNS label"),
        ({"name": "a" * 64}, "DNS label"),
        ({"name": "a.b"}, "DNS label"),
        ({"namespace": None}, "namespace"),
        ({"uid": None}, "uid"),
    ],
)
def test_unusable_metadata_is_a_clear_error(metadata: dict[str, Any], message: str) -> None:
    raw = merge(BASE, {"metadata": metadata})
    with pytest.raises(RenderError, match=message):
        render(AgentDeployment.model_validate(raw))


# --------------------------------------------------------------------------- identity and RBAC


@pytest.mark.parametrize(
    ("permissions", "mounted"),
    [({}, False), ({"kubernetes": []}, False), ({"kubernetes": K8S_READ}, True)],
    ids=["none", "empty", "granted"],
)
def test_token_is_mounted_only_with_kubernetes_permissions(permissions: dict[str, Any], mounted: bool) -> None:
    rendered = render(agent(permissions=permissions))
    assert by_kind(rendered.objects, "ServiceAccount")["automountServiceAccountToken"] is mounted
    assert rendered.pod_template["spec"]["automountServiceAccountToken"] is mounted
    assert rendered.pod_template["spec"]["serviceAccountName"] == "support-agent"
    assert ("Role" in kinds(rendered.objects)) is mounted


@pytest.mark.parametrize(
    "rules",
    [
        K8S_READ,
        [
            {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get"], "resourceNames": ["web"]},
            {"apiGroups": ["", "batch"], "resources": ["jobs", "configmaps"], "verbs": ["list", "watch"]},
        ],
    ],
)
def test_role_holds_exactly_the_granted_rules(rules: list[dict[str, Any]]) -> None:
    objects = render(agent(permissions={"kubernetes": rules})).objects
    assert by_kind(objects, "Role")["rules"] == rules
    binding = by_kind(objects, "RoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "support-agent",
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "support-agent", "namespace": "team-a"}]


def test_rule_without_api_groups_is_rejected_not_widened() -> None:
    bad = [{"apiGroups": [], "resources": ["pods"], "verbs": ["get"]}]
    with pytest.raises(ValidationError, match=r"apiGroups"):
        agent(permissions={"kubernetes": bad})


# --------------------------------------------------------------------------- pod hardening


HARDENED = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "privileged": False,
    "capabilities": {"drop": ["ALL"]},
}


@pytest.mark.parametrize("container_name", ["agent", "guard"])
@pytest.mark.parametrize("spec", [{}, {"permissions": {"kubernetes": K8S_READ}}], ids=["plain", "k8s"])
def test_every_container_is_hardened(container_name: str, spec: dict[str, Any]) -> None:
    pod_spec = pod(with_key(**spec))
    assert container(pod_spec, container_name)["securityContext"] == HARDENED


def test_pod_security_context() -> None:
    pod_spec = pod(agent())
    assert pod_spec["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "runAsGroup": 65532,
        "fsGroup": 65532,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert pod_spec["enableServiceLinks"] is False
    assert [c["name"] for c in containers(pod_spec)] == ["guard", "agent"]


def test_guard_is_a_native_sidecar_with_probes_and_resources() -> None:
    guard = container(
        pod(agent(), settings=RenderSettings(guard_image="reg/guard:2", guard_port=4100, metrics_port=9100)), "guard"
    )
    assert guard["restartPolicy"] == "Always"
    assert guard["image"] == "reg/guard:2"
    assert guard["args"] == ["guard", "--config", "/etc/agentfleet/guard.yaml"]
    # Only the metrics listener is exposed; probes use it; the LLM API stays on loopback.
    assert guard["ports"] == [{"name": "metrics", "containerPort": 9100, "protocol": "TCP"}]
    assert guard["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert guard["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert guard["startupProbe"]["httpGet"]["path"] == "/healthz"  # the agent starts after it passes
    assert guard["resources"]["requests"] and guard["resources"]["limits"]


def mounts(pod_spec: dict[str, Any], name: str) -> dict[str, str]:
    return {m["name"]: m["mountPath"] for m in container(pod_spec, name)["volumeMounts"]}


def test_api_key_is_projected_alone_and_mounted_only_into_the_guard() -> None:
    pod_spec = pod(with_key())
    (volume,) = [v for v in pod_spec["volumes"] if "secret" in v]
    assert volume["secret"] == {
        "secretName": "openai",
        "items": [{"key": "token", "path": "token"}],
        "defaultMode": 0o440,
    }
    assert mounts(pod_spec, "guard")[volume["name"]] == "/var/run/agentfleet/upstream"
    assert volume["name"] not in mounts(pod_spec, "agent")
    assert "/var/run/agentfleet/upstream/token" not in json.dumps(container(pod_spec, "agent"))
    assert render(with_key()).guard_config.api_key_file == "/var/run/agentfleet/upstream/token"


def test_without_a_key_nothing_is_mounted() -> None:
    rendered = render(agent())
    assert not [v for v in rendered.pod_template["spec"]["volumes"] if "secret" in v]
    assert rendered.guard_config.api_key_file is None


def test_writable_paths_are_empty_dirs() -> None:
    pod_spec = pod(with_key())
    empty_dirs = {v["name"] for v in pod_spec["volumes"] if "emptyDir" in v}
    assert mounts(pod_spec, "agent") == {"agent-tmp": "/tmp"}
    guard = mounts(pod_spec, "guard")
    assert guard["guard-tmp"] == "/tmp" and guard["audit-log"] == "/var/log/agentfleet"
    assert guard["guard-config"] == "/etc/agentfleet"
    assert {"agent-tmp", "guard-tmp", "audit-log"} == empty_dirs


# --------------------------------------------------------------------------- agent container


def test_agent_talks_to_its_guard() -> None:
    env = env_of(pod(agent(), settings=RenderSettings(guard_port=4100)))
    rendered = render(agent())
    assert env["OPENAI_BASE_URL"] == "http://127.0.0.1:4100/v1"
    assert env["ANTHROPIC_BASE_URL"] == "http://127.0.0.1:4100"  # the Anthropic SDKs add /v1/messages
    assert env["AGENTFLEET_TOOLS_URL"] == "http://127.0.0.1:4100/tools"
    assert env["OPENAI_API_KEY"] and "secretKeyRef" not in json.dumps(env["OPENAI_API_KEY"])
    assert env["AGENTFLEET_AGENT"] == "support" and env["AGENTFLEET_NAMESPACE"] == "team-a"
    assert env_of(rendered.pod_template["spec"])["AGENTFLEET_REVISION"] == rendered.revision


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        (None, None),
        ({"inline": "Be brief."}, "Be brief."),
        (
            {"configMapKeyRef": {"name": "prompts", "key": "v2"}},
            {"configMapKeyRef": {"name": "prompts", "key": "v2"}},
        ),
    ],
    ids=["none", "inline", "configmap"],
)
def test_system_prompt(prompt: dict[str, Any] | None, expected: Any) -> None:
    spec = {"agent": {"systemPrompt": prompt}} if prompt else {}
    assert env_of(pod(agent(**spec))).get("AGENTFLEET_SYSTEM_PROMPT") == expected


def test_declared_container_fields_and_env() -> None:
    spec = {
        "agent": {
            "command": ["python", "-m", "bot"],
            "args": ["--verbose"],
            "resources": {"requests": {"cpu": "100m"}, "limits": {"memory": "256Mi"}},
            "env": [
                {"name": "LOG_LEVEL", "value": "debug"},
                {"name": "DB_PASSWORD", "secretKeyRef": {"name": "db", "key": "password"}},
                {"name": "OPENAI_BASE_URL", "value": "https://evil.example/v1"},
                {"name": "AGENTFLEET_REVISION", "value": "spoofed"},
            ],
        },
        "permissions": {"secrets": ["db"]},
    }
    agent_container = container(pod(agent(**spec)), "agent")
    assert agent_container["command"] == ["python", "-m", "bot"]
    assert agent_container["args"] == ["--verbose"]
    assert agent_container["resources"] == {"requests": {"cpu": "100m"}, "limits": {"memory": "256Mi"}}
    names = [e["name"] for e in agent_container["env"]]
    assert len(names) == len(set(names)), "operator-owned variables cannot be overridden"
    env = env_of(pod(agent(**spec)))
    assert env["LOG_LEVEL"] == "debug"
    assert env["DB_PASSWORD"] == {"secretKeyRef": {"name": "db", "key": "password"}}
    assert env["OPENAI_BASE_URL"] == "http://127.0.0.1:4000/v1"
    assert env["AGENTFLEET_REVISION"] != "spoofed"


def test_env_secret_outside_permissions_is_refused() -> None:
    spec = {"agent": {"env": [{"name": "X", "secretKeyRef": {"name": "finance-db"}}]}}
    with pytest.raises(RenderError, match="finance-db"):
        render(agent(**spec))


@pytest.mark.parametrize(("duration", "grace"), [("5s", 30), ("90s", 90), ("2m30s", 150), ("15m", 300), ("1500ms", 30)])
def test_grace_period_follows_task_duration_within_bounds(duration: str, grace: int) -> None:
    assert pod(agent(budgets={"maxTaskDuration": duration}))["terminationGracePeriodSeconds"] == grace


# --------------------------------------------------------------------------- deployment, service


@pytest.mark.parametrize(
    ("spec", "override", "expected"),
    [
        ({"replicas": 3}, None, 3),
        ({"replicas": 3, "suspended": True}, None, 0),
        ({"replicas": 3}, 0, 0),
        ({"replicas": 3, "suspended": True}, 5, 5),
    ],
)
def test_replicas(spec: dict[str, Any], override: int | None, expected: int) -> None:
    deployment = by_kind(render(agent(**spec), replicas=override).objects, "Deployment")
    assert deployment["spec"]["replicas"] == expected


def test_negative_replica_override_is_refused() -> None:
    with pytest.raises(RenderError):
        render(agent(), replicas=-1)


def test_deployment() -> None:
    rendered = render(agent())
    deployment = by_kind(rendered.objects, "Deployment")
    assert deployment["spec"]["selector"] == {"matchLabels": selector("support")}
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    assert deployment["spec"]["template"] == rendered.pod_template
    assert deployment["spec"]["template"] is not rendered.pod_template
    meta = rendered.pod_template["metadata"]
    assert meta["labels"] == labels("support", rendered.revision)
    assert meta["annotations"]["agentfleet.dev/revision"] == rendered.revision
    config_map = by_kind(rendered.objects, "ConfigMap")
    (config_volume,) = [v for v in rendered.pod_template["spec"]["volumes"] if "configMap" in v]
    assert config_volume["configMap"]["name"] == config_map["metadata"]["name"]


def test_metrics_service() -> None:
    svc = by_kind(render(agent(), settings=RenderSettings(guard_port=4100, metrics_port=9100)).objects, "Service")
    assert svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["selector"] == selector("support")
    assert svc["spec"]["ports"] == [{"name": "metrics", "port": 9100, "targetPort": "metrics", "protocol": "TCP"}]
    assert svc["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert svc["metadata"]["labels"]["agentfleet.dev/metrics"] == "true"


# --------------------------------------------------------------------------- network policy


@pytest.mark.parametrize(
    ("endpoint", "upstreams", "expected"),
    [
        ("https://api.openai.com/v1", ("0.0.0.0/0",), [(("0.0.0.0/0",), (443,))]),
        ("http://api.internal.example/v1", ("0.0.0.0/0",), [(("0.0.0.0/0",), (80,))]),
        (
            "https://api.openai.com:8443/v1",
            ("203.0.113.0/24", "2001:db8::/32"),
            [(("203.0.113.0/24", "2001:db8::/32"), (8443,))],
        ),
        ("http://10.1.2.3:8000/v1", ("0.0.0.0/0",), [(("10.1.2.3/32",), (8000,))]),
        ("https://10.1.2.3/v1", ("0.0.0.0/0",), [(("10.1.2.3/32",), (443,))]),
        ("http://[2001:db8::7]:8080/v1", ("0.0.0.0/0",), [(("2001:db8::7/128",), (8080,))]),
        ("http://[::ffff:10.0.0.1]/v1", ("0.0.0.0/0",), [(("10.0.0.1/32",), (80,))]),  # API rejects mapped
    ],
    ids=["hostname-https", "hostname-http", "hostname-custom-cidrs", "ipv4-port", "ipv4-default", "ipv6", "mapped"],
)
def test_model_endpoint_egress(endpoint: str, upstreams: tuple[str, ...], expected: list[Any]) -> None:
    np = by_kind(
        render(
            agent(agent={"model": {"endpoint": endpoint}}), settings=RenderSettings(upstream_cidrs=upstreams)
        ).objects,
        "NetworkPolicy",
    )
    assert egress_peers(np) == expected


def test_tool_endpoints_and_egress_allowlist() -> None:
    spec = {
        "agent": {
            "tools": [
                {"name": "search", "endpoint": "https://search.example/q"},
                {"name": "crm", "endpoint": "http://10.0.0.9:8080/crm"},
                {"name": "payments", "endpoint": "http://10.0.0.66/pay"},
                {"name": "calc"},
            ]
        },
        "permissions": {
            "tools": ["search", "crm", "calc"],
            "egress": [
                {"cidr": "198.51.100.7/24", "ports": [5432, 5432]},
                {"cidr": "192.0.2.0/28"},
                {"cidr": "::ffff:203.0.113.0/120", "ports": [443]},
            ],
        },
    }
    peers = egress_peers(by_kind(render(agent(**spec)).objects, "NetworkPolicy"))
    assert peers == [
        (("0.0.0.0/0",), (443,)),  # model and the search tool share a rule
        (("10.0.0.9/32",), (8080,)),
        (("198.51.100.0/24",), (5432,)),  # canonical CIDR, ports deduplicated
        (("192.0.2.0/28",), ()),  # no ports: all ports
        (("203.0.113.0/24",), (443,)),  # IPv4-mapped IPv6 as IPv4
    ]
    assert "10.0.0.66" not in json.dumps(peers), "a tool that is not allowed gets no egress"


def test_dns_sub_agents_and_ingress() -> None:
    settings_ = RenderSettings(dns_namespace="dns", guard_port=4100, metrics_from_namespaces=("prom", "mon"))
    spec = by_kind(
        render(agent(permissions={"subAgents": ["researcher", "planner"]}), settings=settings_).objects,
        "NetworkPolicy",
    )["spec"]
    assert spec["podSelector"] == {"matchLabels": selector("support")}
    assert spec["policyTypes"] == ["Egress", "Ingress"]
    assert spec["egress"][0] == {
        "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "dns"}}}],
        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
    }
    # Without the cluster's signing keys (these settings) calls between agents are off: no path to
    # another agent's guard, and nothing reaches this guard but Prometheus, on metrics (with the
    # keys, see tests/unit/test_render_peers.py).
    assert "podSelector" not in json.dumps(spec["egress"])
    assert spec["ingress"] == [
        {
            "from": [
                {
                    "namespaceSelector": {
                        "matchExpressions": [
                            {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["mon", "prom"]}
                        ]
                    }
                }
            ],
            "ports": [{"protocol": "TCP", "port": 9090}],
        }
    ]
    assert 4100 not in [p["port"] for rule in spec["ingress"] for p in rule["ports"]]
    no_scrapers = RenderSettings(metrics_from_namespaces=())
    assert by_kind(render(agent(), settings=no_scrapers).objects, "NetworkPolicy")["spec"]["ingress"] == []


@pytest.mark.parametrize(
    "endpoint", ["http://host:0/v1", "http://host:99999/v1", "http://:8080/v1", "http://[fe80::1%eth0]/v1"]
)
def test_unusable_endpoint_is_a_clear_error(endpoint: str) -> None:
    with pytest.raises(RenderError, match=r"agent\.model\.endpoint"):
        render(agent(agent={"model": {"endpoint": endpoint}}))


# --------------------------------------------------------------------------- guard config


def test_guard_config() -> None:
    spec = {
        "agent": {"tools": [{"name": "search"}, {"name": "calc"}]},
        "permissions": {"tools": ["search"]},
        "budgets": {"tokensPerHour": 10000, "costPerDay": "5.00"},
        "guard": {"injection": "Block"},
    }
    rendered = render(with_key(**spec), settings=RenderSettings(guard_port=4100))
    config = rendered.guard_config
    assert (config.namespace, config.agent, config.revision) == ("team-a", "support", rendered.revision)
    assert (config.listen_host, config.listen_port) == ("127.0.0.1", 4100)
    assert (config.metrics_host, config.metrics_port) == ("0.0.0.0", 9090)
    assert [t.name for t in config.tools] == ["search", "calc"]
    assert config.allowed_tools == ["search"]
    assert config.budgets.tokens_per_hour == 10000 and config.budgets.cost_per_day == "5.00"
    assert config.guard.injection == "Block"
    assert config.audit.file == "/var/log/agentfleet/audit.jsonl" and config.audit.stdout
    data = by_kind(rendered.objects, "ConfigMap")["data"]
    assert list(data) == ["guard.yaml"]
    assert GuardConfig.model_validate(yaml.safe_load(data["guard.yaml"])) == config


def test_policy_pricing_wins_and_rolls_pods_without_a_new_revision() -> None:
    declared = agent(agent={"model": {"pricing": {"inputPerMillion": "1", "outputPerMillion": "2"}}})
    policy_price = Pricing(input_per_million="0.15", output_per_million="0.60")
    plain, priced = render(declared), render(declared, pricing=policy_price)
    assert plain.guard_config.pricing == Pricing(input_per_million="1", output_per_million="2")
    assert priced.guard_config.pricing == policy_price
    assert priced.guard_config.model.pricing == policy_price
    assert priced.revision == plain.revision
    hash_key = "agentfleet.dev/guard-config-hash"
    assert (
        priced.pod_template["metadata"]["annotations"][hash_key]
        != plain.pod_template["metadata"]["annotations"][hash_key]
    )


# --------------------------------------------------------------------------- revisions


IRRELEVANT: list[dict[str, Any]] = [
    {"replicas": 7},
    {"suspended": True},
    {"guardrails": [{"name": "errors", "metric": "errorRate", "threshold": "0.1", "action": "Suspend"}]},
    {"analysis": {"interval": "1m"}},
    {"revisionHistoryLimit": 2},
    {"budgets": {"maxToolCallsPerTask": 100}},  # spelling out a default
]
RELEVANT: list[dict[str, Any]] = [
    {"agent": {"systemPrompt": {"inline": "You are terse."}}},
    {"agent": {"model": {"name": "gpt-4o"}}},
    {"agent": {"image": "ghcr.io/acme/support-agent:1.1"}},
    {"budgets": {"maxToolCallsPerTask": 5}},
    {"budgets": {"costPerDay": "3.50"}},
    {"permissions": {"egress": [{"cidr": "10.0.0.0/8"}]}},
    {"guard": {"loopThreshold": 5}},
]


@pytest.mark.parametrize("patch", IRRELEVANT, ids=lambda p: json.dumps(p)[:40])
def test_revision_ignores_fields_that_do_not_shape_the_pod(patch: dict[str, Any]) -> None:
    assert revision_hash(agent(**patch).spec) == revision_hash(agent().spec)


@pytest.mark.parametrize("patch", RELEVANT, ids=lambda p: json.dumps(p)[:40])
def test_revision_changes_with_pod_shaping_fields(patch: dict[str, Any]) -> None:
    assert revision_hash(agent(**patch).spec) != revision_hash(agent().spec)


def test_revision_format_and_stability() -> None:
    revision = revision_hash(agent().spec)
    assert len(revision) == 10 and int(revision, 16) >= 0
    assert revision == render(agent()).revision
    assert revision == revision_hash(AgentDeployment.model_validate(json.loads(json.dumps(merge(BASE, {})))).spec)


def test_controller_revision() -> None:
    subject = with_key(agent={"systemPrompt": {"inline": "hi"}}, replicas=4)
    rendered = render(subject)
    cr = render_controller_revision(subject, rendered, 3)
    assert cr["apiVersion"] == "apps/v1" and cr["kind"] == "ControllerRevision"
    assert cr["metadata"]["name"] == f"support-{rendered.revision}"
    assert cr["metadata"]["labels"] == labels("support", rendered.revision)
    assert cr["metadata"]["ownerReferences"][0]["uid"] == UID
    assert cr["revision"] == 3
    assert cr["data"]["template"] == rendered.pod_template
    assert cr["data"]["configMap"] == by_kind(rendered.objects, "ConfigMap")["data"]
    assert set(cr["data"]["spec"]) == {"agent", "budgets", "permissions", "guard"}
    restored = AgentDeployment.model_validate(merge(BASE, {"spec": cr["data"]["spec"]}))
    assert revision_hash(restored.spec) == rendered.revision


def test_controller_revision_refuses_a_foreign_rendering() -> None:
    with pytest.raises(RenderError):
        render_controller_revision(agent(guard={"loopThreshold": 9}), render(agent()), 1)


# --------------------------------------------------------------------------- properties


@settings(max_examples=150, deadline=None)
@given(agent_deployments())
def test_render_is_deterministic(subject: AgentDeployment) -> None:
    first, second = render(subject), render(AgentDeployment.model_validate(subject.model_dump(by_alias=True)))
    assert json.dumps(first.objects) == json.dumps(second.objects)
    assert first == second


@settings(max_examples=150, deadline=None)
@given(agent_deployments(), st.none() | st.integers(0, 50))
def test_rendered_invariants(subject: AgentDeployment, replicas: int | None) -> None:
    rendered = render(subject, replicas=replicas)
    spec = subject.spec
    assert rendered.revision == revision_hash(spec)
    objects = rendered.objects
    assert len({object_key(o) for o in objects}) == len(objects)
    for obj in objects:
        assert obj["metadata"]["namespace"] == subject.metadata.namespace
        assert obj["metadata"]["ownerReferences"][0]["uid"] == subject.metadata.uid
    pod_spec = rendered.pod_template["spec"]
    for c in containers(pod_spec):
        assert c["securityContext"] == HARDENED
    granted = bool(spec.permissions.kubernetes)
    assert pod_spec["automountServiceAccountToken"] is granted
    assert ("Role" in kinds(objects)) is granted
    secret_volumes = {v["name"] for v in pod_spec["volumes"] if "secret" in v}
    assert not secret_volumes & set(mounts(pod_spec, "agent"))
    env = container(pod_spec, "agent")["env"]
    assert len({e["name"] for e in env}) == len(env)
    deployment = by_kind(objects, "Deployment")
    default = 0 if spec.suspended else spec.replicas
    assert deployment["spec"]["replicas"] == (default if replicas is None else replicas)
    assert deployment["spec"]["template"] == rendered.pod_template
    config = yaml.safe_load(by_kind(objects, "ConfigMap")["data"]["guard.yaml"])
    assert GuardConfig.model_validate(config) == rendered.guard_config
    revision = render_controller_revision(subject, rendered, 1)
    assert json.loads(json.dumps(revision)) == revision


@settings(max_examples=100, deadline=None)
@given(agent_deployments(), st.integers(0, 20), st.booleans())
def test_revision_ignores_scale_and_suspension(subject: AgentDeployment, replicas: int, suspended: bool) -> None:
    changed = subject.spec.model_copy(update={"replicas": replicas, "suspended": suspended, "guardrails": None})
    assert revision_hash(changed) == revision_hash(subject.spec)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_apply_patch_body_survives_a_yaml_decoder(text: str) -> None:
    """The API server decodes apply patches as YAML; PyYAML stands in for it here (the
    integration suite sends the real thing)."""
    obj = {"data": {"k": text, "\x7f\x85": [text]}}
    body = apply_patch_body(obj)
    assert json.loads(body) == obj
    assert yaml.safe_load(body) == obj
