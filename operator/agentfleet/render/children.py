"""Names, labels and metadata of the children, so the reconciler can find and delete them.

All children of agent ``NAME`` carry ``selector(NAME)``; revision-specific ones (the guard
ConfigMap, the Deployment and its pods, ControllerRevisions) also carry the revision label.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from agentfleet.api import names
from agentfleet.api.names import API_VERSION
from agentfleet.api.types import AgentDeployment
from agentfleet.render.base import RenderError

CHILD_KINDS: tuple[tuple[str, str], ...] = (
    ("v1", "ServiceAccount"),
    ("rbac.authorization.k8s.io/v1", "Role"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"),
    ("v1", "ConfigMap"),
    ("v1", "Service"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
    ("apps/v1", "Deployment"),
)
"""(apiVersion, kind) of everything ``render`` may emit; ControllerRevisions are history and
are listed separately (``agentfleet.dev/agent`` label, kind ControllerRevision)."""

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_MAX_LABEL = 63


def selector(agent_name: str) -> dict[str, str]:
    """Pod selector of the Deployment and Service. No revision: selectors are immutable."""
    return {names.MANAGED_BY: names.MANAGER, names.AGENT: agent_name}


def labels(agent_name: str, revision: str | None = None) -> dict[str, str]:
    """Labels of a child; revision-specific children pass their revision."""
    result = selector(agent_name)
    if revision is not None:
        result[names.REVISION] = revision
    return result


def label_selector(agent_name: str) -> str:
    """``selector(agent_name)`` as a list-call label selector string."""
    return ",".join(f"{k}={v}" for k, v in selector(agent_name).items())


def _digest(text: str, size: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:size]


def _dns1035(base: str, suffix: str) -> str:
    """``base + suffix`` as a Service name (<= 63 chars, starting with a letter); a long or
    digit-leading base is shortened deterministically with a hash so names stay unique."""
    stem = base if base[0].isalpha() else f"a{base}"
    if len(stem) + len(suffix) <= _MAX_LABEL:
        return stem + suffix
    digest = _digest(base, 8)
    head = stem[: _MAX_LABEL - len(suffix) - len(digest) - 1].rstrip("-")
    return f"{head}-{digest}{suffix}"


@dataclass(frozen=True)
class ChildNames:
    """Names of one agent's children."""

    agent: str
    service_account: str
    role: str
    role_binding: str
    service: str
    network_policy: str
    deployment: str

    def config_map(self, revision: str) -> str:
        """One guard ConfigMap per revision, so a rollback to an old template is exact."""
        return f"{self.agent}-guard-{revision}"

    def controller_revision(self, revision: str) -> str:
        return f"{self.agent}-{revision}"


def check_agent_name(name: str) -> None:
    """Agent names become label values and name prefixes, so they must be DNS labels."""
    if not (len(name) <= _MAX_LABEL and _DNS_LABEL.match(name)):
        raise RenderError(
            f"metadata.name {name!r} must be a DNS label (lowercase alphanumerics and '-', at most 63 chars)"
        )


def child_names(agent_name: str) -> ChildNames:
    check_agent_name(agent_name)
    return ChildNames(
        agent=agent_name,
        service_account=f"{agent_name}-agent",
        role=f"{agent_name}-agent",
        role_binding=f"{agent_name}-agent",
        service=_dns1035(agent_name, "-metrics"),
        network_policy=agent_name,
        deployment=agent_name,
    )


def object_key(obj: dict[str, Any]) -> tuple[str, str, str]:
    """(apiVersion, kind, name): identity of a child within the agent's namespace."""
    return obj["apiVersion"], obj["kind"], obj["metadata"]["name"]


@dataclass(frozen=True)
class Owner:
    """The identity of the AgentDeployment every child points back to."""

    name: str
    namespace: str
    uid: str

    @classmethod
    def of(cls, agent: AgentDeployment) -> Owner:
        meta = agent.metadata
        check_agent_name(meta.name)
        if not meta.namespace:
            raise RenderError(f"AgentDeployment {meta.name!r} has no metadata.namespace")
        if not meta.uid:
            raise RenderError(f"AgentDeployment {meta.name!r} has no metadata.uid (needed for ownership)")
        return cls(meta.name, meta.namespace, meta.uid)

    def reference(self) -> dict[str, Any]:
        """Controller owner reference: garbage collection deletes children with the agent."""
        return {
            "apiVersion": API_VERSION,
            "kind": "AgentDeployment",
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }

    def metadata(
        self,
        name: str,
        revision: str | None = None,
        extra_labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "name": name,
            "namespace": self.namespace,
            "labels": {**labels(self.name, revision), **(extra_labels or {})},
        }
        if annotations:
            meta["annotations"] = dict(annotations)
        meta["ownerReferences"] = [self.reference()]
        return meta
