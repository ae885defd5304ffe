"""Kubernetes-convention conditions, as pure functions over the status's condition list.

``lastTransitionTime`` changes only when a condition's status changes, so re-asserting the
same state is idempotent and a status patch that changes nothing can be skipped.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

# Condition types, re-exported: ``cond.READY`` reads well where conditions are set.
from agentfleet.api.names import (
    BUDGET_EXCEEDED,
    BUDGET_SOFT_LIMIT,
    METRICS_AVAILABLE,
    POLICY_VIOLATION,
    PROGRESSING,
    READY,
    ROLLED_BACK,
    SUSPENDED,
)

__all__ = [
    "BUDGET_EXCEEDED",
    "BUDGET_SOFT_LIMIT",
    "METRICS_AVAILABLE",
    "POLICY_VIOLATION",
    "PROGRESSING",
    "READY",
    "ROLLED_BACK",
    "SUSPENDED",
    "Conditions",
    "get",
    "is_true",
    "now_rfc3339",
    "set_condition",
]

Conditions = list[dict[str, Any]]


def now_rfc3339() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def get(conditions: Conditions | None, type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions or [] if c.get("type") == type_), None)


def is_true(conditions: Conditions | None, type_: str) -> bool:
    cond = get(conditions, type_)
    return cond is not None and cond.get("status") == "True"


def set_condition(
    conditions: Conditions | None,
    type_: str,
    status: bool | str,
    reason: str,
    message: str,
    generation: int | None,
    now: str,
) -> Conditions:
    """Return a new list with ``type_`` set; keeps lastTransitionTime when status is unchanged."""
    value = status if isinstance(status, str) else ("True" if status else "False")
    old = get(conditions, type_)
    changed = old is None or old.get("status") != value
    new = {
        "type": type_,
        "status": value,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": now if changed or old is None else old.get("lastTransitionTime", now),
    }
    out = [c for c in conditions or [] if c.get("type") != type_]
    out.append(new)
    return sorted(out, key=lambda c: str(c["type"]))
