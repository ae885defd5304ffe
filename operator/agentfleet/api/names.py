"""Every name of the API in one place: group, version, kinds, plurals, labels, annotations,
conditions.

Pydantic-free and import-free on purpose: the kubectl plugin, the generators, the guard and
the operator all read these, and the plugin must start without loading the API models.

The annotations are the operator's plain-kubectl interface::

    kubectl annotate agd NAME agentfleet.dev/rollback-to=3          # pin revision 3 (number or hash)
    kubectl annotate agd NAME agentfleet.dev/resume=now --overwrite  # clear an automatic suspension
"""

from __future__ import annotations

GROUP = "agentfleet.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

AGENT_KIND = "AgentDeployment"
AGENT_PLURAL = "agentdeployments"
AGENT_SHORT = "agd"
POLICY_KIND = "AgentPolicy"
POLICY_PLURAL = "agentpolicies"
POLICY_SHORT = "agp"
APPROVAL_KIND = "AgentApproval"
APPROVAL_PLURAL = "agentapprovals"
APPROVAL_SHORT = "agapr"
APPROVER_CLUSTER_ROLE = "agentfleet-approver"
"""The chart's ClusterRole to bind (RoleBinding per namespace) to the people who may decide."""

# Labels on everything the operator creates.
MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "agentfleet"
AGENT = "agentfleet.dev/agent"
REVISION = "agentfleet.dev/revision"
METRICS = "agentfleet.dev/metrics"
MANAGED_SELECTOR = f"{MANAGED_BY}={MANAGER}"

# Annotations.
ROLLBACK_TO = "agentfleet.dev/rollback-to"
RESUME = "agentfleet.dev/resume"
POLICY_HASH = "agentfleet.dev/policy-hash"
REVISION_ANNOTATION = "agentfleet.dev/revision"
CONFIG_HASH_ANNOTATION = "agentfleet.dev/guard-config-hash"
FINALIZER = "agentfleet.dev/finalizer"
KOPF_PREFIX = "kopf.agentfleet.dev"

# Condition types.
READY = "Ready"
PROGRESSING = "Progressing"
SUSPENDED = "Suspended"
ROLLED_BACK = "RolledBack"
BUDGET_EXCEEDED = "BudgetExceeded"
BUDGET_SOFT_LIMIT = "BudgetSoftLimit"
METRICS_AVAILABLE = "MetricsAvailable"
POLICY_VIOLATION = "PolicyViolation"
DEGRADED_REASONS = frozenset({"InvalidSpec", "Refused", "NameConflict"})
"""Progressing=False reasons that mean the spec cannot be carried out as it is (phase Degraded)."""
CONDITION_TYPES = (
    READY,
    PROGRESSING,
    SUSPENDED,
    ROLLED_BACK,
    BUDGET_EXCEEDED,
    BUDGET_SOFT_LIMIT,
    METRICS_AVAILABLE,
    POLICY_VIOLATION,
)

# Containers of an agent's pod.
AGENT_CONTAINER = "agent"
GUARD_CONTAINER = "guard"
