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

    def __post_init__(self) -> None:
        for name, port in (("guard_port", self.guard_port), ("metrics_port", self.metrics_port)):
            if not 1 <= port <= 65535:
                raise RenderError(f"{name} {port} is not a TCP port")
        if self.guard_port == self.metrics_port:
            raise RenderError("guard_port and metrics_port must differ")
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
