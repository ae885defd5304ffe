"""What calls between agents add to the rendered children: tokens in the guard alone, the peer
port on the guard and the Service, NetworkPolicy rules, and the guard's config."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agentfleet.api.guardconfig import GuardConfig
from agentfleet.api.types import AgentDeployment
from agentfleet.render import RenderError, RenderSettings, render
from agentfleet.render.children import selector

pytestmark = pytest.mark.unit

JWKS = json.dumps({"keys": [{"kty": "RSA", "kid": "k1", "alg": "RS256", "use": "sig", "n": "AQAB", "e": "AQAB"}]})
ISSUER = "https://kubernetes.default.svc.cluster.local"
PEERS = RenderSettings(peer_issuer=ISSUER, peer_jwks=JWKS, guard_port=4000, metrics_port=9090, peer_port=9443)


def agent(name: str = "support", sub_agents: list[str] | None = None) -> AgentDeployment:
    spec: dict[str, Any] = {
        "agent": {"image": "a:1", "model": {"name": "gpt-4o-mini", "endpoint": "https://api.openai.com/v1"}}
    }
    if sub_agents is not None:
        spec["permissions"] = {"subAgents": sub_agents}
    return AgentDeployment.model_validate(
        {"metadata": {"name": name, "namespace": "team-a", "uid": "u-1"}, "spec": spec}
    )


def kind(objects: list[dict[str, Any]], wanted: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == wanted]
    return found


def test_a_caller_gets_one_token_per_callee_in_its_guard_only() -> None:
    out = render(agent(sub_agents=["researcher", "planner"]), settings=PEERS)
    pod = out.pod_template["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "peer-tokens"]
    assert volume["projected"]["sources"] == [
        {
            "serviceAccountToken": {
                "audience": f"agentfleet.dev/agent/team-a/{callee}",
                "expirationSeconds": 600,
                "path": f"{callee}/token",
            }
        }
        for callee in ("researcher", "planner")
    ]
    guard, agent_c = pod["initContainers"][0], pod["containers"][0]
    assert {"name": "peer-tokens", "mountPath": "/var/run/agentfleet/peers", "readOnly": True} in guard["volumeMounts"]
    assert all(m["name"] != "peer-tokens" for m in agent_c["volumeMounts"]), "the agent never holds a token"
    assert pod["automountServiceAccountToken"] is False, "no API token for the agent either"
    env = {e["name"]: e.get("value") for e in agent_c["env"]}
    assert env["AGENTFLEET_AGENTS_URL"] == "http://127.0.0.1:4000/agents"
    assert env["AGENTFLEET_SERVE_PORT"] == "8000"
    cfg = GuardConfig.model_validate(out.guard_config.wire())
    assert [(c.name, c.url, c.token_file) for c in cfg.sub_agents.callees] == [
        ("researcher", "http://researcher-metrics.team-a.svc:9443", "/var/run/agentfleet/peers/researcher/token"),
        ("planner", "http://planner-metrics.team-a.svc:9443", "/var/run/agentfleet/peers/planner/token"),
    ]
    assert cfg.peer is not None and cfg.peer.auth.audience == "agentfleet.dev/agent/team-a/support"
    assert (cfg.peer.port, cfg.peer.agent_url, cfg.peer.auth.issuer) == (9443, "http://127.0.0.1:8000", ISSUER)
    assert cfg.peer.auth.jwks == JWKS


def test_the_peer_port_is_exposed_to_agents_of_the_namespace_only() -> None:
    out = render(agent(sub_agents=["researcher"]), settings=PEERS)
    guard = out.pod_template["spec"]["initContainers"][0]
    assert guard["ports"] == [
        {"name": "metrics", "containerPort": 9090, "protocol": "TCP"},
        {"name": "peer", "containerPort": 9443, "protocol": "TCP"},
    ]
    service = kind(out.objects, "Service")
    assert {"name": "peer", "port": 9443, "targetPort": "peer", "protocol": "TCP"} in service["spec"]["ports"]
    policy = kind(out.objects, "NetworkPolicy")["spec"]
    peer_in = [r for r in policy["ingress"] if r["ports"] == [{"protocol": "TCP", "port": 9443}]]
    assert peer_in == [
        {
            "from": [
                {
                    "podSelector": {
                        "matchLabels": {"app.kubernetes.io/managed-by": "agentfleet"},
                        "matchExpressions": [{"key": "agentfleet.dev/agent", "operator": "Exists"}],
                    }
                }
            ],
            "ports": [{"protocol": "TCP", "port": 9443}],
        }
    ]
    assert "namespaceSelector" not in json.dumps(peer_in), "same namespace only"
    assert all(p["port"] != 4000 for r in policy["ingress"] for p in r["ports"]), "the API stays on loopback"
    peer_out = [r for r in policy["egress"] if "podSelector" in json.dumps(r["to"])]
    assert peer_out == [
        {"to": [{"podSelector": {"matchLabels": selector("researcher")}}], "ports": [{"protocol": "TCP", "port": 9443}]}
    ]


def test_without_sub_agents_there_is_no_token_and_no_egress_to_agents() -> None:
    out = render(agent(), settings=PEERS)
    pod = out.pod_template["spec"]
    assert all(v["name"] != "peer-tokens" for v in pod["volumes"])
    assert "AGENTFLEET_AGENTS_URL" not in json.dumps(pod["containers"][0]["env"])
    assert out.guard_config.sub_agents.callees == []
    assert out.guard_config.peer is not None, "it can still be called"
    assert "podSelector" not in json.dumps(kind(out.objects, "NetworkPolicy")["spec"]["egress"])


def test_without_the_cluster_keys_no_agent_can_call_or_be_called() -> None:
    out = render(agent(sub_agents=["researcher"]), settings=RenderSettings())
    pod = out.pod_template["spec"]
    assert [p["name"] for p in pod["initContainers"][0]["ports"]] == ["metrics"]
    assert all(v["name"] != "peer-tokens" for v in pod["volumes"])
    assert out.guard_config.peer is None and out.guard_config.sub_agents.callees == []
    policy = kind(out.objects, "NetworkPolicy")["spec"]
    assert "podSelector" not in json.dumps(policy["egress"]) + json.dumps(policy["ingress"])


def test_a_key_rotation_rolls_the_pods() -> None:
    rotated = RenderSettings(peer_issuer=ISSUER, peer_jwks=JWKS.replace("k1", "k2"))
    before, after = render(agent(), settings=PEERS), render(agent(), settings=rotated)
    assert before.revision == after.revision, "not a new revision"
    annotation = "agentfleet.dev/guard-config-hash"
    assert (
        before.pod_template["metadata"]["annotations"][annotation]
        != after.pod_template["metadata"]["annotations"][annotation]
    )


def test_the_agents_own_limits_reach_its_guard() -> None:
    defaults = render(agent(sub_agents=["researcher"]), settings=PEERS).guard_config.sub_agents
    assert (defaults.max_depth, defaults.max_calls_per_task) == (3, 16)
    wire = agent(sub_agents=["researcher"]).model_dump(by_alias=True, exclude_none=True, mode="json")
    wire["spec"]["budgets"] = {"maxSubAgentDepth": 2, "maxSubAgentCallsPerTask": 5}
    limits = render(AgentDeployment.model_validate(wire), settings=PEERS).guard_config.sub_agents
    assert (limits.max_depth, limits.max_calls_per_task) == (2, 5)


def test_the_pods_ports_must_differ() -> None:
    for clash in ({"peer_port": 9090}, {"agent_serve_port": 4000}, {"peer_port": 8000}):
        with pytest.raises(RenderError, match="must all differ"):
            RenderSettings(**clash)  # type: ignore[arg-type]
    with pytest.raises(RenderError, match="peer_token_seconds"):
        RenderSettings(peer_token_seconds=60)
