"""What calls between agents add to an agent's children (docs/sub-agents.md).

- The caller's pod: one projected ServiceAccount token per callee in ``permissions.subAgents``
  (audience ``agentfleet.dev/agent/<namespace>/<callee>``, short-lived, rotated by the kubelet),
  mounted into the guard container only; the agent learns ``AGENTFLEET_AGENTS_URL`` (its own
  guard, on loopback); its NetworkPolicy lets it reach each callee's pods on the peer port.
- Every agent's pod, when the operator knows the cluster's signing keys: the guard's peer port
  as a container port and on the Service, admitted by the NetworkPolicy only from pods of
  agents in the same namespace; the agent learns ``AGENTFLEET_SERVE_PORT``, where to serve
  calls on loopback.
"""

from __future__ import annotations

from typing import Any

from agentfleet.api import names
from agentfleet.api.guardconfig import peer_audience
from agentfleet.api.types import AgentDeploymentSpec
from agentfleet.render.base import RenderSettings
from agentfleet.render.children import Owner, selector
from agentfleet.render.guard import PEER_TOKEN_DIR

PEER_PORT_NAME = "peer"
TOKEN_VOLUME = "peer-tokens"


def token_volume(owner: Owner, spec: AgentDeploymentSpec, settings: RenderSettings) -> dict[str, Any] | None:
    """One projected token per callee (at most 64, the list's bound; a projected volume takes
    any number of sources). Group-readable through the pod's fsGroup, like the API key."""
    callees = spec.permissions.sub_agents or []
    if not callees or not settings.peers_enabled:
        return None
    sources = [
        {
            "serviceAccountToken": {
                "audience": peer_audience(owner.namespace, callee),
                "expirationSeconds": settings.peer_token_seconds,
                "path": f"{callee}/token",
            }
        }
        for callee in callees
    ]
    return {"name": TOKEN_VOLUME, "projected": {"sources": sources, "defaultMode": 0o440}}


def add_to_pod(pod_spec: dict[str, Any], owner: Owner, spec: AgentDeploymentSpec, settings: RenderSettings) -> None:
    """Add the tokens (guard only), the peer port and the agent's two variables to a pod spec
    whose guard is the first init container and whose agent is the first container."""
    guard, agent = pod_spec["initContainers"][0], pod_spec["containers"][0]
    base = f"http://127.0.0.1:{settings.guard_port}"
    extra_env = []
    volume = token_volume(owner, spec, settings)
    if volume is not None:
        pod_spec["volumes"].append(volume)
        guard["volumeMounts"].append({"name": TOKEN_VOLUME, "mountPath": PEER_TOKEN_DIR, "readOnly": True})
        extra_env.append({"name": "AGENTFLEET_AGENTS_URL", "value": f"{base}/agents"})
    if settings.peers_enabled:
        guard["ports"].append({"name": PEER_PORT_NAME, "containerPort": settings.peer_port, "protocol": "TCP"})
        extra_env.append({"name": "AGENTFLEET_SERVE_PORT", "value": str(settings.agent_serve_port)})
    agent["env"] = [*agent["env"], *extra_env]


def service_ports(settings: RenderSettings) -> list[dict[str, Any]]:
    """The peer port on the agent's Service (callers reach ``<service>.<namespace>.svc``)."""
    if not settings.peers_enabled:
        return []
    port = settings.peer_port
    return [{"name": PEER_PORT_NAME, "port": port, "targetPort": PEER_PORT_NAME, "protocol": "TCP"}]


def ingress(settings: RenderSettings) -> list[dict[str, Any]]:
    """The peer port, only from pods of agents in this namespace (a podSelector without a
    namespaceSelector); the token decides which of them may call."""
    if not settings.peers_enabled:
        return []
    agents = {
        "podSelector": {
            "matchLabels": {names.MANAGED_BY: names.MANAGER},
            "matchExpressions": [{"key": names.AGENT, "operator": "Exists"}],
        }
    }
    return [{"from": [agents], "ports": [{"protocol": "TCP", "port": settings.peer_port}]}]


def egress(spec: AgentDeploymentSpec, settings: RenderSettings) -> list[dict[str, Any]]:
    """To each callee's pods, on the peer port only (a NetworkPolicy sees the pods behind the
    Service, so the rule names them by the callee's selector)."""
    callees = spec.permissions.sub_agents or []
    if not callees or not settings.peers_enabled:
        return []
    peers = [{"podSelector": {"matchLabels": selector(callee)}} for callee in callees]
    return [{"to": peers, "ports": [{"protocol": "TCP", "port": settings.peer_port}]}]
