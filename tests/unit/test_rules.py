"""The rule engine, table by table: breach, for, cooldown, idempotency, missing data, budgets."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agentfleet.api.types import Action, AgentDeploymentSpec, Metric
from agentfleet.evaluator.loop import Evaluator, EvaluatorSettings
from agentfleet.evaluator.queries import builtin_query, custom_query, is_fleet_wide, spend_today_query
from agentfleet.evaluator.rules import AgentView, Memory, Samples, Verdict, evaluate, evaluate_agent

pytestmark = pytest.mark.unit

T0 = datetime(2026, 11, 21, 12, 0, 0, tzinfo=UTC)
REV = "abc123def0"


def spec(rules: list[dict[str, Any]], **extra: Any) -> AgentDeploymentSpec:
    return AgentDeploymentSpec.model_validate(
        {
            "agent": {"image": "x", "model": {"name": "m", "endpoint": "http://127.0.0.1:1/v1"}},
            "guardrails": rules,
            **extra,
        }
    )


def rule(**kw: Any) -> dict[str, Any]:
    return {"name": "loops", "metric": "loopDetections", "threshold": "0", "action": "Suspend", **kw}


def view(
    rules: list[dict[str, Any]], conditions: list[dict[str, Any]] | None = None, name: str = "a", **status: Any
) -> AgentView:
    st = {"currentRevision": REV, "revisionStartedAt": "2026-11-21T11:00:00Z", "conditions": conditions or [], **status}
    extra = status.pop("_spec", {}) if "_spec" in status else {}
    return AgentView("ns", name, 1, spec(rules, **extra), st)


def loops(value: float, name: str = "a", rev: str = REV) -> Samples:
    return Samples(builtin={Metric.LOOP_DETECTIONS: {("ns", name, rev): value}})


def true(type_: str, reason: str = "x") -> dict[str, Any]:
    return {"type": type_, "status": "True", "reason": reason, "observedGeneration": 1}


def judge(agent: AgentView, samples: Samples, memory: Memory | None = None, now: datetime = T0) -> Verdict:
    return evaluate_agent(agent, samples, memory or Memory(), now)


def test_breach_suspends_naming_rule_value_and_threshold() -> None:
    v = judge(view([rule()]), loops(3))
    assert v.act is not None and v.act.action == Action.SUSPEND
    assert v.act.reason == "loop_detected"
    assert "'loops'" in v.act.message and "= 3" in v.act.message and "> 0" in v.act.message
    assert v.act.revision == REV


@pytest.mark.parametrize("samples", [Samples(), loops(0), loops(math.nan), loops(2, rev="other")])
def test_no_traffic_no_breach_or_another_revision_is_not_acted_on(samples: Samples) -> None:
    assert judge(view([rule()]), samples).act is None


def test_for_must_hold_and_no_data_resets_it() -> None:
    agent, memory = view([rule(**{"for": "1m"})]), Memory()
    assert judge(agent, loops(1), memory, T0).act is None
    assert judge(agent, loops(1), memory, T0 + timedelta(seconds=59)).act is None
    assert judge(agent, loops(1), memory, T0 + timedelta(seconds=60)).act is not None
    memory = Memory()
    judge(agent, loops(1), memory, T0)
    judge(agent, Samples(), memory, T0 + timedelta(seconds=30))  # gap: pending resets
    assert judge(agent, loops(1), memory, T0 + timedelta(seconds=61)).act is None


@pytest.mark.parametrize(
    ("comparison", "value", "breach"),
    [
        (">", 0.5, False),
        (">", 0.51, True),
        (">=", 0.5, True),
        ("<", 0.49, True),
        ("<=", 0.5, True),
        ("<", 0.5, False),
    ],
)
def test_comparisons(comparison: str, value: float, breach: bool) -> None:
    agent = view([rule(metric="errorRate", comparison=comparison, threshold="0.5")])
    samples = Samples(builtin={Metric.ERROR_RATE: {("ns", "a", REV): value}})
    assert (judge(agent, samples).act is not None) is breach


def test_a_decision_already_in_effect_is_not_repeated() -> None:
    assert judge(view([rule()], [true("Suspended", "loop_detected")]), loops(5)).act is None
    rolled = view([rule(action="Rollback")], [true("RolledBack")], stableRevision="old")
    assert judge(rolled, loops(5)).act is None


def test_rollback_goes_to_stable_or_suspends_without_one() -> None:
    with_stable = judge(view([rule(action="Rollback")], stableRevision="stable1"), loops(1))
    assert with_stable.act is not None and with_stable.act.action == Action.ROLLBACK
    assert "failed revision abc123def0" in with_stable.act.message and "stable1" in with_stable.act.message
    for status in ({}, {"stableRevision": REV}):
        v = judge(view([rule(action="Rollback")], **status), loops(1))
        assert v.act is not None and v.act.action == Action.SUSPEND
        assert "no stable revision" in v.act.message


def test_cooldown_from_status_survives_a_restart() -> None:
    recent = {"rule": "loops", "time": (T0 - timedelta(minutes=1)).isoformat()}
    assert judge(view([rule(cooldown="5m")], lastBreach=recent), loops(1)).act is None
    old = {"rule": "loops", "time": (T0 - timedelta(minutes=6)).isoformat()}
    assert judge(view([rule(cooldown="5m")], lastBreach=old), loops(1)).act is not None


def test_a_pending_for_is_recorded_and_continued_after_a_restart() -> None:
    """A crash-looping operator (or a new leader) continues the ``for`` wait from status rather
    than starting it again: otherwise restarts more often than ``for`` would never act."""
    agent = view([rule(**{"for": "1m"})])
    first = judge(agent, loops(1), Memory(), T0)
    assert first.act is None
    assert first.pending_breaches == [{"rule": "loops", "revision": REV, "since": "2026-11-21T12:00:00Z"}]
    restarted = view([rule(**{"for": "1m"})], pendingBreaches=first.pending_breaches)
    again = judge(restarted, loops(1), Memory(), T0 + timedelta(seconds=30))
    assert again.act is None and again.pending_breaches is None, "unchanged: nothing to write"
    assert judge(restarted, loops(1), Memory(), T0 + timedelta(seconds=60)).act is not None
    # The recorded wait is for that revision only, and a future time is never trusted.
    other = [{"rule": "loops", "revision": "other", "since": "2026-11-21T11:00:00Z"}]
    assert judge(view([rule(**{"for": "1m"})], pendingBreaches=other), loops(1), Memory(), T0).act is None
    future = [{"rule": "loops", "revision": REV, "since": "2026-11-21T13:00:00Z"}]
    v = judge(view([rule(**{"for": "1m"})], pendingBreaches=future), loops(1), Memory(), T0 + timedelta(seconds=61))
    assert v.act is None
    # When the breach ends, status forgets it.
    cleared = judge(restarted, loops(0), Memory(), T0 + timedelta(seconds=40))
    assert cleared.pending_breaches == []


def test_most_severe_action_wins_and_alerts_ride_along() -> None:
    rules = [rule(name="r1", action="Rollback"), rule(name="s1", action="Suspend"), rule(name="a1", action="Alert")]
    v = judge(view(rules, stableRevision="s"), loops(1))
    assert v.act is not None and v.act.rule == "s1"
    assert [a.rule for a in v.alerts] == ["a1"]


def test_scale_to_is_idempotent() -> None:
    r = rule(action="ScaleTo", scaleTo=0)
    assert judge(view([r]), loops(1)).act is not None
    agent = AgentView("ns", "a", 1, spec([r], replicas=0), {"currentRevision": REV})
    assert judge(agent, loops(1)).act is None


@pytest.mark.parametrize(("mode", "suspends"), [("Hold", False), ("Suspend", True)])
def test_metrics_unavailable(mode: str, suspends: bool) -> None:
    agent = AgentView("ns", "a", 1, spec([rule()], analysis={"onMetricsUnavailable": mode}), {"currentRevision": REV})
    v = judge(agent, Samples(failed={"loopDetections"}))
    assert v.metrics_available is not None and v.metrics_available[0] is False
    assert (v.act is not None and v.act.reason == "metrics_unavailable") is suspends
    back = AgentView(
        "ns",
        "a",
        1,
        agent.spec,
        {"currentRevision": REV, "conditions": [{"type": "MetricsAvailable", "status": "False", "reason": "x"}]},
    )
    assert judge(back, Samples()).metrics_available == (True, "Prometheus answered every query")


def test_stable_after_quiet_window_but_not_after_a_recent_breach() -> None:
    agent = view([rule(threshold="10")], revisionStartedAt="2026-11-21T11:50:00Z")
    assert judge(agent, Samples()).promote_stable is None  # silence is not evidence: no data yet
    assert judge(agent, loops(0)).promote_stable == REV
    young = view([rule()], revisionStartedAt="2026-11-21T11:58:00Z")
    assert judge(young, loops(0)).promote_stable is None
    memory = Memory(breach_seen={("ns", "a", REV): T0 - timedelta(minutes=1)})
    assert judge(agent, loops(0), memory).promote_stable is None
    assert judge(view([rule()], stableRevision=REV), Samples()).promote_stable is None


def test_fleet_budget_suspends_and_recovers() -> None:
    budgeted = spec([], budgets={"costPerDay": "2.00"})
    agent = AgentView("ns", "a", 1, budgeted, {"currentRevision": REV})
    v = judge(agent, Samples(spend_today={("ns", "a"): 2.5}))
    assert v.budget_exceeded is not None and v.budget_exceeded[0] is True
    assert v.act is not None and v.act.reason == "cost_per_day_exceeded" and "$2.00" in v.act.message
    suspended = AgentView(
        "ns",
        "a",
        1,
        budgeted,
        {
            "currentRevision": REV,
            "conditions": [true("Suspended", "cost_per_day_exceeded"), true("BudgetExceeded", "BudgetExceeded")],
        },
    )
    v = judge(suspended, Samples(spend_today={("ns", "a"): 0.1}))
    assert v.resume_budget and v.budget_exceeded == (False, "within budgets.costPerDay and budgets.tokensPerHour")


def test_a_guard_refusing_for_budget_counts_as_exhausted() -> None:
    agent = AgentView("ns", "a", 1, spec([], budgets={"costPerDay": "2.00"}), {"currentRevision": REV})
    v = judge(agent, Samples(spend_today={("ns", "a"): 1.99}, exhausted={("ns", "a"): {"cost_per_day": 3.0}}))
    assert v.act is not None and v.act.reason == "cost_per_day_exceeded"
    assert v.act.message.startswith("guards refused 3 requests recently because the reservation")
    assert "budgets.costPerDay $2.00 per day (UTC): $1.9900 spent" in v.act.message


def test_custom_queries_are_substituted_and_scoped_to_the_agent() -> None:
    assert is_fleet_wide("sum by (namespace, agent, revision) (up)")
    q = custom_query('rate(x{namespace="{{namespace}}", agent="{{ agent }}"}[1m])', "ns", "a", "r")
    assert q == 'rate(x{namespace="ns", agent="a"}[1m])'
    template = 'sum by (namespace, agent, revision) (my_metric{namespace="{{namespace}}", agent="{{agent}}"})'
    r = rule(metric="custom", query=template, threshold="1")
    sent = custom_query(template, "ns", "a", REV)
    samples = Samples(custom={sent: {("ns", "a", REV): 2.0}})
    assert judge(view([r]), samples).act is not None
    # Unscoped: refused, never judged, and the agent is told how to write it.
    unscoped = rule(metric="custom", query="sum by (namespace, agent, revision) (my_metric)", threshold="1")
    samples = Samples(custom={"sum by (namespace, agent, revision) (my_metric)": {("ns", "a", REV): 2.0}})
    v = judge(view([unscoped]), samples)
    assert v.act is None and v.metrics_available is not None and v.metrics_available[0] is False
    assert v.metrics_reason == "InvalidGuardrail" and 'namespace="{{namespace}}"' in v.metrics_available[1]


def test_queries_are_grouped_by_agent_and_revision() -> None:
    for metric in Metric:
        if metric != Metric.CUSTOM:
            assert "by (namespace, agent, revision" in builtin_query(metric, "1m")
    assert "[43200s]" in spend_today_query(T0)


def test_evaluate_forgets_agents_that_are_gone() -> None:
    memory = Memory(pending={("ns", "gone", "r", REV): T0}, acted={("ns", "gone", "r"): T0})
    evaluate([view([rule()])], Samples(), memory, T0)
    assert not memory.pending and not memory.acted


class CountingProm:
    """Counts queries; answers nothing (no traffic)."""

    def __init__(self) -> None:
        self.queries: list[str] = []

    async def query(self, promql: str) -> list[tuple[dict[str, str], float]]:
        self.queries.append(promql)
        return []


class NoActor:
    async def apply(self, agent: AgentView, verdict: Verdict) -> None:
        assert verdict.act is None and not verdict.alerts, "nothing should be acted on without traffic"

    async def refresh_usage(self, *args: Any) -> None:
        return None

    async def announce_pending(self, agents: Any) -> None:
        return None


def fleet(n: int) -> list[dict[str, Any]]:
    rules = [rule(), rule(name="err", metric="errorRate", threshold="0.2", action="Rollback")]
    return [
        {
            "metadata": {"namespace": "ns", "name": f"a{i}", "uid": f"u{i}", "generation": 1},
            "spec": spec(rules).wire(),
            "status": {"currentRevision": REV, "stableRevision": REV},
        }
        for i in range(n)
    ]


@pytest.mark.parametrize("n", [20, 200, 2000])
async def test_queries_per_cycle_do_not_grow_with_the_fleet(n: int) -> None:
    prom = CountingProm()
    agents = fleet(n)
    ev = Evaluator(prom, NoActor(), lambda: agents, EvaluatorSettings())  # type: ignore[arg-type]
    await ev.cycle()
    assert len(prom.queries) == 5  # two rule kinds + spend + tokens + audit heads, whatever n is
