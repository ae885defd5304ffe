"""The status writer (``kube/status.py``): optimistic concurrency, re-applying a change to the
freshest status on a conflict, the phase summary, and the memory of this process's own writes.
A fake API (an in-memory object with resourceVersions) forces the interleavings."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from agentfleet.api import conditions as cond
from agentfleet.kube.client import KubeError
from agentfleet.kube.status import Written, merge, overlay, phase_for, readiness, update_status

pytestmark = pytest.mark.unit

NOW = "2026-12-04T10:00:00Z"


class FakeApi:
    """One AgentDeployment with a resourceVersion; ``interleave`` runs before the next write,
    as another writer would."""

    def __init__(self, obj: dict[str, Any]) -> None:
        self.obj = obj
        self.writes = 0
        self.gets = 0
        self.interleave: list[dict[str, Any]] = []

    def _bump(self) -> None:
        self.obj["metadata"]["resourceVersion"] = str(int(self.obj["metadata"]["resourceVersion"]) + 1)

    async def merge_patch(
        self, kind: str, ns: str | None, name: str, patch: dict[str, Any], subresource: str | None = None
    ) -> dict[str, Any]:
        if self.obj is None:
            raise KubeError(404, "gone", "NotFound")
        if self.interleave:  # someone else wrote first
            self.obj["status"] = {**self.obj.get("status", {}), **self.interleave.pop(0)}
            self._bump()
        rv = patch.get("metadata", {}).get("resourceVersion")
        if rv is not None and rv != self.obj["metadata"]["resourceVersion"]:
            raise KubeError(409, "the object has been modified", "Conflict")
        status = dict(self.obj.get("status") or {})
        for key, value in patch["status"].items():
            if value is None:
                status.pop(key, None)
            else:
                status[key] = value
        self.obj["status"] = status
        self._bump()
        self.writes += 1
        return copy.deepcopy(self.obj)

    async def get(self, kind: str, ns: str | None, name: str) -> dict[str, Any] | None:
        self.gets += 1
        return copy.deepcopy(self.obj) if self.obj is not None else None


def agent(rv: str = "10", **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "ns", "name": "a", "resourceVersion": rv, "generation": 1},
        "spec": {"replicas": 2},
        "status": status,
    }


async def test_a_conflict_reapplies_the_change_to_the_newer_status() -> None:
    api = FakeApi(agent())
    api.interleave.append({"readyReplicas": 2, "stableRevision": "s1"})  # another writer's change
    out = await update_status(api, agent(), merge({"currentRevision": "r2"}))  # type: ignore[arg-type]
    assert out is not None
    assert out["currentRevision"] == "r2" and out["stableRevision"] == "s1" and out["readyReplicas"] == 2
    assert api.gets == 1 and api.writes == 1


async def test_nothing_is_written_when_nothing_changes() -> None:
    api = FakeApi(agent(phase="Progressing", currentRevision="r1"))
    out = await update_status(api, agent(phase="Progressing", currentRevision="r1"), merge({"currentRevision": "r1"}))  # type: ignore[arg-type]
    assert out == {"phase": "Progressing", "currentRevision": "r1"} and api.writes == 0


async def test_a_deleted_object_is_not_an_error() -> None:
    api = FakeApi(agent())
    api.obj = None  # type: ignore[assignment]
    assert await update_status(api, agent(), merge({"x": 1})) is None  # type: ignore[arg-type]


async def test_an_endless_conflict_gives_up_with_a_retryable_error() -> None:
    api = FakeApi(agent())
    api.interleave.extend({"n": i} for i in range(10))
    with pytest.raises(KubeError) as err:
        await update_status(api, agent(), merge({"x": 1}), attempts=3)  # type: ignore[arg-type]
    assert err.value.status == 409


async def test_the_phase_is_recomputed_from_the_merged_result() -> None:
    api = FakeApi(agent())
    suspended = cond.set_condition([], cond.SUSPENDED, True, "GuardrailBreach", "loops", 1, NOW)
    out = await update_status(api, agent(), merge({}, suspended))  # type: ignore[arg-type]
    assert out is not None and out["phase"] == "Suspended"


def test_phase_precedence() -> None:
    violation = cond.set_condition([], cond.POLICY_VIOLATION, True, "PolicyViolation", "m", 1, NOW)
    invalid = cond.set_condition([], cond.PROGRESSING, False, "InvalidSpec", "m", 1, NOW)
    assert phase_for(violation + invalid, 2, 0) == "PolicyViolation"
    assert phase_for(invalid, 2, 2) == "Degraded"
    assert phase_for([], 2, 1) == "Progressing"
    assert phase_for([], 2, 2) == "Running"
    assert phase_for([], 0, 0) == "Running"


def test_overlay_replaces_by_type_and_keeps_the_rest() -> None:
    base = cond.set_condition([], cond.READY, True, "ReplicasReady", "2/2", 1, NOW)
    base = cond.set_condition(base, cond.SUSPENDED, False, "Running", "m", 1, NOW)
    mine = cond.set_condition([], cond.SUSPENDED, True, "GuardrailBreach", "m", 1, NOW)
    out = overlay(base, mine)
    assert {c["type"]: c["status"] for c in out} == {cond.READY: "True", cond.SUSPENDED: "True"}


def test_readiness_of_a_deployment() -> None:
    fields, ready, reason, _ = readiness(
        {"spec": {"replicas": 2}, "status": {"readyReplicas": 2, "updatedReplicas": 2}}
    )
    assert (fields["ready"], ready, reason) == ("2/2", True, "ReplicasReady")
    assert readiness({"spec": {"replicas": 0}, "status": {}})[2] == "ScaledToZero"
    assert readiness({"spec": {"replicas": 2}, "status": {"readyReplicas": 2, "updatedReplicas": 1}})[1] is False


def test_written_memory_prefers_the_newer_copy_and_forgets_once_caught_up() -> None:
    memory = Written(limit=2)
    memory.remember(agent("12", phase="Suspended"))
    stale = agent("11", phase="Running")
    assert memory.freshest(stale)["status"] == {"phase": "Suspended"}
    caught_up = agent("13", phase="Suspended")
    assert memory.freshest(caught_up) is caught_up
    assert memory.freshest(stale) is stale  # forgotten
    for i in range(3):
        other = agent("20")
        other["metadata"]["name"] = f"o{i}"
        memory.remember(other)
    assert len(memory._items) == 2  # bounded
