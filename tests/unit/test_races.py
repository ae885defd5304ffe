"""Deterministic reproductions of the races that let a decision be undone, each forced with a
fake API (``tests/support/fake_api.py``) at the exact interleaving that used to lose:

1. a reconcile holding an older copy of the agent while the evaluator rolls it back;
2. a slow readiness write for an older observation conflicting with a newer one;
3. a crash between recording a revision and writing status (revision numbers), and between a
   revision's children and its snapshot (no revision ever runs without one).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from agentfleet.api import conditions as cond
from agentfleet.api.types import AgentDeployment, AgentPolicySpec
from agentfleet.controller.handlers import mirror_readiness
from agentfleet.controller.reconcile import Context, reconcile
from agentfleet.policy.platform import Platform
from agentfleet.render import RenderSettings, render, render_controller_revision
from tests.support.fake_api import FakeKube

pytestmark = pytest.mark.unit

NS, NAME = "team-a", "support"
OPEN = Platform(default_policy=AgentPolicySpec(allowed_secrets=["*"]))


def agent_body(prompt: str, generation: int = 2) -> dict[str, Any]:
    return {
        "apiVersion": "agentfleet.dev/v1alpha1",
        "kind": "AgentDeployment",
        "metadata": {"name": NAME, "namespace": NS, "uid": "agent-uid", "generation": generation},
        "spec": {
            "replicas": 2,
            "agent": {
                "image": "registry.invalid/agent:1",
                "model": {"name": "m", "endpoint": "https://api.openai.com/v1"},
                "systemPrompt": {"inline": prompt},
            },
        },
        "status": {},
    }


def revision(kube: FakeKube, prompt: str, number: int) -> tuple[str, dict[str, Any]]:
    agent = AgentDeployment.model_validate(agent_body(prompt))
    rendered = render(agent, RenderSettings())
    kube.put(render_controller_revision(agent, rendered, number))
    return rendered.revision, rendered.pod_template


def ctx(kube: FakeKube) -> Context:
    return Context(kube=kube, settings=RenderSettings(), policies=[], namespace_labels={}, platform=OPEN)  # type: ignore[arg-type]


def made(type_: str, status: bool, reason: str, generation: int = 2) -> dict[str, Any]:
    return cond.set_condition([], type_, status, reason, "set by the test", generation, "2026-12-04T00:00:00Z")[0]


async def test_a_reconcile_holding_an_older_copy_never_undoes_a_rollback() -> None:
    kube = FakeKube()
    good, good_template = revision(kube, "v1", 1)
    bad, _ = revision(kube, "v2", 2)
    stored = agent_body("v2")
    stored["status"] = {"currentRevision": bad, "stableRevision": good}
    stale = kube.put(stored)  # the copy the handler holds when it starts

    def evaluator_rolls_back(kind: str, ns: str, name: str) -> None:
        # The evaluator's decision lands between the handler's reads and its status write.
        kube.write_status(
            NS, NAME, {"currentRevision": good, "conditions": [made(cond.ROLLED_BACK, True, "GuardrailBreach")]}
        )

    kube.before("status", evaluator_rolls_back)
    await reconcile(ctx(kube), stale)

    status = kube.obj("AgentDeployment", NS, NAME)["status"]
    assert status["currentRevision"] == good, "the stale reconcile replayed its own revision"
    rolled = cond.get(status["conditions"], cond.ROLLED_BACK)
    assert rolled is not None and (rolled["status"], rolled["reason"]) == ("True", "GuardrailBreach")
    deployment = kube.obj("Deployment", NS, NAME)
    assert deployment["spec"]["template"] == good_template, "the bad revision's template is running"


async def test_a_slow_readiness_write_never_puts_an_older_observation_over_a_newer_one() -> None:
    kube = FakeKube()
    agent = kube.put({**agent_body("v1"), "status": {"conditions": []}})
    index = {(NS, NAME): [agent]}
    newest: dict[str, Any] = {"seen": (1, {"replicas": 1, "readyReplicas": 0, "updatedReplicas": 1})}

    def newer_observation_written_first(kind: str, ns: str, name: str) -> None:
        # While the older write is in flight, the pod becomes ready and that is written first.
        newest["seen"] = (1, {"replicas": 1, "readyReplicas": 1, "updatedReplicas": 1})
        kube.write_status(NS, NAME, {"readyReplicas": 1, "ready": "1/1"})

    kube.before("status", newer_observation_written_first)
    await mirror_readiness(kube, index, (NS, NAME), lambda: newest["seen"])  # type: ignore[arg-type]

    status = kube.obj("AgentDeployment", NS, NAME)["status"]
    assert (status["readyReplicas"], status["ready"]) == (1, "1/1")
    ready = cond.get(status["conditions"], cond.READY)
    assert ready is not None and ready["status"] == "True"


class Killed(Exception):
    """The operator process dies here."""


def die(kind: str, ns: str, name: str) -> None:
    raise Killed()


async def test_revision_numbers_survive_a_crash_before_status() -> None:
    kube = FakeKube()
    first = kube.put(agent_body("v1", generation=1))
    kube.before("status", die)  # killed after recording revision 1, before writing status
    with pytest.raises(Killed):
        await reconcile(ctx(kube), copy.deepcopy(first))
    assert kube.obj("AgentDeployment", NS, NAME).get("status") == {}
    second = agent_body("v2", generation=2)
    second["metadata"]["resourceVersion"] = kube.obj("AgentDeployment", NS, NAME)["metadata"]["resourceVersion"]
    kube.objects[("AgentDeployment", NS, NAME)]["spec"] = second["spec"]
    await reconcile(ctx(kube), copy.deepcopy(kube.obj("AgentDeployment", NS, NAME)))
    numbers = sorted(o["revision"] for (k, _, _), o in kube.objects.items() if k == "ControllerRevision")
    assert numbers == [1, 2], "two revisions numbered alike"


async def test_no_revision_runs_without_its_snapshot() -> None:
    kube = FakeKube()
    body = kube.put(agent_body("v1", generation=1))
    kube.before("apply", lambda kind, ns, name: None)  # the snapshot's own apply
    kube.before("apply", die)  # killed at the next apply, the first child's
    with pytest.raises(Killed):
        await reconcile(ctx(kube), copy.deepcopy(body))
    kinds = [k for (k, _, _) in kube.objects]
    assert "ControllerRevision" in kinds and "Deployment" not in kinds and "ConfigMap" not in kinds


async def test_one_writer_at_a_time_per_agent() -> None:
    """Two reconciles of the same agent never interleave: the second starts after the first
    wrote status, and decides on what the first wrote."""
    import asyncio

    kube = FakeKube()
    body = kube.put(agent_body("v1", generation=1))
    order: list[str] = []
    original = kube.apply

    async def traced(obj: dict[str, Any], subresource: str | None = None, field_manager: str = "") -> dict[str, Any]:
        order.append(f"{id(asyncio.current_task())}:{obj['kind']}")
        await asyncio.sleep(0)  # yield, so an unserialised second reconcile would interleave here
        return await original(obj, subresource, field_manager)

    kube.apply = traced  # type: ignore[method-assign]
    await asyncio.gather(reconcile(ctx(kube), copy.deepcopy(body)), reconcile(ctx(kube), copy.deepcopy(body)))
    tasks = [entry.split(":")[0] for entry in order]
    first = tasks[0]
    switch = tasks.index(next(t for t in tasks if t != first))
    assert all(t == first for t in tasks[:switch]) and all(t != first for t in tasks[switch:]), order


async def test_a_suspension_holds_even_when_the_spec_cannot_be_rendered() -> None:
    """The evaluator suspends an agent whose stored spec no longer parses: the reconcile reports
    the spec as invalid and still scales the agent's own Deployment to zero."""
    kube = FakeKube()
    body = agent_body("v1", generation=1)
    body["spec"]["analysis"] = {"stabilizationWindow": "99999999999h"}  # stored before the bound existed
    body["status"] = {"conditions": [made(cond.SUSPENDED, True, "LoopDetections", generation=1)]}
    stored = kube.put(body)
    kube.put(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {
                "name": NAME,
                "namespace": NS,
                "ownerReferences": [{"kind": "AgentDeployment", "name": NAME, "uid": "agent-uid", "controller": True}],
            },
            "spec": {"replicas": 2},
        }
    )
    outcome = await reconcile(ctx(kube), stored)
    assert [e[1] for e in outcome.events] == ["InvalidSpec"]
    assert kube.obj("Deployment", NS, NAME)["spec"]["replicas"] == 0


async def test_an_action_interrupted_before_its_event_is_announced_after_a_restart(tmp_path: Any) -> None:
    """Durable intent first: the audit record is on disk before the status says suspended, the
    status says so (``breachAnnounced: false``) before the Event; an operator killed right after the
    status write finishes the announcement after its restart, exactly once."""
    from agentfleet.api.guardconfig import AuditSink
    from agentfleet.api.types import Action, AgentDeploymentSpec
    from agentfleet.audit import AuditLog
    from agentfleet.evaluator.actions import Actor
    from agentfleet.evaluator.rules import Act, AgentView, Memory, Verdict

    kube = FakeKube()
    stored = kube.put(agent_body("v1", generation=1))
    spec = AgentDeploymentSpec.model_validate(stored["spec"])
    view = AgentView(NS, NAME, 1, spec, {}, stored["metadata"]["resourceVersion"])
    act = Act(Action.SUSPEND, "loops", "loopDetections", 3.0, "> 0", "r1", "LoopDetections", "loops: 3 > 0")
    trail = tmp_path / "audit.jsonl"
    audit = AuditLog(AuditSink(stdout=False, file=str(trail)), {"component": "test"})
    audit.start()

    async def carry_out(body: dict[str, Any]) -> list[tuple[str, str, str]]:
        return []

    def killed_at_the_event(obj: dict[str, Any]) -> None:
        raise Killed()

    kube.create = killed_at_the_event  # type: ignore[assignment,method-assign]
    with pytest.raises(Killed):
        await Actor(kube, carry_out, Memory, audit).apply(view, Verdict((NS, NAME), act=act))
    status = kube.obj("AgentDeployment", NS, NAME)["status"]
    assert cond.is_true(status["conditions"], cond.SUSPENDED)
    assert status["breachAnnounced"] is False
    assert '"kind":"operator_action"' in trail.read_text(), "the intent was not on disk before the status"

    del kube.create  # the restarted operator can post Events again
    restarted = Actor(kube, carry_out, Memory, audit)
    pending = AgentView(NS, NAME, 1, spec, status, None)
    await restarted.announce_pending([pending])
    await restarted.announce_pending([pending])  # idempotent: the first one marked it announced
    assert kube.obj("AgentDeployment", NS, NAME)["status"]["breachAnnounced"] is True
    assert [e["reason"] for e in kube.events] == ["GuardrailAction"]
    assert "announced after an operator restart" in kube.events[0]["message"]
    audit.close()
