"""The platform's rules (``policy/platform.py``): deny by default where no AgentPolicy covers a
namespace, the delegation ceiling, endpoints that must never be reached unless named, Secrets and
ConfigMaps bounded by policy, what the NetworkPolicy may open, and the spec size bound."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
import yaml

from agentfleet.api.types import AgentDeployment, AgentPolicy, AgentPolicySpec
from agentfleet.controller import plan as plans
from agentfleet.policy.platform import Platform, all_violations, load_platform, network_allowances
from agentfleet.render import RenderSettings, render

pytestmark = pytest.mark.unit

NS = "team-a"
LABELS = {"kubernetes.io/metadata.name": NS}
CLUSTER = Platform(cluster_cidrs=("10.244.0.0/16", "10.96.0.0/12"))


def agent(endpoint: str = "https://api.openai.com/v1", **spec: Any) -> AgentDeployment:
    body: dict[str, Any] = {
        "metadata": {"name": "a", "namespace": NS, "uid": "u-1"},
        "spec": {"agent": {"image": "x", "model": {"name": "m", "endpoint": endpoint}}},
    }
    for key, value in spec.items():
        if key in {"env", "systemPrompt", "tools"}:
            body["spec"]["agent"][key] = value
        elif key == "apiKey":
            body["spec"]["agent"]["model"]["apiKeySecretRef"] = {"name": value}
        else:
            body["spec"][key] = value
    return AgentDeployment.model_validate(body)


def policy(**spec: Any) -> AgentPolicy:
    return AgentPolicy.model_validate({"metadata": {"name": "p"}, "spec": spec})


def messages(a: AgentDeployment, policies: list[AgentPolicy], platform: Platform = CLUSTER) -> list[str]:
    return [f"{v.policy}: {v.message}" for v in all_violations(a, policies, LABELS, platform)]


def test_an_uncovered_namespace_gets_the_default_policy_not_nothing() -> None:
    reader = agent(permissions={"kubernetes": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]})
    out = messages(reader, [])
    assert len(out) == 1 and out[0].startswith("default (no AgentPolicy covers namespace team-a): ")
    assert "the policy sets no allowedKubernetesRules" in out[0]
    assert messages(agent(apiKey="llm-key"), []) == [
        "default (no AgentPolicy covers namespace team-a): AgentPolicy default (no AgentPolicy covers namespace "
        "team-a): Secrets not in allowedSecrets: llm-key"
    ]
    assert messages(agent(permissions={"egress": [{"cidr": "203.0.113.0/24"}]}), [])
    assert messages(agent(), []) == []  # a public endpoint and nothing else is fine


def test_a_covering_policy_that_sets_nothing_about_secrets_leaves_the_default_in_force() -> None:
    kill_switch = policy(suspendAll=True)
    out = messages(agent(apiKey="llm-key"), [kill_switch])
    assert out == [
        "default (for what no covering AgentPolicy sets): AgentPolicy default (for what no covering AgentPolicy "
        "sets): Secrets not in allowedSecrets: llm-key"
    ]
    assert messages(agent(apiKey="llm-key"), [policy(allowedSecrets=["llm-key"])]) == []


def test_a_platform_default_can_allow_more() -> None:
    platform = Platform(default_policy=AgentPolicySpec.model_validate({"allowedSecrets": ["llm-*"]}))
    assert messages(agent(apiKey="llm-key"), [], platform) == []
    assert messages(agent(apiKey="db-password"), [], platform)


def test_the_delegation_ceiling_holds_whatever_the_policy_allows() -> None:
    lax = policy(allowedKubernetesRules=[{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}])
    ceiling = load_platform({"delegationCeiling": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]})
    wants = agent(
        permissions={
            "kubernetes": [
                {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["rolebindings"], "verbs": ["create"]}
            ]
        }
    )
    out = messages(wants, [lax], ceiling)
    assert out == [
        "platform: permissions.kubernetes beyond what the operator may delegate (the chart's agentPermissionsCeiling): "
        '{apiGroups: ["rbac.authorization.k8s.io"], resources: ["rolebindings"], verbs: ["create"]}'
    ]
    assert (
        messages(
            agent(permissions={"kubernetes": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]}),
            [lax],
            ceiling,
        )
        == []
    )


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://169.254.169.254/latest",
        "http://[::ffff:169.254.169.254]/latest",
        "http://[::ffff:a9fe:a9fe]/x",
        "http://127.0.0.1:4000/v1",
        "http://[::1]/v1",
        "http://0.0.0.0:8080/v1",
        "http://10.96.0.1/api",  # the API server's service IP
        "http://10.244.3.7:8000/v1",  # a pod
        "http://localhost:8000/v1",
        "http://metadata.google.internal/computeMetadata/v1",
        "http://x.localhost/v1",
        "http://[fd00:ec2::254]/latest",
        "http://100.100.100.200/latest",
    ],
)
def test_forbidden_endpoints_are_refused_unless_named(endpoint: str) -> None:
    out = messages(agent(endpoint), [policy()])
    assert out and all(m.startswith("platform: agent.model.endpoint ") for m in out), out
    tools = [{"name": "t", "endpoint": endpoint}]
    assert any("agent.tools[t].endpoint" in m for m in messages(agent(tools=tools), [policy()]))


def test_a_policy_can_name_an_internal_endpoint_explicitly() -> None:
    internal = policy(allowedEndpoints=[{"cidr": "10.244.0.0/16", "ports": [8000]}])
    assert messages(agent("http://10.244.3.7:8000/v1"), [internal]) == []
    assert messages(agent("http://10.244.3.7:9000/v1"), [internal])  # other port
    by_name = policy(allowedEndpoints=[{"host": "vllm.models.svc.cluster.local", "cidr": "10.96.0.0/12"}])
    assert messages(agent("http://vllm.models.svc.cluster.local:8000/v1"), [by_name]) == []
    # a catch-all is not "naming" the metadata service
    catch_all = policy(allowedEndpoints=[{"host": "*.com"}, {"cidr": "0.0.0.0/0"}])
    assert messages(agent("http://169.254.169.254/"), [catch_all]) == []  # 0.0.0.0/0 is a CIDR rule: explicit
    assert messages(agent("https://evil.example.org/v1"), [catch_all])  # not in allowedEndpoints


def test_allowed_endpoints_admit_only_what_their_rules_match() -> None:
    p = policy(allowedEndpoints=[{"host": "*.openai.com", "ports": [443]}])
    assert messages(agent("https://api.openai.com/v1"), [p]) == []
    assert messages(agent("https://api.openai.com.evil.io/v1"), [p]) == [
        "p: AgentPolicy p: agent.model.endpoint api.openai.com.evil.io:443 is not in allowedEndpoints"
    ]
    assert messages(agent("http://api.openai.com/v1"), [p])  # port 80


def test_egress_into_a_forbidden_range_is_refused_and_wide_egress_has_it_cut_out() -> None:
    meta = agent(permissions={"egress": [{"cidr": "169.254.169.254/32"}]})
    assert any(
        m.startswith("platform: permissions.egress[0] 169.254.169.254/32 lies in 169.254.0.0/16")
        for m in messages(meta, [policy()])
    )
    wide = agent(permissions={"egress": [{"cidr": "0.0.0.0/0", "ports": [443]}]})
    assert any("not within allowedEgress" in m for m in messages(wide, [policy()]))  # the default: no egress
    open_egress = policy(allowedEgress=["0.0.0.0/0"])
    assert messages(wide, [open_egress]) == []
    allowances = network_allowances(wide, [open_egress], CLUSTER)
    objects = render(wide, RenderSettings(), excluded_cidrs=allowances.excluded).objects
    netpol = next(o for o in objects if o["kind"] == "NetworkPolicy")
    blocks = [to["ipBlock"] for rule in netpol["spec"]["egress"] for to in rule.get("to", []) if "ipBlock" in to]
    wide_block = next(b for b in blocks if b["cidr"] == "0.0.0.0/0" and "except" in b)
    assert {"169.254.0.0/16", "127.0.0.0/8", "10.244.0.0/16", "10.96.0.0/12"} <= set(wide_block["except"])


def test_hostname_endpoints_go_where_the_rule_says_or_to_the_public_internet_only() -> None:
    a = agent("https://llm.internal.example:8443/v1")
    p = policy(allowedEndpoints=[{"host": "llm.internal.example", "cidr": "10.50.0.0/16"}])
    allowances = network_allowances(a, [p], CLUSTER)
    assert allowances.hostname_cidrs == {"llm.internal.example": ("10.50.0.0/16",)}
    netpol = next(
        o
        for o in render(
            a, RenderSettings(), hostname_cidrs=allowances.hostname_cidrs, excluded_cidrs=allowances.excluded
        ).objects
        if o["kind"] == "NetworkPolicy"
    )
    upstream = [r for r in netpol["spec"]["egress"] if r.get("ports") == [{"protocol": "TCP", "port": 8443}]]
    assert upstream[0]["to"] == [{"ipBlock": {"cidr": "10.50.0.0/16"}}]
    public = network_allowances(agent(), [], CLUSTER)
    netpol = next(
        o
        for o in render(agent(), RenderSettings(), excluded_cidrs=public.excluded).objects
        if o["kind"] == "NetworkPolicy"
    )
    https = [r for r in netpol["spec"]["egress"] if r.get("ports") == [{"protocol": "TCP", "port": 443}]]
    assert https[0]["to"][0]["ipBlock"]["cidr"] == "0.0.0.0/0"
    assert "169.254.0.0/16" in https[0]["to"][0]["ipBlock"]["except"]


def test_secrets_and_config_maps_are_bounded_by_each_policy() -> None:
    p = policy(allowedSecrets=["llm-*"], allowedConfigMaps=["prompts"])
    env = [{"name": "DB", "secretKeyRef": {"name": "db-password"}}]
    assert messages(agent(apiKey="llm-key", permissions={"secrets": ["db-password"]}, env=env), [p]) == [
        "p: AgentPolicy p: Secrets not in allowedSecrets: db-password, db-password"
    ]
    prompt = {"configMapKeyRef": {"name": "other", "key": "prompt"}}
    assert messages(agent(systemPrompt=prompt), [p]) == ["p: AgentPolicy p: ConfigMaps not in allowedConfigMaps: other"]
    assert (
        messages(agent(apiKey="llm-key", systemPrompt={"configMapKeyRef": {"name": "prompts", "key": "k"}}), [p]) == []
    )


def test_load_platform_refuses_what_it_cannot_read() -> None:
    chart = yaml.safe_load(
        'defaultPolicy: {"allowedSecrets": []}\ndelegationCeiling: [{"apiGroups": [""], "resources": ["pods"], '
        '"verbs": ["get"]}]\nclusterCIDRs: ["10.96.0.0/12"]\n'
    )
    loaded = load_platform(chart)
    assert loaded.cluster_cidrs == ("10.96.0.0/12",) and loaded.delegation_ceiling is not None
    for bad, fragment in [
        ({"defaultPolicy": {"allowedSecrets": "x"}}, "platform file"),
        ({"clusterCIDRs": ["nope"]}, "'nope' is not a CIDR"),
        ({"clusterCIDR": []}, "unknown platform field(s): clusterCIDR"),
        ({"delegationCeiling": {"apiGroups": []}}, "must be a list"),
    ]:
        with pytest.raises(ValueError, match=re.escape(fragment)):
            load_platform(bad)


def test_a_spec_too_large_to_record_is_refused_with_its_size() -> None:
    body: dict[str, Any] = {
        "metadata": {"name": "a", "namespace": NS, "generation": 1},
        "spec": {"agent": {"image": "x", "model": {"name": "m", "endpoint": "https://api.openai.com/v1"}}},
    }
    big = copy.deepcopy(body)
    big["spec"]["agent"]["env"] = [{"name": f"V{i}", "value": "<" * 30000} for i in range(8)]
    out = plans.judge(big, [], {}, "2026-12-04T00:00:00Z")
    assert isinstance(out, plans.Problem) and out.reason == "InvalidSpec"
    assert "bytes once encoded" in out.message and str(plans.MAX_SPEC_BYTES) in out.message
    assert plans.encoded_size("<a\u0001é") == 2 + 6 + 1 + 6 + 2
