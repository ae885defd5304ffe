"""The adversarial suite's world: a private control plane with the chart installed as a platform
engineer would (its defaults, plus the cluster's service range), the operator running with
exactly the chart's RBAC and platform file, and a tenant whose only right is to manage
AgentDeployments in one namespace (real RBAC, reached by impersonation).

A private cluster because the chart installs cluster-scoped objects and because the session's
operator (which watches every namespace with a development platform) must not judge these agents.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from hack.harness.agents import condition, status
from hack.harness.chart import CHART, helm, token_kubeconfig
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


@pytest.fixture(scope="package")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    run_dir = tmp_path_factory.mktemp("security") / "run"
    cluster = Cluster(run_dir, port_base=PORT_BASE, nodes=1)
    up = cluster.run("up", "--no-prometheus", check=False, timeout=240)
    operator: OperatorProcess | None = None
    try:
        if up.returncode != 0:
            pytest.fail(f"the security suite's cluster did not start:\n{up.stdout}\n{up.stderr}", pytrace=False)
        admin = cluster.kube
        admin.kubectl("create", "namespace", RELEASE_NS)
        values = run_dir.parent / "values.yaml"
        values.write_text(yaml.safe_dump({"clusterCIDRs": [SERVICE_CIDR]}))
        helm(
            cluster.helm_bin,
            "install",
            RELEASE,
            str(CHART),
            "-n",
            RELEASE_NS,
            "-f",
            str(values),
            "--wait",
            "--timeout=120s",
            kubeconfig=admin.kubeconfig,
        )
        admin.kubectl(
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/agentdeployments.agentfleet.dev",
            "crd/agentpolicies.agentfleet.dev",
        )
        # The operator runs as the chart's ServiceAccount with the chart's own platform file.
        platform = run_dir.parent / "platform.yaml"
        cm = admin.get_json("configmap", f"{SA}-platform", "-n", RELEASE_NS)
        platform.write_text(cm["data"]["platform.yaml"])
        kubeconfig = token_kubeconfig(admin, SA, RELEASE_NS, run_dir.parent / "operator.kubeconfig")
        operator = OperatorProcess(kubeconfig, run_dir.parent / "operator.log", extra=[f"--platform={platform}"])
        operator.start()
        yield World(admin, cluster, operator, run_dir)
    finally:
        if operator is not None:
            operator.stop()
            print(f"operator log: {operator.log_path}")
        cluster.down()


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
