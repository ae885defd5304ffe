"""The pure decisions of held tool calls (guard/approvals.py): which calls are held, and what a
stored AgentApproval means to the guard."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from agentfleet.api.guardconfig import ApprovalRule
from agentfleet.api.types import ApprovalCondition, ApprovalMode, ToolSpec
from agentfleet.guard.approvals import condition_holds, decision_of, rule_for, service_account_of

SA = service_account_of("team-a", "support")
OVER_100 = ApprovalCondition.model_validate({"argument": "amount", "greaterThan": "100"})


@pytest.mark.parametrize(
    ("arguments", "held"),
    [
        ({"amount": 50}, False),
        ({"amount": 100}, False),
        ({"amount": 100.01}, True),
        ({"amount": "250"}, True),  # a number as text is still a number
        ({"amount": "lots"}, True),  # unreadable: held (fail closed)
        ({"amount": True}, True),
        ({}, True),  # missing: held
        ({"amount": None}, True),
    ],
)
def test_greater_than(arguments: dict[str, object], held: bool) -> None:
    assert condition_holds(OVER_100, arguments) is held


def test_nested_and_equals() -> None:
    cond = ApprovalCondition.model_validate({"argument": "target.env", "equals": "prod"})
    assert condition_holds(cond, {"target": {"env": "prod"}})
    assert not condition_holds(cond, {"target": {"env": "staging"}})
    assert condition_holds(cond, {"target": "prod"})  # path missing: held


def test_condition_needs_exactly_one_comparison() -> None:
    with pytest.raises(ValidationError):
        ApprovalCondition.model_validate({"argument": "a"})
    with pytest.raises(ValidationError):
        ApprovalCondition.model_validate({"argument": "a", "equals": "x", "lessThan": "1"})


def test_timeout_is_bounded() -> None:
    with pytest.raises(ValidationError, match="at most 1h"):
        ToolSpec.model_validate({"name": "refund", "approval": {"timeout": "61m"}})


def rule(**kw: object) -> ApprovalRule:
    return ApprovalRule.model_validate({"tool": "refund", **kw})


def test_rule_for_merges_the_strictest() -> None:
    agent = rule(when=[{"argument": "amount", "greaterThan": "1000"}], timeout="30m")
    policy = rule(when=[{"argument": "amount", "greaterThan": "100"}], timeout="5m", redactArguments=True)
    assert rule_for([agent, policy], "refund", json.dumps({"amount": 50})) is None
    small = rule_for([agent, policy], "refund", json.dumps({"amount": 500}))
    assert small is not None and small.timeout == "5m" and small.redact_arguments
    assert rule_for([agent, policy], "search", "{}") is None
    assert rule_for([agent], "refund", "not json") is not None  # unreadable arguments: held
    refuse = rule_for([rule(mode="Refuse"), rule()], "refund", "{}")
    assert refuse is not None and refuse.mode is ApprovalMode.REFUSE


def obj(uid: str = "u1", decision: dict[str, str] | None = None) -> dict[str, object]:
    spec: dict[str, object] = {"request": {}}
    if decision is not None:
        spec["decision"] = decision
    return {"metadata": {"uid": uid}, "spec": spec}


def test_decision_of() -> None:
    assert decision_of(obj(), "u1", SA) is None
    approved = decision_of(obj(decision={"state": "Approved", "decidedBy": "alice"}), "u1", SA)
    assert approved is not None and approved.approved and approved.decided_by == "alice"
    denied = decision_of(obj(decision={"state": "Denied", "decidedBy": "bob", "reason": "no"}), "u1", SA)
    assert denied is not None and not denied.approved and denied.reason == "no"
    # the same name, another object (the agent deleted and recreated it): never approved
    replaced = decision_of(obj("u2", {"state": "Approved", "decidedBy": "alice"}), "u1", SA)
    assert replaced is not None and not replaced.approved
    # a decision recorded by the agent's own ServiceAccount, or by nobody, is a denial
    for who in (SA, ""):
        forged = decision_of(obj(decision={"state": "Approved", "decidedBy": who}), "u1", SA)
        assert forged is not None and not forged.approved
