"""A minimal async Prometheus HTTP API client: instant queries with a timeout each."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp


class PromError(Exception):
    """Prometheus could not answer: unreachable, timed out, or rejected the query."""


class Prometheus:
    def __init__(self, url: str, query_timeout: float = 5.0, concurrency: int = 4) -> None:
        self.url = url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=query_timeout)
        self._sem = asyncio.Semaphore(concurrency)
        self._session: aiohttp.ClientSession | None = None

    async def query(self, promql: str) -> list[tuple[dict[str, str], float]]:
        """Instant vector query -> [(labels, value)]. Raises PromError on any failure."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        async with self._sem:
            try:
                async with self._session.post(f"{self.url}/api/v1/query", data={"query": promql}) as resp:
                    body: dict[str, Any] = await resp.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                raise PromError(f"{type(exc).__name__}: {exc}".rstrip(": ")) from exc
        if body.get("status") != "success":
            raise PromError(f"{body.get('errorType', 'error')}: {body.get('error', body)}")
        data = body["data"]
        if data["resultType"] == "scalar":
            return [({}, float(data["result"][1]))]
        return [(item["metric"], float(item["value"][1])) for item in data["result"]]

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
