"""The fleet evaluator: one loop for the whole fleet, not a timer per agent.

Each interval: read the agents from the operator's in-memory index, send one batched PromQL
query per metric kind in use (plus two for fleet budgets and usage), hand the samples to the
pure rule engine, and act on its verdicts with bounded concurrency. Queries per cycle grow
with the number of rule kinds, not with the number of agents.

No single agent can make a cycle fail or stall: reading its spec, resolving its queries,
judging its rules and acting on it are each contained per agent (the error is counted, logged
and reported on that agent), tenants' custom queries run in their own Prometheus lane within a
time budget, and a query Prometheus rejects fails only the agents that use it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from agentfleet import policy
from agentfleet.api import names
from agentfleet.api.types import AgentPolicy, Metric
from agentfleet.evaluator import metrics
from agentfleet.evaluator.actions import Actor
from agentfleet.evaluator.anchors import HEADS_QUERY
from agentfleet.evaluator.prom import FLEET, TENANT, PromError, Prometheus
from agentfleet.evaluator.queries import (
    SOFT_LIMITS,
    TOKENS_LAST_HOUR,
    PlatformQuery,
    RuleQuery,
    exhausted_query,
    platform_queries,
    resolve,
    spend_today_query,
)
from agentfleet.evaluator.reading import Reading, read_spec
from agentfleet.evaluator.rules import AgentView, Memory, Samples, Verdict, evaluate
from agentfleet.kube.status import written

log = logging.getLogger("agentfleet.evaluator")

SPEND, TOKENS, EXHAUSTED, HEADS = "spendToday", "tokensLastHour", "budgetsExhausted", "auditHeads"
SOFT = "budgetsSoftLimit"
BUILTIN_NAMES = frozenset(str(m) for m in Metric if m != Metric.CUSTOM)


@dataclass(frozen=True)
class EvaluatorSettings:
    interval: float = 5.0
    rate_window: str = "1m"
    concurrency: int = 16
    usage_every: int = 6  # cycles between usage (spend, tokens) status refreshes
    tenant_budget: float | None = None
    """Seconds tenants' custom queries may take in one cycle (default: the interval); those not
    answered by then count as failed for their agents only, and the cycle goes on."""


class Evaluator:
    def __init__(
        self,
        prom: Prometheus,
        actor: Actor,
        agents: Callable[[], Iterable[dict[str, Any]]],
        settings: EvaluatorSettings = EvaluatorSettings(),
        policies: Callable[[], Iterable[AgentPolicy]] = list,
        namespace_labels: Callable[[str], Mapping[str, str]] = lambda namespace: {},
    ) -> None:
        self.prom = prom
        self.actor = actor
        self.agents = agents
        self.settings = settings
        self.policies = policies
        """The AgentPolicies the operator sees: their customQueries are what queryRef names."""
        self.namespace_labels = namespace_labels
        self.memory = Memory()
        self.last_cycle_at = time.monotonic()
        """When the last cycle ended (monotonic): the health check's sign that the loop is alive."""
        self._specs: dict[str, tuple[int, Reading]] = {}
        self._queries: dict[str, tuple[Any, dict[str, RuleQuery | str]]] = {}
        """Per uid: what its queries were resolved from (generation, revision, the platform's
        queries) and the result; resolved again only when one of those changed."""
        self._reported: dict[tuple[str, str], str] = {}  # last action error Event per agent
        self._cycles = 0

    async def run(self) -> None:
        """Evaluate forever; a failing cycle is logged and counted, never fatal."""
        metrics.INTERVAL.set(self.settings.interval)
        while True:
            started = time.monotonic()
            try:
                await self.cycle()
            except asyncio.CancelledError:
                raise
            except Exception:
                metrics.CYCLE_ERRORS.inc()
                log.exception("evaluation cycle failed")
            elapsed = time.monotonic() - started
            metrics.CYCLE_SECONDS.observe(elapsed)
            self.last_cycle_at = time.monotonic()
            await asyncio.sleep(max(self.settings.interval - elapsed, 0.05))

    def views(self) -> list[AgentView]:
        """Agents with parsed specs, parsing only what changed since the last cycle."""
        out: list[AgentView] = []
        seen: set[str] = set()
        kube = getattr(self.actor, "kube", None)
        memory = written(kube) if kube is not None else None
        platform: dict[str, dict[str, PlatformQuery | str]] = {}
        for body in self.agents():
            try:
                view = self._view(body, seen, memory, platform)
            except Exception:  # a body the index holds but nobody can read: skip it, never the cycle
                metrics.AGENT_ERRORS.labels("read").inc()
                log.exception("cannot read AgentDeployment %s", _name(body))
                continue
            if view is not None:
                out.append(view)
        for uid in set(self._specs) - seen:
            del self._specs[uid]
            self._queries.pop(uid, None)
        return out

    def _view(
        self,
        body: dict[str, Any],
        seen: set[str],
        memory: Any,
        platform: dict[str, dict[str, PlatformQuery | str]],
    ) -> AgentView | None:
        meta = body["metadata"]
        uid, generation = meta.get("uid", ""), int(meta.get("generation") or 0)
        seen.add(uid)
        cached = self._specs.get(uid)
        if cached is None or cached[0] != generation:
            cached = (generation, read_spec(body.get("spec")))
            self._specs[uid] = cached
        reading = cached[1]
        # The index lags this process's own status writes by a watch event: judge (and
        # write from) the newest status known, or the same agent is re-decided and re-written.
        fresh = memory.freshest(body) if memory is not None else body
        status = fresh.get("status") or {}
        namespace, name = meta["namespace"], meta["name"]
        if namespace not in platform:
            platform[namespace] = self._platform(namespace)
        revision = status.get("currentRevision") or ""
        basis = (generation, revision, platform[namespace])
        known = self._queries.get(uid)
        if known is not None and known[0] == basis:
            queries = known[1]
        else:
            queries = {}
            for rule in reading.spec.guardrails or []:
                try:
                    queries[rule.name] = resolve(
                        rule, namespace, name, revision, self.settings.rate_window, platform[namespace]
                    )
                except Exception as exc:  # the rule's own problem, reported on it
                    queries[rule.name] = f"its query could not be built: {type(exc).__name__}: {exc}"
            self._queries[uid] = (basis, queries)
        return AgentView(
            namespace,
            name,
            generation,
            reading.spec,
            status,
            fresh["metadata"].get("resourceVersion"),
            queries,
            reading.problems,
            reading.readable,
            reading.hold_stable,
            uid,
        )

    def _platform(self, namespace: str) -> dict[str, PlatformQuery | str]:
        """The customQueries of the policies covering ``namespace`` (what queryRef may name)."""
        labels = self.namespace_labels(namespace)
        covering = [p for p in self.policies() if policy.covers(p, namespace, labels)]
        return platform_queries((p.metadata.name or "", p.spec.custom_queries or []) for p in covering)

    async def cycle(self) -> None:
        agents = self.views()
        now = datetime.now(UTC)
        fleet: dict[str, str] = {}
        tenant: dict[str, tuple[str, str]] = {}  # key -> (PromQL, namespace), for a fair order
        unjudged = 0
        for agent in agents:
            unjudged += len(agent.problems)
            for q in agent.queries.values():
                if isinstance(q, str):
                    unjudged += 1
                elif q.tenant:
                    tenant[q.key] = (q.promql, agent.namespace)
                else:
                    fleet[q.key] = q.promql
        metrics.UNJUDGED_RULES.set(unjudged)
        usage_cycle = self._cycles % self.settings.usage_every == 0
        budgeted = any(a.spec.budgets.cost_per_day or a.spec.budgets.tokens_per_hour for a in agents)
        if agents and (budgeted or usage_cycle):
            fleet[SPEND] = spend_today_query(now)
            fleet[TOKENS] = TOKENS_LAST_HOUR
        if agents and usage_cycle:
            fleet[HEADS] = HEADS_QUERY
        if budgeted:
            fleet[EXHAUSTED] = exhausted_query(self.settings.rate_window)
        if any(a.spec.budgets.soft_limit_percent is not None for a in agents):
            fleet[SOFT] = SOFT_LIMITS
        metrics.CYCLE_QUERIES.set(len(fleet) + len(tenant))
        samples = await self.fetch(fleet, tenant)
        metrics.AGENTS.set(len(agents))
        phases = Counter(a.status.get("phase") or "Pending" for a in agents)
        for phase in {*metrics.PHASE_NAMES, *phases}:
            metrics.PHASES.labels(phase).set(phases.get(phase, 0))
        verdicts = evaluate(agents, samples, self.memory, now, self._judge_failed)
        by_key = {a.key: a for a in agents}
        sem = asyncio.Semaphore(self.settings.concurrency)

        async def act(verdict: Verdict) -> None:
            async with sem:
                agent = by_key[verdict.key]
                try:
                    await self.actor.apply(agent, verdict)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # this agent's write or action failed; the others go on
                    await self._act_failed(agent, exc, verdict)

        # Actions first: a suspension must not queue behind a fleet's worth of status-only writes.
        verdicts.sort(key=lambda v: v.act is None and not v.resume_budget)
        await asyncio.gather(*(act(v) for v in verdicts))
        await self.actor.announce_pending(agents)  # what a crash interrupted between record and Event
        if usage_cycle and not {SPEND, HEADS} <= samples.failed:
            await self.actor.refresh_usage(agents, samples, sem)
        self._cycles += 1

    def _judge_failed(self, agent: AgentView, exc: Exception) -> None:
        metrics.AGENT_ERRORS.labels("judge").inc()
        log.error("judging %s/%s failed: %s: %s", agent.namespace, agent.name, type(exc).__name__, exc, exc_info=exc)

    async def _act_failed(self, agent: AgentView, exc: Exception, verdict: Verdict) -> None:
        """Count and log it; tell the agent once per distinct error (it is retried next cycle).

        The Event is a separate object, so it reaches the agent's owner even when the agent
        itself cannot be written (an object stored before a schema bound fails every write); it
        carries what the status would have said."""
        metrics.AGENT_ERRORS.labels("act").inc()
        message = f"the evaluator could not act on this agent: {type(exc).__name__}: {exc}"
        if verdict.metrics_available is not None and not verdict.metrics_available[0]:
            message += f"; {verdict.metrics_reason}: {verdict.metrics_available[1]}"
        message = message[:1024]
        log.warning("%s/%s: %s", agent.namespace, agent.name, message)
        if self._reported.get(agent.key) == message:
            return
        self._reported[agent.key] = message
        if len(self._reported) > 10_000:  # bounded: forget the oldest
            self._reported.pop(next(iter(self._reported)))
        body = {
            "apiVersion": names.API_VERSION,
            "kind": names.AGENT_KIND,
            "metadata": {"namespace": agent.namespace, "name": agent.name, "uid": agent.uid or None},
        }
        try:
            await self.actor.event(body, "Warning", "EvaluationFailed", message)
        except Exception as again:  # the API server is the problem: the log has it
            log.warning("%s/%s: cannot post the EvaluationFailed Event: %s", agent.namespace, agent.name, again)

    async def fetch(self, fleet: dict[str, str], tenant: dict[str, tuple[str, str]] | None = None) -> Samples:
        """Run the fleet's queries and the tenants' (in their own lane, namespaces taking turns,
        within the tenant budget) concurrently; every failure is filed under its query only."""
        samples = Samples()
        tenant = tenant or {}

        async def one(name: str, promql: str, lane: str) -> None:
            metrics.QUERIES.inc()
            try:
                result = await self.prom.query(promql, lane) if lane != FLEET else await self.prom.query(promql)
                file(samples, name, result)
            except PromError as exc:
                metrics.QUERY_ERRORS.inc()
                samples.failed.add(name)
                if exc.rejected:
                    samples.rejected[name] = str(exc)
                log.warning("query %s failed: %s", name, exc)
            except Exception as exc:  # an answer we cannot file: only this query's agents notice
                metrics.QUERY_ERRORS.inc()
                samples.failed.add(name)
                log.warning("query %s: cannot read the answer: %s: %s", name, type(exc).__name__, exc)

        async def tenants() -> None:
            if not tenant:
                return
            budget = self.settings.tenant_budget or self.settings.interval
            tasks = {name: asyncio.ensure_future(one(name, q, TENANT)) for name, q in fair(tenant)}
            _, late = await asyncio.wait(tasks.values(), timeout=budget)
            for task in late:
                task.cancel()
            for name, task in tasks.items():
                if task in late:
                    metrics.TENANT_QUERIES_LATE.inc()
                    samples.failed.add(name)
            if late:
                await asyncio.gather(*late, return_exceptions=True)

        await asyncio.gather(*(one(n, q, FLEET) for n, q in fleet.items()), tenants())
        return samples


def fair(tenant: dict[str, tuple[str, str]]) -> list[tuple[str, str]]:
    """Tenant queries in round-robin order by namespace: one namespace's hundred queries do not
    delay another namespace's first (the lane's semaphore serves waiters in order)."""
    by_namespace: dict[str, list[tuple[str, str]]] = {}
    for name, (promql, namespace) in tenant.items():
        by_namespace.setdefault(namespace, []).append((name, promql))
    queues = [by_namespace[ns] for ns in sorted(by_namespace)]
    out: list[tuple[str, str]] = []
    for turn in range(max((len(q) for q in queues), default=0)):
        out.extend(q[turn] for q in queues if turn < len(q))
    return out


def file(samples: Samples, name: str, result: list[tuple[dict[str, str], float]]) -> None:
    """File one query's answer where the rule engine looks for it."""
    if name == HEADS:
        samples.audit_heads = result
    elif name == EXHAUSTED:
        for labels, value in result:
            if value > 0:
                key = (labels.get("namespace", ""), labels.get("agent", ""))
                samples.exhausted.setdefault(key, {})[labels.get("budget", "")] = value
    elif name == SOFT:
        for labels, value in result:
            if value > 0:
                key = (labels.get("namespace", ""), labels.get("agent", ""))
                samples.soft_limits.setdefault(key, set()).add(labels.get("budget", ""))
    elif name in (SPEND, TOKENS):
        table = samples.spend_today if name == SPEND else samples.tokens_last_hour
        for labels, value in result:
            table[(labels.get("namespace", ""), labels.get("agent", ""))] = value
    elif name in BUILTIN_NAMES:
        samples.builtin[name] = {
            (lb.get("namespace", ""), lb.get("agent", ""), lb.get("revision", "")): v for lb, v in result
        }
    else:
        samples.custom[name] = {(lb.get("namespace"), lb.get("agent"), lb.get("revision")): v for lb, v in result}


def _name(body: Any) -> str:
    meta = body.get("metadata") if isinstance(body, dict) else None
    return f"{meta.get('namespace')}/{meta.get('name')}" if isinstance(meta, dict) else "?"
