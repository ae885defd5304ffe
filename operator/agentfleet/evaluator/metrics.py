"""The evaluator's own metrics (part of ``agentfleet_operator_*``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from agentfleet.api.types import Action
from agentfleet.registry import REGISTRY

CYCLE_SECONDS = Histogram(
    "agentfleet_operator_evaluation_cycle_seconds",
    "Duration of one fleet evaluation cycle.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
CYCLE_ERRORS = Counter(
    "agentfleet_operator_evaluation_cycle_errors_total", "Evaluation cycles that failed.", registry=REGISTRY
)
QUERIES = Counter("agentfleet_operator_prometheus_queries_total", "PromQL queries sent.", registry=REGISTRY)
QUERY_ERRORS = Counter(
    "agentfleet_operator_prometheus_query_errors_total", "PromQL queries that failed.", registry=REGISTRY
)
DECISIONS = Counter(
    "agentfleet_operator_decisions_total", "Verdicts acted upon, by action.", ["action"], registry=REGISTRY
)
ACTIONS = Counter(
    "agentfleet_operator_actions_total",
    "Suspensions, rollbacks, scalings and alerts, by action.",
    ["action"],
    registry=REGISTRY,
)
for _action in Action:  # from 0, so the alerts' increase() sees a fleet's first suspension
    ACTIONS.labels(str(_action))
NOTIFICATIONS = Counter(
    "agentfleet_operator_notifications_total",
    "Guardrail actions sent to AgentPolicy alerting destinations, by sink (alertmanager, webhook) and "
    "outcome (sent, failed after its attempts, dropped because the queue was full or the URL invalid).",
    ["sink", "outcome"],
    registry=REGISTRY,
)
for _sink in ("alertmanager", "webhook"):
    for _outcome in ("sent", "failed", "dropped"):
        NOTIFICATIONS.labels(_sink, _outcome)
INTERVAL = Gauge(
    "agentfleet_operator_evaluation_interval_seconds",
    "The evaluation interval this operator runs with (0 while it does not evaluate: a standby, or no Prometheus).",
    registry=REGISTRY,
)
CYCLE_QUERIES = Gauge(
    "agentfleet_operator_evaluation_cycle_queries",
    "PromQL queries the last evaluation cycle sent (flat in the number of agents).",
    registry=REGISTRY,
)
AGENTS = Gauge("agentfleet_operator_evaluated_agents", "AgentDeployments judged in the last cycle.", registry=REGISTRY)
PHASES = Gauge(
    "agentfleet_operator_agents",
    "AgentDeployments by phase, as of the last evaluation cycle.",
    ["phase"],
    registry=REGISTRY,
)
PHASE_NAMES = ("Pending", "Progressing", "Running", "Suspended", "RolledBack", "Degraded", "PolicyViolation")
AGENT_ERRORS = Counter(
    "agentfleet_operator_evaluation_agent_errors_total",
    "Errors contained to one agent (the rest of the fleet was judged), by stage: read (its spec), "
    "judge (its rules), act (its status or action), usage (its usage refresh).",
    ["stage"],
    registry=REGISTRY,
)
UNJUDGED_RULES = Gauge(
    "agentfleet_operator_invalid_guardrails",
    "Guardrail rules not judged in the last cycle: refused or unresolvable queries, unreadable fields.",
    registry=REGISTRY,
)
TENANT_QUERIES_LATE = Counter(
    "agentfleet_operator_tenant_queries_late_total",
    "Tenant custom queries dropped from a cycle because they did not finish within its tenant budget.",
    registry=REGISTRY,
)
