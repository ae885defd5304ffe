"""A small async Kubernetes client for the operator's writes.

Why not the typed ``kubernetes`` client: it is synchronous (it would block kopf's event loop
or need a thread per call) and deserialises every response into model objects. We use
``kubernetes_asyncio`` only for what it does well -- loading kubeconfig or in-cluster
credentials and holding an aiohttp connection pool -- and speak JSON to the API server
ourselves: server-side apply with one field manager, merge patches, deletes. Every call has a
timeout; concurrency is bounded by a semaphore shared by the whole process.
"""

from __future__ import annotations

import asyncio
import json
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import aiohttp
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config

from agentfleet.api import names
from agentfleet.kube.wire import apply_patch_body

FIELD_MANAGER = "agentfleet"


@dataclass(frozen=True)
class Resource:
    """Where a kind lives in the API."""

    api_version: str
    plural: str
    namespaced: bool = True

    def path(self, namespace: str | None, name: str | None = None, subresource: str | None = None) -> str:
        base = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        if self.namespaced and namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        if name:
            base += f"/{name}"
        if subresource:
            base += f"/{subresource}"
        return base


RESOURCES: dict[str, Resource] = {
    "ServiceAccount": Resource("v1", "serviceaccounts"),
    "ConfigMap": Resource("v1", "configmaps"),
    "Service": Resource("v1", "services"),
    "Event": Resource("v1", "events"),
    "Pod": Resource("v1", "pods"),
    "Namespace": Resource("v1", "namespaces", namespaced=False),
    "Role": Resource("rbac.authorization.k8s.io/v1", "roles"),
    "RoleBinding": Resource("rbac.authorization.k8s.io/v1", "rolebindings"),
    "NetworkPolicy": Resource("networking.k8s.io/v1", "networkpolicies"),
    "Deployment": Resource("apps/v1", "deployments"),
    "ControllerRevision": Resource("apps/v1", "controllerrevisions"),
    "Lease": Resource("coordination.k8s.io/v1", "leases"),
    names.AGENT_KIND: Resource(names.API_VERSION, names.AGENT_PLURAL),
    names.POLICY_KIND: Resource(names.API_VERSION, names.POLICY_PLURAL, namespaced=False),
}


T = TypeVar("T")


class PerClient(Generic[T]):
    """One ``T`` per Kube client, weakly keyed: a process-wide memory shared by every writer that
    uses the same client (the reconciler, the Deployment watcher, the evaluator)."""

    def __init__(self, factory: Callable[[], T]) -> None:
        self._factory = factory
        self._items: weakref.WeakKeyDictionary[Kube, T] = weakref.WeakKeyDictionary()

    def __call__(self, kube: Kube) -> T:
        item = self._items.get(kube)
        if item is None:
            item = self._items[kube] = self._factory()
        return item


class KubeError(Exception):
    """A non-2xx answer from the API server, with its status code and message."""

    def __init__(self, status: int, message: str, reason: str = "") -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class Kube:
    """JSON-level access to the API server with bounded concurrency and per-call timeouts."""

    def __init__(self, api: k8s_client.ApiClient, concurrency: int = 32, timeout: float = 30.0) -> None:
        self._api = api
        self._sem = asyncio.Semaphore(concurrency)
        self._timeout = timeout

    @classmethod
    async def connect(cls, concurrency: int = 32, request_timeout: float = 30.0) -> Kube:
        """In a pod, the ServiceAccount; elsewhere, $KUBECONFIG or ~/.kube/config."""
        cfg = k8s_client.Configuration()
        try:
            k8s_config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        except k8s_config.ConfigException:
            await k8s_config.load_kube_config(client_configuration=cfg)
        cfg.connection_pool_maxsize = concurrency
        return cls(k8s_client.ApiClient(configuration=cfg), concurrency, request_timeout)

    async def close(self) -> None:
        await self._api.close()

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        query: list[tuple[str, str]] | None = None,
        content_type: str = "application/json",
        accept: str = "application/json",
    ) -> dict[str, Any] | None:
        """One API call; returns the decoded JSON body (None for 404 on GET/DELETE).

        An API server that cannot be reached (restarting, a network blip, a timeout) is a
        KubeError 503 like any other transient answer: every caller already retries those, and a
        restart of the API server must not fill the log with tracebacks."""
        headers = {"Accept": accept, "Content-Type": content_type}
        async with self._sem:
            try:
                resp = await self._api.call_api(
                    path,
                    method,
                    query_params=query or [],
                    header_params=headers,
                    body=body,
                    auth_settings=["BearerToken"],
                    _preload_content=False,
                    _request_timeout=self._timeout,
                )
                try:
                    data = await resp.read()
                finally:
                    resp.release()
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                raise KubeError(503, f"API server unreachable: {exc or type(exc).__name__}", "Unavailable") from None
        if 200 <= resp.status < 300:
            return json.loads(data) if data else {}
        if resp.status == 404 and method in {"GET", "DELETE"}:
            return None
        try:
            err = json.loads(data)
            raise KubeError(resp.status, err.get("message", ""), err.get("reason", ""))
        except ValueError:
            raise KubeError(resp.status, data.decode(errors="replace")[:500]) from None

    async def apply(
        self, obj: dict[str, Any], subresource: str | None = None, field_manager: str = FIELD_MANAGER
    ) -> dict[str, Any]:
        """Server-side apply (conflicts forced). Children use the one field manager; status
        writers each use their own, so the API server merges their conditions by type."""
        res = RESOURCES[obj["kind"]]
        meta = obj["metadata"]
        # Apply bodies are parsed as YAML: send pre-encoded JSON with YAML-unsafe characters
        # escaped. The charset parameter keeps the client from JSON-encoding it a second time.
        out = await self.request(
            "PATCH",
            res.path(meta.get("namespace"), meta["name"], subresource),
            body=apply_patch_body(obj).encode(),
            query=[("fieldManager", field_manager), ("force", "true")],
            content_type="application/apply-patch+yaml; charset=utf-8",
        )
        assert out is not None
        return out

    async def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        return await self.request("GET", RESOURCES[kind].path(namespace, name))

    async def list(self, kind: str, namespace: str | None, label_selector: str = "") -> list[dict[str, Any]]:
        query = [("labelSelector", label_selector)] if label_selector else []
        out = await self.request("GET", RESOURCES[kind].path(namespace), query=query)
        return list((out or {}).get("items", []))

    async def delete(self, kind: str, namespace: str | None, name: str, uid: str | None = None) -> bool:
        """Delete in the background (dependants are garbage-collected); False if it was gone.
        With ``uid``, only that object: a different one of the same name is refused (409)."""
        options: dict[str, Any] = {"propagationPolicy": "Background"}
        if uid is not None:
            options["preconditions"] = {"uid": uid}
        out = await self.request("DELETE", RESOURCES[kind].path(namespace, name), body=options)
        return out is not None

    async def merge_patch(
        self, kind: str, namespace: str | None, name: str, patch: dict[str, Any], subresource: str | None = None
    ) -> dict[str, Any]:
        out = await self.request(
            "PATCH",
            RESOURCES[kind].path(namespace, name, subresource),
            body=patch,
            content_type="application/merge-patch+json",
        )
        assert out is not None
        return out

    async def replace(self, obj: dict[str, Any]) -> dict[str, Any]:
        """PUT the whole object; with ``metadata.resourceVersion`` set, a 409 if it changed."""
        res = RESOURCES[obj["kind"]]
        meta = obj["metadata"]
        out = await self.request("PUT", res.path(meta.get("namespace"), meta["name"]), body=obj)
        assert out is not None
        return out

    async def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        res = RESOURCES[obj["kind"]]
        out = await self.request("POST", res.path(obj["metadata"].get("namespace")), body=obj)
        assert out is not None
        return out
