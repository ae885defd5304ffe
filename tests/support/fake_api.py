"""An in-memory stand-in for the operator's Kube client, for unit tests of forced interleavings
only (never in the integration path).

It keeps objects by (kind, namespace, name) with resourceVersions and UIDs, and implements the
semantics the operator relies on: server-side apply (create or replace, a ``metadata.uid``
precondition), merge patches of the main resource and of ``status`` with a resourceVersion
precondition (409 on a mismatch), deletes with a UID precondition, lists by label. ``before``
hooks run just before a call of a given kind, so a test can make "another writer" act at the
exact point a race needs.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Awaitable, Callable
from typing import Any

from agentfleet.kube.client import KubeError

Key = tuple[str, str, str]
Hook = Callable[[str, str, str], Awaitable[None] | None]


class FakeKube:
    def __init__(self) -> None:
        self.objects: dict[Key, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.calls: list[str] = []
        self.hooks: dict[str, list[Hook]] = {}
        self._rv = itertools.count(100)
        self._uid = itertools.count(1)

    # ------------------------------------------------------------------ test helpers

    def before(self, call: str, hook: Hook) -> None:
        """Run ``hook(kind, namespace, name)`` once, just before the next ``call``
        ("apply", "status", "patch", "get", "delete", "list")."""
        self.hooks.setdefault(call, []).append(hook)

    async def _hook(self, call: str, kind: str, ns: str | None, name: str) -> None:
        hooks = self.hooks.get(call)
        if hooks:
            result = hooks.pop(0)(kind, ns or "", name)
            if result is not None:
                await result

    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Store ``obj`` as the API server would (new UID and resourceVersion)."""
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        meta.setdefault("uid", f"uid-{next(self._uid)}")
        meta["resourceVersion"] = str(next(self._rv))
        meta.setdefault("generation", 1)
        self.objects[(obj["kind"], meta.get("namespace", ""), meta["name"])] = obj
        return copy.deepcopy(obj)

    def obj(self, kind: str, ns: str, name: str) -> dict[str, Any]:
        return self.objects[(kind, ns, name)]

    def write_status(self, ns: str, name: str, status: dict[str, Any]) -> None:
        """Another writer changes the agent's status (bumps the resourceVersion)."""
        agent = self.obj("AgentDeployment", ns, name)
        agent["status"] = {**(agent.get("status") or {}), **status}
        agent["metadata"]["resourceVersion"] = str(next(self._rv))

    # ------------------------------------------------------------------ the client's interface

    async def get(self, kind: str, ns: str | None, name: str) -> dict[str, Any] | None:
        self.calls.append(f"get {kind}/{name}")
        await self._hook("get", kind, ns, name)
        found = self.objects.get((kind, ns or "", name))
        return copy.deepcopy(found) if found else None

    async def list(self, kind: str, ns: str | None, label_selector: str = "") -> list[dict[str, Any]]:
        self.calls.append(f"list {kind}")
        await self._hook("list", kind, ns, "")
        wanted = dict(part.split("=", 1) for part in label_selector.split(",") if part)
        return [
            copy.deepcopy(o)
            for (k, n, _), o in self.objects.items()
            if k == kind
            and (ns is None or n == ns)
            and all((o["metadata"].get("labels") or {}).get(a) == b for a, b in wanted.items())
        ]

    async def apply(
        self, obj: dict[str, Any], subresource: str | None = None, field_manager: str = ""
    ) -> dict[str, Any]:
        meta = obj["metadata"]
        key = (obj["kind"], meta.get("namespace", ""), meta["name"])
        self.calls.append(f"apply {key[0]}/{key[2]}")
        await self._hook("apply", *key)
        existing = self.objects.get(key)
        if "uid" in meta:
            if existing is None:
                raise KubeError(409, "uid mismatch: no existing object was found", "Conflict")
            if existing["metadata"]["uid"] != meta["uid"]:
                raise KubeError(422, "metadata.uid: field is immutable", "Invalid")
        new = copy.deepcopy(obj)
        new["metadata"]["uid"] = existing["metadata"]["uid"] if existing else f"uid-{next(self._uid)}"
        new["metadata"]["resourceVersion"] = str(next(self._rv))
        if existing is not None and "status" in existing:
            new["status"] = existing["status"]
        self.objects[key] = new
        return copy.deepcopy(new)

    async def merge_patch(
        self, kind: str, ns: str | None, name: str, patch: dict[str, Any], subresource: str | None = None
    ) -> dict[str, Any]:
        self.calls.append(f"patch {kind}/{name}" + (f"/{subresource}" if subresource else ""))
        await self._hook("status" if subresource == "status" else "patch", kind, ns, name)
        obj = self.objects.get((kind, ns or "", name))
        if obj is None:
            raise KubeError(404, "not found", "NotFound")
        wanted_rv = (patch.get("metadata") or {}).get("resourceVersion")
        if wanted_rv is not None and wanted_rv != obj["metadata"]["resourceVersion"]:
            raise KubeError(409, "the object has been modified", "Conflict")
        wanted_uid = (patch.get("metadata") or {}).get("uid")
        if wanted_uid is not None and wanted_uid != obj["metadata"]["uid"]:
            raise KubeError(422, "metadata.uid: field is immutable", "Invalid")
        _merge(obj, {k: v for k, v in patch.items() if k != "metadata"})
        annotations = (patch.get("metadata") or {}).get("annotations")
        if annotations:
            _merge(obj["metadata"].setdefault("annotations", {}), annotations)
        obj["metadata"]["resourceVersion"] = str(next(self._rv))
        return copy.deepcopy(obj)

    async def delete(self, kind: str, ns: str | None, name: str, uid: str | None = None) -> bool:
        self.calls.append(f"delete {kind}/{name}")
        await self._hook("delete", kind, ns, name)
        obj = self.objects.get((kind, ns or "", name))
        if obj is None:
            return False
        if uid is not None and obj["metadata"]["uid"] != uid:
            raise KubeError(409, "Precondition failed: UID in precondition", "Conflict")
        del self.objects[(kind, ns or "", name)]
        return True

    async def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.events.append(copy.deepcopy(obj))
        return obj


def _merge(into: dict[str, Any], patch: dict[str, Any]) -> None:
    """JSON merge patch: None deletes, dicts merge, anything else replaces."""
    for key, value in patch.items():
        if value is None:
            into.pop(key, None)
        elif isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)
