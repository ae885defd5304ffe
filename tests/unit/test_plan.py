"""What one reconcile decides (``controller/plan.py``), without a cluster: problems, rollback
pins, resume requests, suspension reasons, the status after an apply, revision numbering and
pruning."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from agentfleet.api import conditions as cond
from agentfleet.api import names
from agentfleet.api.types import AgentDeployment, AgentPolicy
from agentfleet.controller import plan as plans
from agentfleet.render import RenderSettings, render, render_controller_revision, selector

pytestmark = pytest.mark.unit

NOW = "2026-12-04T10:00:00Z"
NS = "team-a"


def body(prompt: str | None = None, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "apiVersion": names.API_VERSION,
        "kind": names.AGENT_KIND,
        "metadata": {"name": "support", "namespace": NS, "generation": 3, "uid": "u-1"},
        "spec": {
            "replicas": 2,
            "agent": {
                "image": "example/agent:1",
                "model": {"name": "gpt-4o-mini", "endpoint": "https://api.openai.com/v1"},
            },
        },
        "status": {},
    }
    base["spec"].update(spec)
    if prompt is not None:
        base["spec"]["agent"]["systemPrompt"] = {"inline": prompt}
    return base


def policy(**spec: Any) -> AgentPolicy:
    return AgentPolicy.model_validate({"metadata": {"name": "fleet"}, "spec": spec})


def revision_of(b: dict[str, Any], number: int) -> dict[str, Any]:
    agent = AgentDeployment.model_validate(b)
    return render_controller_revision(agent, render(agent, RenderSettings()), number)


def made(type_: str, status: bool, reason: str, generation: int = 3) -> dict[str, Any]:
    return cond.set_condition([], type_, status, reason, "set by the test", generation, NOW)[0]


def condition(conditions: cond.Conditions, type_: str) -> dict[str, Any]:
    found = cond.get(conditions, type_)
    assert found is not None, f"no {type_} condition in {conditions}"
    return found


def test_a_spec_the_types_reject_is_an_invalid_spec_not_a_crash() -> None:
    b = body(replicas=-1)
    out = plans.judge(b, [], {}, NOW)
    assert isinstance(out, plans.Problem)
    assert out.reason == "InvalidSpec" and "replicas" in out.message
    assert condition(out.conditions, cond.PROGRESSING)["status"] == "False"
    assert out.events == [("Warning", "InvalidSpec", out.message)] and not out.withdraw


def test_a_policy_violation_withdraws_and_names_the_policy() -> None:
    out = plans.judge(body(replicas=5), [policy(ceilings={"maxReplicas": 2})], {}, NOW)
    assert isinstance(out, plans.Problem) and out.withdraw
    assert out.message.startswith("fleet: ") and "maxReplicas" in out.message
    assert condition(out.conditions, cond.POLICY_VIOLATION)["status"] == "True"


def test_within_policy_the_plan_runs_the_spec() -> None:
    b = body()
    agent = plans.judge(b, [], {}, NOW)
    assert isinstance(agent, AgentDeployment)
    p = plans.plan(agent, b, [], [], {}, NOW)
    assert isinstance(p, plans.Plan)
    assert p.source is agent and p.pinned is None and p.replicas == 2 and p.zero_reason is None
    assert condition(p.conditions, cond.POLICY_VIOLATION)["reason"] == "WithinPolicy"
    assert condition(p.conditions, cond.ROLLED_BACK)["reason"] == "NotRolledBack"
    assert p.consumed == {} and p.events == []


def test_rollback_to_a_number_pins_that_revision_and_consumes_the_request() -> None:
    old = body(prompt="v1")
    revs = [revision_of(old, 1), revision_of(body(prompt="v2"), 2)]
    b = body(prompt="v2")
    b["metadata"]["annotations"] = {names.ROLLBACK_TO: "1"}
    p = plans.plan(AgentDeployment.model_validate(b), b, revs, [], {}, NOW)
    assert isinstance(p, plans.Plan)
    assert p.pinned is revs[0] and p.source.spec.agent.system_prompt.inline == "v1"
    rolled = condition(p.conditions, cond.ROLLED_BACK)
    assert (rolled["status"], rolled["reason"]) == ("True", "ManualRollback")
    assert p.consumed == {names.ROLLBACK_TO: None}
    assert [e[1] for e in p.events] == ["RolledBack"]


def test_rollback_to_an_unknown_revision_fails_loudly_and_runs_the_spec() -> None:
    b = body()
    b["metadata"]["annotations"] = {names.ROLLBACK_TO: "7"}
    p = plans.plan(AgentDeployment.model_validate(b), b, [revision_of(b, 1)], [], {}, NOW)
    assert isinstance(p, plans.Plan) and p.pinned is None
    assert p.events[0][:2] == ("Warning", "RollbackFailed") and "'7'" in p.events[0][2]
    assert p.consumed == {names.ROLLBACK_TO: None}


def test_a_pin_holds_for_its_generation_only() -> None:
    b = body(prompt="v2")
    revs = [revision_of(body(prompt="v1"), 1), revision_of(b, 2)]
    pin = revs[0]["metadata"]["labels"][names.REVISION]
    rolled = made(cond.ROLLED_BACK, True, "GuardrailBreach")
    b["status"] = {"currentRevision": pin, "conditions": [rolled]}
    p = plans.plan(AgentDeployment.model_validate(b), b, revs, [], {}, NOW)
    assert isinstance(p, plans.Plan) and p.pinned is revs[0]
    b["metadata"]["generation"] = 4  # a new spec is a fresh attempt
    p = plans.plan(AgentDeployment.model_validate(b), b, revs, [], {}, NOW)
    assert isinstance(p, plans.Plan) and p.pinned is None
    assert condition(p.conditions, cond.ROLLED_BACK)["reason"] == "NewGeneration"


def test_a_rollback_never_restores_what_a_policy_has_since_withdrawn() -> None:
    old = body(permissions={"kubernetes": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["delete"]}]})
    b = body()
    b["metadata"]["annotations"] = {names.ROLLBACK_TO: "1"}
    strict = policy(allowedKubernetesRules=[{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}])
    p = plans.plan(AgentDeployment.model_validate(b), b, [revision_of(old, 1)], [strict], {}, NOW)
    assert isinstance(p, plans.Problem) and p.withdraw
    assert "pinned revision 1" in p.message and "delete" in p.message


@pytest.mark.parametrize(
    ("spec", "status_reason", "policies", "expected"),
    [
        ({"suspended": True}, None, [], (0, "ManualSuspend")),
        ({}, None, [policy(suspendAll=True)], (0, "FleetKillSwitch")),
        ({}, "LoopDetections", [], (0, "LoopDetections")),
        ({}, "ManualSuspend", [], (2, None)),  # the spec no longer says suspended
        ({}, None, [], (2, None)),
    ],
)
def test_desired_replicas_and_why_zero(
    spec: dict[str, Any], status_reason: str | None, policies: list[AgentPolicy], expected: tuple[int, str | None]
) -> None:
    b = body(**spec)
    status = {}
    if status_reason:
        status = {"conditions": [made(cond.SUSPENDED, True, status_reason)]}
    assert plans.desired_replicas(AgentDeployment.model_validate(b), status, policies, {}) == expected


def test_resume_clears_an_automatic_suspension_once() -> None:
    b = body()
    b["metadata"]["annotations"] = {names.RESUME: NOW}
    b["status"] = {"conditions": [made(cond.SUSPENDED, True, "LoopDetections")]}
    p = plans.plan(AgentDeployment.model_validate(b), b, [], [], {}, NOW)
    assert isinstance(p, plans.Plan) and p.resumed and p.replicas == 2
    assert p.consumed == {names.RESUME: None}
    change = plans.conclude(p, b, "abc", 1, selector("support"), NOW)
    suspended = condition(change.conditions, cond.SUSPENDED)
    assert (suspended["status"], suspended["reason"]) == ("False", "Resumed")
    assert ("Normal", "Resumed", "scaled back to 2 replica(s)") in change.events


def test_resume_without_a_suspension_only_consumes_the_request() -> None:
    b = body()
    b["metadata"]["annotations"] = {names.RESUME: NOW}
    p = plans.plan(AgentDeployment.model_validate(b), b, [], [], {}, NOW)
    assert isinstance(p, plans.Plan) and not p.resumed and p.consumed == {names.RESUME: None}


def test_conclude_reports_a_new_revision_and_a_suspension_once() -> None:
    b = body(suspended=True)
    b["status"] = {"currentRevision": "old", "revisionStartedAt": "2026-01-01T00:00:00Z"}
    p = plans.plan(AgentDeployment.model_validate(b), b, [], [], {}, NOW)
    assert isinstance(p, plans.Plan)
    change = plans.conclude(p, b, "new", 4, selector("support"), NOW)
    assert change.fields["currentRevision"] == "new" and change.fields["revisionStartedAt"] == NOW
    assert change.fields["observedGeneration"] == 3
    assert change.fields["selector"] == f"{names.AGENT}=support,{names.MANAGED_BY}={names.MANAGER}"
    assert [e[1] for e in change.events] == ["RevisionApplied", "Suspended"]
    assert {c["type"] for c in change.conditions} <= plans.OWNED
    # Once status says so, the same reconcile again posts nothing and keeps the start time.
    again = copy.deepcopy(b)
    again["status"] = {**b["status"], **change.fields, "conditions": change.conditions}
    p2 = plans.plan(AgentDeployment.model_validate(again), again, [], [], {}, NOW)
    assert isinstance(p2, plans.Plan)
    change2 = plans.conclude(p2, again, "new", 4, selector("support"), "2026-12-04T11:00:00Z")
    assert change2.events == [] and change2.fields["revisionStartedAt"] == NOW


def test_revision_numbers_reuse_a_known_hash_and_otherwise_take_the_next() -> None:
    revs = [revision_of(body(prompt=f"v{i}"), i) for i in (1, 2, 5)]
    known = revs[1]["metadata"]["labels"][names.REVISION]
    assert plans.revision_number(revs, known) == (2, False)
    assert plans.revision_number(revs, "unseen") == (6, True)
    assert plans.revision_number([], "first") == (1, True)


def test_prunable_keeps_running_current_and_stable_and_the_history_limit() -> None:
    revs = [revision_of(body(prompt=f"v{i}"), i) for i in range(1, 7)]
    hashes = [r["metadata"]["labels"][names.REVISION] for r in revs]
    keep = {hashes[5], hashes[0]}  # running and stable
    out = plans.prunable(revs, keep, history_limit=2)
    assert [h for _, h in out] == hashes[1:3]  # the oldest beyond the limit, never a kept one
    assert all(name.startswith("support-") for name, _ in out)
    assert plans.prunable(revs, keep, history_limit=10) == []
