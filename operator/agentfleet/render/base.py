"""Inputs and outputs of ``render``: settings, the result, and the one error it raises."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agentfleet.api import units
from agentfleet.api.guardconfig import GuardConfig


class RenderError(ValueError):
    """The spec cannot become valid Kubernetes objects. The message names the field, so the
    reconciler can put it on status and in an Event instead of retrying forever."""


@dataclass(frozen=True)
class RenderSettings:
    """Operator-wide knobs, the same for every agent (they come from the operator's flags)."""

    guard_image: str = "ghcr.io/agentfleet/agentfleet:0.1.0"
    guard_port: int = 4000
    """The guard's LLM API and tools, on loopback (the agent's OPENAI_BASE_URL)."""
    metrics_port: int = 9090
    """The guard's metrics, probes and audit head, the only port reachable from outside the pod."""
    metrics_from_namespaces: tuple[str, ...] = ("monitoring",)
    """Namespaces whose pods may reach the metrics port (Prometheus); empty: none."""
    upstream_cidrs: tuple[str, ...] = ("0.0.0.0/0",)
    """Egress for hostname upstreams: a NetworkPolicy cannot match hostnames, only CIDRs."""
    dns_namespace: str = "kube-system"
    peer_port: int = 9443
    """The guard's peer listener: calls from other agents of the namespace (docs/sub-agents.md)."""
    agent_serve_port: int = 8000
    """Where an agent that can be called serves its own API, on loopback (AGENTFLEET_SERVE_PORT)."""
    peer_issuer: str | None = None
    """The cluster's service-account issuer; with ``peer_jwks``, agents can be called (the
    operator reads both from the API server)."""
    peer_jwks: str | None = None
    """The issuer's JSON Web Key Set (JSON text) the guards verify callers' tokens with."""
    peer_token_seconds: int = 600
    """Lifetime of the projected tokens agents call each other with (the kubelet rotates them)."""

    @property
    def peers_enabled(self) -> bool:
        """Whether guards get a peer listener (the operator knows the cluster's signing keys)."""
        return bool(self.peer_issuer and self.peer_jwks)

    def __post_init__(self) -> None:
        ports = {
            "guard_port": self.guard_port,
            "metrics_port": self.metrics_port,
            "peer_port": self.peer_port,
            "agent_serve_port": self.agent_serve_port,
        }
        for name, port in ports.items():
            if not 1 <= port <= 65535:
                raise RenderError(f"{name} {port} is not a TCP port")
        if self.guard_port == self.metrics_port:
            raise RenderError("guard_port and metrics_port must differ")
        if len(set(ports.values())) != len(ports):
            raise RenderError(f"the pod's ports must all differ: {ports}")
        if not 600 <= self.peer_token_seconds <= 86400:
            raise RenderError("peer_token_seconds must be within [600, 86400] (the kubelet's minimum is 600)")
        if not self.guard_image.strip():
            raise RenderError("guard_image is empty")


@dataclass(frozen=True)
class Rendered:
    """Every desired child of one AgentDeployment, in apply order."""

    revision: str
    """10-hex-char hash of the pod-relevant spec."""
    objects: list[dict[str, Any]]
    """ServiceAccount, [Role, RoleBinding,] ConfigMap, Service, NetworkPolicy, Deployment."""
    pod_template: dict[str, Any]
    """Equal to the Deployment's ``spec.template`` (a copy, so mutating one leaves the other)."""
    guard_config: GuardConfig


def duration_seconds(value: str) -> float:
    """Seconds in a Go-style duration ("1h30m"); the API validates the format."""
    try:
        return units.duration_seconds(value)
    except ValueError as exc:
        raise RenderError(str(exc)) from None
