"""The rule engine: ``evaluate(agents, samples, memory, now) -> verdicts``. Pure.

Semantics (docs/guardrails.md has the long form):
- a rule is judged on the agent's *current* revision only, so a rollback is judged afresh;
- no sample (no traffic, NaN ratio) is not a breach, and it resets a pending ``for``;
- a breach must hold for ``for`` before acting, then the rule is quiet for ``cooldown``;
- an action already in effect is not repeated (suspended stays suspended; a revision is rolled
  back once per generation), so a decision repeated next cycle does nothing;
- when the queries a rule needs failed, ``analysis.onMetricsUnavailable`` decides: Hold
  (MetricsAvailable=False, nothing else) or Suspend (fail closed);
- a revision becomes stable after ``analysis.stabilizationWindow`` with no breach seen.

The only state kept between cycles is ``Memory`` (pending-since and last-breach-seen times); it
is advisory: losing it on restart delays an action by at most ``for`` and never duplicates one,
because what was done is recorded in status.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from agentfleet.api import conditions as cond
from agentfleet.api.types import Action, AgentDeploymentSpec, Comparison, GuardrailRule, Metric, OnMetricsUnavailable
from agentfleet.api.units import parse_duration
from agentfleet.evaluator.queries import REASONS, UNITS, custom_query, is_fleet_wide

Key = tuple[str, str]  # (namespace, name)
SeriesKey = tuple[str, str, str]  # (namespace, agent, revision)

SEVERITY = {Action.SUSPEND: 0, Action.ROLLBACK: 1, Action.SCALE_TO: 2, Action.ALERT: 3}
BUDGET_REASONS = {"cost_per_day_exceeded", "tokens_per_hour_exceeded"}


@dataclass(frozen=True)
class AgentView:
    """What the evaluator knows about one agent: parsed spec plus raw status."""

    namespace: str
    name: str
    generation: int
    spec: AgentDeploymentSpec
    status: dict[str, Any]
    resource_version: str | None = None

    @property
    def key(self) -> Key:
        return self.namespace, self.name


@dataclass
class Samples:
    """One cycle's query results. ``failed`` names the queries that errored."""

    builtin: dict[Metric, dict[SeriesKey, float]] = field(default_factory=dict)
    custom: dict[str, dict[SeriesKey | None, float]] = field(default_factory=dict)
    spend_today: dict[Key, float] = field(default_factory=dict)
    tokens_last_hour: dict[Key, float] = field(default_factory=dict)
    exhausted: dict[Key, set[str]] = field(default_factory=dict)  # budgets guards reported as used up
    failed: set[str] = field(default_factory=set)


@dataclass
class Memory:
    """Advisory state between cycles (see module docstring)."""

    pending: dict[tuple[str, str, str, str], datetime] = field(default_factory=dict)  # ns, name, rule, rev
    breach_seen: dict[SeriesKey, datetime] = field(default_factory=dict)
    data_seen: dict[SeriesKey, datetime] = field(default_factory=dict)  # a revision is judged on data, not silence
    acted: dict[tuple[str, str, str], datetime] = field(default_factory=dict)  # ns, name, rule


@dataclass(frozen=True)
class Act:
    action: Action
    rule: str
    metric: str
    value: float
    threshold: str
    revision: str
    reason: str
    message: str
    scale_to: int | None = None


@dataclass
class Verdict:
    """Everything to do for one agent this cycle; empty verdicts are dropped."""

    key: Key
    act: Act | None = None
    alerts: list[Act] = field(default_factory=list)
    metrics_available: tuple[bool, str] | None = None
    budget_exceeded: tuple[bool, str] | None = None
    resume_budget: bool = False
    promote_stable: str | None = None

    def empty(self) -> bool:
        return (
            self.act is None
            and not self.alerts
            and self.metrics_available is None
            and self.budget_exceeded is None
            and not self.resume_budget
            and self.promote_stable is None
        )


def query_name(rule: GuardrailRule, agent: AgentView) -> str:
    """The key a rule's samples are filed under: the metric, or the (substituted) custom text."""
    if rule.metric != Metric.CUSTOM:
        return str(rule.metric)
    template = rule.query or ""
    if is_fleet_wide(template):
        return template
    return custom_query(template, agent.namespace, agent.name, agent.status.get("currentRevision") or "")


def breached(value: float, comparison: Comparison, threshold: Decimal) -> bool:
    t = float(threshold)
    return {Comparison.GT: value > t, Comparison.GE: value >= t, Comparison.LT: value < t, Comparison.LE: value <= t}[
        comparison
    ]


def sample_for(rule: GuardrailRule, agent: AgentView, samples: Samples, revision: str) -> float | None:
    if rule.metric == Metric.CUSTOM:
        series = samples.custom.get(query_name(rule, agent), {})
        value = series.get((agent.namespace, agent.name, revision), series.get(None))
    else:
        value = samples.builtin.get(rule.metric, {}).get((agent.namespace, agent.name, revision))
    return None if value is None or math.isnan(value) or math.isinf(value) else value


def span(duration: str) -> timedelta:
    return timedelta(seconds=float(parse_duration(duration)))


def fmt(value: float) -> str:
    return f"{value:.6g}"


def evaluate_agent(agent: AgentView, samples: Samples, memory: Memory, now: datetime) -> Verdict:
    v = Verdict(agent.key)
    status, spec = agent.status, agent.spec
    conditions = status.get("conditions")
    revision = status.get("currentRevision")
    if not revision:
        return v
    suspended = cond.is_true(conditions, cond.SUSPENDED)
    rolled_back = cond.is_true(conditions, cond.ROLLED_BACK)
    rules = spec.guardrails or []

    needed = {query_name(r, agent) for r in rules}
    missing = sorted(needed & samples.failed)
    if rules:
        ok = not missing
        msg = "Prometheus answered every query" if ok else f"queries failed: {', '.join(missing)}"
        current = cond.get(conditions, cond.METRICS_AVAILABLE)
        if current is None or (current.get("status") == "True") != ok:
            v.metrics_available = (ok, msg)
        if not ok and spec.analysis.on_metrics_unavailable == OnMetricsUnavailable.SUSPEND and not suspended:
            v.act = Act(
                Action.SUSPEND,
                "analysis.onMetricsUnavailable",
                "metrics",
                math.nan,
                "",
                revision,
                "metrics_unavailable",
                f"metrics are unavailable ({msg}) and analysis.onMetricsUnavailable is Suspend (fail closed)",
            )

    candidates: list[Act] = []
    for rule in rules:
        pkey = (agent.namespace, agent.name, rule.name, revision)
        value = sample_for(rule, agent, samples, revision)
        if value is not None:
            memory.data_seen.setdefault((agent.namespace, agent.name, revision), now)
        if value is None or not breached(value, rule.comparison, Decimal(rule.threshold)):
            memory.pending.pop(pkey, None)
            continue
        memory.breach_seen[(agent.namespace, agent.name, revision)] = now
        since = memory.pending.setdefault(pkey, now)
        if now - since < span(rule.for_):
            continue
        if in_cooldown(agent, rule, memory, now):
            continue
        candidates.append(make_act(agent, rule, value, revision))
    for act in sorted(candidates, key=lambda a: SEVERITY[a.action]):
        if act.action == Action.ALERT:
            v.alerts.append(act)
        elif v.act is None and not suspended and not applied(agent, act, rolled_back):
            v.act = act

    budget_act, v.budget_exceeded, v.resume_budget = judge_budgets(agent, samples, suspended)
    if budget_act and v.act is None and not suspended:
        v.act = budget_act

    stable = status.get("stableRevision")
    judged = not rules or (agent.namespace, agent.name, revision) in memory.data_seen
    if revision != stable and judged and not suspended and not rolled_back and not missing and v.act is None:
        started = parse_time(status.get("revisionStartedAt")) or now
        last_breach = memory.breach_seen.get((agent.namespace, agent.name, revision))
        quiet_since = max(started, last_breach) if last_breach else started
        if now - quiet_since >= span(spec.analysis.stabilization_window):
            v.promote_stable = revision
    return v


def in_cooldown(agent: AgentView, rule: GuardrailRule, memory: Memory, now: datetime) -> bool:
    cooldown = span(rule.cooldown)
    last = memory.acted.get((agent.namespace, agent.name, rule.name))
    breach = agent.status.get("lastBreach") or {}
    if breach.get("rule") == rule.name:
        recorded = parse_time(breach.get("time"))
        last = max(filter(None, (last, recorded)), default=None)
    return last is not None and now - last < cooldown


def make_act(agent: AgentView, rule: GuardrailRule, value: float, revision: str) -> Act:
    threshold = f"{rule.comparison} {rule.threshold}"
    unit = UNITS.get(rule.metric, "")
    base = (
        f"guardrail {rule.name!r}: {rule.metric} = {fmt(value)}{' ' + unit if unit else ''} "
        f"{threshold} (for {rule.for_}) on revision {revision}"
    )
    action, message = rule.action, base
    if action == Action.ROLLBACK:
        stable = agent.status.get("stableRevision")
        if not stable or stable == revision:
            action = Action.SUSPEND
            message = f"{base}; no stable revision to roll back to, suspended instead"
        else:
            message = f"{base}; rolled back from failed revision {revision} to stable revision {stable}"
    elif action == Action.SUSPEND:
        message = f"{base}; suspended"
    elif action == Action.SCALE_TO:
        message = f"{base}; scaled to {rule.scale_to}"
    return Act(
        action, rule.name, str(rule.metric), value, threshold, revision, REASONS[rule.metric], message, rule.scale_to
    )


def applied(agent: AgentView, act: Act, rolled_back: bool) -> bool:
    """Is this action's effect already in place? Then repeating it would act twice."""
    if act.action == Action.ROLLBACK:
        return rolled_back
    if act.action == Action.SCALE_TO:
        return agent.spec.replicas == act.scale_to
    return False


def judge_budgets(
    agent: AgentView, samples: Samples, suspended: bool
) -> tuple[Act | None, tuple[bool, str] | None, bool]:
    """Fleet-level budgets: the sum over all replicas, from Prometheus."""
    budgets, key = agent.spec.budgets, agent.key
    revision = agent.status.get("currentRevision") or ""
    over: list[tuple[str, float, str, str]] = []
    # Over when the fleet total reaches the budget, or when a guard already refused requests
    # because its (strict, per-replica) view of the same budget ran out.
    exhausted = samples.exhausted.get(key, set())
    if budgets.cost_per_day is not None and (key in samples.spend_today or "cost_per_day" in exhausted):
        spent = samples.spend_today.get(key, 0.0)
        if spent >= float(budgets.cost_per_day) or "cost_per_day" in exhausted:
            over.append(
                (
                    "cost_per_day_exceeded",
                    spent,
                    f">= {budgets.cost_per_day}",
                    f"spent ${spent:.4f} today (UTC) across all replicas"
                    f"{' and guards are refusing requests' if 'cost_per_day' in exhausted else ''}; "
                    f"budgets.costPerDay is ${budgets.cost_per_day}",
                )
            )
    if budgets.tokens_per_hour is not None and (key in samples.tokens_last_hour or "tokens_per_hour" in exhausted):
        used = samples.tokens_last_hour.get(key, 0.0)
        if used >= budgets.tokens_per_hour or "tokens_per_hour" in exhausted:
            over.append(
                (
                    "tokens_per_hour_exceeded",
                    used,
                    f">= {budgets.tokens_per_hour}",
                    f"used {used:.0f} tokens in the last hour across all replicas"
                    f"{' and guards are refusing requests' if 'tokens_per_hour' in exhausted else ''}; "
                    f"budgets.tokensPerHour is {budgets.tokens_per_hour}",
                )
            )
    current = cond.get(agent.status.get("conditions"), cond.BUDGET_EXCEEDED)
    was_over = current is not None and current.get("status") == "True"
    change: tuple[bool, str] | None = None
    if over and (not was_over or current is None or current.get("reason") != over[0][0]):
        change = (True, over[0][3])
    elif not over and (was_over or (current is None and (budgets.cost_per_day or budgets.tokens_per_hour))):
        change = (False, "within budgets.costPerDay and budgets.tokensPerHour")
    act = None
    if over:
        reason, value, threshold, message = over[0]
        act = Act(
            Action.SUSPEND,
            "budgets",
            reason.removesuffix("_exceeded"),
            value,
            threshold,
            revision,
            reason,
            f"{message}; suspended until the budget resets or it is raised",
        )
    suspended_by_budget = (
        suspended and (cond.get(agent.status.get("conditions"), cond.SUSPENDED) or {}).get("reason") in BUDGET_REASONS
    )
    return act, change, bool(suspended_by_budget and not over and key in samples.spend_today and not exhausted)


def parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


def evaluate(agents: list[AgentView], samples: Samples, memory: Memory, now: datetime) -> list[Verdict]:
    """Judge the whole fleet; forget memory of agents that are gone."""
    live = {a.key for a in agents}
    memory.pending = {k: t for k, t in memory.pending.items() if (k[0], k[1]) in live}
    memory.acted = {k: t for k, t in memory.acted.items() if (k[0], k[1]) in live}
    memory.breach_seen = {k: t for k, t in memory.breach_seen.items() if (k[0], k[1]) in live}
    memory.data_seen = {k: t for k, t in memory.data_seen.items() if (k[0], k[1]) in live}
    out = []
    for agent in agents:
        verdict = evaluate_agent(agent, samples, memory, now)
        if not verdict.empty():
            out.append(verdict)
    return out
