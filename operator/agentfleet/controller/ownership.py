"""Applying and deleting an agent's children without ever touching an object it did not create.

Children are server-side applied with conflicts forced, and names are derived from the agent's
name, so a tenant could name an agent so that a child's name equals an existing object (a
ServiceAccount bound to cluster-admin, the namespace's default-deny NetworkPolicy, someone's
Role) and have the operator take it over. Every write here is therefore guarded:

- before a child is first applied, it is read: an object that exists without this agent's
  controller owner reference (UID match) is a conflict, and nothing of the agent is applied;
- once a child is known to be ours, its UID is remembered and sent with every apply as a
  precondition (the API server refuses an apply whose ``metadata.uid`` differs, and one naming a
  UID that no longer exists), so an object deleted and re-created by someone else between two
  reconciles is never adopted either;
- deletes carry a UID precondition, and a patch (scale to zero) the UID in its body.

The memory costs one read per child per agent after a restart, and nothing in steady state.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from agentfleet.kube.client import Kube, KubeError, PerClient

Key = tuple[str, str, str]  # (kind, namespace, name)


class NameConflict(Exception):
    """A child's name is taken by an object this agent does not own."""

    def __init__(self, kind: str, namespace: str, name: str, holder: str) -> None:
        self.kind, self.namespace, self.name = kind, namespace, name
        super().__init__(
            f"{kind} {namespace}/{name} already exists and is not owned by this AgentDeployment ({holder}); "
            "the operator never adopts an object it did not create: rename the agent or remove that object"
        )


def owner_of(obj: dict[str, Any]) -> str:
    """Who controls ``obj``, for the conflict message."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return f"controlled by {ref.get('kind')} {ref.get('name')}"
    return "created outside agentfleet"


def owned_by(obj: dict[str, Any], owner_uid: str) -> bool:
    """Whether ``obj`` carries a controller owner reference to ``owner_uid``."""
    return any(
        ref.get("uid") == owner_uid and ref.get("controller") is True
        for ref in (obj.get("metadata") or {}).get("ownerReferences") or []
    )


class OwnedMemory:
    """UIDs of children verified or created as ours (bounded, least recently used evicted)."""

    def __init__(self, limit: int = 200_000) -> None:
        self.limit = limit
        self._items: OrderedDict[Key, tuple[str, str]] = OrderedDict()  # key -> (child uid, owner uid)

    def get(self, key: Key, owner_uid: str) -> str | None:
        found = self._items.get(key)
        if found is None or found[1] != owner_uid:
            return None
        self._items.move_to_end(key)
        return found[0]

    def remember(self, key: Key, uid: str, owner_uid: str) -> None:
        self._items[key] = (uid, owner_uid)
        self._items.move_to_end(key)
        while len(self._items) > self.limit:
            self._items.popitem(last=False)

    def forget(self, key: Key) -> None:
        self._items.pop(key, None)


owned_memory = PerClient(OwnedMemory)
"""The memory of children owned through a client, shared by every writer in the process."""


def _key(obj: dict[str, Any]) -> Key:
    meta = obj["metadata"]
    return obj["kind"], meta.get("namespace", ""), meta["name"]


def _uid_refused(exc: KubeError) -> bool:
    """The API server refused a write for its UID precondition (object replaced or gone)."""
    return exc.status in {409, 422} and "uid" in exc.message.lower()


@dataclass
class Children:
    """An agent's children, written only where they are the agent's own."""

    kube: Kube
    memory: OwnedMemory
    owner_uid: str

    async def verify(self, objects: list[dict[str, Any]]) -> None:
        """Raise NameConflict if any of ``objects`` exists without being ours; read only the
        ones not already known to be ours."""
        for obj in objects:
            key = _key(obj)
            if self.memory.get(key, self.owner_uid) is not None:
                continue
            existing = await self.kube.get(key[0], key[1] or None, key[2])
            if existing is None:
                continue
            if not owned_by(existing, self.owner_uid):
                raise NameConflict(*key, owner_of(existing))
            self.memory.remember(key, existing["metadata"]["uid"], self.owner_uid)

    async def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply ``obj`` (verified first), with its UID as a precondition once known."""
        key = _key(obj)
        await self.verify([obj])
        uid = self.memory.get(key, self.owner_uid)
        body = obj if uid is None else {**obj, "metadata": {**obj["metadata"], "uid": uid}}
        try:
            applied = await self.kube.apply(body)
        except KubeError as exc:
            if uid is None or not _uid_refused(exc):
                raise
            # Replaced or deleted since we last saw it: forget, and judge it afresh.
            self.memory.forget(key)
            await self.verify([obj])
            applied = await self.kube.apply(obj)
        self.memory.remember(key, applied["metadata"]["uid"], self.owner_uid)
        return applied

    async def _own_uid(self, kind: str, namespace: str, name: str) -> str | None:
        """The UID of the child if it exists and is ours; None otherwise (never an error)."""
        key = (kind, namespace, name)
        uid = self.memory.get(key, self.owner_uid)
        if uid is not None:
            return uid
        existing = await self.kube.get(kind, namespace, name)
        if existing is None or not owned_by(existing, self.owner_uid):
            return None
        uid = str(existing["metadata"]["uid"])
        self.memory.remember(key, uid, self.owner_uid)
        return uid

    async def delete(self, kind: str, namespace: str, name: str) -> bool:
        """Delete the child if it is ours; an object of that name that is not ours is left alone."""
        uid = await self._own_uid(kind, namespace, name)
        if uid is None:
            return False
        self.memory.forget((kind, namespace, name))
        try:
            return await self.kube.delete(kind, namespace, name, uid=uid)
        except KubeError as exc:
            if exc.status == 409:  # precondition failed: replaced by someone else's object
                return False
            raise

    async def patch(self, kind: str, namespace: str, name: str, patch: dict[str, Any]) -> bool:
        """Merge-patch the child if it is ours (its UID in the body makes the API server refuse
        the patch should the object have been replaced meanwhile)."""
        uid = await self._own_uid(kind, namespace, name)
        if uid is None:
            return False
        body = {**patch, "metadata": {**patch.get("metadata", {}), "uid": uid}}
        try:
            await self.kube.merge_patch(kind, namespace, name, body)
        except KubeError as exc:
            if exc.status == 404 or _uid_refused(exc):
                self.memory.forget((kind, namespace, name))
                return False
            raise
        return True
