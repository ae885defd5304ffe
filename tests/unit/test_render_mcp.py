"""What MCP servers in ``agent.tools`` add to the rendered children and to the policy checks:
the credential in the guard container alone, the agent's two variables, the guard config's
credential files, egress to the server, and the same endpoint and Secret rules as other tools."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agentfleet.api.guardconfig import GuardConfig
from agentfleet.api.types import AgentDeployment, AgentPolicy
from agentfleet.policy.platform import Platform, all_violations
from agentfleet.render import RenderSettings, render

pytestmark = pytest.mark.unit

SETTINGS = RenderSettings(guard_port=4000, metrics_port=9090)
GITHUB = {
    "name": "mcp:github",
    "maxCallsPerTask": 30,
    "mcp": {
        "endpoint": "https://api.githubcopilot.com/mcp/",
        "credentialsSecretRef": {"name": "github-mcp", "key": "token"},
        "scheme": "Bearer",
        "tools": ["search_issues"],
    },
}
DOCS = {"name": "mcp:docs", "mcp": {"endpoint": "https://docs.example.com/mcp"}}


def agent(tools: list[dict[str, Any]], permissions: dict[str, Any] | None = None) -> AgentDeployment:
    spec: dict[str, Any] = {
        "agent": {
            "image": "a:1",
            "model": {"name": "gpt-4o-mini", "endpoint": "https://api.openai.com/v1"},
            "tools": tools,
        }
    }
    if permissions is not None:
        spec["permissions"] = permissions
    return AgentDeployment.model_validate(
        {"metadata": {"name": "support", "namespace": "team-a", "uid": "u"}, "spec": spec}
    )


def test_the_credential_is_mounted_in_the_guard_only_and_the_agent_learns_the_urls() -> None:
    out = render(agent([GITHUB, DOCS]), settings=SETTINGS)
    pod = out.pod_template["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "mcp-credentials"]
    assert volume["projected"]["sources"] == [
        {"secret": {"name": "github-mcp", "items": [{"key": "token", "path": "github"}]}}
    ]
    guard, agent_c = pod["initContainers"][0], pod["containers"][0]
    mount = {"name": "mcp-credentials", "mountPath": "/var/run/agentfleet/mcp", "readOnly": True}
    assert mount in guard["volumeMounts"]
    assert all(m["name"] != "mcp-credentials" for m in agent_c["volumeMounts"]), "the agent never holds it"
    assert "github-mcp" not in json.dumps(agent_c), "not as an env var either"
    env = {e["name"]: e.get("value") for e in agent_c["env"]}
    assert env["AGENTFLEET_MCP_URL"] == "http://127.0.0.1:4000/mcp"
    assert json.loads(env["AGENTFLEET_MCP_SERVERS"]) == {
        "docs": "http://127.0.0.1:4000/mcp/docs",
        "github": "http://127.0.0.1:4000/mcp/github",
    }
    cfg = GuardConfig.model_validate(out.guard_config.wire())
    assert cfg.mcp_credential_files == {"mcp:github": "/var/run/agentfleet/mcp/github"}
    (github,) = [t for t in cfg.tools if t.name == "mcp:github"]
    assert github.mcp is not None and github.mcp.tools == ["search_issues"]


def test_a_server_the_permissions_leave_out_gets_no_credential_url_or_egress() -> None:
    out = render(agent([GITHUB, DOCS], {"tools": ["mcp:docs"]}), settings=SETTINGS)
    pod = out.pod_template["spec"]
    assert all(v["name"] != "mcp-credentials" for v in pod["volumes"])
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert json.loads(env["AGENTFLEET_MCP_SERVERS"]) == {"docs": "http://127.0.0.1:4000/mcp/docs"}
    assert out.guard_config.mcp_credential_files == {}


def test_an_agent_without_mcp_servers_gets_only_the_base_url() -> None:
    out = render(agent([{"name": "search"}]), settings=SETTINGS)
    env = {e["name"]: e.get("value") for e in out.pod_template["spec"]["containers"][0]["env"]}
    assert env["AGENTFLEET_MCP_URL"] == "http://127.0.0.1:4000/mcp"
    assert "AGENTFLEET_MCP_SERVERS" not in env


def test_mcp_endpoints_and_secrets_face_the_same_policy_rules_as_other_tools() -> None:
    inside = dict(DOCS, mcp={"endpoint": "http://169.254.169.254/mcp"})
    platform = Platform(cluster_cidrs=("10.244.0.0/16",))
    policy = AgentPolicy.model_validate({"metadata": {"name": "p"}, "spec": {"allowedSecrets": ["llm-*"]}})
    found = [v.message for v in all_violations(agent([GITHUB, inside]), [policy], {}, platform)]
    assert any("agent.tools[mcp:docs].mcp.endpoint" in m for m in found), found
    assert any("github-mcp" in m and "allowedSecrets" in m for m in found), found


@pytest.mark.parametrize(
    "tool",
    [
        {"name": "github", "mcp": {"endpoint": "https://x/mcp"}},
        {"name": "mcp:x", "endpoint": "https://x/", "mcp": {"endpoint": "https://x/mcp"}},
        {"name": "mcp:x", "mcp": {"endpoint": "https://x/mcp", "header": "Mcp-Session-Id"}},
        {"name": "mcp:x", "mcp": {"endpoint": "https://x/mcp", "scheme": "Bearer"}},
        {"name": "mcp:x", "mcp": {"endpoint": "https://x/mcp", "tools": ["a b"]}},
    ],
)
def test_bad_mcp_declarations_are_refused(tool: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        agent([tool])
