"""Children are written only where they are the agent's own (``controller/ownership.py``).

A fake API with UID semantics (apply with a wrong ``metadata.uid`` is refused, a delete with a
UID precondition too) forces the interleavings: a victim object under a child's name, an object
replaced between two reconciles, a delete racing a re-creation."""

from __future__ import annotations

import copy
import itertools
from typing import Any

import pytest

from agentfleet.controller.ownership import Children, NameConflict, OwnedMemory, owned_by
from agentfleet.kube.client import KubeError

pytestmark = pytest.mark.unit

AGENT_UID = "agent-uid"
_uids = itertools.count(1)


def child(kind: str = "ServiceAccount", name: str = "a-agent") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": kind,
        "metadata": {
            "name": name,
            "namespace": "ns",
            "ownerReferences": [{"kind": "AgentDeployment", "name": "a", "uid": AGENT_UID, "controller": True}],
        },
    }


class FakeApi:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.calls: list[str] = []

    def put_foreign(self, kind: str, name: str) -> None:
        self.objects[(kind, "ns", name)] = {
            "kind": kind,
            "metadata": {"name": name, "namespace": "ns", "uid": f"victim-{next(_uids)}"},
        }

    async def get(self, kind: str, ns: str | None, name: str) -> dict[str, Any] | None:
        self.calls.append(f"GET {kind}/{name}")
        obj = self.objects.get((kind, ns or "", name))
        return copy.deepcopy(obj) if obj else None

    async def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        key = (obj["kind"], meta["namespace"], meta["name"])
        self.calls.append(f"APPLY {key[0]}/{key[2]}")
        existing = self.objects.get(key)
        if "uid" in meta:
            if existing is None:
                raise KubeError(409, f"uid mismatch: the provided object specified uid {meta['uid']}", "Conflict")
            if existing["metadata"]["uid"] != meta["uid"]:
                raise KubeError(422, "metadata.uid: field is immutable", "Invalid")
        new = copy.deepcopy(obj)
        new["metadata"]["uid"] = existing["metadata"]["uid"] if existing else f"child-{next(_uids)}"
        self.objects[key] = new
        return copy.deepcopy(new)

    async def delete(self, kind: str, ns: str | None, name: str, uid: str | None = None) -> bool:
        self.calls.append(f"DELETE {kind}/{name}")
        existing = self.objects.get((kind, ns or "", name))
        if existing is None:
            return False
        if uid is not None and existing["metadata"]["uid"] != uid:
            raise KubeError(409, "Precondition failed: UID in precondition", "Conflict")
        del self.objects[(kind, ns or "", name)]
        return True

    async def merge_patch(
        self, kind: str, ns: str | None, name: str, patch: dict[str, Any], subresource: str | None = None
    ) -> dict[str, Any]:
        self.calls.append(f"PATCH {kind}/{name}")
        existing = self.objects.get((kind, ns or "", name))
        if existing is None:
            raise KubeError(404, "not found", "NotFound")
        if patch.get("metadata", {}).get("uid", existing["metadata"]["uid"]) != existing["metadata"]["uid"]:
            raise KubeError(422, "metadata.uid: field is immutable", "Invalid")
        existing.setdefault("spec", {}).update(patch.get("spec", {}))
        return copy.deepcopy(existing)


def children(api: FakeApi, memory: OwnedMemory | None = None) -> Children:
    return Children(api, memory or OwnedMemory(), AGENT_UID)  # type: ignore[arg-type]


async def test_a_victim_under_a_childs_name_is_a_conflict_and_nothing_is_applied() -> None:
    api = FakeApi()
    api.put_foreign("ServiceAccount", "a-agent")
    kids = children(api)
    with pytest.raises(NameConflict) as err:
        await kids.verify([child("ConfigMap", "a-guard-1"), child()])
    assert "ServiceAccount ns/a-agent already exists and is not owned" in str(err.value)
    assert "never adopts" in str(err.value)
    assert not [c for c in api.calls if c.startswith("APPLY")]
    with pytest.raises(NameConflict):
        await kids.apply(child())
    assert "ownerReferences" not in api.objects[("ServiceAccount", "ns", "a-agent")]["metadata"]


async def test_an_object_controlled_by_another_agent_is_a_conflict_too() -> None:
    api = FakeApi()
    other = child()
    other["metadata"]["ownerReferences"][0]["uid"] = "other-agent"
    await api.apply(other)
    with pytest.raises(NameConflict, match="controlled by AgentDeployment a"):
        await children(api).apply(child())


async def test_our_child_is_read_once_and_then_applied_with_its_uid() -> None:
    api = FakeApi()
    memory = OwnedMemory()
    first = await children(api, memory).apply(child())
    api.calls.clear()
    again = await children(api, memory).apply(child())
    assert again["metadata"]["uid"] == first["metadata"]["uid"]
    assert api.calls == ["APPLY ServiceAccount/a-agent"]  # no read: known to be ours


async def test_a_child_replaced_by_someone_else_between_reconciles_is_never_adopted() -> None:
    api = FakeApi()
    memory = OwnedMemory()
    await children(api, memory).apply(child())
    del api.objects[("ServiceAccount", "ns", "a-agent")]
    api.put_foreign("ServiceAccount", "a-agent")  # re-created by someone else under our name
    with pytest.raises(NameConflict):
        await children(api, memory).apply(child())
    assert "ownerReferences" not in api.objects[("ServiceAccount", "ns", "a-agent")]["metadata"]


async def test_a_deleted_child_is_created_again() -> None:
    api = FakeApi()
    memory = OwnedMemory()
    await children(api, memory).apply(child())
    del api.objects[("ServiceAccount", "ns", "a-agent")]
    out = await children(api, memory).apply(child())
    assert owned_by(out, AGENT_UID)


async def test_delete_and_patch_leave_objects_that_are_not_ours_alone() -> None:
    api = FakeApi()
    api.put_foreign("Role", "a-agent")
    api.put_foreign("Deployment", "a")
    kids = children(api)
    assert await kids.delete("Role", "ns", "a-agent") is False
    assert await kids.patch("Deployment", "ns", "a", {"spec": {"replicas": 0}}) is False
    assert ("Role", "ns", "a-agent") in api.objects
    assert "spec" not in api.objects[("Deployment", "ns", "a")]
    assert await kids.delete("Role", "ns", "absent") is False


async def test_delete_of_our_child_carries_its_uid() -> None:
    api = FakeApi()
    memory = OwnedMemory()
    await children(api, memory).apply(child("Role"))
    assert await children(api, memory).delete("Role", "ns", "a-agent") is True
    assert ("Role", "ns", "a-agent") not in api.objects


async def test_a_delete_racing_a_replacement_is_refused_by_the_precondition() -> None:
    api = FakeApi()
    memory = OwnedMemory()
    await children(api, memory).apply(child("Role"))
    del api.objects[("Role", "ns", "a-agent")]
    api.put_foreign("Role", "a-agent")  # memory still holds the old UID
    assert await children(api, memory).delete("Role", "ns", "a-agent") is False
    assert ("Role", "ns", "a-agent") in api.objects


def test_memory_is_bounded_and_scoped_to_the_owner() -> None:
    memory = OwnedMemory(limit=2)
    for i in range(3):
        memory.remember(("ServiceAccount", "ns", f"n{i}"), f"u{i}", AGENT_UID)
    assert memory.get(("ServiceAccount", "ns", "n0"), AGENT_UID) is None
    assert memory.get(("ServiceAccount", "ns", "n2"), AGENT_UID) == "u2"
    assert memory.get(("ServiceAccount", "ns", "n2"), "another-agent") is None
