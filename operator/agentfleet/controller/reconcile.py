"""Reconcile one AgentDeployment: read, call the pure core (policy, render), apply, report.

Level-triggered and idempotent: every call converges the children to what the spec (or a
pinned rollback revision) says, so a restart mid-reconcile just runs it again. State that must
survive restarts (current/stable revision, suspension, rollback pin) lives in status.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from agentfleet.api import conditions as cond
from agentfleet.api import names
from agentfleet.api.types import AgentDeployment, AgentPolicy
from agentfleet.controller import plan as plans
from agentfleet.controller.ownership import Children, NameConflict, owned_memory
from agentfleet.controller.plan import Event
from agentfleet.kube.client import Kube, KubeError
from agentfleet.kube.status import (
    StaleStatus,
    decided_on,
    merge,
    update_status,
    with_first_readiness,
    with_freshest_status,
)
from agentfleet.kube.writers import exclusive
from agentfleet.policy.platform import Platform
from agentfleet.render import Rendered, RenderError, RenderSettings, render, render_controller_revision, selector
from agentfleet.render.ledger import with_ledger_mount

log = logging.getLogger("agentfleet.reconcile")

OPTIONAL_KINDS = ("Role", "RoleBinding")  # rendered only when the agent has Kubernetes permissions


@dataclass
class Context:
    """What the shell hands the reconciler: a client, settings and in-memory indexes."""

    kube: Kube
    settings: RenderSettings
    policies: list[AgentPolicy]
    namespace_labels: dict[str, str]
    platform: Platform = plans.BUILTIN
    """The platform's own rules and default policy (deny by default)."""


@dataclass
class Outcome:
    """What happened, for status and Events (Events are posted by the caller)."""

    events: list[Event] = field(default_factory=list)
    revision: str | None = None


async def revisions(kube: Kube, namespace: str, name: str) -> list[dict[str, Any]]:
    """ControllerRevisions of an agent, oldest first."""
    items = await kube.list("ControllerRevision", namespace, f"{names.AGENT}={name}")
    return sorted(items, key=lambda r: int(r.get("revision", 0)))


ATTEMPTS = 3
"""Reconciles of one call before a status that keeps changing under it is left to a retry."""


async def reconcile(ctx: Context, body: dict[str, Any]) -> Outcome:
    """Converge one AgentDeployment, as its only writer. Never raises for bad input: that becomes
    a condition. Decides on the freshest status known; if the status changed under it in a way
    the decision depended on, decides again from the fresh object (never replays a stale one)."""
    meta = body["metadata"]
    ns, name = meta["namespace"], meta["name"]
    async with exclusive(ctx.kube, ns, name):
        for _ in range(ATTEMPTS):
            try:
                return await converge(ctx, with_freshest_status(ctx.kube, body))
            except StaleStatus:
                fresh = await ctx.kube.get(names.AGENT_KIND, ns, name)
                if fresh is None:
                    return Outcome()
                body = fresh
    raise KubeError(409, f"the status of {ns}/{name} kept changing during its reconcile; will retry", "Conflict")


async def converge(ctx: Context, body: dict[str, Any]) -> Outcome:
    """One attempt of ``reconcile`` (the caller holds the object's writer lock)."""
    meta = body["metadata"]
    ns, name, generation = meta["namespace"], meta["name"], meta.get("generation")
    status: dict[str, Any] = body.get("status") or {}
    now = cond.now_rfc3339()
    agent = plans.judge(body, ctx.policies, ctx.namespace_labels, now, ctx.platform)
    if isinstance(agent, plans.Problem):
        return await report(ctx, body, agent)
    # Listed every time, so that revision numbers come from what exists whatever happened before
    # (a crash between recording a revision and writing status must not number the next one 1).
    all_revisions = await revisions(ctx.kube, ns, name)
    p = plans.plan(agent, body, all_revisions, ctx.policies, ctx.namespace_labels, now, ctx.platform)
    if isinstance(p, plans.Problem):
        return await report(ctx, body, p)
    try:
        rendered = render(
            p.source,
            ctx.settings,
            pricing=p.pricing,
            replicas=p.replicas,
            hostname_cidrs=p.allowances.hostname_cidrs,
            excluded_cidrs=p.allowances.excluded,
            ledger=ctx.platform.ledger,
            ledger_policy=p.ledger_policy,
            quotas=p.quotas,
            telemetry=p.telemetry,
        )
    except RenderError as exc:
        return await report(ctx, body, plans.invalid(body, str(exc), now))
    if p.pinned:  # exact: the template recorded with the revision, not today's rendering of it
        # (but the ledger password follows today's guard config, which the pinned pods mount)
        rendered = with_template(rendered, with_ledger_mount(p.pinned["data"]["template"], rendered.pod_template))
    number, new = plans.revision_number(all_revisions, rendered.revision)
    snapshot = render_controller_revision(agent, rendered, number) if new else None

    children = Children(ctx.kube, owned_memory(ctx.kube), str(meta.get("uid") or ""))
    deployment: dict[str, Any] = {}
    try:
        await children.verify([*rendered.objects, *([snapshot] if snapshot else [])])
        if snapshot is not None:  # the snapshot first: no revision ever runs without one
            await children.apply(snapshot)
        for obj in rendered.objects:
            applied = await children.apply(obj)
            if obj["kind"] == "Deployment":
                deployment = applied
    except NameConflict as exc:
        return await report(ctx, body, plans.invalid(body, str(exc), now, reason="NameConflict"))
    except KubeError as exc:
        if exc.status not in {403, 422}:
            raise  # transient: kopf retries
        # Refused for good (e.g. a Role beyond what the operator may delegate): say so, don't retry.
        message = f"the API server refused {obj['kind']} {obj['metadata']['name']}: {exc.message}"
        return await report(ctx, body, plans.invalid(body, message, now, reason="Refused"))
    await prune(children, agent, rendered, all_revisions, status)

    change = plans.conclude(p, body, rendered.revision, number, selector(name), now)
    mutate = decided_on(status, merge(change.fields, change.conditions))
    await update_status(ctx.kube, body, with_first_readiness(mutate, deployment, generation, now))
    if p.consumed:  # after the status write, so the event this causes carries the new status
        await ctx.kube.merge_patch("AgentDeployment", ns, name, {"metadata": {"annotations": p.consumed}})
    return Outcome(events=change.events, revision=rendered.revision)


def with_template(rendered: Rendered, template: dict[str, Any]) -> Rendered:
    objects = [
        {**obj, "spec": {**obj["spec"], "template": template}} if obj["kind"] == "Deployment" else obj
        for obj in rendered.objects
    ]
    return Rendered(
        revision=rendered.revision, objects=objects, pod_template=template, guard_config=rendered.guard_config
    )


async def prune(
    children: Children,
    agent: AgentDeployment,
    rendered: Rendered,
    existing: list[dict[str, Any]],
    status: dict[str, Any],
) -> None:
    """Delete children no longer desired, and revisions beyond revisionHistoryLimit."""
    ns, name = agent.metadata.namespace or "", agent.metadata.name
    if not status.get("currentRevision"):
        return  # a brand-new agent has nothing to prune
    desired = {(o["kind"], o["metadata"]["name"]) for o in rendered.objects}
    for kind in OPTIONAL_KINDS:
        if (kind, f"{name}-agent") not in desired:
            await children.delete(kind, ns, f"{name}-agent")
    keep = {rendered.revision, status.get("stableRevision"), status.get("currentRevision")}
    for rev_name, rev_hash in plans.prunable(existing, keep, agent.spec.revision_history_limit):
        await children.delete("ControllerRevision", ns, rev_name)
        await children.delete("ConfigMap", ns, f"{name}-guard-{rev_hash}")


async def report(ctx: Context, body: dict[str, Any], problem: plans.Problem) -> Outcome:
    """Write why the agent cannot run; for a policy violation, also withdraw what could exceed it."""
    meta = body["metadata"]
    ns, name = meta["namespace"], meta["name"]
    children = Children(ctx.kube, owned_memory(ctx.kube), str(meta.get("uid") or ""))
    if problem.withdraw or plans.must_stop(body):
        # A suspension (manual, or the evaluator's) holds even when the spec cannot be rendered.
        await children.patch("Deployment", ns, name, {"spec": {"replicas": 0}})
    if problem.withdraw:
        for kind in OPTIONAL_KINDS:
            await children.delete(kind, ns, f"{name}-agent")
    seen = body.get("status") or {}
    await update_status(
        ctx.kube, body, decided_on(seen, merge({"observedGeneration": meta.get("generation")}, problem.conditions))
    )
    return Outcome(events=list(problem.events))
