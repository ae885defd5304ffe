"""Writing AgentDeployment status from several writers without clobbering each other.

Three writers share the status: the reconciler, the Deployment watcher and the evaluator. Each
describes its change as a function of the current status; ``update_status`` applies it to the
freshest status it has and writes with the resourceVersion it read (optimistic concurrency).
On a conflict it re-reads and re-applies the change, so nobody overwrites newer state, and
``phase`` -- a summary of everything -- is always recomputed from the merged result.

The writers run in one process, so each successful write is remembered (``Written``): a writer
holding an older copy of the object (kopf's index lags the API server by a watch event) starts
from the newest status this process wrote instead, which avoids a 409, a re-read and a retry per
stale write at fleet scale. The resourceVersion precondition stays, so a wrong guess costs one
conflict, never a lost update.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from agentfleet.api import conditions as cond
from agentfleet.api import names
from agentfleet.kube.client import Kube, KubeError, PerClient

Status = dict[str, Any]
Mutation = Callable[[Status], Status]


def phase_for(conditions: cond.Conditions, replicas: int, ready: int) -> str:
    """One word for `kubectl get agd`; conditions carry the detail."""
    if cond.is_true(conditions, cond.POLICY_VIOLATION):
        return "PolicyViolation"
    progressing = cond.get(conditions, cond.PROGRESSING)
    if progressing and progressing.get("reason") in names.DEGRADED_REASONS:
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


def readiness(deployment: dict[str, Any]) -> tuple[Status, bool, str, str]:
    """What a Deployment says about readiness: status fields, and the Ready condition's
    status, reason and message."""
    desired = int((deployment.get("spec") or {}).get("replicas") or 0)
    dep_status = deployment.get("status") or {}
    replicas, ready = int(dep_status.get("replicas") or 0), int(dep_status.get("readyReplicas") or 0)
    updated = int(dep_status.get("updatedReplicas") or 0)
    if desired == 0:
        is_ready, reason, message = False, "ScaledToZero", "no replicas are running"
    elif ready >= desired and updated >= desired:
        is_ready, reason, message = True, "ReplicasReady", f"{ready}/{desired} replicas ready"
    else:
        is_ready, reason, message = False, "ReplicasNotReady", f"{ready}/{desired} replicas ready"
    return {"replicas": replicas, "readyReplicas": ready, "ready": f"{ready}/{desired}"}, is_ready, reason, message


def with_first_readiness(mutate: Mutation, deployment: dict[str, Any], generation: int | None, now: str) -> Mutation:
    """``mutate``, and, while the status has no Ready condition yet (a new agent), readiness as
    the just-applied Deployment reports it -- so the Deployment watcher's first write, which
    would say the same, is not needed. A Ready condition already there is left alone."""

    def mutated(status: Status) -> Status:
        out = mutate(status)
        if cond.get(out.get("conditions"), cond.READY) is not None:
            return out
        fields, is_ready, reason, message = readiness(deployment)
        ready = cond.set_condition(out.get("conditions"), cond.READY, is_ready, reason, message, generation, now)
        return {**out, **fields, "conditions": ready}

    return mutated


def _version(body: dict[str, Any]) -> int | None:
    rv = (body.get("metadata") or {}).get("resourceVersion")
    return int(rv) if isinstance(rv, str) and rv.isdigit() else None


class Written:
    """The newest AgentDeployment this process wrote, per object (bounded, least recent evicted).

    Only what ``update_status`` reads is kept: resourceVersion, spec.replicas/suspended, status.
    resourceVersions are compared as integers (etcd revisions); when either is not a number the
    caller's copy is used, which is the behaviour without this memory.
    """

    def __init__(self, limit: int = 20_000) -> None:
        self.limit = limit
        self._items: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()

    def freshest(self, body: dict[str, Any]) -> dict[str, Any]:
        """``body``, or the copy this process wrote last if that one is newer."""
        meta = body["metadata"]
        key = (meta.get("namespace", ""), meta.get("name", ""))
        known = self._items.get(key)
        if known is None:
            return body
        mine, theirs = _version(known), _version(body)
        if mine is not None and theirs is not None and mine > theirs:
            return known
        del self._items[key]  # the caller's copy has caught up: forget ours
        return body

    def remember(self, obj: dict[str, Any]) -> None:
        meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
        key = (meta.get("namespace", ""), meta.get("name", ""))
        self._items[key] = {
            "metadata": {
                "namespace": key[0],
                "name": key[1],
                "resourceVersion": meta.get("resourceVersion"),
                "generation": meta.get("generation"),
            },
            "spec": {"replicas": spec.get("replicas"), "suspended": spec.get("suspended")},
            "status": obj.get("status") or {},
        }
        self._items.move_to_end(key)
        while len(self._items) > self.limit:
            self._items.popitem(last=False)

    def forget(self, namespace: str, name: str) -> None:
        self._items.pop((namespace, name), None)


written = PerClient(Written)
"""The memory of writes made through a client, shared by every writer in the process."""


def freshest_status(kube: Kube, body: dict[str, Any]) -> Status:
    """The newest status known for ``body``'s object: its own, or what this process wrote since."""
    status: Status = written(kube).freshest(body).get("status") or {}
    return status


async def update_status(kube: Kube, body: dict[str, Any], mutate: Mutation, attempts: int = 5) -> Status | None:
    """Apply ``mutate`` to the status and write it; returns the written status (None if gone)."""
    meta = body["metadata"]
    ns, name = meta["namespace"], meta["name"]
    memory = written(kube)
    current = memory.freshest(body)
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
            memory.remember(out)
            status: Status = out.get("status") or {}
            return status
        except KubeError as exc:
            if exc.status == 404:
                memory.forget(ns, name)
                return None
            if exc.status != 409:
                raise
        fresh = await kube.get("AgentDeployment", ns, name)
        if fresh is None:
            memory.forget(ns, name)
            return None
        current = fresh
    raise KubeError(409, f"status of {ns}/{name} kept changing; will retry", "Conflict")


class StaleStatus(Exception):
    """The status changed, since a writer read it, in a way its decision depended on: the
    decision must be made again from the fresh object, never replayed over it."""


DECISION_FIELDS = ("currentRevision", "stableRevision")
DECISION_CONDITIONS = (cond.SUSPENDED, cond.ROLLED_BACK)


def decision_basis(status: Status) -> tuple[Any, ...]:
    """What a reconcile's decision depends on in status: the revisions and the suspension and
    rollback conditions (who set them, for which generation)."""
    conditions = status.get("conditions")
    return (
        *(status.get(f) for f in DECISION_FIELDS),
        *(
            tuple((c or {}).get(k) for k in ("status", "reason", "observedGeneration"))
            for c in (cond.get(conditions, t) for t in DECISION_CONDITIONS)
        ),
    )


def decided_on(seen: Status, mutate: Mutation) -> Mutation:
    """``mutate``, refusing (StaleStatus) to apply to a status whose decision basis differs from
    the one the decision was made on -- so a conflict makes the writer decide again."""
    basis = decision_basis(seen)

    def guarded(status: Status) -> Status:
        if decision_basis(status) != basis:
            raise StaleStatus()
        return mutate(status)

    return guarded


def with_freshest_status(kube: Kube, body: dict[str, Any]) -> dict[str, Any]:
    """``body`` with the newest status (and resourceVersion) this process wrote, if newer: kopf's
    copy lags this process's own writes by a watch event."""
    fresh = written(kube).freshest(body)
    if fresh is body:
        return body
    metadata = {**body["metadata"], "resourceVersion": fresh["metadata"].get("resourceVersion")}
    return {**body, "metadata": metadata, "status": fresh.get("status") or {}}
