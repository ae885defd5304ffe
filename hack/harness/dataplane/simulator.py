"""The simulator of the test/demo data plane (not part of the product).

KWOK pods run nothing, so this process plays kubelet for agentfleet's pods: it lists and watches
the pods labelled ``app.kubernetes.io/managed-by=agentfleet`` and, for each one that is Running
and not being deleted, it

1. reads the guard ConfigMap the pod mounts (``<agent>-guard-<revision>``, key ``guard.yaml``)
   and rewrites it for this machine (loopback listener, the fake LLM as upstream, a dummy API
   key file, the audit trail under the work directory);
2. starts a real guard process running ``agentfleet guard --config FILE`` (forked from a server
   that imported the guard's code once, or ``--launcher exec``: a fresh process) and waits for
   ``/readyz``;
3. drops a Prometheus file-SD target ``<targets-dir>/<namespace>__<pod>.json`` (atomic rename);
4. runs a :class:`~hack.harness.dataplane.agent.ScriptedAgent` (in this process) against the
   guard, with the behaviour the pod's system prompt asks for.

When the pod stops Running, gets a deletionTimestamp or disappears, the agent is stopped, the
guard gets SIGTERM (SIGKILL after a deadline) and the target file is removed. A guard that exits
on its own is restarted with a backoff, like kubelet would. On SIGTERM/SIGINT the simulator
stops everything and removes its target files; its children also get SIGTERM from the kernel if
the simulator itself is killed (``PR_SET_PDEATHSIG``).

Everything listens on and connects to loopback only: an upstream that is not on loopback is
replaced by the fake LLM (``--llm-url`` or ``--start-llm``), or the pod is not simulated.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import yaml

from agentfleet.api.guardconfig import AuditSink, GuardConfig
from hack.harness.dataplane.agent import HEALTHY, ScriptedAgent, behaviour_from_prompt
from hack.harness.dataplane.processes import (
    ExecLauncher,
    ForkLauncher,
    GuardProcess,
    Launcher,
    start_fake_llm,
    stop_child,
)

log = logging.getLogger("dataplane")

MANAGED_SELECTOR = "app.kubernetes.io/managed-by=agentfleet"
AGENT_LABEL = "agentfleet.dev/agent"
REVISION_LABEL = "agentfleet.dev/revision"
CONFIG_VOLUME = "guard-config"
CONFIG_KEY = "guard.yaml"
PROMPT_ENV = "AGENTFLEET_SYSTEM_PROMPT"
OWNER_LABEL = "__dataplane_pid"
"""A file-SD label that Prometheus drops after relabelling (``__`` prefix): marks our target
files so a later simulator can remove those left behind by one that was killed."""
API_TIMEOUT = 15.0
WATCH_SECONDS = 50
BACKOFF_MAX = 30.0


# ----------------------------------------------------------------------------- pure helpers


@dataclass(frozen=True)
class PodInfo:
    """What the simulator needs from a pod object."""

    namespace: str
    name: str
    uid: str
    agent: str
    revision: str
    config_map: str
    prompt: str | None = None
    """Inline system prompt (the agent container's ``AGENTFLEET_SYSTEM_PROMPT`` value)."""
    prompt_ref: tuple[str, str] | None = None
    """(ConfigMap, key) when the prompt comes from a ConfigMap."""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def runnable_pod(pod: Mapping[str, Any]) -> PodInfo | None:
    """The pod's simulation inputs if it should have running processes now, else None.

    Running, no deletionTimestamp, the agentfleet agent/revision labels, and a ConfigMap
    volume holding the guard's config.
    """
    meta = pod.get("metadata") or {}
    if meta.get("deletionTimestamp") or (pod.get("status") or {}).get("phase") != "Running":
        return None
    labels = meta.get("labels") or {}
    agent, revision = labels.get(AGENT_LABEL), labels.get(REVISION_LABEL)
    spec = pod.get("spec") or {}
    if not agent or not revision:
        return None
    config_map = None
    for vol in spec.get("volumes") or []:
        name = (vol.get("configMap") or {}).get("name")
        if name and (vol.get("name") == CONFIG_VOLUME or name == f"{agent}-guard-{revision}"):
            config_map = name
            if vol.get("name") == CONFIG_VOLUME:
                break
    if config_map is None:
        return None
    prompt: str | None = None
    prompt_ref: tuple[str, str] | None = None
    containers = spec.get("containers") or []
    container = next((c for c in containers if c.get("name") == "agent"), containers[0] if containers else {})
    for env in container.get("env") or []:
        if env.get("name") != PROMPT_ENV:
            continue
        ref = (env.get("valueFrom") or {}).get("configMapKeyRef")
        if ref:
            prompt_ref = (ref["name"], ref["key"])
        else:
            prompt = env.get("value", "")
    return PodInfo(
        meta["namespace"], meta["name"], meta.get("uid", ""), agent, revision, config_map, prompt, prompt_ref
    )


def is_loopback_url(url: str) -> bool:
    """True when ``url``'s host is a loopback address or ``localhost``."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def local_config(data: Mapping[str, Any], *, llm_url: str | None, api_key_file: Path, audit_file: Path) -> GuardConfig:
    """The pod's guard config, rewritten to run on this machine.

    Loopback listeners (the peer listener on a free port); the model endpoint kept when it is on
    loopback, otherwise replaced by ``llm_url`` (ValueError without one: the simulator never talks to anything off this
    machine); tool endpoints likewise (pointed at the fake's ``/tools/NAME``, or dropped); a
    dummy key file (the fake LLM can target one agent by key ``sim-<namespace>-<agent>``); the
    audit trail in a small rotated file instead of stdout.
    """
    cfg = GuardConfig.model_validate(data)
    endpoint = cfg.model.endpoint
    if not is_loopback_url(endpoint):
        if llm_url is None:
            raise ValueError(
                f"model endpoint {endpoint} is not on loopback and no fake LLM is configured (--llm-url or --start-llm)"
            )
        endpoint = llm_url
    tools = []
    for tool in cfg.tools:
        if tool.endpoint and not is_loopback_url(tool.endpoint):
            url = None
            if llm_url is not None:
                parts = urlsplit(llm_url)
                url = urlunsplit((parts.scheme, parts.netloc, f"/tools/{tool.name}", "", ""))
            tools.append(tool.model_copy(update={"endpoint": url}))
        else:
            tools.append(tool)
    return cfg.model_copy(
        update={
            "model": cfg.model.model_copy(update={"endpoint": endpoint}),
            "tools": tools,
            "listen_host": "127.0.0.1",
            # The peer listener (calls between agents) on loopback and a free port: many guards share this machine.
            "peer": cfg.peer.model_copy(update={"host": "127.0.0.1", "port": 0}) if cfg.peer is not None else None,
            "api_key_file": str(api_key_file),
            "audit": AuditSink(stdout=False, file=str(audit_file), max_bytes=4 * 1024 * 1024, backups=1),
        }
    )


def target_document(port: int, pod: PodInfo) -> list[dict[str, Any]]:
    """The file-SD document for one guard."""
    return [
        {
            "targets": [f"127.0.0.1:{port}"],
            "labels": {
                "namespace": pod.namespace,
                "agent": pod.agent,
                "revision": pod.revision,
                "pod": pod.name,
                OWNER_LABEL: str(os.getpid()),
            },
        }
    ]


def write_atomic(path: Path, text: str) -> None:
    """Write via a hidden temporary file and rename (file-SD never sees a partial file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ----------------------------------------------------------------------------- per pod


@dataclass
class PodState:
    """What the simulator reports about one pod (in ``state.json``)."""

    phase: str = "pending"
    guard_pid: int | None = None
    guard_url: str | None = None
    target: str | None = None
    behaviour: str | None = None
    restarts: int = 0
    error: str | None = None
    agent: ScriptedAgent | None = field(default=None, repr=False)

    def snapshot(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "guard_pid": self.guard_pid,
            "guard_url": self.guard_url,
            "target": self.target,
            "behaviour": self.behaviour,
            "restarts": self.restarts,
            "error": self.error,
            "stats": self.agent.stats.snapshot() if self.agent else None,
        }


class PodRunner:
    """Runs one pod's guard and agent until cancelled; cleans up on the way out."""

    def __init__(self, sim: Simulator, pod: PodInfo) -> None:
        self.sim = sim
        self.pod = pod
        self.state = PodState()
        self.dir = sim.work_dir / pod.namespace / pod.name
        self.target = sim.targets_dir / f"{pod.namespace}__{pod.name}.json"
        self.guard: GuardProcess | None = None
        self.task = asyncio.create_task(self._run(), name=f"pod {pod.key}")

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    async def _run(self) -> None:
        backoff = 1.0
        try:
            config_path, prompt, cfg = await self._prepare()
            while True:
                started = time.monotonic()
                try:
                    await self._serve(config_path, prompt, cfg)
                except Exception as exc:  # a crash of this pod must not take the others down
                    self._set(phase="backoff", error=str(exc) or type(exc).__name__)
                    log.warning("%s: %s (restarting in %.0fs)", self.pod.key, exc, backoff)
                await self._teardown()
                if time.monotonic() - started > 60:
                    backoff = 1.0
                self.state.restarts += 1
                await asyncio.sleep(backoff)
                backoff = min(BACKOFF_MAX, backoff * 2)
        finally:
            self._set(phase="stopping")
            await self._teardown()
            self.sim.pod_gone(self)

    async def _prepare(self) -> tuple[Path, str, GuardConfig]:
        """Fetch the ConfigMap(s) and write the local config; retried until they exist."""
        self.dir.mkdir(parents=True, exist_ok=True)
        backoff = 0.5
        while True:
            try:
                raw = await self.sim.read_config_map(self.pod.namespace, self.pod.config_map, CONFIG_KEY)
                prompt = self.pod.prompt or ""
                if self.pod.prompt_ref is not None:
                    prompt = await self.sim.read_config_map(self.pod.namespace, *self.pod.prompt_ref)
                key_file = self.dir / "api-key"
                key_file.write_text(f"sim-{self.pod.namespace}-{self.pod.agent}\n")
                cfg = local_config(
                    yaml.safe_load(raw),
                    llm_url=self.sim.llm_url,
                    api_key_file=key_file,
                    audit_file=self.dir / "audit.jsonl",
                )
                behaviour = behaviour_from_prompt(prompt)
                config_path = self.dir / "guard.json"
                write_atomic(config_path, json.dumps(cfg.wire(), indent=2))
                self._set(behaviour=behaviour, error=None)
                return config_path, prompt, cfg
            except Exception as exc:  # not there yet, or unusable: say why and retry
                self._set(phase="waiting", error=str(exc))
                log.warning("%s: cannot simulate yet: %s (retrying in %.0fs)", self.pod.key, exc, backoff)
            await asyncio.sleep(backoff)
            backoff = min(BACKOFF_MAX, backoff * 2)

    async def _serve(self, config_path: Path, prompt: str, cfg: GuardConfig) -> None:
        self._set(phase="starting")
        self.guard = GuardProcess(self.sim.launcher, config_path, self.dir / "guard.log")
        assert self.sim.session is not None
        async with self.sim.start_slots:
            await self.guard.start(self.sim.session, self.sim.guard_start_timeout)
        assert self.guard.pid is not None
        tools = [t.name for t in cfg.tools if cfg.allowed_tools is None or t.name in cfg.allowed_tools]
        agent = ScriptedAgent(
            f"{self.guard.url}/v1",
            behaviour=self.state.behaviour or HEALTHY,
            model=cfg.model.name,
            tools=tools,
            name=f"{self.pod.namespace}/{self.pod.agent}",
            system_prompt=prompt or "You are a helpful agent.",
            interval=self.sim.task_interval,
            max_inflight=min(4, cfg.budgets.max_concurrent_tasks),
        )
        self.state.agent = agent
        self.sim.targets.write(self.target, target_document(self.guard.port, self.pod), owner=self)
        self._set(
            phase="running", guard_pid=self.guard.pid, guard_url=self.guard.url, target=str(self.target), error=None
        )
        log.info(
            "%s: guard pid %d on %s, agent %s (%s)",
            self.pod.key,
            self.guard.pid,
            self.guard.url,
            self.pod.agent,
            self.state.behaviour,
        )
        agent_task = asyncio.create_task(agent.run(), name=f"agent {self.pod.key}")
        guard_exit = asyncio.create_task(self.guard.wait())
        try:
            done, _ = await asyncio.wait({agent_task, guard_exit}, return_when=asyncio.FIRST_COMPLETED)
            if guard_exit in done:
                raise RuntimeError(f"guard exited with {guard_exit.result()}: {self.guard.tail()}")
            agent_task.result()  # the agent never ends on its own; surface why it did
            raise RuntimeError("the scripted agent stopped")
        finally:
            guard_exit.cancel()
            agent_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await agent_task

    async def _teardown(self) -> None:
        """Target first (Prometheus stops scraping), then the guard."""
        self.sim.targets.remove(self.target, owner=self)
        if self.guard is not None:
            await self.guard.stop(self.sim.stop_grace)
            self.guard = None
        self._set(guard_pid=None, guard_url=None, target=None)

    def _set(self, **changes: Any) -> None:
        for k, v in changes.items():
            setattr(self.state, k, v)
        self.sim.state_changed()


class Targets:
    """The file-SD target files this simulator owns (a replaced pod's runner cannot remove its
    successor's file)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.owners: dict[Path, object] = {}

    def write(self, path: Path, doc: list[dict[str, Any]], owner: object) -> None:
        write_atomic(path, json.dumps(doc))
        self.owners[path] = owner

    def remove(self, path: Path, owner: object) -> None:
        if self.owners.get(path) is owner:
            del self.owners[path]
            path.unlink(missing_ok=True)

    def remove_orphans(self, namespace: str | None) -> None:
        """Delete target files left by simulators that are gone (their pid is not alive)."""
        pattern = f"{namespace}__*.json" if namespace else "*__*.json"
        for path in self.dir.glob(pattern):
            try:
                owner = json.loads(path.read_text())[0]["labels"][OWNER_LABEL]
            except (OSError, ValueError, LookupError, TypeError):
                continue
            if int(owner) != os.getpid() and not pid_alive(int(owner)):
                log.info("removing target %s left by pid %s", path.name, owner)
                path.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- the simulator


@dataclass
class Options:
    kubeconfig: str | None
    targets_dir: Path
    work_dir: Path
    namespaces: list[str]
    llm_url: str | None = None
    start_llm: bool = False
    tasks_per_second: float = 1.0
    max_total_rate: float = 40.0
    max_pods: int = 200
    launcher: str = "fork"
    """``fork``: guards forked from a server that imported the guard once (fast starts, shared
    memory); ``exec``: a fresh ``agentfleet`` process per guard."""
    agentfleet_command: list[str] = field(default_factory=list)
    """How to run ``agentfleet`` (exec launcher); default: the script next to this Python."""
    start_concurrency: int = 8
    guard_start_timeout: float = 60.0
    stop_grace: float = 10.0


class Simulator:
    """Watches agent pods and keeps one guard + scripted agent per runnable pod."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.targets_dir = opts.targets_dir
        self.work_dir = opts.work_dir
        self.targets = Targets(opts.targets_dir)
        self.llm_url: str | None = opts.llm_url
        command = opts.agentfleet_command or [str(Path(sys.executable).parent / "agentfleet")]
        self.launcher: Launcher = ForkLauncher() if opts.launcher == "fork" else ExecLauncher(command)
        self.guard_start_timeout = opts.guard_start_timeout
        self.stop_grace = opts.stop_grace
        self.start_slots = asyncio.Semaphore(opts.start_concurrency)
        self.desired: dict[str, PodInfo] = {}
        self.runners: dict[str, PodRunner] = {}
        self.stopping: set[asyncio.Task[None]] = set()
        self.over_capacity: set[str] = set()
        self.synced: set[str | None] = set()
        self.closing = False
        self.session: aiohttp.ClientSession | None = None
        self._api: Any = None
        self._fake: asyncio.subprocess.Process | None = None
        self._state_dirty = asyncio.Event()
        self.state_path = opts.work_dir / "state.json"

    # ------------------------------------------------------------------ knobs used by runners

    def task_interval(self) -> float:
        """Seconds between two tasks of one pod: the per-pod rate, capped fleet-wide."""
        running = max(1, len(self.runners))
        return max(1.0 / self.opts.tasks_per_second, running / self.opts.max_total_rate)

    async def read_config_map(self, namespace: str, name: str, key: str) -> str:
        from kubernetes_asyncio.client import CoreV1Api
        from kubernetes_asyncio.client.exceptions import ApiException

        try:
            cm = await CoreV1Api(self._api).read_namespaced_config_map(name, namespace, _request_timeout=API_TIMEOUT)
        except ApiException as exc:
            raise LookupError(f"ConfigMap {namespace}/{name}: {exc.status} {exc.reason}") from None
        data = cm.data or {}
        if key not in data:
            raise LookupError(f"ConfigMap {namespace}/{name} has no key {key!r}")
        return str(data[key])

    def state_changed(self) -> None:
        self._state_dirty.set()

    def pod_gone(self, runner: PodRunner) -> None:
        if self.runners.get(runner.pod.key) is runner:
            del self.runners[runner.pod.key]
        self.state_changed()

    # ------------------------------------------------------------------ reconcile

    def _replace_scope(self, namespace: str | None, pods: list[dict[str, Any]]) -> None:
        for key in [k for k, p in self.desired.items() if namespace is None or p.namespace == namespace]:
            del self.desired[key]
        for pod in pods:
            self._observe("ADDED", pod)
        self._reconcile()

    def _observe(self, kind: str, pod: dict[str, Any]) -> None:
        meta = pod.get("metadata") or {}
        key = f"{meta.get('namespace')}/{meta.get('name')}"
        info = runnable_pod(pod) if kind != "DELETED" else None
        if info is None:
            self.desired.pop(key, None)
        else:
            self.desired[key] = info

    def _reconcile(self) -> None:
        if self.closing:
            return
        for key, runner in list(self.runners.items()):
            want = self.desired.get(key)
            if want is None or want.uid != runner.pod.uid:
                del self.runners[key]
                log.info("%s: stopping (pod %s)", key, "replaced" if want else "gone or not running")
                t = asyncio.create_task(runner.stop())
                self.stopping.add(t)
                t.add_done_callback(self.stopping.discard)
        for key, pod in self.desired.items():
            if key in self.runners:
                continue
            if len(self.runners) >= self.opts.max_pods:
                if key not in self.over_capacity:
                    log.warning("%s: not simulated, --max-pods %d reached", key, self.opts.max_pods)
                    self.over_capacity.add(key)
                continue
            self.over_capacity.discard(key)
            self.runners[key] = PodRunner(self, pod)
        self.over_capacity &= set(self.desired)
        self.state_changed()

    # ------------------------------------------------------------------ list + watch

    async def _list_watch(self, namespace: str | None) -> None:
        from kubernetes_asyncio.client import CoreV1Api
        from kubernetes_asyncio.client.exceptions import ApiException

        api: Any = CoreV1Api(self._api)
        scope = namespace or "all namespaces"
        backoff = 0.5
        while True:
            try:
                if namespace:
                    resp = await api.list_namespaced_pod(
                        namespace, label_selector=MANAGED_SELECTOR, _preload_content=False, _request_timeout=API_TIMEOUT
                    )
                else:
                    resp = await api.list_pod_for_all_namespaces(
                        label_selector=MANAGED_SELECTOR, _preload_content=False, _request_timeout=API_TIMEOUT
                    )
                async with resp:
                    body = await resp.json()
                rv = body["metadata"]["resourceVersion"]
                self._replace_scope(namespace, body.get("items") or [])
                if namespace not in self.synced:
                    self.targets.remove_orphans(namespace)
                    self.synced.add(namespace)
                    log.info("watching agent pods in %s (%d now)", scope, len(body.get("items") or []))
                    self._announce_ready()
                backoff = 0.5
                while rv is not None:
                    rv = await self._watch(api, namespace, rv)
            except asyncio.CancelledError:
                raise
            except (ApiException, aiohttp.ClientError, OSError, TimeoutError, ValueError, KeyError) as exc:
                log.warning("pod watch on %s failed: %s; relisting in %.1fs", scope, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(BACKOFF_MAX, backoff * 2)

    async def _watch(self, api: Any, namespace: str | None, rv: str) -> str | None:
        """One watch request; returns the resourceVersion to resume from, or None to relist."""
        kwargs: dict[str, Any] = {
            "label_selector": MANAGED_SELECTOR,
            "watch": True,
            "resource_version": rv,
            "allow_watch_bookmarks": True,
            "timeout_seconds": WATCH_SECONDS,
            "_preload_content": False,
            "_request_timeout": (API_TIMEOUT, WATCH_SECONDS + 20),
        }
        if namespace:
            resp = await api.list_namespaced_pod(namespace, **kwargs)
        else:
            resp = await api.list_pod_for_all_namespaces(**kwargs)
        async with resp:
            async for raw in resp.content:
                if not raw.strip():
                    continue
                event = json.loads(raw)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:  # too old: relist
                        return None
                    raise ValueError(f"watch error: {obj.get('message')}")
                rv = (obj.get("metadata") or {}).get("resourceVersion", rv)
                if kind in ("ADDED", "MODIFIED", "DELETED"):
                    self._observe(kind, obj)
                    self._reconcile()
        return rv

    def _scopes(self) -> list[str | None]:
        return list(self.opts.namespaces) or [None]

    def _announce_ready(self) -> None:
        if all(s in self.synced for s in self._scopes()):
            print(
                f"dataplane ready: work dir {self.work_dir}, llm {self.llm_url or '(endpoints as rendered)'}",
                flush=True,
            )

    # ------------------------------------------------------------------ state file

    def snapshot(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "llm_url": self.llm_url,
            "namespaces": self.opts.namespaces or None,
            "synced": all(s in self.synced for s in self._scopes()),
            "pods": {
                k: {"agent": r.pod.agent, "revision": r.pod.revision, **r.state.snapshot()}
                for k, r in sorted(self.runners.items())
            },
            "not_simulated": sorted(self.over_capacity),
        }

    async def _write_state(self) -> None:
        """``state.json``: on every change (at most every 0.2 s) and every 2 s for the agent stats."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._state_dirty.wait(), 2.0)
            self._state_dirty.clear()
            with contextlib.suppress(OSError):
                write_atomic(self.state_path, json.dumps(self.snapshot(), indent=1))
            await asyncio.sleep(0.2)

    # ------------------------------------------------------------------ main

    async def run(self, stop: asyncio.Event) -> None:
        from kubernetes_asyncio import client, config

        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.targets_dir.mkdir(parents=True, exist_ok=True)
        conf = client.Configuration()
        await config.load_kube_config(config_file=self.opts.kubeconfig, client_configuration=conf)
        self._api = client.ApiClient(conf)
        self.session = aiohttp.ClientSession()
        watchers: list[asyncio.Task[None]] = []
        state_task = asyncio.create_task(self._write_state())
        try:
            if self.opts.start_llm and self.llm_url is None:
                self._fake, base = await start_fake_llm(self.work_dir / "fake-llm.log")
                self.llm_url = f"{base}/v1"
                print(f"dataplane fake llm: {self.llm_url}", flush=True)
            await self.launcher.start()
            for ns in self._scopes():
                watchers.append(asyncio.create_task(self._list_watch(ns), name=f"watch {ns or '*'}"))
            stopper = asyncio.create_task(stop.wait())
            launcher_failed = asyncio.create_task(self.launcher.failed())
            await asyncio.wait([stopper, launcher_failed, *watchers], return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            launcher_failed.cancel()
            for w in watchers:
                if w.done() and not w.cancelled() and w.exception():
                    raise w.exception()  # type: ignore[misc]
            if not stop.is_set():
                raise RuntimeError("the guard launcher failed")
        finally:
            await self.shutdown(watchers)
            state_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await state_task
            write_atomic(self.state_path, json.dumps({**self.snapshot(), "stopped": True}, indent=1))

    async def shutdown(self, watchers: list[asyncio.Task[None]]) -> None:
        """Stop watching, then every pod's agent and guard (concurrently), then the fake LLM."""
        self.closing = True
        for w in watchers:
            w.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        runners = list(self.runners.values())
        log.info("stopping %d simulated pods", len(runners))
        t0 = time.monotonic()
        await asyncio.gather(*(r.stop() for r in runners), *self.stopping, return_exceptions=True)
        await self.launcher.close()
        if self._fake is not None:
            await stop_child(self._fake, 5)
        log.info("pods stopped in %.1fs", time.monotonic() - t0)
        if self.session is not None:
            await self.session.close()
        if self._api is not None:
            await self._api.close()


def install_signal_handlers(stop: asyncio.Event) -> Callable[[], None]:
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        log.info("%s: shutting down", sig.name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)

    def remove() -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)

    return remove
