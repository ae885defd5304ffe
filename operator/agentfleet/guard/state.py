"""The shared state of one guard process: everything the checks read and update.

One ``Guard`` holds the enforcement state of one agent revision: its configuration and derived
limits, the budget ledger, the task table, the tool gate, the upstream client and its breaker,
the metrics and the audit trail. The control core (``core``) decides with it; the protocol
adapters and the server (``app``) only hold a reference. It knows nothing about HTTP routes, so
nothing here imports an adapter and the package has no import cycle.

Everything runs on one event loop, which is what makes the checks atomic without locks (the
in-memory ledger's reservations too; the shared ledger's are atomic on its server); nothing
here blocks it (audit writes go to a thread).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

from agentfleet.api.guardconfig import GuardConfig
from agentfleet.audit import AuditLog
from agentfleet.guard.approvals import Approvals
from agentfleet.guard.breaker import BreakerState, CircuitBreaker
from agentfleet.guard.budgets import MemoryLedger
from agentfleet.guard.classifier import Classifier
from agentfleet.guard.config import Limits, Tuning, read_secret_file
from agentfleet.guard.errors import Code, GuardError
from agentfleet.guard.ledger import Hold, SpendLedger, agent_budgets, budget_labels
from agentfleet.guard.metrics import GuardMetrics
from agentfleet.guard.tasks import Task, TaskTable
from agentfleet.guard.toolgate import ToolGate
from agentfleet.guard.tracing import Tracing, event
from agentfleet.guard.upstream import Upstream


def log(event: str, **fields: Any) -> None:
    """One JSON line on stderr (stdout is the audit trail's)."""
    fields = {"ts": round(time.time(), 3), "event": event, **fields}
    print(json.dumps(fields, default=str), file=sys.stderr, flush=True)


class Guard:
    """All enforcement state of one guard process."""

    def __init__(
        self,
        cfg: GuardConfig,
        tuning: Tuning | None = None,
        *,
        api_key: str | None = None,
        audit_stream: IO[str] | None = None,
    ) -> None:
        self.cfg = cfg
        self.tuning = tuning or Tuning()
        self.limits = Limits.from_config(cfg)
        self.model = cfg.model.name
        self.budgets = agent_budgets(cfg)
        self.metrics = GuardMetrics(
            cfg.namespace, cfg.agent, cfg.revision, self.model, sorted(self.limits.tools), budget_labels(self.budgets)
        )
        self.tracing = Tracing(
            cfg.telemetry,
            {
                "service.name": f"{cfg.agent}.{cfg.namespace}",
                "service.namespace": cfg.namespace,
                "service.version": cfg.revision,
                "agentfleet.agent": cfg.agent,
                "agentfleet.revision": cfg.revision,
            },
            cfg.model.provider,
        )
        self.metrics.bind_genai(self.tracing.provider_name, cfg.embeddings_model)
        self._soft_signalled: dict[int, str] = {}
        self.audit = AuditLog(
            cfg.audit,
            {"namespace": cfg.namespace, "agent": cfg.agent, "revision": cfg.revision},
            capture_content=cfg.guard.capture_content,
            queue_size=self.tuning.audit_queue,
            stream=audit_stream,
        )
        self.metrics.publish_audit_head(lambda: self.audit.head)
        self.ledger: SpendLedger = self._ledger()
        self.tasks = TaskTable(self.tuning.max_tasks, idle_ttl=2 * self.limits.max_task_duration)
        self.breaker = CircuitBreaker(
            self.tuning.breaker_threshold,
            self.tuning.breaker_open_seconds,
            self.tuning.breaker_max_open_seconds,
            probe_timeout=self.limits.call_deadline,
            on_change=self._breaker_changed,
        )
        self.upstream = Upstream(
            cfg.model.endpoint,
            api_key,
            tuning=self.tuning,
            breaker=self.breaker,
            metrics=self.metrics,
            provider=cfg.model.provider,
        )
        self.gate = ToolGate(self.limits, self._loop_detected)
        self.classifier = (
            Classifier(cfg.injection_classifier, lambda: self.upstream.session) if cfg.injection_classifier else None
        )
        self.approvals = Approvals(cfg, self.metrics.registry, self.audit)
        self._sweep: asyncio.Task[int] | None = None
        self.inflight = 0
        self.draining = False
        self._audit_dropped_seen = 0

    def _ledger(self) -> SpendLedger:
        """The shared ledger when one is configured, else this process's own; the core uses
        either through the same interface."""
        budgets = self.budgets
        ledger_cfg = self.cfg.ledger
        if ledger_cfg is None:
            if self.cfg.quotas:  # never silently unlimited: say that these quotas are not enforced here
                log(
                    "quotas_not_enforced",
                    reason="spend quotas need the shared ledger (ledger.url)",
                    policies=[q.policy for q in self.cfg.quotas],
                )
            return MemoryLedger(budgets)
        from agentfleet.guard.redis_ledger import RedisLedger  # only guards with a ledger load redis

        return RedisLedger(
            budgets,
            ledger_cfg,
            hold_ttl=self.limits.call_deadline + self.tuning.ledger_hold_margin,
            password=read_secret_file(ledger_cfg.password_file, "ledger password"),
            metrics=self.metrics,
            log=log,
        )

    def note_levels(self, hold: Hold) -> None:
        """Soft limits: after a reservation, signal each budget its level took past its soft
        limit (the gauge, and one audit record per budget and window), before the hard stop."""
        for i, (budget, level) in enumerate(zip(self.budgets, hold.levels, strict=False)):
            if budget.soft is None:
                continue
            reached = level >= budget.soft
            self.metrics.soft_limit[budget.name].set(1 if reached else 0)
            span = hold.spans[i].id if i < len(hold.spans) else ""
            if reached and self._soft_signalled.get(i) != span:
                self._soft_signalled[i] = span
                event("agentfleet.budget.soft_limit", **{"agentfleet.budget": budget.name})
                self.audit.record(
                    "budget_soft_limit",
                    decision="flag",
                    reason="soft_limit_reached",
                    budget=budget.name,
                    scope=budget.scope,
                    level=budget.value(level),
                    soft_limit=budget.value(budget.soft),
                    limit=None if budget.limit is None else budget.value(budget.limit),
                )
                log("budget_soft_limit", budget=budget.name, scope=budget.scope, level=budget.value(level))

    # ------------------------------------------------------------------ callbacks

    def _breaker_changed(self, old: BreakerState, new: BreakerState, reason: str) -> None:
        self.metrics.breaker_g.set(new)
        self.audit.record("breaker", decision=new.name.lower(), reason=reason, previous=old.name.lower())
        log("breaker", state=new.name.lower(), previous=old.name.lower(), reason=reason)

    def _loop_detected(self, task: Task, tool: str) -> None:
        self.metrics.loops_c.inc()
        event("agentfleet.loop_detected", **{"gen_ai.tool.name": tool, "agentfleet.reason": Code.LOOP_DETECTED.value})
        self.audit.record(
            "loop",
            task=task.id if task.named else None,
            tool=tool,
            decision="end_task",
            reason=Code.LOOP_DETECTED.value,
        )

    # ------------------------------------------------------------------ shared helpers

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one of ``max_inflight_requests`` request slots (503 overloaded when none is free)."""
        if self.inflight >= self.tuning.max_inflight_requests:
            raise GuardError(
                Code.OVERLOADED,
                "the guard is handling too many requests; retry shortly",
                503,
                retry_after=1,
                should_retry=True,
            )
        self.inflight += 1
        self.metrics.inflight_g.inc()
        try:
            yield
        finally:
            self.inflight -= 1
            self.metrics.inflight_g.dec()

    def readiness(self) -> dict[str, Any]:
        """What ``/readyz`` reports."""
        if self.draining:
            return {"status": "draining", "inflight": self.inflight}
        return {
            "status": "ready",
            "inflight": self.inflight,
            "breaker": self.breaker.state.name.lower(),
            "tasks": len(self.tasks),
            "budgets": self.ledger.snapshot(),
        }

    def render_metrics(self) -> bytes:
        """The metrics exposition (first folding in audit records dropped since the last scrape)."""
        dropped = self.audit.dropped
        if dropped > self._audit_dropped_seen:
            self.metrics.audit_dropped_c.inc(dropped - self._audit_dropped_seen)
            self._audit_dropped_seen = dropped
        return self.metrics.render()

    async def start(self) -> None:
        """Open the upstream pool and the audit writer (on the serving loop)."""
        await self.upstream.start()
        await self.ledger.start()
        self.audit.start()
        self.audit.record(
            "start", decision="allow", reason="guard started", model=self.model, upstream=self.upstream.base_url
        )
        self._sweep = asyncio.create_task(self.approvals.abandon_leftovers())

    async def stop(self) -> None:
        """Close the pool and flush the audit trail."""
        await self.upstream.close()
        await self.ledger.close()
        await asyncio.to_thread(self.tracing.shutdown)  # flushes the spans still queued
        if self._sweep is not None:
            self._sweep.cancel()
        await self.approvals.close()
        self.audit.record("stop", decision="allow", reason="guard stopped")
        await asyncio.to_thread(self.audit.close)
