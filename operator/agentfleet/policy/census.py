"""What ``AgentPolicy.status`` says: how many agents a policy covers and how many violate it.

Counted from what the operator already holds in memory (namespaces' labels and each agent's
``PolicyViolation`` condition, whose message names the policies it breaks), so a census costs
no API reads and no re-validation of every agent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from agentfleet.api import conditions as cond
from agentfleet.api.types import AgentPolicy
from agentfleet.policy.rules import covers


def violates(policy: str, status: Mapping[str, Any]) -> bool:
    """Whether an agent's status reports a violation of ``policy`` (messages are "NAME: ...")."""
    found = cond.get(status.get("conditions"), cond.POLICY_VIOLATION)
    if found is None or found.get("status") != "True":
        return False
    return any(part.startswith(f"{policy}: ") for part in str(found.get("message", "")).split("; "))


def census(
    policy: AgentPolicy,
    agents: Iterable[tuple[str, Mapping[str, Any]]],
    labels_of: Callable[[str], Mapping[str, str]],
) -> dict[str, int | None]:
    """``AgentPolicy.status`` fields for ``policy`` over ``agents`` ((namespace, status) pairs)."""
    covered = violating = 0
    for namespace, status in agents:
        if covers(policy, namespace, labels_of(namespace)):
            covered += 1
            violating += violates(policy.metadata.name, status)
    return {"observedGeneration": policy.metadata.generation, "coveredAgents": covered, "violations": violating}
