"""Revision identity: a hash of exactly the spec fields that shape the pod.

Replicas, suspension, guardrails, analysis and history limits are excluded: changing them
must not roll the pods or start a new revision.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from agentfleet.api.types import AgentDeploymentSpec

POD_RELEVANT_FIELDS = ("agent", "budgets", "permissions", "guard")
REVISION_LENGTH = 10


def pod_relevant_spec(spec: AgentDeploymentSpec) -> dict[str, Any]:
    """The wire form of the pod-shaping fields; stored in ControllerRevisions for rollback."""
    wire = spec.wire()
    return {key: wire[key] for key in POD_RELEVANT_FIELDS if key in wire}


def canonical_json(value: Any) -> str:
    """Key-sorted, whitespace-free JSON: equal values give equal bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def short_hash(text: str, length: int = REVISION_LENGTH) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def revision_hash(spec: AgentDeploymentSpec) -> str:
    """Defaults are filled in before hashing, so spelling out a default is not a new revision."""
    return short_hash(canonical_json(pod_relevant_spec(spec)))
