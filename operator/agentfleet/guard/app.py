"""The server: aiohttp wiring of the guard's routes, health endpoints, graceful shutdown.

This module only wires: the shared state lives in ``state``, the checks in ``core``, and each
protocol's HTTP handling in its adapter (``openai_chat``, ``openai_stream``, ``toolproxy``).
Nothing imports this module but the CLI, so the package has no import cycle.

One port serves everything (the pod spec stays simple and Prometheus scrapes the same port):
the OpenAI-compatible API, ``/tools/NAME``, ``/metrics``, ``/healthz`` and ``/readyz``.

Shutdown on SIGTERM drains: readiness turns 503, the listener closes, and requests in flight
(streams included) get up to ``drain_timeout`` to finish before the process exits; then the
audit trail is flushed.
"""

from __future__ import annotations

import asyncio
import signal
import traceback
from collections.abc import Awaitable, Callable

from aiohttp import web

from agentfleet.guard import openai_chat, toolproxy
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


def application(guard: Guard) -> web.Application:
    """The aiohttp application (startup opens the upstream pool and the audit writer)."""
    app = web.Application(client_max_size=guard.tuning.max_request_bytes, middlewares=[_json_errors])
    chat, emb, tool, models = (
        _route(guard, openai_chat.chat_completions),
        _route(guard, openai_chat.embeddings),
        _route(guard, toolproxy.tool_call),
        _route(guard, _models),
    )
    for prefix in ("/v1", ""):
        app.router.add_post(f"{prefix}/chat/completions", chat)
        app.router.add_post(f"{prefix}/embeddings", emb)
        app.router.add_get(f"{prefix}/models", models)
        app.router.add_get(f"{prefix}/models/{{model}}", models)
    app.router.add_route("*", "/tools/{name}", tool)
    app.router.add_get("/metrics", _route(guard, _metrics))
    app.router.add_get("/healthz", _route(guard, _healthz))
    app.router.add_get("/readyz", _route(guard, _readyz))

    async def startup(app: web.Application) -> None:
        await guard.start()

    async def cleanup(app: web.Application) -> None:
        await guard.stop()

    app.on_startup.append(startup)
    app.on_cleanup.append(cleanup)
    return app


async def serve(guard: Guard, host: str, port: int, *, stop: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM/SIGINT (or ``stop``), then drain in-flight requests and exit."""
    runner = web.AppRunner(application(guard), access_log=None, shutdown_timeout=guard.tuning.drain_timeout)
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
