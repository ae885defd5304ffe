"""The operator's own metrics (``agentfleet_operator_*``), served on --metrics-port."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from agentfleet.registry import REGISTRY

RECONCILES = Counter("agentfleet_operator_reconciles_total", "AgentDeployment reconciles completed.", registry=REGISTRY)
RECONCILE_ERRORS = Counter(
    "agentfleet_operator_reconcile_errors_total",
    "Reconciles that failed on an API error and will be retried.",
    registry=REGISTRY,
)
RECONCILE_SECONDS = Histogram(
    "agentfleet_operator_reconcile_duration_seconds",
    "Time to reconcile one agent.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
TRANSIENT_ERRORS = Counter(
    "agentfleet_operator_transient_errors_total",
    "API errors expected to clear (server away, conflicts, throttling), logged as warnings.",
    ["where"],
    registry=REGISTRY,
)
