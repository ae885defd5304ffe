"""The kubectl plugin's access to the cluster: kubeconfig loading the way kubectl does it, and
the few synchronous API calls the commands make, each with a timeout and a readable error.

A command-line tool may block, so this uses the synchronous ``kubernetes`` client (the
operator uses the asyncio one). Responses are read as raw JSON (``_preload_content=False``) so
every object is the plain camelCase dict the API server sent, typed or custom alike.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from agentfleet.api.names import AGENT, GROUP, MANAGED_SELECTOR, VERSION
from agentfleet.api.names import AGENT_PLURAL as PLURAL

RESOURCE = f"{PLURAL}.{GROUP}"
PAGE_SIZE = 500
DEFAULT_KUBECONFIG = "~/.kube/config"
IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class PluginError(Exception):
    """A failure to report on stderr (without a traceback) with exit code ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class NotFound(PluginError):
    """The named object does not exist (exit code 1)."""


def agent_missing(name: str, namespace: str) -> NotFound:
    return NotFound(
        f'agentdeployment "{name}" not found in namespace "{namespace}" '
        f"(list them with: kubectl get agd -n {namespace}, or kubectl agentfleet status -A)"
    )


@dataclass(frozen=True)
class Connection:
    """An API client and the namespace to use when none is given (the context's)."""

    api: Any
    namespace: str
    server: str


def kubeconfig_path(flag: str | None, environ: dict[str, str] | None = None) -> str:
    """``--kubeconfig``, else $KUBECONFIG (a list of files, merged as kubectl does), else ~/.kube/config."""
    env = os.environ if environ is None else environ
    return flag or env.get("KUBECONFIG") or DEFAULT_KUBECONFIG


def connect(kubeconfig: str | None, context: str | None) -> Connection:
    """Load credentials like kubectl: the kubeconfig (or in-cluster credentials when there is
    none and we run in a pod), the chosen or current context, and its default namespace."""
    from kubernetes import client
    from kubernetes import config as kube_config

    config: Any = kube_config  # untyped library: keep mypy --strict from flagging each call
    path = kubeconfig_path(kubeconfig)
    files = [os.path.expanduser(p) for p in path.split(os.pathsep) if p]
    existing = [f for f in files if os.path.isfile(f)]
    configuration = client.Configuration()
    if not existing:
        if kubeconfig is None and "KUBERNETES_SERVICE_HOST" in os.environ and context is None:
            try:
                config.load_incluster_config(client_configuration=configuration)
            except config.ConfigException as exc:
                raise PluginError(f"cannot load in-cluster credentials: {exc}") from exc
            namespace = IN_CLUSTER_NAMESPACE.read_text().strip() if IN_CLUSTER_NAMESPACE.is_file() else "default"
            return Connection(client.ApiClient(configuration), namespace, configuration.host)
        where = "--kubeconfig" if kubeconfig else ("KUBECONFIG" if os.environ.get("KUBECONFIG") else "default")
        what = f"{path} ({where}) does not exist" if len(files) < 2 else f"none of {path} ({where}) exists"
        raise PluginError(
            f"kubeconfig not found: {what}; pass --kubeconfig PATH or set KUBECONFIG to the file kubectl uses"
        )
    merged = os.pathsep.join(existing)
    try:
        contexts, current = config.list_kube_config_contexts(config_file=merged)
        chosen = current
        if context is not None:
            chosen = next((c for c in contexts or [] if c.get("name") == context), None)
            if chosen is None:
                names = ", ".join(str(c.get("name")) for c in contexts or []) or "none"
                raise PluginError(f'context "{context}" not found in {merged} (contexts: {names})')
        config.load_kube_config(
            config_file=merged, context=context, client_configuration=configuration, persist_config=False
        )
    except config.ConfigException as exc:
        raise PluginError(f"invalid kubeconfig {merged}: {exc}") from exc
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise PluginError(f"cannot read kubeconfig {merged}: {' '.join(str(exc).split())}") from exc
    namespace = ((chosen or {}).get("context") or {}).get("namespace") or "default"
    configuration.retries = 1  # each call also has its own _request_timeout
    return Connection(client.ApiClient(configuration), str(namespace), str(configuration.host))


class Cluster:
    """The API calls of the plugin. Each has ``_request_timeout``; failures become PluginError."""

    def __init__(self, connection: Connection, timeout: float) -> None:
        from kubernetes import client

        self.connection = connection
        self.timeout = timeout
        self.custom = client.CustomObjectsApi(connection.api)
        self.apps = client.AppsV1Api(connection.api)
        self.core = client.CoreV1Api(connection.api)

    # -------------------------------------------------------------------------- plumbing

    def _raw(self, call: Callable[..., Any], *args: Any, what: str, **kwargs: Any) -> Any:
        from kubernetes.client import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return call(*args, _request_timeout=self.timeout, _preload_content=False, **kwargs)
        except ApiException as exc:
            raise api_error(exc, what) from exc
        except (HTTPError, OSError) as exc:
            raise PluginError(
                f"cannot reach the API server at {self.connection.server} ({what}): "
                f"{network_reason(exc)}; is the cluster up and the kubeconfig right?"
            ) from exc

    def _json(self, call: Callable[..., Any], *args: Any, what: str, **kwargs: Any) -> dict[str, Any]:
        resp = self._raw(call, *args, what=what, **kwargs)
        try:
            value = json.loads(resp.data)
        except ValueError as exc:
            raise PluginError(f"{what}: the API server sent something that is not JSON") from exc
        if not isinstance(value, dict):
            raise PluginError(f"{what}: unexpected response from the API server")
        return value

    def _pages(self, call: Callable[..., Any], *args: Any, what: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
        """Items of a list call, page by page (a large fleet is never held in memory at once)."""
        token: str | None = None
        while True:
            extra = {"_continue": token} if token else {}
            page = self._json(call, *args, what=what, limit=PAGE_SIZE, **extra, **kwargs)
            yield from (item for item in page.get("items") or [] if isinstance(item, dict))
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return

    # -------------------------------------------------------------------------- AgentDeployments

    def get_agent(self, namespace: str, name: str) -> dict[str, Any]:
        try:
            return self._json(
                self.custom.get_namespaced_custom_object,
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
                what=f"get agentdeployment {namespace}/{name}",
            )
        except NotFound as exc:
            if exc.message.startswith("the server does not serve"):
                raise
            raise agent_missing(name, namespace) from None

    def agents(self, namespace: str | None) -> Iterator[dict[str, Any]]:
        """AgentDeployments in ``namespace``, or in every namespace when it is None."""
        if namespace is None:
            return self._pages(
                self.custom.list_cluster_custom_object,
                GROUP,
                VERSION,
                PLURAL,
                what="list agentdeployments in all namespaces",
            )
        return self._pages(
            self.custom.list_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            what=f"list agentdeployments in namespace {namespace}",
        )

    def patch_agent(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """A JSON merge patch (RFC 7386) of the AgentDeployment."""
        try:
            return self._json(
                self.custom.patch_namespaced_custom_object,
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
                patch,
                _content_type="application/merge-patch+json",
                what=f"patch agentdeployment {namespace}/{name}",
            )
        except NotFound as exc:
            if exc.message.startswith("the server does not serve"):
                raise
            raise agent_missing(name, namespace) from None

    def wait_agent(
        self, namespace: str, name: str, done: Callable[[dict[str, Any]], bool], timeout: float
    ) -> dict[str, Any] | None:
        """Watch the AgentDeployment until ``done(obj)``; the object, or None at the deadline."""
        from kubernetes import watch as kube_watch
        from kubernetes.client import ApiException
        from urllib3.exceptions import HTTPError

        watch: Any = kube_watch
        deadline = time.monotonic() + timeout
        while True:
            obj = self.get_agent(namespace, name)
            if done(obj):
                return obj
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            version = (obj.get("metadata") or {}).get("resourceVersion")
            stream = watch.Watch().stream(
                self.custom.list_namespaced_custom_object,
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                field_selector=f"metadata.name={name}",
                resource_version=version,
                timeout_seconds=max(1, int(remaining)),
                _request_timeout=remaining + self.timeout,
            )
            try:
                for event in stream:
                    if event.get("type") == "DELETED":
                        raise agent_missing(name, namespace)
                    seen = event.get("object")
                    if event.get("type") in {"ADDED", "MODIFIED"} and isinstance(seen, dict) and done(seen):
                        return seen
                    if time.monotonic() >= deadline:
                        break
            except ApiException as exc:
                if exc.status != 410:  # 410 Gone: our resourceVersion is too old; read again
                    raise api_error(exc, f"watch agentdeployment {namespace}/{name}") from exc
            except (HTTPError, OSError):
                pass  # the watch connection dropped or timed out; read again until the deadline

    # -------------------------------------------------------------------------- children

    def revisions(self, namespace: str | None, agent: str | None = None) -> list[dict[str, Any]]:
        """ControllerRevisions of one agent, or of every agent in ``namespace`` (None: all)."""
        selector = MANAGED_SELECTOR + (f",{AGENT}={agent}" if agent else "")
        if namespace is None:
            return list(
                self._pages(
                    self.apps.list_controller_revision_for_all_namespaces,
                    label_selector=selector,
                    what="list controllerrevisions in all namespaces",
                )
            )
        return list(
            self._pages(
                self.apps.list_namespaced_controller_revision,
                namespace,
                label_selector=selector,
                what=f"list controllerrevisions in namespace {namespace}",
            )
        )

    def revision(self, namespace: str, name: str) -> dict[str, Any]:
        """One ControllerRevision by name (``AGENT-HASH``)."""
        return self._json(
            self.apps.read_namespaced_controller_revision,
            name,
            namespace,
            what=f"get controllerrevision {namespace}/{name}",
        )

    def pods(self, namespace: str, agent: str) -> list[dict[str, Any]]:
        return list(
            self._pages(
                self.core.list_namespaced_pod,
                namespace,
                label_selector=f"{MANAGED_SELECTOR},{AGENT}={agent}",
                what=f"list pods of agent {namespace}/{agent}",
            )
        )

    def config_map(self, namespace: str, name: str) -> dict[str, Any]:
        return self._json(
            self.core.read_namespaced_config_map, name, namespace, what=f"get configmap {namespace}/{name}"
        )

    def pod_get(self, namespace: str, pod: str, port: int, path: str) -> str:
        """GET ``path`` on a pod's ``port`` through the API server's pod proxy (``pods/proxy``)."""
        resp = self._raw(
            self.core.connect_get_namespaced_pod_proxy_with_path,
            f"{pod}:{port}",
            namespace,
            path.lstrip("/"),
            what=f"GET :{port}{path} of pod {namespace}/{pod}",
        )
        data: bytes = resp.data
        return data.decode(errors="replace")

    def pod_log(self, namespace: str, pod: str, container: str, previous: bool = False) -> str:
        resp = self._raw(
            self.core.read_namespaced_pod_log,
            pod,
            namespace,
            container=container,
            previous=previous,
            what=f"read the logs of container {container} in pod {namespace}/{pod}",
        )
        data: bytes = resp.data
        return data.decode(errors="replace")


def network_reason(exc: BaseException) -> str:
    """The innermost cause of a urllib3 failure, without the connection pool's preamble:
    "Failed to establish a new connection: [Errno 111] Connection refused"."""
    reason = getattr(exc, "reason", None) or exc
    text = " ".join(str(reason).split())
    return text.split("): ", 1)[1] if "): " in text else text


def _status_body(exc: Any) -> dict[str, Any]:
    try:
        body = json.loads(exc.body or "")
    except (TypeError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def api_error(exc: Any, what: str) -> PluginError:
    """An ApiException as a sentence that says what failed and what to do about it."""
    body = _status_body(exc)
    message = str(body.get("message") or exc.reason or "").strip()
    status = int(exc.status or 0)
    if status == 404:
        if not body.get("details") and "agentdeployment" in what:
            return NotFound(
                f"the server does not serve {RESOURCE} ({what}): are the agentfleet CRDs installed? "
                "Install them with `helm install agentfleet charts/agentfleet` or "
                "`kubectl apply -f crds/`"
            )
        return NotFound(f"{what}: not found ({message})")
    if status == 401:
        return PluginError(f"{what}: unauthorized: the credentials in the kubeconfig were rejected ({message})")
    if status == 403:
        return PluginError(f"{what}: forbidden: {message}; ask a cluster administrator for the RBAC permission")
    if status == 422:
        return PluginError(f"{what}: rejected by the API server: {message}")
    if status == 400:
        return PluginError(f"{what}: bad request: {message}")
    return PluginError(f"{what}: the API server answered {status} {exc.reason}: {message}".rstrip(": "))
