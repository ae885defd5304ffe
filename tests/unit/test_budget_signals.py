"""Budget signals the evaluator turns into status (pure): soft limits reported by the guards set
BudgetSoftLimit, post one Event per crossing and fire the agent's Alert path; a BudgetExceeded
caused by refused reservations says so instead of reading as a contradiction."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from agentfleet.api import conditions as cond
from agentfleet.api.types import Action, AgentDeploymentSpec
from agentfleet.evaluator.outcome import outcome
from agentfleet.evaluator.rules import AgentView, Memory, Samples, evaluate_agent

pytestmark = pytest.mark.unit

T0 = datetime(2026, 11, 21, 12, 0, 0, tzinfo=UTC)
NOW = "2026-11-21T12:00:00Z"
REV = "abc123def0"
KEY = ("ns", "a")
ALERT_RULE = {"name": "errors", "metric": "errorRate", "threshold": "0.5", "action": "Alert"}


def agent(conditions: list[dict[str, Any]] | None = None, alert: bool = True, percent: int | None = 80) -> AgentView:
    budgets: dict[str, Any] = {"costPerDay": "2.00", "tokensPerHour": 10000}
    if percent is not None:
        budgets["softLimitPercent"] = percent
    spec = AgentDeploymentSpec.model_validate(
        {
            "agent": {"image": "x", "model": {"name": "m", "endpoint": "http://127.0.0.1:1/v1"}},
            "guardrails": [ALERT_RULE] if alert else [],
            "budgets": budgets,
        }
    )
    return AgentView("ns", "a", 1, spec, {"currentRevision": REV, "conditions": conditions or []})


def soft(*budgets: str) -> Samples:
    return Samples(spend_today={KEY: 1.7}, soft_limits={KEY: set(budgets)})


def test_soft_limit_sets_the_condition_posts_one_event_and_alerts() -> None:
    v = evaluate_agent(agent(), soft("cost_per_day"), Memory(), T0)
    assert v.budget_soft_limit == (
        True,
        "cost_per_day past 80% of its limit (budgets.softLimitPercent); requests are refused once a budget is spent",
    )
    assert v.act is None  # a soft limit never suspends
    [alert] = v.alerts
    assert (alert.action, alert.rule, alert.reason) == (Action.ALERT, "budgets", "BudgetSoftLimit")
    out = outcome(v, {"conditions": []}, 1, NOW)
    [c] = [c for c in out.conditions if c["type"] == cond.BUDGET_SOFT_LIMIT]
    assert (c["status"], c["reason"]) == ("True", "SoftLimitReached")
    assert ("Warning", "BudgetSoftLimit", v.budget_soft_limit[1]) in out.events
    assert alert in out.acted

    # Next cycle, still over: the condition holds it, so no new Event and no new alert.
    v2 = evaluate_agent(agent(out.conditions), soft("cost_per_day"), Memory(), T0)
    assert v2.budget_soft_limit is None and not v2.alerts
    # Another budget crosses too: the message changes, the condition stays True, no second Event.
    v3 = evaluate_agent(agent(out.conditions), soft("cost_per_day", "tokens_per_hour"), Memory(), T0)
    assert (
        v3.budget_soft_limit is not None
        and "cost_per_day, tokens_per_hour past 80% of their" in v3.budget_soft_limit[1]
    )
    assert not v3.alerts
    assert not [e for e in outcome(v3, {"conditions": out.conditions}, 1, NOW).events if e[1] == "BudgetSoftLimit"]


def test_soft_limit_clears_when_the_window_resets() -> None:
    over = [{"type": cond.BUDGET_SOFT_LIMIT, "status": "True", "reason": "SoftLimitReached", "message": "m"}]
    v = evaluate_agent(agent(over), Samples(spend_today={KEY: 0.1}), Memory(), T0)
    assert v.budget_soft_limit == (False, "no budget is past its soft limit")
    out = outcome(v, {"conditions": over}, 1, NOW)
    assert [c["status"] for c in out.conditions if c["type"] == cond.BUDGET_SOFT_LIMIT] == ["False"]
    assert not out.events
    # Never over: nothing to write.
    assert evaluate_agent(agent(), Samples(spend_today={KEY: 0.1}), Memory(), T0).budget_soft_limit is None


def test_soft_limit_without_an_alert_rule_only_sets_the_condition() -> None:
    v = evaluate_agent(agent(alert=False), soft("tokens_per_hour"), Memory(), T0)
    assert v.budget_soft_limit is not None and v.budget_soft_limit[0] and not v.alerts


def test_budget_exceeded_by_refused_reservations_says_what_and_why() -> None:
    samples = Samples(spend_today={KEY: 0.0}, exhausted={KEY: {"cost_per_day": 1.0}})
    v = evaluate_agent(agent(percent=None), samples, Memory(), T0)
    assert v.budget_exceeded is not None and v.budget_exceeded[0]
    message = v.budget_exceeded[1]
    assert message.startswith(
        "guards refused 1 request recently because the reservation each needed (its worst-case cost, "
        "held until the call settles) would have passed budgets.costPerDay $2.00 per day (UTC): $0.0000 spent"
    )
    assert "spent $0.0000 today" not in message
    assert v.act is not None and message in v.act.message and "suspended until the budget resets" in v.act.message


def test_budget_exceeded_by_spend_names_the_amount_and_the_window() -> None:
    v = evaluate_agent(agent(percent=None), Samples(spend_today={KEY: 2.5}), Memory(), T0)
    assert v.budget_exceeded == (
        True,
        "spent $2.5000 since 00:00 UTC across all replicas; budgets.costPerDay $2.00 per day (UTC)",
    )
