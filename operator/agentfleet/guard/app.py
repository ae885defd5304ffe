"""Wiring: one ``Guard`` holds the state of one agent revision's enforcement and serves it.

One port serves everything (the pod spec stays simple and Prometheus scrapes the same port):
the OpenAI-compatible API, ``/tools/NAME``, ``/metrics``, ``/healthz`` and ``/readyz``.
Everything runs on one event loop, which is what makes budget reservations atomic without
locks; nothing on the request path blocks it (audit writes go to a thread).

Shutdown on SIGTERM drains: readiness turns 503, the listener closes, and requests in flight
(streams included) get up to ``drain_timeout`` to finish before the process exits; then the
audit trail is flushed.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any

from aiohttp import web

from agentfleet.api.guardconfig import GuardConfig
from agentfleet.audit import AuditLog
from agentfleet.guard import proxy, toolproxy
from agentfleet.guard.breaker import BreakerState, CircuitBreaker
from agentfleet.guard.budgets import Ledger
from agentfleet.guard.config import Limits, Tuning
from agentfleet.guard.errors import Code, GuardError
from agentfleet.guard.metrics import GuardMetrics
from agentfleet.guard.tasks import Task, TaskTable
from agentfleet.guard.toolgate import ToolGate
from agentfleet.guard.upstream import Upstream

Handler = Callable[["Guard", web.Request], Awaitable[web.StreamResponse]]


def log(event: str, **fields: Any) -> None:
    """One JSON line on stderr (stdout is the audit trail's)."""
    fields = {"ts": round(time.time(), 3), "event": event, **fields}
    print(json.dumps(fields, default=str), file=sys.stderr, flush=True)


class Guard:
    """All enforcement state of one guard process, and its aiohttp application."""

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
        self.metrics = GuardMetrics(cfg.namespace, cfg.agent, cfg.revision, self.model, sorted(self.limits.tools))
        self.audit = AuditLog(
            cfg.audit,
            {"namespace": cfg.namespace, "agent": cfg.agent, "revision": cfg.revision},
            capture_content=cfg.guard.capture_content,
            queue_size=self.tuning.audit_queue,
            stream=audit_stream,
        )
        self.ledger = Ledger(self.limits.tokens_per_hour, self.limits.cost_per_day)
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
        self.inflight = 0
        self.draining = False
        self._audit_dropped_seen = 0

    # ------------------------------------------------------------------ callbacks

    def _breaker_changed(self, old: BreakerState, new: BreakerState, reason: str) -> None:
        self.metrics.breaker_g.set(new)
        self.audit.record("breaker", decision=new.name.lower(), reason=reason, previous=old.name.lower())
        log("breaker", state=new.name.lower(), previous=old.name.lower(), reason=reason)

    def _loop_detected(self, task: Task, tool: str) -> None:
        self.metrics.loops_c.inc()
        self.audit.record(
            "loop",
            task=task.id if task.named else None,
            tool=tool,
            decision="end_task",
            reason=Code.LOOP_DETECTED.value,
        )

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

    # ------------------------------------------------------------------ plain routes

    async def _models(self, request: web.Request) -> web.Response:
        entry = {"id": self.model, "object": "model", "created": 0, "owned_by": "agentfleet-guard"}
        if "model" in request.match_info:
            if request.match_info["model"] != self.model:
                return GuardError(
                    Code.INVALID_REQUEST,
                    f"model {request.match_info['model']!r} is not served here; this agent uses {self.model!r}",
                    404,
                ).response()
            return web.json_response(entry)
        return web.json_response({"object": "list", "data": [entry]})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        if self.draining:
            return web.json_response({"status": "draining", "inflight": self.inflight}, status=503)
        return web.json_response(
            {
                "status": "ready",
                "inflight": self.inflight,
                "breaker": self.breaker.state.name.lower(),
                "tasks": len(self.tasks),
                "budgets": self.ledger.snapshot(),
            }
        )

    async def _metrics(self, request: web.Request) -> web.Response:
        dropped = self.audit.dropped
        if dropped > self._audit_dropped_seen:
            self.metrics.audit_dropped_c.inc(dropped - self._audit_dropped_seen)
            self._audit_dropped_seen = dropped
        return web.Response(
            body=self.metrics.render(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}
        )

    # ------------------------------------------------------------------ application

    def _route(self, handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            try:
                return await handler(self, request)
            except Exception as exc:  # a bug must cost one request, never the process or a JSON error
                log(
                    "internal_error",
                    path=request.path,
                    error=f"{type(exc).__name__}: {exc}",
                    traceback=traceback.format_exc(limit=8),
                )
                return GuardError(Code.INTERNAL_ERROR, f"internal guard error ({type(exc).__name__})", 500).response()

        return wrapped

    def application(self) -> web.Application:
        """The aiohttp application (startup opens the upstream pool and the audit writer)."""
        app = web.Application(client_max_size=self.tuning.max_request_bytes)
        chat, emb, tool = (
            self._route(proxy.chat_completions),
            self._route(proxy.embeddings),
            self._route(toolproxy.tool_call),
        )
        for prefix in ("/v1", ""):
            app.router.add_post(f"{prefix}/chat/completions", chat)
            app.router.add_post(f"{prefix}/embeddings", emb)
            app.router.add_get(f"{prefix}/models", self._models)
            app.router.add_get(f"{prefix}/models/{{model}}", self._models)
        app.router.add_route("*", "/tools/{name}", tool)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.on_startup.append(self._startup)
        app.on_cleanup.append(self._cleanup)
        return app

    async def _startup(self, app: web.Application) -> None:
        await self.upstream.start()
        self.audit.start()
        self.audit.record(
            "start", decision="allow", reason="guard started", model=self.model, upstream=self.upstream.base_url
        )

    async def _cleanup(self, app: web.Application) -> None:
        await self.upstream.close()
        self.audit.record("stop", decision="allow", reason="guard stopped")
        await asyncio.to_thread(self.audit.close)


async def serve(guard: Guard, host: str, port: int, *, stop: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM/SIGINT (or ``stop``), then drain in-flight requests and exit."""
    runner = web.AppRunner(guard.application(), access_log=None, shutdown_timeout=guard.tuning.drain_timeout)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=2048)
    await site.start()
    bound = runner.addresses[0][1] if runner.addresses else port
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log(
        "listening",
        host=host,
        port=bound,
        url=f"http://{host}:{bound}",
        agent=guard.cfg.agent,
        revision=guard.cfg.revision,
        upstream=guard.upstream.base_url,
    )
    try:
        await stop.wait()
    finally:
        guard.draining = True
        log("draining", inflight=guard.inflight, timeout=guard.tuning.drain_timeout)
        await runner.cleanup()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        log("stopped")
