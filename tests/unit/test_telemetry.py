"""Traces from the AgentPolicy to the guard: ``policy.rules.telemetry_terms`` (the first covering
policy by name that sets ``telemetry``), the rendered guard config, and the guard's pure helpers
(the OTLP traces URL, the response facts of each protocol, bounded content)."""

from __future__ import annotations

from typing import Any

import pytest

from agentfleet.api.types import AgentDeployment, AgentPolicy, TelemetryPolicy
from agentfleet.guard.tracing import MAX_CONTENT, bounded, response_facts, traces_url
from agentfleet.policy import telemetry_terms
from agentfleet.render import render

pytestmark = pytest.mark.unit

NS = "team-a"
LABELS = {"kubernetes.io/metadata.name": NS}


def agent() -> AgentDeployment:
    return AgentDeployment.model_validate(
        {
            "metadata": {"name": "support", "namespace": NS, "uid": "u-1"},
            "spec": {"agent": {"image": "x", "model": {"name": "m", "endpoint": "https://api.openai.com/v1"}}},
        }
    )


def policy(name: str, **spec: Any) -> AgentPolicy:
    return AgentPolicy.model_validate({"metadata": {"name": name}, "spec": spec})


def test_the_first_covering_policy_by_name_that_sets_telemetry_decides() -> None:
    a = agent()
    assert telemetry_terms(a, [policy("p")], LABELS) is None  # nobody asks: no traces
    b = policy("b", telemetry={"otlpEndpoint": "http://collector-b:4318", "captureContent": True})
    c = policy("c", telemetry={"otlpEndpoint": "http://collector-c:4318"})
    elsewhere = policy("0", namespaces=["other"], telemetry={"otlpEndpoint": "http://x:4318"})
    chosen = telemetry_terms(a, [c, policy("a"), b, elsewhere], LABELS)
    assert chosen == TelemetryPolicy(otlp_endpoint="http://collector-b:4318", capture_content=True)
    assert telemetry_terms(a, [c], LABELS) == TelemetryPolicy(otlp_endpoint="http://collector-c:4318")
    assert TelemetryPolicy(otlp_endpoint="http://c:4318").capture_content is False  # content: opt in


def test_the_guard_config_carries_it_and_is_off_by_default() -> None:
    assert render(agent()).guard_config.telemetry is None
    t = TelemetryPolicy(otlp_endpoint="http://collector:4318", sample_percent=50)
    assert render(agent(), telemetry=t).guard_config.telemetry == t
    with pytest.raises(ValueError):
        TelemetryPolicy.model_validate({"otlpEndpoint": "collector:4318"})
    with pytest.raises(ValueError):
        TelemetryPolicy.model_validate({"otlpEndpoint": "http://c:4318", "samplePercent": 101})


def test_traces_url() -> None:
    assert traces_url("http://c:4318") == "http://c:4318/v1/traces"
    assert traces_url("http://c:4318/") == "http://c:4318/v1/traces"
    assert traces_url("https://c/otlp/v1/traces") == "https://c/otlp/v1/traces"


def test_response_facts_of_each_protocol() -> None:
    chat = {"model": "gpt-4o-2024", "choices": [{"finish_reason": "tool_calls"}, {"finish_reason": "stop"}]}
    assert response_facts(chat) == ("gpt-4o-2024", ["tool_calls", "stop"])
    assert response_facts({"model": "claude", "stop_reason": "end_turn"}) == ("claude", ["end_turn"])
    assert response_facts({"model": "o3", "status": "completed"}) == ("o3", ["completed"])
    incomplete = {"status": "incomplete", "incomplete_details": {"reason": "max_output_tokens"}}
    assert response_facts(incomplete) == (None, ["max_output_tokens"])
    assert response_facts([1]) == (None, [])
    assert response_facts({"model": 3, "choices": [{"finish_reason": None}]}) == (None, [])


def test_content_is_bounded() -> None:
    assert bounded(b"hi") == "hi"
    assert bounded({"a": 1}) == '{"a": 1}'
    long = bounded("x" * (MAX_CONTENT + 10))
    assert long.startswith("x" * MAX_CONTENT) and long.endswith("(truncated)") and len(long) < MAX_CONTENT + 20
