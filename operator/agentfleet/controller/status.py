"""Writing AgentDeployment status from several writers without clobbering each other.

Three writers share the status: the reconciler, the Deployment watcher and the evaluator. Each
applies (server-side) only the conditions it owns, under its own field manager, so the API
server merges the condition list by type. ``phase`` summarises all conditions, so it is
recomputed from the freshest view: the apply carries the resourceVersion it was computed
from, and on a conflict we re-read and recompute instead of overwriting newer state.
"""

from __future__ import annotations

from typing import Any

from agentfleet.api import conditions as cond
from agentfleet.controller.kube import Kube, KubeError

RECONCILER = "agentfleet"
WATCHER = "agentfleet-status"
EVALUATOR = "agentfleet-evaluator"


def phase_for(conditions: cond.Conditions, replicas: int, ready: int) -> str:
    """One word for `kubectl get agd`; conditions carry the detail."""
    if cond.is_true(conditions, cond.POLICY_VIOLATION):
        return "PolicyViolation"
    progressing = cond.get(conditions, cond.PROGRESSING)
    if progressing and progressing.get("reason") == "InvalidSpec":
        return "Degraded"
    if cond.is_true(conditions, cond.SUSPENDED):
        return "Suspended"
    if cond.is_true(conditions, cond.ROLLED_BACK):
        return "RolledBack"
    if replicas == 0 or ready >= replicas:
        return "Running"
    return "Progressing"


def overlay(base: cond.Conditions | None, mine: cond.Conditions) -> cond.Conditions:
    types = {c["type"] for c in mine}
    return [c for c in base or [] if c.get("type") not in types] + list(mine)


async def write_status(kube: Kube, body: dict[str, Any], status: dict[str, Any], *, manager: str = RECONCILER,
                       desired: int | None = None, attempts: int = 4) -> None:
    """Apply ``status`` (only the owner's fields) plus a freshly computed phase."""
    meta = body["metadata"]
    ns, name = meta["namespace"], meta["name"]
    current = body
    for _ in range(attempts):
        seen = current.get("status") or {}
        want = desired if desired is not None else int((current.get("spec") or {}).get("replicas") or 0)
        ready = int(status.get("readyReplicas", seen.get("readyReplicas")) or 0)
        patch = dict(status, phase=phase_for(overlay(seen.get("conditions"), status.get("conditions", [])),
                                             want, ready))
        metadata = {"name": name, "namespace": ns}
        if current["metadata"].get("resourceVersion"):
            metadata["resourceVersion"] = current["metadata"]["resourceVersion"]
        obj = {"apiVersion": "agentfleet.dev/v1alpha1", "kind": "AgentDeployment", "metadata": metadata,
               "status": patch}
        try:
            await kube.apply(obj, subresource="status", field_manager=manager)
            return
        except KubeError as exc:
            if exc.status == 404:
                return
            if exc.status != 409:
                raise
        fresh = await kube.get("AgentDeployment", ns, name)
        if fresh is None:
            return
        current = fresh
    raise KubeError(409, f"status of {ns}/{name} kept changing; will retry", "Conflict")
