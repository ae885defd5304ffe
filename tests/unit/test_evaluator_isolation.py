"""One agent never stops the fleet's evaluation: the loop with a fake Prometheus and a recording
actor, agent by agent and query by query (the status writes themselves are test_outcome's)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web

from agentfleet.api.types import Action, AgentPolicy, AgentPolicySpec, CustomQuery
from agentfleet.evaluator import metrics
from agentfleet.evaluator.loop import Evaluator, EvaluatorSettings
from agentfleet.evaluator.outcome import outcome
from agentfleet.evaluator.prom import TENANT, PromError, Prometheus
from agentfleet.evaluator.rules import AgentView, Verdict

pytestmark = pytest.mark.unit

REV = "abc123def0"
LOOP = {"name": "loops", "metric": "loopDetections", "threshold": "0", "action": "Suspend"}
OWN_QUERY = (
    'sum by (namespace, agent, revision) (increase(my_errors_total{namespace="{{namespace}}", agent="{{agent}}"}[1m]))'
)


Result = list[tuple[dict[str, str], float]]


class FakeProm:
    """Answers by the first matching substring: a result, a PromError to raise, or a delay first."""

    def __init__(self, answers: dict[str, Result | PromError], slow: dict[str, float] | None = None) -> None:
        self.answers = answers
        self.slow = slow or {}
        self.sent: list[tuple[str, str]] = []

    async def query(self, promql: str, lane: str = "fleet") -> Result:
        self.sent.append((promql, lane))
        for needle, delay in self.slow.items():
            if needle in promql:
                await asyncio.sleep(delay)
        for needle, answer in self.answers.items():
            if needle in promql:
                if isinstance(answer, PromError):
                    raise answer
                return answer
        return []


class RecordingActor:
    """Records verdicts; ``fail`` names agents whose apply raises."""

    async def announce_pending(self, agents: Any) -> None:
        return None

    def __init__(self, fail: set[str] | None = None) -> None:
        self.applied: dict[str, Verdict] = {}
        self.fail = fail or set()
        self.events: list[tuple[str, str, str]] = []

    async def apply(self, agent: AgentView, verdict: Verdict) -> None:
        if agent.name in self.fail:
            raise RuntimeError(f"the API server refused {agent.name}")
        self.applied[agent.name] = verdict

    async def refresh_usage(self, *args: Any) -> None:
        return None

    async def event(self, body: dict[str, Any], type_: str, reason: str, message: str) -> None:
        self.events.append((body["metadata"]["name"], reason, message))


def body(name: str, rules: list[dict[str, Any]], namespace: str = "ns", **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"namespace": namespace, "name": name, "uid": f"uid-{namespace}-{name}", "generation": 1},
        "spec": {
            "agent": {"image": "x", "model": {"name": "m", "endpoint": "http://127.0.0.1:1/v1"}},
            "guardrails": rules,
            **spec,
        },
        "status": {"currentRevision": REV, "revisionStartedAt": "2026-01-01T00:00:00Z"},
    }


def loops_for(*agents: tuple[str, str]) -> Result:
    return [({"namespace": ns, "agent": a, "revision": REV}, 3.0) for ns, a in agents]


def evaluator(
    prom: FakeProm,
    actor: RecordingActor,
    agents: list[dict[str, Any]],
    policies: list[AgentPolicy] | None = None,
    **settings: Any,
) -> Evaluator:
    return Evaluator(
        prom,  # type: ignore[arg-type]
        actor,  # type: ignore[arg-type]
        lambda: agents,
        EvaluatorSettings(**settings),
        policies=lambda: policies or [],
    )


def counter(stage: str) -> float:
    return metrics.AGENT_ERRORS.labels(stage)._value.get()


def unavailable(v: Verdict) -> tuple[bool, str, str]:
    assert v.metrics_available is not None
    return v.metrics_available[0], v.metrics_reason, v.metrics_available[1]


# ---------------------------------------------------------------------- a poisoned spec


def poisoned() -> dict[str, Any]:
    """Stored before the bounds: a rule's ``for`` and the stabilization window overflow any timer."""
    rules = [{**LOOP, "name": "forever", "for": "99999999999h"}, LOOP]
    return body("poisoned", rules, analysis={"stabilizationWindow": "99999999999h"})


async def test_a_poisoned_agent_is_told_and_its_neighbour_is_still_suspended() -> None:
    prom = FakeProm({"loop_detections": loops_for(("ns", "looper"), ("ns", "poisoned"))})
    actor = RecordingActor()
    await evaluator(prom, actor, [poisoned(), body("looper", [LOOP]), body("quiet", [LOOP])]).cycle()

    looper = actor.applied["looper"].act
    assert looper is not None and looper.action == Action.SUSPEND and looper.reason == "loop_detected"
    assert "quiet" not in actor.applied or actor.applied["quiet"].act is None
    # The poisoned agent: told exactly what was dropped; its valid rule is still judged and fires.
    v = actor.applied["poisoned"]
    ok, reason, message = unavailable(v)
    assert (ok, reason) == (False, "InvalidGuardrail")
    assert "guardrail 'forever' is not judged: for:" in message
    assert "analysis.stabilizationWindow is ignored" in message
    assert v.act is not None and v.act.rule == "loops"
    assert v.promote_stable is None


async def test_an_unreadable_spec_is_reported_and_judges_nothing() -> None:
    broken = body("broken", [LOOP])
    del broken["spec"]["agent"]  # not the evaluator's field, but the spec cannot be read without it
    prom = FakeProm({"loop_detections": loops_for(("ns", "broken"), ("ns", "looper"))})
    actor = RecordingActor()
    await evaluator(prom, actor, [broken, body("looper", [LOOP])]).cycle()
    ok, reason, message = unavailable(actor.applied["broken"])
    assert (ok, reason) == (False, "InvalidSpec") and "no guardrail is judged" in message and "agent" in message
    assert actor.applied["broken"].act is None
    assert actor.applied["looper"].act is not None


async def test_a_body_nobody_can_read_is_skipped_and_counted() -> None:
    before = counter("read")
    prom = FakeProm({"loop_detections": loops_for(("ns", "looper"))})
    actor = RecordingActor()
    await evaluator(prom, actor, [{"metadata": {}}, body("looper", [LOOP])]).cycle()
    assert counter("read") == before + 1
    assert actor.applied["looper"].act is not None


async def test_judging_that_raises_is_that_agents_evaluation_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    from agentfleet.evaluator import rules

    real = rules.judge_budgets

    def exploding(agent: AgentView, *args: Any) -> Any:
        if agent.name == "victim":
            raise OverflowError("date value out of range")
        return real(agent, *args)

    monkeypatch.setattr(rules, "judge_budgets", exploding)
    before = counter("judge")
    fail_closed = body("victim", [LOOP], analysis={"onMetricsUnavailable": "Suspend"})
    prom = FakeProm({"loop_detections": loops_for(("ns", "looper"))})
    actor = RecordingActor()
    await evaluator(prom, actor, [fail_closed, body("looper", [LOOP])]).cycle()
    assert counter("judge") == before + 1
    ok, reason, message = unavailable(actor.applied["victim"])
    assert (ok, reason) == (False, "EvaluationFailed") and "OverflowError" in message
    victim = actor.applied["victim"].act
    assert victim is not None and victim.reason == "invalid_guardrail"  # it asked to fail closed
    assert actor.applied["looper"].act is not None


async def test_acting_that_raises_is_contained_and_reported_once() -> None:
    agents = [body("stuck", [LOOP]), body("looper", [LOOP])]
    prom = FakeProm({"loop_detections": loops_for(("ns", "stuck"), ("ns", "looper"))})
    actor = RecordingActor(fail={"stuck"})
    ev = evaluator(prom, actor, agents)
    before = counter("act")
    await ev.cycle()
    await ev.cycle()
    assert counter("act") == before + 2
    assert actor.applied["looper"].act is not None
    assert [(n, r) for n, r, _ in actor.events] == [("stuck", "EvaluationFailed")]  # once, not every cycle
    assert "refused stuck" in actor.events[0][2]


# ---------------------------------------------------------------------- custom queries


async def test_a_query_prometheus_rejects_fails_only_the_agents_using_it() -> None:
    bad = {"name": "mine", "metric": "custom", "query": OWN_QUERY, "threshold": "1", "action": "Suspend"}
    agents = [
        body("hold", [bad, LOOP]),
        body("closed", [bad], analysis={"onMetricsUnavailable": "Suspend"}),
        body("looper", [LOOP]),
        body("quiet", [LOOP]),
    ]
    prom = FakeProm(
        {
            "my_errors_total": PromError("bad_data: 1:2: parse error: unexpected", rejected=True),
            "loop_detections": loops_for(("ns", "looper"), ("ns", "hold")),
        }
    )
    actor = RecordingActor()
    await evaluator(prom, actor, agents).cycle()
    ok, reason, message = unavailable(actor.applied["hold"])
    assert (ok, reason) == (False, "InvalidGuardrail") and "Prometheus rejected its query" in message
    hold = actor.applied["hold"].act
    assert hold is not None and hold.rule == "loops"  # its other rule still fires
    closed = actor.applied["closed"].act
    assert closed is not None and closed.reason == "invalid_guardrail"
    assert actor.applied["looper"].act is not None and actor.applied["looper"].metrics_available == (
        True,
        "Prometheus answered every query",
    )
    assert "quiet" not in actor.applied or actor.applied["quiet"].metrics_available in (
        None,
        (True, "Prometheus answered every query"),
    )
    assert all(lane == TENANT for q, lane in prom.sent if "my_errors_total" in q)


async def test_an_unscoped_query_is_never_sent() -> None:
    sneaky = {
        "name": "peek",
        "metric": "custom",
        "query": 'sum(agentfleet_cost_dollars_total{namespace="other-team"})',
        "threshold": "1",
        "action": "Alert",
    }
    prom = FakeProm({"loop_detections": loops_for(("ns", "looper"))})
    actor = RecordingActor()
    await evaluator(prom, actor, [body("peeker", [sneaky]), body("looper", [LOOP])]).cycle()
    assert not any("other-team" in q for q, _ in prom.sent)
    ok, reason, message = unavailable(actor.applied["peeker"])
    assert (ok, reason) == (False, "InvalidGuardrail")
    assert 'must match namespace only with namespace="ns"' in message and 'no agent="peeker" matcher' in message
    assert "queryRef" in message  # and how to do it properly


async def test_slow_tenant_queries_do_not_hold_up_the_fleet() -> None:
    slowpoke = {"name": "slow", "metric": "custom", "query": OWN_QUERY, "threshold": "1", "action": "Alert"}
    prom = FakeProm({"loop_detections": loops_for(("ns", "looper"))}, slow={"my_errors_total": 30.0})
    actor = RecordingActor()
    ev = evaluator(prom, actor, [body("slow", [slowpoke]), body("looper", [LOOP])], interval=0.3)
    started = time.monotonic()
    await ev.cycle()
    assert time.monotonic() - started < 2.0
    assert actor.applied["looper"].act is not None
    ok, reason, message = unavailable(actor.applied["slow"])
    assert (ok, reason) == (False, "PrometheusUnavailable") and "custom query of rule 'slow'" in message


def test_tenant_queries_take_turns_by_namespace() -> None:
    from agentfleet.evaluator.loop import fair

    queries = {f"a{i}": (f"qa{i}", "a") for i in range(3)} | {"b0": ("qb0", "b")}
    assert [name for name, _ in fair(queries)][:2] == ["a0", "b0"]


# ---------------------------------------------------------------------- queryRef


def platform(name: str, *queries: tuple[str, str], namespaces: list[str] | None = None) -> AgentPolicy:
    return AgentPolicy(
        metadata={"name": name},  # type: ignore[arg-type]
        spec=AgentPolicySpec(namespaces=namespaces, custom_queries=[CustomQuery(name=n, query=q) for n, q in queries]),
    )


REF = {"name": "ref", "metric": "custom", "queryRef": "fleet-errors", "threshold": "0.5", "action": "Alert"}


async def test_query_ref_resolves_from_covering_policies_and_never_echoes_fleet_values() -> None:
    fleet_wide = platform("platform", ("fleet-errors", "sum(rate(agentfleet_requests_total[1m]))"))
    prom = FakeProm({"sum(rate(agentfleet_requests_total[1m]))": [({}, 0.9)]})
    actor = RecordingActor()
    await evaluator(prom, actor, [body("a", [REF])], [fleet_wide]).cycle()
    alert = actor.applied["a"].alerts[0]
    assert alert.withheld and "0.9" not in alert.message and "not shown" in alert.message
    out = outcome(actor.applied["a"], {}, 1, "2026-01-01T00:00:00Z")
    assert all("0.9" not in m for _, _, m in out.events)
    assert ("sum(rate(agentfleet_requests_total[1m]))", "fleet") in prom.sent  # trusted: the fleet's lane


async def test_a_grouped_platform_query_counts_only_the_agents_own_series() -> None:
    grouped = platform("platform", ("fleet-errors", "sum by (namespace, agent) (rate(errs[1m]))"))
    # Another agent's breaching series comes last: it must never be taken for this one's.
    answer = [({"namespace": "ns", "agent": "a"}, 0.1), ({"namespace": "ns", "agent": "b"}, 0.9)]
    prom = FakeProm({"errs": answer})
    actor = RecordingActor()
    await evaluator(prom, actor, [body("a", [REF]), body("b", [REF]), body("c", [REF])], [grouped]).cycle()
    assert "a" not in actor.applied or not actor.applied["a"].alerts
    assert "c" not in actor.applied or not actor.applied["c"].alerts  # no series of its own: no data
    alert = actor.applied["b"].alerts[0]
    assert not alert.withheld and "= 0.9" in alert.message


async def test_query_ref_that_is_missing_or_ambiguous_is_an_invalid_guardrail() -> None:
    elsewhere = platform("elsewhere", ("fleet-errors", "up"), namespaces=["other"])
    prom = FakeProm({})
    actor = RecordingActor()
    await evaluator(prom, actor, [body("a", [REF])], [elsewhere]).cycle()
    ok, reason, message = unavailable(actor.applied["a"])
    assert (ok, reason) == (False, "InvalidGuardrail") and "names no customQueries entry" in message
    one, two = platform("one", ("fleet-errors", "up")), platform("two", ("fleet-errors", "up == 0"))
    actor = RecordingActor()
    await evaluator(prom, actor, [body("a", [REF])], [two, one]).cycle()
    assert (
        "AgentPolicies one and two define customQueries 'fleet-errors' differently"
        in unavailable(actor.applied["a"])[2]
    )


# ---------------------------------------------------------------------- the Prometheus client


async def serve(handler: Callable[[web.Request], Any]) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_post("/api/v1/query", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


@pytest.mark.parametrize(
    ("answer", "status", "rejected"),
    [
        ({"status": "error", "errorType": "bad_data", "error": "parse error"}, 400, True),
        ({"status": "error", "errorType": "execution", "error": "many-to-many matching"}, 422, True),
        ({"status": "error", "errorType": "timeout", "error": "query timed out"}, 503, False),
        ({"status": "success", "data": {"resultType": "matrix", "result": []}}, 200, True),
        ({"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}}]}}, 200, False),
    ],
)
async def test_prometheus_answers_become_prom_errors(answer: dict[str, Any], status: int, rejected: bool) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response(answer, status=status)

    runner, url = await serve(handler)
    prom = Prometheus(url, query_timeout=2)
    try:
        with pytest.raises(PromError) as caught:
            await prom.query("up", TENANT)
        assert caught.value.rejected is rejected
    finally:
        await prom.close()
        await runner.cleanup()
