"""AgentPolicy.status: the census (pure) and its writer (only changed counts are written)."""

from __future__ import annotations

from typing import Any

import pytest

from agentfleet.api import conditions as cond
from agentfleet.api.types import AgentPolicy
from agentfleet.controller.policy_status import PolicyStatusWriter
from agentfleet.policy.census import census, violates

pytestmark = pytest.mark.unit

NOW = "2026-12-04T10:00:00Z"
LABELS = {"a": {"team": "a"}, "b": {"team": "b"}, "c": {}}


def policy(name: str, **spec: Any) -> AgentPolicy:
    return AgentPolicy.model_validate({"metadata": {"name": name, "generation": 2}, "spec": spec})


def violating(message: str) -> dict[str, Any]:
    return {"conditions": cond.set_condition([], cond.POLICY_VIOLATION, True, "PolicyViolation", message, 1, NOW)}


AGENTS = [
    ("a", violating("strict: ceilings.maxReplicas: 5 > 2; other: allowedTools: x")),
    ("a", {}),
    ("b", violating("other: allowedTools: y")),
    ("c", {"conditions": cond.set_condition([], cond.POLICY_VIOLATION, False, "WithinPolicy", "ok", 1, NOW)}),
]


def test_violates_reads_the_policy_names_in_the_message() -> None:
    assert violates("strict", AGENTS[0][1]) and violates("other", AGENTS[0][1])
    assert not violates("stric", AGENTS[0][1])  # a prefix of a name is not the name
    assert not violates("strict", AGENTS[3][1]) and not violates("strict", {})


def test_census_counts_covered_and_violating_agents() -> None:
    strict = policy("strict", namespaceSelector={"matchLabels": {"team": "a"}})
    assert census(strict, AGENTS, LABELS.__getitem__) == {"observedGeneration": 2, "coveredAgents": 2, "violations": 1}
    other = policy("other")  # no selector: every namespace
    assert census(other, AGENTS, LABELS.__getitem__) == {"observedGeneration": 2, "coveredAgents": 4, "violations": 2}
    listed = policy("listed", namespaces=["c"])
    assert census(listed, AGENTS, LABELS.__getitem__)["coveredAgents"] == 1


class FakeKube:
    def __init__(self) -> None:
        self.patches: list[tuple[str, dict[str, Any]]] = []

    async def merge_patch(
        self, kind: str, ns: str | None, name: str, patch: dict[str, Any], subresource: str | None = None
    ) -> dict[str, Any]:
        assert (kind, ns, subresource) == ("AgentPolicy", None, "status")
        self.patches.append((name, patch))
        return {}


async def test_the_writer_writes_only_what_changed() -> None:
    kube = FakeKube()
    agents = list(AGENTS)
    policies = [policy("other")]
    writer = PolicyStatusWriter(kube, lambda: policies, lambda: agents, LABELS.__getitem__)  # type: ignore[arg-type]
    assert await writer.write_once() == 1
    assert kube.patches == [("other", {"status": {"observedGeneration": 2, "coveredAgents": 4, "violations": 2}})]
    assert await writer.write_once() == 0  # nothing changed: no write
    agents.pop()
    assert await writer.write_once() == 1 and kube.patches[-1][1]["status"]["coveredAgents"] == 3
    # A policy whose stored status already says it (say, after an operator restart) is not rewritten.
    stored = policy("other").model_copy(update={"status": None})
    stored = AgentPolicy.model_validate(
        {**stored.wire(), "status": {"observedGeneration": 2, "coveredAgents": 3, "violations": 2}}
    )
    fresh = PolicyStatusWriter(kube, lambda: [stored], lambda: agents, LABELS.__getitem__)  # type: ignore[arg-type]
    assert await fresh.write_once() == 0
