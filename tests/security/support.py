"""Helpers of the adversarial suite (the fixture is in conftest.py): the tenant, its world, and
waits on what the operator reports."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hack.harness.agents import condition, status
from hack.harness.kube import Cluster, Kube, poll
from hack.harness.processes import OperatorProcess

PORT_BASE = 21400
RELEASE, RELEASE_NS = "af", "agentfleet-system"
SA = f"{RELEASE}-agentfleet"
SERVICE_CIDR = "10.96.0.0/16"  # hack/cluster's --service-cluster-ip-range
API_SERVICE_IP = "10.96.0.1"


@dataclass
class World:
    admin: Kube
    cluster: Cluster
    operator: OperatorProcess
    run_dir: Path

    def tenant_namespace(self) -> tuple[str, Kube]:
        """A fresh namespace and a kubectl acting as its tenant (only AgentDeployments there)."""
        ns = f"tenant-{uuid.uuid4().hex[:6]}"
        user = f"user-{ns}"
        self.admin.kubectl("create", "namespace", ns)
        self.admin.apply(
            [
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "Role",
                    "metadata": {"name": "agent-author", "namespace": ns},
                    "rules": [
                        {
                            "apiGroups": ["agentfleet.dev"],
                            "resources": ["agentdeployments"],
                            "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"],
                        },
                        {"apiGroups": [""], "resources": ["events"], "verbs": ["get", "list"]},
                    ],
                },
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "RoleBinding",
                    "metadata": {"name": "agent-author", "namespace": ns},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "agent-author"},
                    "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
                },
            ]
        )
        return ns, Tenant(self.admin.kubeconfig, self.admin.kubectl_bin, user)


class Tenant(Kube):
    """kubectl as the tenant: every call impersonates them, so RBAC is the API server's."""

    def __init__(self, kubeconfig: str, kubectl_bin: str, user: str) -> None:
        super().__init__(kubeconfig, kubectl_bin)
        self.user = user

    def kubectl(self, *args: str, **kw: Any) -> Any:
        return super().kubectl(f"--as={self.user}", *args, **kw)


def refused(kube: Kube, ns: str, name: str, condition_type: str, reason: str, timeout: float = 30) -> dict[str, Any]:
    """Wait until the agent's ``condition_type`` holds with ``reason``; return that condition."""

    def seen() -> dict[str, Any] | None:
        c = condition(status(kube, ns, name), condition_type)
        return c if c.get("reason") == reason and c.get("status") in {"True", "False"} else None

    found: dict[str, Any] = poll(seen, timeout=timeout, what=f"{ns}/{name} {condition_type} reason {reason}")
    return found


def warning_events(kube: Kube, ns: str, name: str) -> list[dict[str, Any]]:
    items = kube.get_json("events", "-n", ns, "--field-selector", f"involvedObject.name={name}")["items"]
    return [e for e in items if e["type"] == "Warning"]


def can_i(admin: Kube, ns: str, service_account: str, verb: str, resource: str) -> bool:
    res = admin.kubectl(
        "auth", "can-i", verb, resource, "-n", ns, f"--as=system:serviceaccount:{ns}:{service_account}", check=False
    )
    return res.stdout.strip() == "yes"


def dump(obj: Any) -> str:
    return json.dumps(obj, indent=1)[:2000]
