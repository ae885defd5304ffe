"""AgentPolicy enforcement in pure Python: the reconcile-time twin of the admission policy.

Admission (``crds/admission/``) rejects violating AgentDeployments at the API server; these
functions apply the same rules, with the same messages, when the operator reconciles, so an
agent admitted before a policy tightened (or with admission disabled) still never gets more
than the policies allow. No I/O: callers pass the policies and the namespace's labels.
"""

from agentfleet.policy.rules import (
    CEILINGS,
    Violation,
    covering,
    covers,
    effective_pricing,
    ledger_terms,
    suspend_all,
    telemetry_terms,
    violations,
)

__all__ = [
    "CEILINGS",
    "Violation",
    "covering",
    "covers",
    "effective_pricing",
    "ledger_terms",
    "suspend_all",
    "telemetry_terms",
    "violations",
]
