"""Reconcile one AgentDeployment: read, call the pure core (policy, render), apply, report.

Level-triggered and idempotent: every call converges the children to what the spec (or a
pinned rollback revision) says, so a restart mid-reconcile just runs it again. State that must
survive restarts (current/stable revision, suspension, rollback pin) lives in status.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from agentfleet import policy as policy_core
from agentfleet.api import conditions as cond
from agentfleet.api import names
from agentfleet.api.types import AgentDeployment, AgentDeploymentSpec, AgentPolicy
from agentfleet.kube.client import Kube, KubeError
from agentfleet.kube.status import merge, update_status, with_first_readiness
from agentfleet.render import Rendered, RenderError, RenderSettings, render, render_controller_revision, selector

log = logging.getLogger("agentfleet.reconcile")

# Conditions this writer decides; the evaluator and the Deployment watcher decide theirs, and
# update_status merges each writer's change into the freshest status.
OWNED = {cond.POLICY_VIOLATION, cond.ROLLED_BACK, cond.SUSPENDED, cond.PROGRESSING}
OPTIONAL_KINDS = ("Role", "RoleBinding")  # rendered only when the agent has Kubernetes permissions


@dataclass
class Context:
    """What the shell hands the reconciler: a client, settings and in-memory indexes."""

    kube: Kube
    settings: RenderSettings
    policies: list[AgentPolicy]
    namespace_labels: dict[str, str]


@dataclass
class Outcome:
    """What happened, for status and Events (Events are posted by the caller)."""

    events: list[tuple[str, str, str]] = field(default_factory=list)  # (type, reason, message)
    revision: str | None = None


def selector_string(name: str) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(selector(name).items()))


def desired_replicas(
    agent: AgentDeployment, status: dict[str, Any], policies: list[AgentPolicy], namespace_labels: dict[str, str]
) -> tuple[int, str | None]:
    """Replica count to run and, when it is zero on purpose, the reason (for the condition)."""
    if agent.spec.suspended:
        return 0, "ManualSuspend"
    if policy_core.suspend_all(agent, policies, namespace_labels):
        return 0, "FleetKillSwitch"
    auto = cond.get(status.get("conditions"), cond.SUSPENDED)
    if auto and auto.get("status") == "True" and auto.get("reason") not in {"ManualSuspend", "FleetKillSwitch"}:
        return 0, str(auto.get("reason"))
    return agent.spec.replicas, None


def pinned_revision(body: dict[str, Any]) -> str | None:
    """A rollback pins a revision until the spec changes (a new generation is a fresh attempt)."""
    status = body.get("status") or {}
    rolled = cond.get(status.get("conditions"), cond.ROLLED_BACK)
    if (
        rolled
        and rolled.get("status") == "True"
        and rolled.get("observedGeneration") == body["metadata"].get("generation")
    ):
        pin = status.get("currentRevision")
        return str(pin) if pin else None
    return None


async def revisions(kube: Kube, namespace: str, name: str) -> list[dict[str, Any]]:
    """ControllerRevisions of an agent, oldest first."""
    items = await kube.list("ControllerRevision", namespace, f"{names.AGENT}={name}")
    return sorted(items, key=lambda r: int(r.get("revision", 0)))


def snapshot_agent(agent: AgentDeployment, revision: dict[str, Any]) -> AgentDeployment:
    """The agent as it was at ``revision``: pod-relevant spec from the snapshot, the rest current."""
    spec = agent.spec.wire()
    spec.update(revision["data"]["spec"])
    return agent.model_copy(update={"spec": AgentDeploymentSpec.model_validate(spec)})


async def reconcile(ctx: Context, body: dict[str, Any]) -> Outcome:
    """Converge one AgentDeployment. Never raises for bad input: that becomes a condition."""
    meta = body["metadata"]
    ns, name, generation = meta["namespace"], meta["name"], meta.get("generation")
    status: dict[str, Any] = dict(body.get("status") or {})
    out = Outcome()
    now = cond.now_rfc3339()
    conditions = status.get("conditions") or []
    try:
        agent = AgentDeployment.model_validate(body)
    except ValidationError as exc:  # the CRD schema should have caught it; never crash on it
        err = exc.errors()[0]
        return await invalid(
            ctx, body, f"spec is invalid at {'.'.join(map(str, err['loc']))}: {err['msg']}", conditions, now
        )

    violations = policy_core.violations(agent, ctx.policies, ctx.namespace_labels)
    if violations:
        return await refuse(ctx, body, [f"{v.policy}: {v.message}" for v in violations], conditions, now)
    conditions = cond.set_condition(
        conditions,
        cond.POLICY_VIOLATION,
        False,
        "WithinPolicy",
        "all covering AgentPolicies allow this agent",
        generation,
        now,
    )

    all_revisions = await revisions(ctx.kube, ns, name) if status.get("currentRevision") else []
    rollback_to = (meta.get("annotations") or {}).get(names.ROLLBACK_TO)
    consumed: dict[str, None] = {}  # request annotations, removed only once status records the result
    pin = pinned_revision(body)
    pinned: dict[str, Any] | None = None
    if rollback_to:
        pinned = next(
            (
                r
                for r in all_revisions
                if rollback_to in {str(r.get("revision")), r["metadata"]["labels"].get(names.REVISION)}
            ),
            None,
        )
        if pinned is None:
            out.events.append(
                ("Warning", "RollbackFailed", f"no revision {rollback_to!r}; see `kubectl agentfleet history {name}`")
            )
        else:
            pin = pinned["metadata"]["labels"][names.REVISION]
            conditions = cond.set_condition(
                conditions,
                cond.ROLLED_BACK,
                True,
                "ManualRollback",
                f"rolled back by request to revision {pinned.get('revision')} ({pin})",
                generation,
                now,
            )
            out.events.append(("Normal", "RolledBack", f"manual rollback to revision {pinned.get('revision')} ({pin})"))
        consumed[names.ROLLBACK_TO] = None
    elif pin:
        pinned = next((r for r in all_revisions if r["metadata"]["labels"].get(names.REVISION) == pin), None)
    if not pin or pinned is None:
        conditions = cond.set_condition(
            conditions,
            cond.ROLLED_BACK,
            False,
            "NewGeneration" if cond.get(conditions, cond.ROLLED_BACK) else "NotRolledBack",
            "running the revision the spec describes",
            generation,
            now,
        )

    resumed = False
    if names.RESUME in (meta.get("annotations") or {}):
        if cond.is_true(conditions, cond.SUSPENDED):
            resumed = True
            conditions = cond.set_condition(
                conditions, cond.SUSPENDED, False, "Resumed", "resumed by request", generation, now
            )
            status["conditions"] = conditions
        consumed[names.RESUME] = None
    replicas, zero_reason = desired_replicas(agent, status, ctx.policies, ctx.namespace_labels)
    pricing = policy_core.effective_pricing(agent, ctx.policies, ctx.namespace_labels)
    source = snapshot_agent(agent, pinned) if pinned else agent
    try:
        rendered = render(source, ctx.settings, pricing=pricing, replicas=replicas)
    except RenderError as exc:
        return await invalid(ctx, body, str(exc), conditions, now)
    if pinned:  # exact: the template recorded with the revision, not today's rendering of it
        rendered = with_template(rendered, pinned["data"]["template"])

    deployment: dict[str, Any] = {}
    try:
        for obj in rendered.objects:
            applied = await ctx.kube.apply(obj)
            if obj["kind"] == "Deployment":
                deployment = applied
    except KubeError as exc:
        if exc.status not in {403, 422}:
            raise  # transient: kopf retries
        # Refused for good (e.g. a Role beyond what the operator may delegate): say so, don't retry.
        return await invalid(
            ctx,
            body,
            f"the API server refused {obj['kind']} {obj['metadata']['name']}: {exc.message}",
            conditions,
            now,
            reason="Refused",
        )
    number = await record_revision(ctx, agent, rendered, all_revisions)
    await prune(ctx, agent, rendered, all_revisions, status)

    if rendered.revision != status.get("currentRevision"):
        out.events.append(("Normal", "RevisionApplied", f"applied revision {number} ({rendered.revision})"))
        status["revisionStartedAt"] = now
    was_zero = cond.is_true(conditions, cond.SUSPENDED)
    if zero_reason:
        msg = status_message_for(zero_reason, conditions)
        conditions = cond.set_condition(conditions, cond.SUSPENDED, True, zero_reason, msg, generation, now)
        if not was_zero:
            out.events.append(("Warning", "Suspended", msg))
    else:
        conditions = cond.set_condition(
            conditions,
            cond.SUSPENDED,
            False,
            "Resumed" if resumed else "Running",
            f"{'resumed by request: ' if resumed else ''}running {replicas} replica(s)",
            generation,
            now,
        )
        if was_zero or resumed:
            out.events.append(("Normal", "Resumed", f"scaled back to {replicas} replica(s)"))
    conditions = cond.set_condition(
        conditions, cond.PROGRESSING, True, "RevisionApplied", f"revision {rendered.revision} applied", generation, now
    )
    out.revision = rendered.revision
    mutate = merge(
        {
            "observedGeneration": generation,
            "selector": selector_string(name),
            "currentRevision": rendered.revision,
            "revisionStartedAt": status.get("revisionStartedAt", now),
        },
        [c for c in conditions if c["type"] in OWNED],
    )
    await update_status(ctx.kube, body, with_first_readiness(mutate, deployment, generation, now))
    if consumed:  # after the status write, so the event this causes carries the new status
        await ctx.kube.merge_patch("AgentDeployment", ns, name, {"metadata": {"annotations": consumed}})
    return out


def status_message_for(reason: str, conditions: cond.Conditions) -> str:
    if reason == "ManualSuspend":
        return "spec.suspended is true; set it to false to resume"
    if reason == "FleetKillSwitch":
        return "an AgentPolicy covering this namespace has suspendAll: true"
    existing = cond.get(conditions, cond.SUSPENDED)
    return str(existing.get("message", reason)) if existing else reason


def with_template(rendered: Rendered, template: dict[str, Any]) -> Rendered:
    objects = [
        {**obj, "spec": {**obj["spec"], "template": template}} if obj["kind"] == "Deployment" else obj
        for obj in rendered.objects
    ]
    return Rendered(
        revision=rendered.revision, objects=objects, pod_template=template, guard_config=rendered.guard_config
    )


async def record_revision(
    ctx: Context, agent: AgentDeployment, rendered: Rendered, existing: list[dict[str, Any]]
) -> int:
    """Store the revision as a ControllerRevision (numbered like Deployments do)."""
    same = next((r for r in existing if r["metadata"]["labels"].get(names.REVISION) == rendered.revision), None)
    if same is not None:
        return int(same.get("revision", 0))
    number = max((int(r.get("revision", 0)) for r in existing), default=0) + 1
    await ctx.kube.apply(render_controller_revision(agent, rendered, number))
    return number


async def prune(
    ctx: Context, agent: AgentDeployment, rendered: Rendered, existing: list[dict[str, Any]], status: dict[str, Any]
) -> None:
    """Delete children no longer desired, and revisions beyond revisionHistoryLimit."""
    ns, name = agent.metadata.namespace, agent.metadata.name
    if not status.get("currentRevision"):
        return  # a brand-new agent has nothing to prune
    desired = {(o["kind"], o["metadata"]["name"]) for o in rendered.objects}
    for kind in OPTIONAL_KINDS:
        if (kind, f"{name}-agent") not in desired:
            await ctx.kube.delete(kind, ns, f"{name}-agent")
    keep = {rendered.revision, status.get("stableRevision"), status.get("currentRevision")}
    old = [r for r in existing if r["metadata"]["labels"].get(names.REVISION) not in keep]
    excess = len(old) - agent.spec.revision_history_limit
    for rev in old[: max(excess, 0)]:
        rev_hash = rev["metadata"]["labels"].get(names.REVISION)
        await ctx.kube.delete("ControllerRevision", ns, rev["metadata"]["name"])
        await ctx.kube.delete("ConfigMap", ns, f"{name}-guard-{rev_hash}")


async def invalid(
    ctx: Context, body: dict[str, Any], msg: str, conditions: cond.Conditions, now: str, reason: str = "InvalidSpec"
) -> Outcome:
    """A spec that cannot be deployed: say so on status and as an Event; keep what runs."""
    generation = body["metadata"].get("generation")
    conditions = cond.set_condition(conditions, cond.PROGRESSING, False, reason, msg, generation, now)
    await update_status(
        ctx.kube, body, merge({"observedGeneration": generation}, [c for c in conditions if c["type"] in OWNED])
    )
    return Outcome(events=[("Warning", reason, msg)])


async def refuse(
    ctx: Context, body: dict[str, Any], messages: list[str], conditions: cond.Conditions, now: str
) -> Outcome:
    """Policy violation: create nothing new, withdraw what could exceed the policy."""
    meta = body["metadata"]
    ns, name, generation = meta["namespace"], meta["name"], meta.get("generation")
    msg = "; ".join(messages)
    conditions = cond.set_condition(conditions, cond.POLICY_VIOLATION, True, "PolicyViolation", msg, generation, now)
    try:
        await ctx.kube.merge_patch("Deployment", ns, name, {"spec": {"replicas": 0}})
    except KubeError as exc:
        if exc.status != 404:
            raise
    for kind in OPTIONAL_KINDS:
        await ctx.kube.delete(kind, ns, f"{name}-agent")
    await update_status(
        ctx.kube, body, merge({"observedGeneration": generation}, [c for c in conditions if c["type"] in OWNED])
    )
    return Outcome(events=[("Warning", "PolicyViolation", msg)])
