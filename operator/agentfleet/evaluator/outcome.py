"""What a verdict means for an agent's status, as a pure function.

The actor (``actions.py``) is the shell that reads the object, writes the status, posts the
Events and carries the effect out; *which* conditions, fields and Events a verdict produces
is decided here, so each is unit-tested without a cluster.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from agentfleet.api import conditions as cond
from agentfleet.api.types import Action
from agentfleet.evaluator.rules import Act, Verdict

Event = tuple[str, str, str]  # (type, reason, message)


@dataclass
class Outcome:
    """The status change of one verdict and what must follow it."""

    fields: dict[str, Any] = field(default_factory=dict)
    conditions: cond.Conditions = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    reconcile_after: bool = False
    """The effect (replicas 0, the stable revision) is carried out by a reconcile after the write."""
    scale_to: int | None = None
    """A ScaleTo action: the replicas to set through the scale subresource."""
    acted: list[Act] = field(default_factory=list)
    """The actions and alerts to count, remember (cooldown) and audit."""


def fmt_value(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.6g}"  # NaN for fail-closed suspensions


def outcome(v: Verdict, status: dict[str, Any], generation: int | None, now: str) -> Outcome:
    """The conditions, fields and Events of ``v`` against ``status`` (the object as it is now).

    ``v.act`` must already be re-judged against that status (see ``actions.rejudge``)."""
    out = Outcome()

    def condition(type_: str, value: bool, reason: str, message: str) -> None:
        updated = cond.set_condition(status.get("conditions"), type_, value, reason, message, generation, now)
        out.conditions.extend(c for c in updated if c["type"] == type_)

    if v.metrics_available is not None:
        ok, msg = v.metrics_available
        reason = "QueriesSucceeded" if ok else v.metrics_reason
        if not ok and reason == "QueriesSucceeded":
            reason = "PrometheusUnavailable"
        condition(cond.METRICS_AVAILABLE, ok, reason, msg)
        if not ok:  # the Event names the cause: an outage, or a rule or spec the tenant can fix
            out.events.append(("Warning", "MetricsUnavailable" if reason == "PrometheusUnavailable" else reason, msg))
    if v.budget_exceeded is not None:
        over, msg = v.budget_exceeded
        condition(cond.BUDGET_EXCEEDED, over, "BudgetExceeded" if over else "WithinBudget", msg)
    if v.budget_soft_limit is not None:
        soft, msg = v.budget_soft_limit
        if soft and not cond.is_true(status.get("conditions"), cond.BUDGET_SOFT_LIMIT):
            out.events.append(("Warning", "BudgetSoftLimit", msg))  # once per crossing
        condition(cond.BUDGET_SOFT_LIMIT, soft, "SoftLimitReached" if soft else "UnderSoftLimit", msg)
    if v.pending_breaches is not None:
        out.fields["pendingBreaches"] = v.pending_breaches
    if v.promote_stable:
        out.fields["stableRevision"] = v.promote_stable
        out.events.append(("Normal", "RevisionStable", f"revision {v.promote_stable} passed its stabilization window"))
    if v.resume_budget:
        condition(cond.SUSPENDED, False, "BudgetRecovered", "spend is back under budget; resumed")
        out.events.append(("Normal", "Resumed", "spend is back under budget; resumed"))
        out.reconcile_after = True
    act = v.act
    if act is not None:
        out.fields["lastBreach"] = {
            "rule": act.rule,
            "metric": act.metric,
            "observedValue": "withheld" if act.withheld else fmt_value(act.value),
            "threshold": act.threshold,
            "revision": act.revision,
            "time": now,
            "action": str(act.action),
        }
        if act.action == Action.SUSPEND:
            condition(cond.SUSPENDED, True, act.reason, act.message)
            out.reconcile_after = True
        elif act.action == Action.ROLLBACK:
            condition(cond.ROLLED_BACK, True, act.reason, act.message)
            out.fields["currentRevision"] = status.get("stableRevision")
            out.reconcile_after = True
        elif act.action == Action.SCALE_TO:
            out.scale_to = act.scale_to
        out.events.append(("Warning", act.reason, act.message))
        out.acted.append(act)
    for alert in v.alerts:
        out.events.append(("Warning", "GuardrailAlert", alert.message))
        out.acted.append(alert)
    return out
