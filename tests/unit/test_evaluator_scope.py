"""Tenant PromQL reads only the agent's own series (``evaluator/scope.py``), stored specs are read
as far as they can be (``evaluator/reading.py``), and what the agent is told (``outcome``)."""

from __future__ import annotations

import pytest

from agentfleet.api.types import Action
from agentfleet.evaluator.outcome import outcome
from agentfleet.evaluator.queries import custom_query
from agentfleet.evaluator.reading import read_spec
from agentfleet.evaluator.rules import Act, Verdict
from agentfleet.evaluator.scope import check

pytestmark = pytest.mark.unit

NS, AGENT = "team-a", "support"
OWN = 'namespace="{{namespace}}", agent="{{agent}}"'


def verdict(template: str) -> str | None:
    return check(custom_query(template, NS, AGENT, "rev1"), NS, AGENT)


@pytest.mark.parametrize(
    "template",
    [
        f"sum by (namespace, agent, revision) (rate(agentfleet_requests_total{{{OWN}}}[5m]))",
        f'sum(rate(agentfleet_requests_total{{{OWN}, outcome=~"error|rejected"}}[5m]))'
        f" / sum(rate(agentfleet_requests_total{{{OWN}}}[5m]))",
        f"max_over_time(rate(agentfleet_tokens_total{{{OWN}}}[1m])[1h:30s])",
        "histogram_quantile(0.9, sum by (le) (rate(agentfleet_request_duration_seconds_bucket"
        f'{{{OWN}, revision="{{{{revision}}}}"}}[5m])))',
        f'{{__name__=~"agentfleet_.+", {OWN}}} offset 1h',
        f'label_replace(agentfleet_tasks_total{{{OWN}}}, "kind", "$1", "model", "(.*)")',
        "vector(0)",
    ],
)
def test_queries_over_the_agents_own_series_are_accepted(template: str) -> None:
    assert verdict(template) is None


@pytest.mark.parametrize(
    ("template", "why"),
    [
        ("sum(agentfleet_cost_dollars_total)", 'has no namespace="team-a" matcher'),
        ('sum(agentfleet_cost_dollars_total{namespace="{{namespace}}"})', 'has no agent="support" matcher'),
        (
            'agentfleet_cost_dollars_total{namespace="team-b", agent="{{agent}}"}',
            'namespace only with namespace="team-a"',
        ),
        ('agentfleet_cost_dollars_total{namespace=~"team-.*", agent="{{agent}}"}', "namespace only with"),
        (f'agentfleet_cost_dollars_total{{{OWN}, agent!="x"}}', "agent only with"),
        (
            f"agentfleet_cost_dollars_total{{{OWN}}} / agentfleet_cost_dollars_total",
            "selector agentfleet_cost_dollars_total{}",
        ),
        (f"agentfleet_tasks_total{{{OWN}}} or on() sum(agentfleet_tasks_total)", "has no namespace"),
        ('agentfleet_tasks_total{namespace="{{namespace}}|team-b", agent="{{agent}}"}', "namespace only with"),
        (f"absent(agentfleet_tasks_total{{{OWN}}})", "absent() invents series"),
        (f"absent_over_time(agentfleet_tasks_total{{{OWN}}}[5m])", "absent_over_time() invents series"),
        (
            f'label_replace(agentfleet_tasks_total{{{OWN}}}, "agent", "other", "", "")',
            "may not write the label 'agent'",
        ),
        (
            f'label_join(agentfleet_tasks_total{{{OWN}}}, "namespace", ",", "model")',
            "may not write the label 'namespace'",
        ),
        (f'count_values("revision", agentfleet_tasks_total{{{OWN}}})', "may not write the label 'revision'"),
        ("max_over_time(sum(agentfleet_tasks_total)[1h:1m])", "has no namespace"),
        (f"max_over_time(agentfleet_tasks_total{{{OWN}}}[30d])", "longer than 1d"),
        (f"max_over_time(agentfleet_tasks_total{{{OWN}}}[2d:1h])", "longer than 1d"),
        (f"max_over_time(agentfleet_tasks_total{{{OWN}}}[1d:1ms])", "more than 11000 points"),
        (f"agentfleet_tasks_total{{{OWN}}} offset 30d", "offset beyond 1d"),
        ("sum(agentfleet_tasks_total{", "not valid PromQL"),
    ],
)
def test_anything_else_is_refused_with_how_to_write_it(template: str, why: str) -> None:
    refused = verdict(template)
    assert refused is not None and why in refused, refused
    if not refused.startswith("not valid"):
        assert 'namespace="{{namespace}}"' in refused and "queryRef" in refused


def test_substituted_values_cannot_break_out_of_their_quotes() -> None:
    # Quotes are stripped from substituted values; a value that is not the agent's own is refused.
    assert custom_query('x{agent="{{agent}}"}', NS, 'a"} or y{b="', "r") == 'x{agent="a} or y{b="}'
    assert check('x{namespace="team-a", agent="a\\"} or y{b=\\""}', NS, "a") is not None


# ---------------------------------------------------------------------- reading stored specs


def spec(**fields: object) -> dict[str, object]:
    return {"agent": {"image": "x", "model": {"name": "m", "endpoint": "http://127.0.0.1:1/v1"}}, **fields}


LOOP = {"name": "loops", "metric": "loopDetections", "threshold": "0", "action": "Suspend"}


def test_a_rule_past_the_bound_is_dropped_and_named() -> None:
    for value, why in [("99999999999h", "should match pattern"), ("9000h", "at most 8760h")]:
        reading = read_spec(spec(guardrails=[{**LOOP, "name": "bad", "cooldown": value}, LOOP]))
        assert reading.readable and not reading.hold_stable
        assert [r.name for r in reading.spec.guardrails or []] == ["loops"]
        (problem,) = reading.problems
        assert problem.startswith("guardrail 'bad' is not judged: cooldown: ") and why in problem, problem


def test_an_unreadable_stabilization_window_holds_promotion() -> None:
    reading = read_spec(spec(guardrails=[LOOP], analysis={"stabilizationWindow": "99999999999h"}))
    assert reading.readable and reading.hold_stable and len(reading.spec.guardrails or []) == 1
    assert "no revision is promoted to stable" in reading.problems[0]


def test_a_spec_that_cannot_be_repaired_judges_nothing() -> None:
    reading = read_spec({"guardrails": [LOOP], "replicas": 3})
    assert not reading.readable and reading.hold_stable and reading.spec.guardrails is None
    assert reading.spec.replicas == 3 and "no guardrail is judged" in reading.problems[0]
    assert not read_spec("nonsense").readable


def test_a_valid_spec_reads_as_is() -> None:
    reading = read_spec(spec(guardrails=[LOOP]))
    assert reading.readable and reading.problems == () and not reading.hold_stable


# ---------------------------------------------------------------------- what the agent is told


@pytest.mark.parametrize(
    ("reason", "event"),
    [
        ("PrometheusUnavailable", "MetricsUnavailable"),
        ("InvalidGuardrail", "InvalidGuardrail"),
        ("InvalidSpec", "InvalidSpec"),
        ("EvaluationFailed", "EvaluationFailed"),
    ],
)
def test_the_condition_and_event_name_the_cause(reason: str, event: str) -> None:
    v = Verdict(("ns", "a"), metrics_available=(False, "why"), metrics_reason=reason)
    out = outcome(v, {}, 1, "2026-01-01T00:00:00Z")
    assert [(c["type"], c["status"], c["reason"]) for c in out.conditions] == [("MetricsAvailable", "False", reason)]
    assert out.events == [("Warning", event, "why")]


def test_a_withheld_value_never_reaches_status() -> None:
    act = Act(Action.ALERT, "ref", "custom", 0.123, "> 0.1", "rev", "custom_rule_breached", "m", withheld=True)
    v = Verdict(("ns", "a"), act=act)
    out = outcome(v, {}, 1, "2026-01-01T00:00:00Z")
    assert out.fields["lastBreach"]["observedValue"] == "withheld"
