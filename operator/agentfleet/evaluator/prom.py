"""A minimal async Prometheus HTTP API client: instant queries with a timeout each.

Queries run in lanes, each with its own concurrency: the fleet's own queries (one per metric
kind, budgets) never queue behind tenants' custom queries, however many or slow those are.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

FLEET, TENANT = "fleet", "tenant"
REJECTING = frozenset({"bad_data", "execution"})
"""Prometheus' errorTypes for a query that is wrong (400 parse error, 422 cannot be executed), as
opposed to Prometheus being unable to answer (timeout, canceled, internal, unavailable)."""


class PromError(Exception):
    """Prometheus could not answer: unreachable, timed out, or rejected the query."""

    def __init__(self, message: str, rejected: bool = False) -> None:
        super().__init__(message)
        self.rejected = rejected
        """True when Prometheus refused the query itself (the query's fault, not an outage)."""


class Prometheus:
    def __init__(self, url: str, query_timeout: float = 5.0, concurrency: int = 4, tenant_concurrency: int = 2) -> None:
        self.url = url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=query_timeout)
        self._lanes = {FLEET: asyncio.Semaphore(concurrency), TENANT: asyncio.Semaphore(tenant_concurrency)}
        self._session: aiohttp.ClientSession | None = None

    async def query(self, promql: str, lane: str = FLEET) -> list[tuple[dict[str, str], float]]:
        """Instant vector query -> [(labels, value)]. Raises PromError on any failure."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        async with self._lanes[lane]:
            try:
                async with self._session.post(f"{self.url}/api/v1/query", data={"query": promql}) as resp:
                    body: dict[str, Any] = await resp.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                raise PromError(f"{type(exc).__name__}: {exc}".rstrip(": ")) from exc
        if not isinstance(body, dict) or body.get("status") != "success":
            kind = body.get("errorType", "error") if isinstance(body, dict) else "error"
            error = body.get("error", body) if isinstance(body, dict) else body
            raise PromError(f"{kind}: {error}"[:512], rejected=kind in REJECTING)
        try:
            data = body["data"]
            if data["resultType"] == "scalar":
                return [({}, float(data["result"][1]))]
            if data["resultType"] != "vector":
                raise PromError(f"the query returned a {data['resultType']}, not an instant vector", rejected=True)
            return [(dict(item["metric"]), float(item["value"][1])) for item in data["result"]]
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise PromError(f"unexpected answer from Prometheus: {type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
