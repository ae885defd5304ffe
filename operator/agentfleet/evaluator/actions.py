"""Carrying out verdicts: status first (the record that survives restarts), then the effect.

A suspension or rollback is written to status as a condition, and then the ordinary reconcile
turns that status into replicas 0 or the stable revision's exact pod template -- the same code
path as a manual suspend or rollback, so there is one mechanism, and a restart between the two
steps converges on the next reconcile. Every action also becomes an Event, a metric and an
audit record.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from agentfleet.api import conditions as cond
from agentfleet.api import names
from agentfleet.api.types import Action
from agentfleet.audit import AuditLog
from agentfleet.evaluator import metrics
from agentfleet.evaluator.anchors import anchors_change, heads
from agentfleet.evaluator.notify import Notification, Notifier
from agentfleet.evaluator.outcome import Outcome, fmt_value, outcome
from agentfleet.evaluator.rules import Act, AgentView, Memory, Samples, Verdict, make_act
from agentfleet.kube.client import Kube, KubeError
from agentfleet.kube.events import post_event
from agentfleet.kube.status import StaleStatus, decided_on, merge, update_status
from agentfleet.kube.writers import exclusive

log = logging.getLogger("agentfleet.evaluator")

ACTION_ATTEMPTS = 3
"""Decisions of one action before a status that keeps changing under it waits for the next cycle."""

Event = tuple[str, str, str]
CarryOut = Callable[[dict[str, Any]], Awaitable[list[Event]]]
"""Reconcile an AgentDeployment now (its freshest body), returning the Events to post. The
manager hands the controller's reconcile in, so the evaluator never imports the controller."""


class Actor:
    def __init__(
        self,
        kube: Kube,
        carry_out: CarryOut,
        memory: Callable[[], Memory],
        audit: AuditLog | None = None,
        notifier: Notifier | None = None,
    ) -> None:
        self.kube = kube
        self.carry_out = carry_out
        self.memory = memory
        self.audit = audit
        self.notifier = notifier
        """Sends each action to the covering AgentPolicies' alerting destinations (off the cycle)."""

    async def apply(self, agent: AgentView, v: Verdict) -> None:
        if v.act is None and not v.resume_budget:
            # Status-only (metrics availability, budgets flag, stable revision): write from the
            # view; update_status re-reads only if the object changed since the view was taken.
            view: dict[str, Any] = {
                "apiVersion": names.API_VERSION,
                "kind": names.AGENT_KIND,
                "metadata": {
                    "namespace": agent.namespace,
                    "name": agent.name,
                    "generation": agent.generation,
                    "resourceVersion": agent.resource_version,
                },
                "spec": {"replicas": agent.spec.replicas, "suspended": agent.spec.suspended},
                "status": agent.status,
            }
            await self._record(agent, v, view)
            return
        # An action: one writer at a time per agent, and decided on the object as it is now.
        async with exclusive(self.kube, agent.namespace, agent.name):
            for _ in range(ACTION_ATTEMPTS):
                body = await self.kube.get("AgentDeployment", agent.namespace, agent.name)
                if body is None:
                    return
                if v.act is not None:  # the view may lag: decide the action again on the object as it is now
                    v.act = rejudge(agent, body.get("status") or {}, v.act)
                try:
                    out = await self._record(agent, v, body)
                    break
                except StaleStatus:
                    continue
            else:
                raise KubeError(409, f"the status of {agent.key} kept changing; the action waits for the next cycle")
        if out.reconcile_after:  # then the effect, through the same path as a manual suspend or rollback
            fresh = await self.kube.get("AgentDeployment", agent.namespace, agent.name)
            if fresh is not None:
                for type_, reason, message in await self.carry_out(fresh):
                    await self.event(fresh, type_, reason, message)

    async def _record(self, agent: AgentView, v: Verdict, body: dict[str, Any]) -> Outcome:
        """Write what ``v`` decides onto status, the durable record of an action coming first:
        the audit record of the intent is on disk before the status says it, the status says it
        (``breachAnnounced: false``) before the Events go out, and ``breachAnnounced`` turns true
        only once they are out -- so a crash at any point leaves something that finishes it."""
        status = body.get("status") or {}
        now = cond.now_rfc3339()
        out = outcome(v, status, body["metadata"].get("generation"), now)
        if "lastBreach" in out.fields:
            out.fields["breachAnnounced"] = False
        if out.scale_to is not None:
            await self.kube.merge_patch(
                "AgentDeployment",
                agent.namespace,
                agent.name,
                {"spec": {"replicas": out.scale_to}},
                subresource="scale",
            )
        memory = self.memory()
        for act in out.acted:
            memory.acted[(agent.namespace, agent.name, act.rule)] = datetime.now(UTC)
            action = act.action if act is v.act else Action.ALERT
            metrics.ACTIONS.labels(str(action)).inc()
            self.record(agent, action, act.rule, act.reason, act.message, act.value, act.threshold, act.revision)
            if self.notifier is not None:
                self.notifier.submit(
                    Notification(
                        agent.namespace,
                        agent.name,
                        action,
                        act.rule,
                        act.reason,
                        act.message,
                        fmt_value(act.value),
                        act.threshold,
                        act.revision,
                        now,
                    )
                )
        metrics.DECISIONS.labels(str(v.act.action) if v.act else "status").inc()
        if out.acted and self.audit is not None and not await self.audit.flushed():
            log.warning("the audit trail is behind; %s is recorded on status first", agent.key)
        change = merge(out.fields, out.conditions)
        # An action's record is decided on the status it read: if that changed meanwhile, decide again.
        await update_status(self.kube, body, decided_on(status, change) if out.acted else change)
        for type_, reason, message in out.events:
            await self.event(body, type_, reason, message)
        if "lastBreach" in out.fields:
            await self._announced(body)
        return out

    async def _announced(self, body: dict[str, Any]) -> None:
        def mark(status: dict[str, Any]) -> dict[str, Any]:
            return {**status, "breachAnnounced": True} if status.get("breachAnnounced") is False else status

        await update_status(self.kube, body, mark)

    async def announce_pending(self, agents: list[AgentView]) -> None:
        """Finish announcing actions a crash interrupted: recorded on status (``lastBreach``
        and ``breachAnnounced: false``) but maybe without their Event and audit record."""
        for agent in agents:
            breach = agent.status.get("lastBreach")
            if not breach or agent.status.get("breachAnnounced") is not False:
                continue
            async with exclusive(self.kube, agent.namespace, agent.name):
                body = await self.kube.get("AgentDeployment", agent.namespace, agent.name)
                breach = ((body or {}).get("status") or {}).get("lastBreach")
                if body is None or not breach or (body.get("status") or {}).get("breachAnnounced") is not False:
                    continue
                message = (
                    f"{breach.get('action')} by guardrail {breach.get('rule')}: {breach.get('metric')} "
                    f"{breach.get('observedValue')} (threshold {breach.get('threshold')}), decided at "
                    f"{breach.get('time')}; announced after an operator restart"
                )
                if self.audit is not None:
                    self.audit.record(
                        "operator_action",
                        namespace=agent.namespace,
                        agent=agent.name,
                        revision=breach.get("revision"),
                        action=breach.get("action"),
                        rule=breach.get("rule"),
                        reason="RecoveredAfterRestart",
                        value=breach.get("observedValue"),
                        threshold=breach.get("threshold"),
                        message=message,
                    )
                    await self.audit.flushed()
                await self.event(body, "Warning", "GuardrailAction", message)
                await self._announced(body)

    def record(
        self,
        agent: AgentView,
        action: Action,
        rule: str,
        reason: str,
        message: str,
        value: float,
        threshold: str,
        revision: str,
    ) -> None:
        if self.audit is not None:
            self.audit.record(
                "operator_action",
                namespace=agent.namespace,
                agent=agent.name,
                revision=revision,
                action=str(action),
                rule=rule,
                reason=reason,
                value=fmt_value(value),
                threshold=threshold,
                message=message,
            )

    async def event(self, body: dict[str, Any], type_: str, reason: str, message: str) -> None:
        await post_event(self.kube, body, type_, reason, message)

    async def refresh_usage(self, agents: list[AgentView], samples: Samples, sem: asyncio.Semaphore) -> None:
        """Write spend today, tokens in the last hour and the guards' audit anchors where they
        changed (one status write per agent at most)."""
        now = cond.now_rfc3339()
        published = heads(samples.audit_heads)

        async def one(agent: AgentView) -> None:
            fields: dict[str, Any] = {}
            spend = samples.spend_today.get(agent.key)
            tokens = samples.tokens_last_hour.get(agent.key)
            if spend is not None or tokens is not None:
                usage = {
                    "spendToday": f"{Decimal(spend or 0).quantize(Decimal('0.0001'))}",
                    "tokensLastHour": int(tokens or 0),
                }
                old = agent.status.get("usage") or {}
                if {k: old.get(k) for k in usage} != usage:
                    fields["usage"] = {**usage, "updatedAt": now}
            anchors = anchors_change(agent.status.get("auditAnchors"), published.get(agent.key, {}), now)
            if anchors is not None:
                fields["auditAnchors"] = anchors
            if not fields:
                return
            body = {
                "apiVersion": names.API_VERSION,
                "kind": names.AGENT_KIND,
                "spec": {"replicas": agent.spec.replicas, "suspended": agent.spec.suspended},
                "metadata": {
                    "namespace": agent.namespace,
                    "name": agent.name,
                    "resourceVersion": agent.resource_version,
                },
                "status": agent.status,
            }
            async with sem:
                await update_status(self.kube, body, merge(fields))

        results = await asyncio.gather(*(one(a) for a in agents), return_exceptions=True)
        for agent, result in zip(agents, results, strict=True):
            if isinstance(result, Exception):  # one agent's usage write failing is that agent's
                metrics.AGENT_ERRORS.labels("usage").inc()
                log.warning(
                    "usage of %s/%s not written: %s: %s", agent.namespace, agent.name, type(result).__name__, result
                )
            elif isinstance(result, BaseException):
                raise result


def rejudge(agent: AgentView, status: dict[str, Any], act: Act) -> Act | None:
    """``act`` against the current status: nothing if its effect is already in place, and a
    Rollback rule re-resolved against the current stable revision."""
    conditions = status.get("conditions")
    if cond.is_true(conditions, cond.SUSPENDED):
        return None
    if act.action == Action.ROLLBACK and cond.is_true(conditions, cond.ROLLED_BACK):
        return None
    rule = next((r for r in agent.spec.guardrails or [] if r.name == act.rule), None)
    if rule is None or rule.action != Action.ROLLBACK:
        return act
    current = dataclasses.replace(agent, status=status)
    return make_act(current, rule, act.value, act.revision, withheld=act.withheld)
