"""Writing AgentDeployment status from several writers without clobbering each other.

Three writers share the status: the reconciler, the Deployment watcher and the evaluator. Each
describes its change as a function of the current status; ``update_status`` applies it to the
freshest status it has and writes with the resourceVersion it read (optimistic concurrency).
On a conflict it re-reads and re-applies the change, so nobody overwrites newer state, and
``phase`` -- a summary of everything -- is always recomputed from the merged result.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from agentfleet.api import conditions as cond
from agentfleet.controller.kube import Kube, KubeError

Status = dict[str, Any]
Mutation = Callable[[Status], Status]


def phase_for(conditions: cond.Conditions, replicas: int, ready: int) -> str:
    """One word for `kubectl get agd`; conditions carry the detail."""
    if cond.is_true(conditions, cond.POLICY_VIOLATION):
        return "PolicyViolation"
    progressing = cond.get(conditions, cond.PROGRESSING)
    if progressing and progressing.get("reason") in {"InvalidSpec", "Refused"}:
        return "Degraded"
    if cond.is_true(conditions, cond.SUSPENDED):
        return "Suspended"
    if cond.is_true(conditions, cond.ROLLED_BACK):
        return "RolledBack"
    if replicas == 0 or ready >= replicas:
        return "Running"
    return "Progressing"


def overlay(base: cond.Conditions | None, mine: cond.Conditions) -> cond.Conditions:
    """``base`` with the conditions in ``mine`` replacing those of the same type."""
    types = {c["type"] for c in mine}
    return sorted([c for c in base or [] if c.get("type") not in types] + list(mine), key=lambda c: str(c["type"]))


def merge(fields: Status, conditions: cond.Conditions | None = None) -> Mutation:
    """The common change: set these fields and these conditions, keep everything else."""
    def mutate(status: Status) -> Status:
        out = {**status, **fields}
        if conditions:
            out["conditions"] = overlay(status.get("conditions"), conditions)
        return out
    return mutate


async def update_status(kube: Kube, body: dict[str, Any], mutate: Mutation, attempts: int = 5) -> Status | None:
    """Apply ``mutate`` to the status and write it; returns the written status (None if gone)."""
    meta = body["metadata"]
    ns, name = meta["namespace"], meta["name"]
    current = body
    for _ in range(attempts):
        old = current.get("status") or {}
        new = mutate(copy.deepcopy(old))
        spec = current.get("spec") or {}
        desired = 0 if spec.get("suspended") else int(spec.get("replicas") or 0)
        new["phase"] = phase_for(new.get("conditions") or [], desired, int(new.get("readyReplicas") or 0))
        if new == old:
            return old
        patch: dict[str, Any] = {"status": {**{k: None for k in old if k not in new}, **new}}
        if current["metadata"].get("resourceVersion"):  # optimistic concurrency: fail on newer state
            patch["metadata"] = {"resourceVersion": current["metadata"]["resourceVersion"]}
        try:
            out = await kube.merge_patch("AgentDeployment", ns, name, patch, subresource="status")
            status: Status = out.get("status") or {}
            return status
        except KubeError as exc:
            if exc.status == 404:
                return None
            if exc.status != 409:
                raise
        fresh = await kube.get("AgentDeployment", ns, name)
        if fresh is None:
            return None
        current = fresh
    raise KubeError(409, f"status of {ns}/{name} kept changing; will retry", "Conflict")
