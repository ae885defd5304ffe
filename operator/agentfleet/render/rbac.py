"""The agent's identity: a ServiceAccount, and a Role holding only the granted rules."""

from __future__ import annotations

from typing import Any

from agentfleet.api.types import KubernetesRule
from agentfleet.render.base import RenderError
from agentfleet.render.children import ChildNames, Owner

RBAC_API = "rbac.authorization.k8s.io"


def service_account(owner: Owner, names: ChildNames, mount_token: bool) -> dict[str, Any]:
    """The token is mounted only when the agent has Kubernetes permissions to use it with."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": owner.metadata(names.service_account),
        "automountServiceAccountToken": mount_token,
    }


def role_rules(rules: list[KubernetesRule]) -> list[dict[str, Any]]:
    """The granted rules verbatim: nothing added, nothing widened."""
    for index, rule in enumerate(rules):
        if not rule.api_groups:
            raise RenderError(f'permissions.kubernetes[{index}].apiGroups is empty; use [""] for the core group')
    return [rule.wire() for rule in rules]


def role(owner: Owner, names: ChildNames, rules: list[KubernetesRule]) -> dict[str, Any]:
    return {
        "apiVersion": f"{RBAC_API}/v1",
        "kind": "Role",
        "metadata": owner.metadata(names.role),
        "rules": role_rules(rules),
    }


def role_binding(owner: Owner, names: ChildNames) -> dict[str, Any]:
    return {
        "apiVersion": f"{RBAC_API}/v1",
        "kind": "RoleBinding",
        "metadata": owner.metadata(names.role_binding),
        "roleRef": {"apiGroup": RBAC_API, "kind": "Role", "name": names.role},
        "subjects": [{"kind": "ServiceAccount", "name": names.service_account, "namespace": owner.namespace}],
    }
