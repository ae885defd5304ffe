"""What a verdict writes (``evaluator/outcome.py``): conditions, fields, Events and the effect
that must follow, decided without a cluster."""

from __future__ import annotations

import math

import pytest

from agentfleet.api import conditions as cond
from agentfleet.api.types import Action
from agentfleet.evaluator.outcome import fmt_value, outcome
from agentfleet.evaluator.rules import Act, Verdict

pytestmark = pytest.mark.unit

NOW = "2026-12-04T10:00:00Z"
KEY = ("team-a", "support")


def act(action: Action, **kw: object) -> Act:
    base: dict[str, object] = {
        "action": action,
        "rule": "loops",
        "metric": "loopDetections",
        "value": 3.0,
        "threshold": "0",
        "revision": "abc",
        "reason": "GuardrailBreach",
        "message": "loops: loopDetections 3 > 0",
    }
    base.update(kw)
    return Act(**base)  # type: ignore[arg-type]


def types(out_conditions: cond.Conditions) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in out_conditions}


def test_a_suspension_is_recorded_then_carried_out_by_a_reconcile() -> None:
    out = outcome(Verdict(KEY, act=act(Action.SUSPEND)), {}, 4, NOW)
    assert types(out.conditions) == {cond.SUSPENDED: ("True", "GuardrailBreach")}
    assert out.reconcile_after and out.scale_to is None
    breach = out.fields["lastBreach"]
    assert (breach["rule"], breach["observedValue"], breach["action"], breach["time"]) == ("loops", "3", "Suspend", NOW)
    assert out.events == [("Warning", "GuardrailBreach", "loops: loopDetections 3 > 0")]
    assert [a.rule for a in out.acted] == ["loops"]
    assert all(c["observedGeneration"] == 4 for c in out.conditions)


def test_a_rollback_targets_the_stable_revision_of_the_status_it_was_judged_on() -> None:
    out = outcome(Verdict(KEY, act=act(Action.ROLLBACK)), {"stableRevision": "good"}, 4, NOW)
    assert out.fields["currentRevision"] == "good"
    assert types(out.conditions) == {cond.ROLLED_BACK: ("True", "GuardrailBreach")}
    assert out.reconcile_after


def test_scale_to_goes_through_the_scale_subresource_not_a_reconcile() -> None:
    out = outcome(Verdict(KEY, act=act(Action.SCALE_TO, scale_to=1)), {}, 4, NOW)
    assert out.scale_to == 1 and not out.reconcile_after and out.conditions == []


def test_alerts_only_post_events_and_are_counted() -> None:
    alert = act(Action.ALERT, rule="cost", message="cost high")
    out = outcome(Verdict(KEY, alerts=[alert]), {}, 4, NOW)
    assert out.events == [("Warning", "GuardrailAlert", "cost high")]
    assert out.acted == [alert] and out.fields == {} and not out.reconcile_after


def test_status_only_verdicts() -> None:
    v = Verdict(KEY, metrics_available=(False, "Prometheus unreachable"), budget_exceeded=(True, "over"))
    out = outcome(v, {}, 4, NOW)
    assert types(out.conditions) == {
        cond.METRICS_AVAILABLE: ("False", "PrometheusUnavailable"),
        cond.BUDGET_EXCEEDED: ("True", "BudgetExceeded"),
    }
    assert out.events == [("Warning", "MetricsUnavailable", "Prometheus unreachable")]
    assert not out.reconcile_after and out.acted == []
    ok = outcome(Verdict(KEY, metrics_available=(True, "fine"), promote_stable="r2"), {}, 4, NOW)
    assert types(ok.conditions) == {cond.METRICS_AVAILABLE: ("True", "QueriesSucceeded")}
    assert ok.fields == {"stableRevision": "r2"} and [e[1] for e in ok.events] == ["RevisionStable"]


def test_budget_recovery_resumes_through_a_reconcile() -> None:
    out = outcome(Verdict(KEY, resume_budget=True), {}, 4, NOW)
    assert types(out.conditions) == {cond.SUSPENDED: ("False", "BudgetRecovered")}
    assert out.reconcile_after and [e[1] for e in out.events] == ["Resumed"]


def test_transition_time_is_kept_when_the_status_already_says_so() -> None:
    earlier = cond.set_condition([], cond.METRICS_AVAILABLE, True, "QueriesSucceeded", "ok", 4, "2026-01-01T00:00:00Z")
    out = outcome(Verdict(KEY, metrics_available=(True, "ok")), {"conditions": earlier}, 4, NOW)
    assert out.conditions[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"


def test_fmt_value() -> None:
    assert fmt_value(math.nan) == "n/a"
    assert fmt_value(0.123456789) == "0.123457"
