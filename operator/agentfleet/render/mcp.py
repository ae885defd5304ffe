"""What MCP servers declared in ``agent.tools`` add to an agent's pod (docs/guard.md, "MCP").

- The guard container alone mounts each server's credential (``mcp.credentialsSecretRef``), one
  file per server under ``MCP_CREDENTIALS_DIR``; the guard config maps each server to its file.
- The agent learns where its guard serves them: ``AGENTFLEET_MCP_URL`` (the base,
  ``http://127.0.0.1:<port>/mcp``; server ``mcp:github`` is at ``$AGENTFLEET_MCP_URL/github``) and
  ``AGENTFLEET_MCP_SERVERS`` (a JSON object, server name -> URL, of the servers it may use).
"""

from __future__ import annotations

import json
from typing import Any

from agentfleet.api.types import AgentDeploymentSpec, ToolSpec
from agentfleet.render.base import RenderSettings

MCP_CREDENTIALS_DIR = "/var/run/agentfleet/mcp"
"""One file per MCP server with a credential (``<dir>/<server>``), in the guard container only."""
MCP_VOLUME = "mcp-credentials"
MCP_PATH = "/mcp"
"""Where the guard serves MCP servers on its loopback API listener."""


def server_name(tool: ToolSpec) -> str:
    """``github`` for ``mcp:github``."""
    return tool.name.removeprefix("mcp:")


def mcp_servers(spec: AgentDeploymentSpec) -> list[ToolSpec]:
    """The declared MCP servers the agent may use (``permissions.tools`` narrows them)."""
    allowed = set(spec.permissions.tools) if spec.permissions.tools is not None else None
    return [t for t in spec.agent.tools or () if t.mcp is not None and (allowed is None or t.name in allowed)]


def credential_files(spec: AgentDeploymentSpec) -> dict[str, str]:
    """Server tool name -> the credential's file in the guard container."""
    return {
        t.name: f"{MCP_CREDENTIALS_DIR}/{server_name(t)}"
        for t in mcp_servers(spec)
        if t.mcp is not None and t.mcp.credentials_secret_ref is not None
    }


def credentials_volume(spec: AgentDeploymentSpec) -> dict[str, Any] | None:
    """One projected volume with one Secret item per server (at most 256, the tools list's
    bound), group-readable through the pod's fsGroup like the upstream key."""
    sources = []
    for tool in mcp_servers(spec):
        ref = tool.mcp.credentials_secret_ref if tool.mcp is not None else None
        if ref is not None:
            sources.append({"secret": {"name": ref.name, "items": [{"key": ref.key, "path": server_name(tool)}]}})
    if not sources:
        return None
    return {"name": MCP_VOLUME, "projected": {"sources": sources, "defaultMode": 0o440}}


def agent_env(spec: AgentDeploymentSpec, settings: RenderSettings) -> list[dict[str, Any]]:
    """``AGENTFLEET_MCP_URL`` always; ``AGENTFLEET_MCP_SERVERS`` when the agent has MCP servers."""
    base = f"http://127.0.0.1:{settings.guard_port}{MCP_PATH}"
    env = [{"name": "AGENTFLEET_MCP_URL", "value": base}]
    servers = {server_name(t): f"{base}/{server_name(t)}" for t in mcp_servers(spec)}
    if servers:
        env.append({"name": "AGENTFLEET_MCP_SERVERS", "value": json.dumps(servers, sort_keys=True)})
    return env


def add_to_pod(pod_spec: dict[str, Any], spec: AgentDeploymentSpec, settings: RenderSettings) -> None:
    """Add the credentials (guard only) and the agent's variables to a pod spec whose guard is
    the first init container and whose agent is the first container."""
    guard, agent = pod_spec["initContainers"][0], pod_spec["containers"][0]
    volume = credentials_volume(spec)
    if volume is not None:
        pod_spec["volumes"].append(volume)
        guard["volumeMounts"].append({"name": MCP_VOLUME, "mountPath": MCP_CREDENTIALS_DIR, "readOnly": True})
    agent["env"] = [*agent["env"], *agent_env(spec, settings)]
