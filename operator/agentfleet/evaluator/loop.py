"""The fleet evaluator: one loop for the whole fleet, not a timer per agent.

Each interval: read the agents from the operator's in-memory index, send one batched PromQL
query per metric kind in use (plus two for fleet budgets and usage), hand the samples to the
pure rule engine, and act on its verdicts with bounded concurrency. Queries per cycle grow
with the number of rule kinds, not with the number of agents.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from agentfleet.api.types import AgentDeploymentSpec, Metric
from agentfleet.evaluator import metrics
from agentfleet.evaluator.actions import Actor
from agentfleet.evaluator.prom import PromError, Prometheus
from agentfleet.evaluator.queries import TOKENS_LAST_HOUR, builtin_query, exhausted_query, spend_today_query
from agentfleet.evaluator.rules import AgentView, Memory, Samples, evaluate, query_name
from agentfleet.kube.status import written

log = logging.getLogger("agentfleet.evaluator")

SPEND, TOKENS, EXHAUSTED = "spendToday", "tokensLastHour", "budgetsExhausted"


@dataclass(frozen=True)
class EvaluatorSettings:
    interval: float = 5.0
    rate_window: str = "1m"
    concurrency: int = 16
    usage_every: int = 6  # cycles between usage (spend, tokens) status refreshes


class Evaluator:
    def __init__(
        self,
        prom: Prometheus,
        actor: Actor,
        agents: Callable[[], Iterable[dict[str, Any]]],
        settings: EvaluatorSettings = EvaluatorSettings(),
    ) -> None:
        self.prom = prom
        self.actor = actor
        self.agents = agents
        self.settings = settings
        self.memory = Memory()
        self._specs: dict[str, tuple[int, AgentDeploymentSpec | None]] = {}
        self._cycles = 0

    async def run(self) -> None:
        """Evaluate forever; a failing cycle is logged and counted, never fatal."""
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
            await asyncio.sleep(max(self.settings.interval - elapsed, 0.05))

    def views(self) -> list[AgentView]:
        """Agents with parsed specs, parsing only what changed since the last cycle."""
        out, seen = [], set()
        kube = getattr(self.actor, "kube", None)
        memory = written(kube) if kube is not None else None
        for body in self.agents():
            meta = body["metadata"]
            uid, generation = meta.get("uid", ""), int(meta.get("generation") or 0)
            seen.add(uid)
            cached = self._specs.get(uid)
            if cached is None or cached[0] != generation:
                try:
                    cached = (generation, AgentDeploymentSpec.model_validate(body["spec"]))
                except ValidationError:
                    cached = (generation, None)  # the reconciler reports it; nothing to judge
                self._specs[uid] = cached
            if cached[1] is not None:
                # The index lags this process's own status writes by a watch event: judge (and
                # write from) the newest status known, or the same agent is re-decided and re-written.
                fresh = memory.freshest(body) if memory is not None else body
                out.append(
                    AgentView(
                        meta["namespace"],
                        meta["name"],
                        generation,
                        cached[1],
                        fresh.get("status") or {},
                        fresh["metadata"].get("resourceVersion"),
                    )
                )
        for uid in set(self._specs) - seen:
            del self._specs[uid]
        return out

    async def cycle(self) -> None:
        agents = self.views()
        now = datetime.now(UTC)
        queries: dict[str, str] = {}
        for agent in agents:
            for rule in agent.spec.guardrails or []:
                name = query_name(rule, agent)
                queries[name] = (
                    builtin_query(rule.metric, self.settings.rate_window) if rule.metric != Metric.CUSTOM else name
                )
        usage_cycle = self._cycles % self.settings.usage_every == 0
        budgeted = any(a.spec.budgets.cost_per_day or a.spec.budgets.tokens_per_hour for a in agents)
        if agents and (budgeted or usage_cycle):
            queries[SPEND] = spend_today_query(now)
            queries[TOKENS] = TOKENS_LAST_HOUR
        if budgeted:
            queries[EXHAUSTED] = exhausted_query(self.settings.rate_window)
        metrics.CYCLE_QUERIES.set(len(queries))
        samples = await self.fetch(queries)
        metrics.AGENTS.set(len(agents))
        phases = Counter(a.status.get("phase") or "Pending" for a in agents)
        for phase in {*metrics.PHASE_NAMES, *phases}:
            metrics.PHASES.labels(phase).set(phases.get(phase, 0))
        verdicts = evaluate(agents, samples, self.memory, now)
        by_key = {a.key: a for a in agents}
        sem = asyncio.Semaphore(self.settings.concurrency)

        async def act(verdict: Any) -> None:
            async with sem:
                await self.actor.apply(by_key[verdict.key], verdict)

        # Actions first: a suspension must not queue behind a fleet's worth of status-only writes.
        verdicts.sort(key=lambda v: v.act is None and not v.resume_budget)
        await asyncio.gather(*(act(v) for v in verdicts))
        if usage_cycle and SPEND not in samples.failed:
            await self.actor.refresh_usage(agents, samples, sem)
        self._cycles += 1

    async def fetch(self, queries: dict[str, str]) -> Samples:
        samples = Samples()

        async def one(name: str, promql: str) -> None:
            metrics.QUERIES.inc()
            try:
                result = await self.prom.query(promql)
            except PromError as exc:
                metrics.QUERY_ERRORS.inc()
                samples.failed.add(name)
                log.warning("query %s failed: %s", name, exc)
                return
            if name == EXHAUSTED:
                for labels, value in result:
                    if value > 0:
                        key = (labels.get("namespace", ""), labels.get("agent", ""))
                        samples.exhausted.setdefault(key, set()).add(labels.get("budget", ""))
            elif name in (SPEND, TOKENS):
                table = samples.spend_today if name == SPEND else samples.tokens_last_hour
                for labels, value in result:
                    table[(labels.get("namespace", ""), labels.get("agent", ""))] = value
            elif name in {str(m) for m in Metric}:
                samples.builtin[Metric(name)] = {
                    (lb.get("namespace", ""), lb.get("agent", ""), lb.get("revision", "")): v for lb, v in result
                }
            else:
                samples.custom[name] = {
                    (
                        (lb["namespace"], lb["agent"], lb["revision"])
                        if {"namespace", "agent", "revision"} <= lb.keys()
                        else None
                    ): v
                    for lb, v in result
                }

        await asyncio.gather(*(one(n, q) for n, q in queries.items()))
        return samples
