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

The state kept between cycles is ``Memory`` (pending-since and last-breach-seen times). What must
survive a restart or a change of leader is on status: what was done (``lastBreach``, so an action
is never repeated) and since when each rule breaches (``pendingBreaches``, so a crash-looping
operator or a failover continues a ``for`` wait instead of starting it again and never acting).
The rest is advisory: losing it only delays promotion to stable.

Isolation: one agent can never stop the fleet from being judged. A rule that cannot be judged
(a query refused or unresolvable, a duration past the bound, anything raising while it is
judged) is that agent's invalid rule: reported on the agent (``MetricsAvailable=False``, reason
``InvalidGuardrail``), its other rules still judged; anything else raising while one agent is
judged becomes that agent's ``EvaluationFailed``. Either way ``analysis.onMetricsUnavailable``
decides whether the agent runs on unobserved (Hold) or is suspended (Suspend).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from agentfleet.api import conditions as cond
from agentfleet.api.types import Action, AgentDeploymentSpec, Comparison, GuardrailRule, OnMetricsUnavailable
from agentfleet.api.units import parse_duration
from agentfleet.evaluator.queries import REASONS, UNITS, RuleQuery, resolve

Key = tuple[str, str]  # (namespace, name)
SeriesKey = tuple[str, str, str]  # (namespace, agent, revision)
Owner = tuple[str | None, str | None, str | None]  # a custom series' namespace, agent, revision labels, if any

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
    queries: Mapping[str, RuleQuery | str] = field(default_factory=dict)
    """Rule name -> the query it is judged on, or why it cannot be judged (the loop resolves
    them with the policies it sees; a rule missing here is resolved without policies)."""
    problems: tuple[str, ...] = ()
    """What the evaluator could not read in the stored spec (dropped rules, fields past a bound)."""
    readable: bool = True
    """False when the spec could not be read at all: no rule is judged, the agent is told why."""
    hold_stable: bool = False
    """Do not promote a stable revision (the stabilization window itself could not be read)."""
    uid: str = ""

    @property
    def key(self) -> Key:
        return self.namespace, self.name


@dataclass
class Samples:
    """One cycle's query results. ``failed`` names the queries that errored."""

    builtin: dict[str, dict[SeriesKey, float]] = field(default_factory=dict)  # by metric name
    custom: dict[str, dict[Owner, float]] = field(default_factory=dict)  # by PromQL sent
    spend_today: dict[Key, float] = field(default_factory=dict)
    tokens_last_hour: dict[Key, float] = field(default_factory=dict)
    exhausted: dict[Key, dict[str, float]] = field(default_factory=dict)
    """Budgets guards reported as used up: requests they refused recently, by budget label."""
    soft_limits: dict[Key, set[str]] = field(default_factory=dict)
    """Budgets a guard reports past their soft limit (agentfleet_budget_soft_limit_reached)."""
    failed: set[str] = field(default_factory=set)
    rejected: dict[str, str] = field(default_factory=dict)
    """Failed queries that Prometheus refused as bad (not an outage), with its error."""
    audit_heads: list[tuple[dict[str, str], float]] = field(default_factory=list)
    """The guards' audit chain heads as scraped (published on status as anchors)."""


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
    withheld: bool = False
    """The value is not the agent's own (a fleet-wide platform query): never shown to the tenant."""


@dataclass
class Verdict:
    """Everything to do for one agent this cycle; empty verdicts are dropped."""

    key: Key
    act: Act | None = None
    alerts: list[Act] = field(default_factory=list)
    metrics_available: tuple[bool, str] | None = None
    metrics_reason: str = "QueriesSucceeded"
    """The MetricsAvailable reason: QueriesSucceeded, PrometheusUnavailable, InvalidGuardrail,
    InvalidSpec or EvaluationFailed."""
    budget_exceeded: tuple[bool, str] | None = None
    budget_soft_limit: tuple[bool, str] | None = None
    """The BudgetSoftLimit condition to set (None: unchanged)."""
    resume_budget: bool = False
    promote_stable: str | None = None
    pending_breaches: list[dict[str, str]] | None = None
    """The rules breaching now with their first-seen times, when that differs from status."""

    def empty(self) -> bool:
        return (
            self.act is None
            and not self.alerts
            and self.metrics_available is None
            and self.budget_exceeded is None
            and self.budget_soft_limit is None
            and not self.resume_budget
            and self.promote_stable is None
            and self.pending_breaches is None
        )


def rule_query(rule: GuardrailRule, agent: AgentView) -> RuleQuery | str:
    """The query ``rule`` is judged on, or why it cannot be judged."""
    known = agent.queries.get(rule.name)
    if known is not None:
        return known
    return resolve(rule, agent.namespace, agent.name, agent.status.get("currentRevision") or "", "1m", {})


def breached(value: float, comparison: Comparison, threshold: Decimal) -> bool:
    t = float(threshold)
    return {Comparison.GT: value > t, Comparison.GE: value >= t, Comparison.LT: value < t, Comparison.LE: value <= t}[
        comparison
    ]


def sample_for(query: RuleQuery, agent: AgentView, samples: Samples, revision: str) -> tuple[float | None, bool]:
    """The rule's value for the agent's current revision, and whether it is the agent's own.

    A custom query's series count for this agent when they are labelled with it (this revision,
    or no revision label), or with its namespace alone, or with nothing at all (one value for
    every agent using the query, which is not the agent's own unless the tenant wrote the query:
    a tenant query reads only the agent's series). A series labelled with another agent never
    counts, whatever order Prometheus returns it in.
    """
    ns, name = agent.namespace, agent.name
    value: float | None
    own = True
    if query.key in samples.builtin:
        value = samples.builtin[query.key].get((ns, name, revision))
    else:
        series = samples.custom.get(query.key, {})
        value = None
        for owner in ((ns, name, revision), (ns, name, None), (ns, None, None), (None, None, None)):
            if owner in series:
                value, own = series[owner], query.tenant or owner[0] is not None
                break
    if value is None or math.isnan(value) or math.isinf(value):
        return None, own
    return value, own


@functools.lru_cache(maxsize=4096)
def span(duration: str) -> timedelta:
    """A duration as a timer; ValueError past the API's bound (objects stored before the bound).
    Cached: a fleet uses a handful of distinct durations, judged thousands of times a cycle."""
    return timedelta(seconds=float(parse_duration(duration)))


def fmt(value: float) -> str:
    return f"{value:.6g}"


OK_MESSAGE = "Prometheus answered every query"


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

    invalid = list(agent.problems)
    judged_rules: list[tuple[GuardrailRule, RuleQuery]] = []
    for rule in rules:
        found = rule_query(rule, agent)
        if isinstance(found, str):
            invalid.append(f"guardrail {rule.name!r} is not judged: {found}")
        else:
            judged_rules.append((rule, found))
    missing = sorted({q.label for _, q in judged_rules if q.key in samples.failed})
    for rule, q in judged_rules:
        if q.tenant and q.key in samples.rejected:
            invalid.append(f"guardrail {rule.name!r}: Prometheus rejected its query: {samples.rejected[q.key]}")

    candidates: list[Act] = []
    for rule, q in judged_rules:
        try:
            act = judge_rule(agent, rule, q, samples, memory, now, revision)
        except (ValueError, ArithmeticError, TypeError) as exc:  # e.g. a duration past the bound
            invalid.append(f"guardrail {rule.name!r} is not judged: {exc}")
            continue
        if act is not None:
            candidates.append(act)

    if rules or invalid:
        availability(v, agent, invalid, missing, suspended, "InvalidGuardrail" if agent.readable else "InvalidSpec")
    for act in sorted(candidates, key=lambda a: SEVERITY[a.action]):
        if act.action == Action.ALERT:
            v.alerts.append(act)
        elif v.act is None and not suspended and not applied(agent, act, rolled_back):
            v.act = act

    v.pending_breaches = pending_change(agent, memory, revision)
    budget_act, v.budget_exceeded, v.resume_budget = judge_budgets(agent, samples, suspended)
    if budget_act and v.act is None and not suspended:
        v.act = budget_act
    v.budget_soft_limit, soft_alert = judge_soft_limits(agent, samples, revision)
    if soft_alert is not None:
        v.alerts.append(soft_alert)

    stable = status.get("stableRevision")
    judged = not rules or (agent.namespace, agent.name, revision) in memory.data_seen
    healthy = not missing and not invalid and not agent.hold_stable
    if revision != stable and judged and healthy and not suspended and not rolled_back and v.act is None:
        started = parse_time(status.get("revisionStartedAt")) or now
        last_breach = memory.breach_seen.get((agent.namespace, agent.name, revision))
        quiet_since = max(started, last_breach) if last_breach else started
        if now - quiet_since >= span(spec.analysis.stabilization_window):
            v.promote_stable = revision
    return v


def judge_rule(
    agent: AgentView,
    rule: GuardrailRule,
    query: RuleQuery,
    samples: Samples,
    memory: Memory,
    now: datetime,
    revision: str,
) -> Act | None:
    """One rule on this cycle's samples: the action it asks for, if it breached long enough."""
    wait, quiet = span(rule.for_), span(rule.cooldown)  # both first: a bad one is found at once
    pkey = (agent.namespace, agent.name, rule.name, revision)
    value, own = sample_for(query, agent, samples, revision)
    if value is not None:
        memory.data_seen.setdefault((agent.namespace, agent.name, revision), now)
    if value is None or not breached(value, rule.comparison, Decimal(rule.threshold)):
        memory.pending.pop(pkey, None)
        return None
    memory.breach_seen[(agent.namespace, agent.name, revision)] = now
    if pkey not in memory.pending:  # after a restart or a failover: the wait recorded on status
        memory.pending[pkey] = min(recorded_pending(agent, rule.name, revision) or now, now)
    since = memory.pending[pkey]
    if now - since < wait or in_cooldown(agent, rule, memory, now, quiet):
        return None
    return make_act(agent, rule, value, revision, withheld=not own)


def recorded_pending(agent: AgentView, rule: str, revision: str) -> datetime | None:
    """Since when status says ``rule`` breaches on ``revision`` (None: it does not say)."""
    for entry in agent.status.get("pendingBreaches") or []:
        if isinstance(entry, dict) and entry.get("rule") == rule and entry.get("revision") == revision:
            return parse_time(entry.get("since"))
    return None


def pending_change(agent: AgentView, memory: Memory, revision: str) -> list[dict[str, str]] | None:
    """The rules breaching on ``revision`` and since when, if status records something else."""
    now_pending = sorted(
        (rule, since)
        for (ns, name, rule, rev), since in memory.pending.items()
        if (ns, name, rev) == (agent.namespace, agent.name, revision)
    )
    entries = [
        {"rule": rule, "revision": revision, "since": since.strftime("%Y-%m-%dT%H:%M:%SZ")}
        for rule, since in now_pending
    ]
    recorded = agent.status.get("pendingBreaches") or []
    return None if entries == recorded else entries


def availability(
    v: Verdict, agent: AgentView, invalid: list[str], missing: list[str], suspended: bool, reason: str
) -> None:
    """``MetricsAvailable`` for this agent, only when it changes, and fail-closed when asked.

    Invalid rules come first in the message (the tenant can fix those); a query that failed
    because Prometheus is down follows."""
    parts = [*invalid, *([f"queries failed: {', '.join(missing)}"] if missing else [])]
    ok = not parts
    why = "QueriesSucceeded" if ok else (reason if invalid else "PrometheusUnavailable")
    msg = OK_MESSAGE if ok else "; ".join(parts)
    current = cond.get(agent.status.get("conditions"), cond.METRICS_AVAILABLE)
    if current is None or (current.get("status") == "True") != ok or (not ok and current.get("message") != msg):
        v.metrics_available = (ok, msg)
        v.metrics_reason = why
    if not ok and agent.spec.analysis.on_metrics_unavailable == OnMetricsUnavailable.SUSPEND and not suspended:
        revision = agent.status.get("currentRevision") or ""
        what = "guardrails cannot be judged" if invalid else "metrics are unavailable"
        v.act = Act(
            Action.SUSPEND,
            "analysis.onMetricsUnavailable",
            "metrics",
            math.nan,
            "",
            revision,
            "invalid_guardrail" if invalid else "metrics_unavailable",
            f"{what} ({msg}) and analysis.onMetricsUnavailable is Suspend (fail closed)",
        )


def failed_verdict(agent: AgentView, error: BaseException, suspended: bool) -> Verdict:
    """The verdict for an agent whose judging raised: say so on it, and fail closed if asked."""
    v = Verdict(agent.key)
    message = f"the evaluator could not judge this agent: {type(error).__name__}: {error}"[:1024]
    availability(v, agent, [message], [], suspended, "EvaluationFailed")
    return v


def in_cooldown(
    agent: AgentView, rule: GuardrailRule, memory: Memory, now: datetime, cooldown: timedelta | None = None
) -> bool:
    cooldown = span(rule.cooldown) if cooldown is None else cooldown
    last = memory.acted.get((agent.namespace, agent.name, rule.name))
    breach = agent.status.get("lastBreach") or {}
    if breach.get("rule") == rule.name:
        recorded = parse_time(breach.get("time"))
        last = max(filter(None, (last, recorded)), default=None)
    return last is not None and now - last < cooldown


def make_act(agent: AgentView, rule: GuardrailRule, value: float, revision: str, withheld: bool = False) -> Act:
    threshold = f"{rule.comparison} {rule.threshold}"
    unit = UNITS.get(rule.metric, "")
    observed = (
        f"{rule.metric} (queryRef {rule.query_ref}, a fleet-wide value not shown)"
        if withheld
        else f"{rule.metric} = {fmt(value)}{' ' + unit if unit else ''}"
    )
    base = f"guardrail {rule.name!r}: {observed} {threshold} (for {rule.for_}) on revision {revision}"
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
        action,
        rule.name,
        str(rule.metric),
        value,
        threshold,
        revision,
        REASONS[rule.metric],
        message,
        rule.scale_to,
        withheld,
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
    exhausted = samples.exhausted.get(key, {})
    if budgets.cost_per_day is not None and (key in samples.spend_today or "cost_per_day" in exhausted):
        spent = samples.spend_today.get(key, 0.0)
        if spent >= float(budgets.cost_per_day) or "cost_per_day" in exhausted:
            limit = f"budgets.costPerDay ${budgets.cost_per_day} per day ({budgets.time_zone})"
            over.append(
                (
                    "cost_per_day_exceeded",
                    spent,
                    f">= {budgets.cost_per_day}",
                    f"spent ${spent:.4f} since 00:00 UTC across all replicas; {limit}"
                    if spent >= float(budgets.cost_per_day)
                    else refused_message(exhausted["cost_per_day"], limit, f"${spent:.4f} spent"),
                )
            )
    if budgets.tokens_per_hour is not None and (key in samples.tokens_last_hour or "tokens_per_hour" in exhausted):
        used = samples.tokens_last_hour.get(key, 0.0)
        if used >= budgets.tokens_per_hour or "tokens_per_hour" in exhausted:
            limit = f"budgets.tokensPerHour {budgets.tokens_per_hour} tokens per sliding hour"
            over.append(
                (
                    "tokens_per_hour_exceeded",
                    used,
                    f">= {budgets.tokens_per_hour}",
                    f"used {used:.0f} tokens in the last hour across all replicas; {limit}"
                    if used >= budgets.tokens_per_hour
                    else refused_message(exhausted["tokens_per_hour"], limit, f"{used:.0f} tokens used"),
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


def refused_message(refused: float, limit: str, settled: str) -> str:
    """Why guards refused requests while settled spend is still under the budget: each call
    reserves its worst case before it goes upstream, and a reservation that would pass the
    budget is refused (so "spent $0.40 of $2" and "refused" do not contradict each other)."""
    n = max(1, round(refused))
    return (
        f"guards refused {n} request{'s' if n != 1 else ''} recently because the reservation each needed "
        f"(its worst-case cost, held until the call settles) would have passed {limit}: {settled} across "
        "all replicas so far, the rest held by calls in flight or counted by the guards' ledger ahead of "
        "Prometheus; the guard audit records (reason budget_exhausted) give each refused amount"
    )


def judge_soft_limits(agent: AgentView, samples: Samples, revision: str) -> tuple[tuple[bool, str] | None, Act | None]:
    """The BudgetSoftLimit condition from the guards' soft limit gauges, and the alert to send
    when it turns True (once per crossing: the condition on status remembers it) if the agent
    declares an Alert guardrail, so whoever its alerts reach hears before the hard stop."""
    percent = agent.spec.budgets.soft_limit_percent
    current = cond.get(agent.status.get("conditions"), cond.BUDGET_SOFT_LIMIT)
    was = current is not None and current.get("status") == "True"
    reached = sorted(samples.soft_limits.get(agent.key, set()))
    if percent is None or not reached:
        return ((False, "no budget is past its soft limit") if was else None), None
    message = (
        f"{', '.join(reached)} past {percent}% of {'its' if len(reached) == 1 else 'their'} limit "
        "(budgets.softLimitPercent); requests are refused once a budget is spent"
    )
    if was and current is not None and current.get("message") == message:
        return None, None
    alert = None
    if not was and any(r.action == Action.ALERT for r in agent.spec.guardrails or []):
        alert = Act(
            Action.ALERT,
            "budgets",
            "budget_soft_limit",
            float(percent),
            f">= {percent}%",
            revision,
            "BudgetSoftLimit",
            message,
        )
    return (True, message), alert


def parse_time(value: Any) -> datetime | None:
    """A status timestamp, always timezone-aware (a naive one is UTC), or None."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def evaluate(
    agents: list[AgentView],
    samples: Samples,
    memory: Memory,
    now: datetime,
    on_error: Callable[[AgentView, Exception], None] = lambda agent, exc: None,
) -> list[Verdict]:
    """Judge the whole fleet; forget memory of agents that are gone. An agent whose judging
    raises gets an ``EvaluationFailed`` verdict (``on_error`` counts and logs it); the others
    are judged as if it were not there."""
    live = {a.key for a in agents}
    memory.pending = {k: t for k, t in memory.pending.items() if (k[0], k[1]) in live}
    memory.acted = {k: t for k, t in memory.acted.items() if (k[0], k[1]) in live}
    memory.breach_seen = {k: t for k, t in memory.breach_seen.items() if (k[0], k[1]) in live}
    memory.data_seen = {k: t for k, t in memory.data_seen.items() if (k[0], k[1]) in live}
    out = []
    for agent in agents:
        try:
            verdict = evaluate_agent(agent, samples, memory, now)
        except Exception as exc:  # one agent never stops the fleet's judging
            on_error(agent, exc)
            verdict = failed_verdict(agent, exc, cond.is_true(agent.status.get("conditions"), cond.SUSPENDED))
        if not verdict.empty():
            out.append(verdict)
    return out
