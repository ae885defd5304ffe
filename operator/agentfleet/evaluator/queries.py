"""PromQL for guardrail metrics, batched for the whole fleet.

Each built-in metric is one query grouped by (namespace, agent, revision): its cost grows with
the number of metric kinds in use, not with the number of agents. Rates use a fixed window
(``--rate-window``); a ratio with no traffic is NaN or absent, which the rule engine treats as
"no data", never as a breach.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from agentfleet.api.types import CustomQuery, GuardrailRule, Metric
from agentfleet.evaluator import scope

BY = "namespace, agent, revision"

BUILTIN: dict[Metric, str] = {
    Metric.ERROR_RATE: (
        f'sum by ({BY}) (rate(agentfleet_requests_total{{outcome="error"}}[{{w}}]))'
        f" / sum by ({BY}) (rate(agentfleet_requests_total[{{w}}]))"
    ),
    Metric.TOOL_ERROR_RATE: (
        f'sum by ({BY}) (rate(agentfleet_tool_calls_total{{outcome="error"}}[{{w}}]))'
        f" / sum by ({BY}) (rate(agentfleet_tool_calls_total[{{w}}]))"
    ),
    Metric.LOOP_DETECTIONS: f"sum by ({BY}) (increase(agentfleet_loop_detections_total[{{w}}]))",
    Metric.COST_PER_TASK: (
        f"sum by ({BY}) (increase(agentfleet_cost_dollars_total[{{w}}]))"
        f" / sum by ({BY}) (increase(agentfleet_tasks_total[{{w}}]))"
    ),
    Metric.TOKEN_RATE: f"sum by ({BY}) (rate(agentfleet_tokens_total[{{w}}]))",
    Metric.P99_LATENCY: (
        f"histogram_quantile(0.99, sum by ({BY}, le) (rate(agentfleet_request_duration_seconds_bucket[{{w}}])))"
    ),
    Metric.INJECTION_SUSPICIONS: f"sum by ({BY}) (increase(agentfleet_injection_suspicions_total[{{w}}]))",
    Metric.BUDGET_REJECTIONS: f"sum by ({BY}) (increase(agentfleet_budget_rejections_total[{{w}}]))",
}

UNITS: dict[Metric, str] = {
    Metric.ERROR_RATE: "ratio of requests",
    Metric.TOOL_ERROR_RATE: "ratio of tool calls",
    Metric.LOOP_DETECTIONS: "per window",
    Metric.COST_PER_TASK: "dollars per task",
    Metric.TOKEN_RATE: "tokens per second",
    Metric.P99_LATENCY: "seconds",
    Metric.INJECTION_SUSPICIONS: "per window",
    Metric.BUDGET_REJECTIONS: "per window",
}

# The reason on the Suspended/RolledBack condition names what happened, in the guard's words.
REASONS: dict[Metric, str] = {
    Metric.ERROR_RATE: "error_rate_high",
    Metric.TOOL_ERROR_RATE: "tool_error_rate_high",
    Metric.LOOP_DETECTIONS: "loop_detected",
    Metric.COST_PER_TASK: "cost_per_task_high",
    Metric.TOKEN_RATE: "token_rate_high",
    Metric.P99_LATENCY: "latency_high",
    Metric.INJECTION_SUSPICIONS: "injection_suspected",
    Metric.BUDGET_REJECTIONS: "budget_exhausted",
    Metric.CUSTOM: "custom_rule_breached",
}

PLACEHOLDER = re.compile(r"\{\{\s*(namespace|agent|revision)\s*\}\}")


def builtin_query(metric: Metric, window: str) -> str:
    return BUILTIN[metric].replace("{w}", window)


def custom_query(template: str, namespace: str, agent: str, revision: str) -> str:
    """Substitute placeholders; a template without them runs once for the whole fleet."""
    values = {"namespace": namespace, "agent": agent, "revision": revision}
    return PLACEHOLDER.sub(lambda m: values[m.group(1)].replace('"', ""), template)


def is_fleet_wide(template: str) -> bool:
    return PLACEHOLDER.search(template) is None


@dataclass(frozen=True)
class RuleQuery:
    """The query one rule is judged on."""

    key: str
    """What its samples are filed under: the metric's name, or the PromQL sent."""
    promql: str
    label: str
    """How messages the tenant reads name it (never a platform query's text)."""
    tenant: bool = False
    """Written by the tenant (an inline ``query``): scoped to the agent's own series, run in the
    tenant lane, and a Prometheus error on it is the rule's fault, not an outage."""


@dataclass(frozen=True)
class PlatformQuery:
    """A query an AgentPolicy defines for ``queryRef`` (trusted: it may read the whole fleet)."""

    name: str
    query: str
    policy: str


def platform_queries(policies: Iterable[tuple[str, Iterable[CustomQuery]]]) -> dict[str, PlatformQuery | str]:
    """``customQueries`` of the policies covering one namespace, by name; a name two policies
    define differently maps to why it cannot be used (no policy silently wins)."""
    out: dict[str, PlatformQuery | str] = {}
    for policy, queries in sorted(policies, key=lambda p: p[0]):
        for q in queries:
            known = out.get(q.name)
            if known is None:
                out[q.name] = PlatformQuery(q.name, q.query, policy)
            elif isinstance(known, PlatformQuery) and known.query != q.query:
                out[q.name] = f"AgentPolicies {known.policy} and {policy} define customQueries {q.name!r} differently"
    return out


def resolve(
    rule: GuardrailRule,
    namespace: str,
    agent: str,
    revision: str,
    window: str,
    platform: Mapping[str, PlatformQuery | str],
) -> RuleQuery | str:
    """The query ``rule`` is judged on for this agent, or why it cannot be judged. Pure; the
    scope check parses PromQL, so callers cache the result per (rule, agent, revision)."""
    if rule.metric != Metric.CUSTOM:
        return RuleQuery(str(rule.metric), builtin_query(rule.metric, window), str(rule.metric))
    if rule.query_ref is not None:
        found = platform.get(rule.query_ref)
        if found is None:
            return (
                f"queryRef {rule.query_ref!r} names no customQueries entry of an AgentPolicy covering "
                f"namespace {namespace}"
            )
        if isinstance(found, str):
            return found
        promql = custom_query(found.query, namespace, agent, revision)
        return RuleQuery(promql, promql, f"queryRef {rule.query_ref!r}")
    if not rule.query:
        return "metric custom needs query or queryRef"
    promql = custom_query(rule.query, namespace, agent, revision)
    refused = scope.check(promql, namespace, agent)
    if refused is not None:
        return f"query refused before it was sent: {refused}"
    return RuleQuery(promql, promql, f"the custom query of rule {rule.name!r}", tenant=True)


def spend_today_query(now: datetime) -> str:
    """Dollars since 00:00 UTC, summed over replicas and revisions (fleet-level budget)."""
    midnight = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    seconds = max(int((now - midnight).total_seconds()), 60)
    return f"sum by (namespace, agent) (increase(agentfleet_cost_dollars_total[{seconds}s]))"


TOKENS_LAST_HOUR = "sum by (namespace, agent) (increase(agentfleet_tokens_total[1h]))"


SOFT_LIMITS = "max by (namespace, agent, budget) (agentfleet_budget_soft_limit_reached) > 0"
"""Budgets some guard of the agent reports past their soft limit now."""


def exhausted_query(window: str) -> str:
    """Guards that refused requests because a time budget ran out (their local, strict view)."""
    return (
        "sum by (namespace, agent, budget) (increase(agentfleet_budget_rejections_total"
        f'{{budget=~"cost_per_day|tokens_per_hour"}}[{window}]))'
    )
