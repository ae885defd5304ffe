"""kopf handlers: thin shells that read from indexes, call the reconciler, post Events.

Indexes keep the fleet in memory (policies, namespace labels, agents) so a reconcile needs no
extra reads, and the evaluator reads agents from the same index instead of the API server.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import kopf
from pydantic import ValidationError

from agentfleet import policy as policy_core
from agentfleet.api import conditions as cond
from agentfleet.api import names
from agentfleet.api.types import AgentPolicy
from agentfleet.controller import metrics
from agentfleet.controller import plan as plans
from agentfleet.controller.ownership import owned_by
from agentfleet.controller.reconcile import Context, reconcile
from agentfleet.kube.client import Kube, KubeError
from agentfleet.kube.status import freshest_status, merge, readiness, update_status

log = logging.getLogger("agentfleet.handlers")

AGD = (names.GROUP, names.VERSION, names.AGENT_PLURAL)
AGP = (names.GROUP, names.VERSION, names.POLICY_PLURAL)


# ----------------------------------------------------------------------------- indexes


@kopf.index(*AGP)
def policy_index(name: str, body: kopf.Body, logger: kopf.Logger, **_: Any) -> dict[str, AgentPolicy]:
    try:
        return {name: AgentPolicy.model_validate(dict(body))}
    except ValidationError as exc:  # admission should prevent this; never crash on it
        logger.error(f"AgentPolicy {name} is invalid and is ignored: {exc.errors()[0]}")
        return {}


@kopf.index("", "v1", "namespaces")
def namespace_index(name: str, labels: kopf.Labels, **_: Any) -> dict[str, dict[str, str]]:
    return {name: dict(labels)}


@kopf.index(*AGD)
def agent_index(body: kopf.Body, **_: Any) -> dict[tuple[str, str], dict[str, Any]]:
    namespace, name = body.metadata.namespace or "", body.metadata.name or ""
    # managedFields are the API server's bookkeeping, often the largest part of the object: at
    # fleet scale they were a good share of the operator's memory, and nothing here reads them.
    metadata = {k: v for k, v in body.metadata.items() if k != "managedFields"}
    return {
        (namespace, name): {
            "metadata": metadata,
            "spec": dict(body.spec),
            "status": dict(body.status),
            "apiVersion": body.get("apiVersion"),
        }
    }


def policies_of(index: kopf.Index[str, AgentPolicy]) -> list[AgentPolicy]:
    return [p for store in index.values() for p in store]


def labels_of(index: kopf.Index[str, dict[str, str]], namespace: str) -> dict[str, str]:
    return next(iter(index.get(namespace, [])), {})


def latest(index: kopf.Index[tuple[str, str], dict[str, Any]], key: tuple[str, str]) -> dict[str, Any] | None:
    return next(iter(index.get(key, [])), None)


# ----------------------------------------------------------------------------- AgentDeployment


@kopf.on.resume(*AGD, backoff=5)
@kopf.on.create(*AGD, backoff=5)
@kopf.on.update(*AGD, backoff=5)
async def reconcile_agent(body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    policy_index: kopf.Index[str, AgentPolicy] = kwargs["policy_index"]
    namespace_index: kopf.Index[str, dict[str, str]] = kwargs["namespace_index"]
    ctx = Context(
        kube=memo.kube,
        settings=memo.render_settings,
        policies=policies_of(policy_index),
        namespace_labels=labels_of(namespace_index, body.metadata.namespace or ""),
        platform=getattr(memo, "platform", None) or plans.BUILTIN,
    )
    slots: asyncio.Semaphore | None = getattr(memo, "reconcile_slots", None)
    async with slots or contextlib.nullcontext():
        await reconcile_one(ctx, body)


async def reconcile_one(ctx: Context, body: kopf.Body) -> None:
    started = time.perf_counter()
    try:
        outcome = await reconcile(ctx, json.loads(json.dumps(dict(body))))
    except KubeError as exc:
        metrics.RECONCILE_ERRORS.inc()
        metrics.TRANSIENT_ERRORS.labels("reconcile").inc()
        raise kopf.TemporaryError(f"API server said {exc}; retrying", delay=5) from None
    finally:
        metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)
    metrics.RECONCILES.inc()
    for type_, reason, message in outcome.events:
        kopf.event(body, type=type_, reason=reason, message=message)


# ----------------------------------------------------------------------------- Deployment status


@kopf.on.event("apps", "v1", "deployments", labels={names.MANAGED_BY: names.MANAGER})
async def deployment_changed(body: kopf.Body, type: str, memo: kopf.Memo, **kwargs: Any) -> None:
    """Mirror the Deployment's replica counts and readiness onto the AgentDeployment."""
    agent_index: kopf.Index[tuple[str, str], dict[str, Any]] = kwargs["agent_index"]
    ns, agent_name = body.metadata.namespace or "", body.metadata.labels.get(names.AGENT)
    mirror: ReadyMirror | None = getattr(memo, "ready_mirror", None)
    if type == "DELETED":
        if mirror is not None:
            mirror.forget((ns, agent_name or ""))
        return
    agent = latest(agent_index, (ns, agent_name or ""))
    if agent is None or not owned_by(dict(body), str(agent["metadata"].get("uid") or "")):
        return  # not the agent's own Deployment (labels alone are not ownership)
    seen = (int(body.spec.get("replicas") or 0), dict(body.get("status") or {}))
    if mirror is None:  # no coalescing configured: write now
        await mirror_readiness(memo.kube, agent_index, (ns, agent_name or ""), lambda: seen)
    else:
        mirror.offer((ns, agent_name or ""), seen, agent_index)


class ReadyMirror:
    """Coalesces a Deployment's burst of status events into one write per agent.

    A new Deployment reports created, scheduled, progressing and available within a second or
    two, and each of those events used to become its own status write (and, through the watch,
    another event for every AgentDeployment watcher). The first event of a burst schedules a
    write ``delay`` seconds later; later events of the burst only replace what it will write.

    A write always carries the newest observation, also when it is retried after a conflict: an
    older write that is slow and conflicts must never put its old observation over a newer one
    (in steady state no further Deployment event would correct it).
    """

    def __init__(self, kube: Kube, delay: float = 1.0) -> None:
        self.kube = kube
        self.delay = delay
        self._scheduled: set[tuple[str, str]] = set()
        self._newest: dict[tuple[str, str], tuple[int, dict[str, Any]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def offer(
        self,
        key: tuple[str, str],
        seen: tuple[int, dict[str, Any]],
        agent_index: kopf.Index[tuple[str, str], dict[str, Any]],
    ) -> None:
        scheduled = key in self._scheduled
        self._scheduled.add(key)
        self._newest[key] = seen
        if not scheduled:
            task = asyncio.create_task(self._flush(key, agent_index), name=f"ready-mirror {key[0]}/{key[1]}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _flush(self, key: tuple[str, str], agent_index: kopf.Index[tuple[str, str], dict[str, Any]]) -> None:
        await asyncio.sleep(self.delay)
        self._scheduled.discard(key)
        seen = self._newest.get(key)
        if seen is None:  # the Deployment went away meanwhile
            return
        try:
            await mirror_readiness(self.kube, agent_index, key, lambda: self._newest.get(key, seen))
        except KubeError as exc:  # transient: the next Deployment event (or resync) writes it
            metrics.TRANSIENT_ERRORS.labels("readiness").inc()
            log.warning("mirroring the readiness of %s/%s failed: %s", *key, exc)
        except Exception:  # a bug: logged with its traceback, and the next event tries again
            log.exception("mirroring the readiness of %s/%s failed", *key)

    def forget(self, key: tuple[str, str]) -> None:
        """The Deployment is gone: drop its newest observation."""
        self._newest.pop(key, None)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


Observation = tuple[int, dict[str, Any]]  # (the Deployment's spec.replicas, its status)


def readiness_change(status: dict[str, Any], seen: Observation, generation: int | None, now: str) -> dict[str, Any]:
    """``status`` with the replica counts and Ready condition of the observed Deployment."""
    desired, dep_status = seen
    fields, is_ready, reason, message = readiness({"spec": {"replicas": desired}, "status": dep_status})
    conditions = cond.set_condition(status.get("conditions"), cond.READY, is_ready, reason, message, generation, now)
    return merge(fields, [c for c in conditions if c["type"] == cond.READY])(status)


async def mirror_readiness(
    kube: Kube,
    agent_index: kopf.Index[tuple[str, str], dict[str, Any]],
    key: tuple[str, str],
    observe: Callable[[], Observation],
) -> None:
    """Write the Deployment's readiness onto the agent; ``observe`` gives the newest observation
    at the moment of each write attempt (a retry after a conflict writes the newest, not its own)."""
    agent = latest(agent_index, key)
    if agent is None:
        return
    generation, now = agent["metadata"].get("generation"), cond.now_rfc3339()
    status = freshest_status(kube, agent)  # the index lags our own writes by a watch event
    if readiness_change(status, observe(), generation, now) == status:
        return
    try:
        await update_status(kube, agent, lambda current: readiness_change(current, observe(), generation, now))
    except KubeError as exc:
        if exc.status != 404:
            raise


# ----------------------------------------------------------------------------- AgentPolicy changes


def covering_hash(policies: Iterable[AgentPolicy], namespace: str, labels: dict[str, str]) -> str:
    """Fingerprint of the policies covering a namespace: when it changes, its agents re-reconcile.
    Names count too: a spend quota is keyed by its policy's name, so a renamed policy (same spec)
    must reach the guards."""
    specs = sorted(
        json.dumps([p.metadata.name, p.spec.wire()], sort_keys=True)
        for p in policies
        if policy_core.covers(p, namespace, labels)
    )
    return hashlib.sha256("\n".join(specs).encode()).hexdigest()[:12]


@kopf.on.event(*AGP)
async def policy_changed(memo: kopf.Memo, **kwargs: Any) -> None:
    """Touch (annotate) the agents whose covering policies changed, so they reconcile now."""
    await touch_changed(memo, kwargs)


@kopf.on.event("", "v1", "namespaces")
async def namespace_changed(name: str, type: str, memo: kopf.Memo, **kwargs: Any) -> None:
    """A namespace's labels decide which policies cover it: when they change (a namespace that
    becomes covered, or leaves a policy), its agents are judged again now, not at some later
    unrelated event."""
    if type != "DELETED":
        await touch_changed(memo, kwargs, namespace=name)


async def touch_changed(memo: kopf.Memo, indexes: dict[str, Any], namespace: str | None = None) -> None:
    """Annotate the agents (of ``namespace``, or all) whose covering-policy fingerprint changed."""
    policy_index: kopf.Index[str, AgentPolicy] = indexes["policy_index"]
    namespace_index: kopf.Index[str, dict[str, str]] = indexes["namespace_index"]
    agent_index: kopf.Index[tuple[str, str], dict[str, Any]] = indexes["agent_index"]
    policies = policies_of(policy_index)
    touches = []
    hashes: dict[str, str] = {}  # one fingerprint per namespace, not per agent
    for (ns, name), store in list(agent_index.items()):
        if namespace is not None and ns != namespace:
            continue
        if ns not in hashes:
            hashes[ns] = covering_hash(policies, ns, labels_of(namespace_index, ns))
        want = hashes[ns]
        for agent in store:
            if (agent["metadata"].get("annotations") or {}).get(names.POLICY_HASH) != want:
                touches.append((ns, name, want))
    sem = asyncio.Semaphore(16)

    async def touch(ns: str, name: str, value: str) -> None:
        async with sem:
            try:
                await memo.kube.merge_patch(
                    "AgentDeployment", ns, name, {"metadata": {"annotations": {names.POLICY_HASH: value}}}
                )
            except KubeError as exc:
                if exc.status == 422:  # an object the schema no longer accepts: it is reported on its status
                    log.warning("could not mark %s/%s for a new reconcile: %s", ns, name, exc.message)
                elif exc.status != 404:
                    raise

    await asyncio.gather(*(touch(*t) for t in touches))
