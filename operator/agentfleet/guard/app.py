"""The server: aiohttp wiring of the guard's routes, health endpoints, graceful shutdown.

This module only wires: the shared state lives in ``state``, the checks in ``core``, and each
protocol's HTTP handling in its adapter (``openai_chat``, ``openai_stream``, ``toolproxy``).
Nothing imports this module but the CLI, so the package has no import cycle.

Two listeners, so that nothing outside the pod can spend the agent's budget or call its tools:

- the API listener, on loopback only (``config.listeners`` refuses any other address): the
  OpenAI-compatible API and ``/tools/NAME`` for the agent in the same pod, plus ``/healthz``,
  ``/readyz`` and ``/metrics`` for local use;
- the metrics listener (``metricsHost:metricsPort``, by default ``0.0.0.0:9090``): ``/metrics``
  for Prometheus, ``/healthz`` and ``/readyz`` for the kubelet's probes and ``/audit/head`` (the
  audit chain's head, for the operator to publish as an anchor); no LLM API, no tools.

Shutdown on SIGTERM drains: readiness turns 503, the API listener closes, and requests in flight
(streams included) get up to ``drain_timeout`` to finish; then the metrics listener closes and
the audit trail is flushed.
"""

from __future__ import annotations

import asyncio
import signal
import traceback
from collections.abc import Awaitable, Callable

from aiohttp import web

from agentfleet.guard import anthropic_messages, mcp_proxy, mcp_sse, openai_chat, openai_responses, peers, toolproxy
from agentfleet.guard.config import Listeners
from agentfleet.guard.errors import Code, GuardError
from agentfleet.guard.httpio import error_response
from agentfleet.guard.state import Guard, log

Handler = Callable[[Guard, web.Request], Awaitable[web.StreamResponse]]
Route = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _json_errors(request: web.Request, handler: Route) -> web.StreamResponse:
    """aiohttp's own refusals (no such route, wrong method) as OpenAI-style JSON too."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        what = "is not served by the guard" if exc.status == 404 else f"refused: {exc.reason}"
        return error_response(GuardError(Code.INVALID_REQUEST, f"{request.method} {request.path} {what}", exc.status))


def _route(guard: Guard, handler: Handler) -> Route:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            with guard.tracing.incoming(request.headers):  # the agent's traceparent, if it sent one
                return await handler(guard, request)
        except Exception as exc:  # a bug must cost one request, never the process or a JSON error
            log(
                "internal_error",
                path=request.path,
                error=f"{type(exc).__name__}: {exc}",
                traceback=traceback.format_exc(limit=8),
            )
            return error_response(GuardError(Code.INTERNAL_ERROR, f"internal guard error ({type(exc).__name__})", 500))

    return wrapped


async def _models(guard: Guard, request: web.Request) -> web.StreamResponse:
    entry = {"id": guard.model, "object": "model", "created": 0, "owned_by": "agentfleet-guard"}
    if "model" in request.match_info:
        if request.match_info["model"] != guard.model:
            return error_response(
                GuardError(
                    Code.INVALID_REQUEST,
                    f"model {request.match_info['model']!r} is not served here; this agent uses {guard.model!r}",
                    404,
                )
            )
        return web.json_response(entry)
    return web.json_response({"object": "list", "data": [entry]})


async def _healthz(guard: Guard, request: web.Request) -> web.StreamResponse:
    return web.json_response({"status": "ok"})


async def _readyz(guard: Guard, request: web.Request) -> web.StreamResponse:
    state = guard.readiness()
    return web.json_response(state, status=503 if guard.draining else 200)


async def _metrics(guard: Guard, request: web.Request) -> web.StreamResponse:
    return web.Response(
        body=guard.render_metrics(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}
    )


async def _audit_head(guard: Guard, request: web.Request) -> web.StreamResponse:
    head = guard.audit.head
    identity = {"namespace": guard.cfg.namespace, "agent": guard.cfg.agent, "revision": guard.cfg.revision}
    if head is None:
        return web.json_response({**identity, "seq": None, "hash": None, "anchor": None})
    return web.json_response({**identity, "seq": head[0], "hash": head[1], "anchor": f"{head[0]}:{head[1]}"})


def _ops_routes(guard: Guard, app: web.Application) -> None:
    app.router.add_get("/metrics", _route(guard, _metrics))
    app.router.add_get("/healthz", _route(guard, _healthz))
    app.router.add_get("/readyz", _route(guard, _readyz))


def metrics_application(guard: Guard) -> web.Application:
    """The metrics listener's application: metrics, health and the audit head, nothing else."""
    app = web.Application(client_max_size=64 * 1024, middlewares=[_json_errors])
    _ops_routes(guard, app)
    app.router.add_get("/audit/head", _route(guard, _audit_head))
    return app


def api_application(guard: Guard) -> web.Application:
    """The API listener's application (loopback only): the LLM API and tools."""
    app = web.Application(client_max_size=guard.tuning.max_request_bytes, middlewares=[_json_errors])
    chat, emb, tool, models = (
        _route(guard, openai_chat.chat_completions),
        _route(guard, openai_chat.embeddings),
        _route(guard, toolproxy.tool_call),
        _route(guard, _models),
    )
    responses = _route(guard, openai_responses.Responses(guard).create)
    for prefix in ("/v1", ""):
        app.router.add_post(f"{prefix}/responses", responses)
        app.router.add_post(f"{prefix}/messages", _route(guard, anthropic_messages.messages))
        app.router.add_post(f"{prefix}/messages/count_tokens", _route(guard, anthropic_messages.count_tokens))
        app.router.add_post(f"{prefix}/chat/completions", chat)
        app.router.add_post(f"{prefix}/embeddings", emb)
        app.router.add_get(f"{prefix}/models", models)
        app.router.add_get(f"{prefix}/models/{{model}}", models)
    app.router.add_route("*", "/tools/{name}", tool)
    sub_agent = _route(guard, peers.call_sub_agent)  # calls to other agents (docs/sub-agents.md)
    app.router.add_post("/agents/{callee}/{tail:.*}", sub_agent)
    app.router.add_get("/agents/{callee}/{tail:.*}", sub_agent, allow_head=False)
    peers.state_of(guard)
    app.router.add_post("/mcp/{server}", _route(guard, mcp_proxy.post))  # MCP servers (docs/guard.md)
    app.router.add_get("/mcp/{server}", _route(guard, mcp_sse.get), allow_head=False)
    app.router.add_post("/mcp/{server}/messages", _route(guard, mcp_sse.message))  # HTTP+SSE servers
    app.router.add_delete("/mcp/{server}", _route(guard, mcp_proxy.delete))
    mcp_proxy.state_of(guard)
    _ops_routes(guard, app)
    return app


MAX_LINE = 8190
"""Longest request line or header field (aiohttp refuses longer ones with a plain 400 before any
guard code runs)."""
MAX_HEADERS = 128
"""Most header fields in one request (likewise)."""


class Server:
    """Both listeners of one guard; ``start`` binds them, ``stop`` drains and flushes."""

    def __init__(self, guard: Guard, where: Listeners) -> None:
        self.guard = guard
        self.where = where
        self._api = web.AppRunner(
            api_application(guard),
            access_log=None,
            shutdown_timeout=guard.tuning.drain_timeout,
            max_line_size=MAX_LINE,
            max_field_size=MAX_LINE,
            max_headers=MAX_HEADERS,
        )
        self._metrics = web.AppRunner(
            metrics_application(guard),
            access_log=None,
            shutdown_timeout=5,
            max_line_size=MAX_LINE,
            max_field_size=MAX_LINE,
            max_headers=MAX_HEADERS,
        )
        self._peers = peers.PeerServer(guard, MAX_LINE, MAX_HEADERS)  # only with a peer config
        self.api_port = 0
        self.metrics_port = 0

    @property
    def api_url(self) -> str:
        return f"http://{_url_host(self.where.api_host)}:{self.api_port}"

    @property
    def metrics_url(self) -> str:
        host = "127.0.0.1" if self.where.metrics_host in ("0.0.0.0", "::", "") else self.where.metrics_host
        return f"http://{_url_host(host)}:{self.metrics_port}"

    async def start(self) -> None:
        """Open the upstream pool and the audit writer, then bind both listeners."""
        await self.guard.start()
        try:
            await self._api.setup()
            await web.TCPSite(self._api, self.where.api_host, self.where.api_port, backlog=2048).start()
            self.api_port = self._api.addresses[0][1]
            await self._metrics.setup()
            await web.TCPSite(self._metrics, self.where.metrics_host, self.where.metrics_port).start()
            self.metrics_port = self._metrics.addresses[0][1]
            await self._peers.start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        """Stop taking API connections, drain, close the metrics listener, flush the audit trail."""
        self.guard.draining = True
        try:
            await self._api.cleanup()
            await self._peers.stop()
            await self._metrics.cleanup()
        finally:
            await self.guard.stop()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def serve(guard: Guard, where: Listeners, *, stop: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM/SIGINT (or ``stop``), then drain in-flight requests and exit."""
    server = Server(guard, where)
    await server.start()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log(
        "listening",
        host=where.api_host,
        port=server.api_port,
        url=server.api_url,
        metrics_host=where.metrics_host,
        metrics_port=server.metrics_port,
        metrics_url=server.metrics_url,
        agent=guard.cfg.agent,
        revision=guard.cfg.revision,
        upstream=guard.upstream.base_url,
    )
    try:
        await stop.wait()
    finally:
        log("draining", inflight=guard.inflight, timeout=guard.tuning.drain_timeout)
        await server.stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        log("stopped")
