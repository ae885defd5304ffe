"""The operator process's health endpoint, for the kubelet's probes and for failover.

Served from the start, before leadership: a standby replica is healthy while it waits for the
Lease. The leader is unhealthy (and the kubelet restarts it) when kopf has stopped or when the
evaluator has not finished a cycle for far longer than its interval: a stuck loop must not hold
the Lease while suspensions go undone.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from urllib.parse import urlsplit

from aiohttp import web

Check = Callable[[], str | None]
"""Returns None when healthy, else what is wrong."""


class HealthServer:
    def __init__(self) -> None:
        self.checks: list[Check] = []
        self.role = "candidate"
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        problems = [p for p in (check() for check in self.checks) if p]
        body = {"role": self.role, "problems": problems}
        return web.json_response(body, status=500 if problems else 200)

    async def start(self, url: str) -> None:
        """Serve ``url`` (``http://HOST:PORT/PATH``) and ``/readyz`` on the same port."""
        parts = urlsplit(url)
        app = web.Application()
        app.router.add_get(parts.path or "/healthz", self._handle)
        app.router.add_get("/readyz", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, parts.hostname or "0.0.0.0", parts.port or 8081).start()

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def stale(what: str, last: Callable[[], float], limit: float) -> Check:
    """A check failing when ``last()`` (a monotonic time) is older than ``limit`` seconds."""

    def check() -> str | None:
        age = time.monotonic() - last()
        return f"{what} has not completed for {age:.0f}s (limit {limit:.0f}s)" if age > limit else None

    return check
