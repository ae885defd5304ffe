"""Calls to the upstream LLM API: one deadline per call, jittered retries, the breaker.

Every call has a single deadline (the agent's latency budget): connect, retries, backoff and,
for streams, the whole stream must fit in it, so a flaky API can never hold an agent longer than
promised. Only failures that a retry can fix are retried (connect errors, resets, truncated
bodies, a 200 that is not JSON, 408/409/429/5xx) and only while the deadline leaves room for the backoff; a 4xx that is
the request's fault goes straight back to the agent. Each failed attempt is reported to the
breaker, which then fails calls fast while the upstream stays down.

A stream is retried too, as long as nothing has been sent to the agent: ``open_stream`` returns
only after the first server-sent event arrived, so a reset or an empty stream at the start is
just another failed attempt.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import aiohttp

from agentfleet.api.types import Provider
from agentfleet.guard.breaker import CircuitBreaker
from agentfleet.guard.config import Tuning
from agentfleet.guard.errors import Code, GuardError
from agentfleet.guard.metrics import GuardMetrics
from agentfleet.guard.sse import Event, SSEError, SSEParser

RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
T = TypeVar("T")


class ResponseTooLarge(Exception):
    """A response exceeded the configured size limit."""


class _Retryable(Exception):
    def __init__(self, reason: str, detail: str, retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.retry_after = retry_after


@dataclass(slots=True)
class Reply:
    """A complete upstream response (success, or a non-retryable error to pass through)."""

    status: int
    body: bytes
    content_type: str
    data: Any = None
    """The parsed JSON object of a 200 response (checked inside the retry loop)."""
    attempts: int = 1


class SSEReader:
    """Reads the events of a server-sent-event response body (``sse`` parses them per the spec)."""

    def __init__(self, content: aiohttp.StreamReader, max_event: int) -> None:
        self._content = content
        self._parser = SSEParser(max_event)
        self._ready: deque[Event] = deque()

    async def next(self) -> Event | None:
        """The next event, or None at the end (an event left without its blank line is dropped)."""
        while not self._ready:
            self._parser.check()
            chunk = await self._content.readany()
            if not chunk:
                return None
            self._ready.extend(self._parser.feed(chunk))
        return self._ready.popleft()


@dataclass(slots=True)
class StreamStart:
    """An open upstream stream whose first event has arrived (or a reply to pass through)."""

    response: aiohttp.ClientResponse | None
    reader: SSEReader | None
    first: Event | None
    reply: Reply | None
    attempts: int = 1

    def close(self) -> None:
        """Drop the upstream connection (idempotent)."""
        if self.response is not None:
            self.response.close()


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


async def read_limited(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body, refusing bodies larger than ``limit`` bytes."""
    length = resp.content_length
    if length is not None:
        if length > limit:
            raise ResponseTooLarge(f"response of {length} bytes exceeds the limit of {limit}")
        return await resp.read()
    buf = bytearray()
    async for chunk in resp.content.iter_chunked(65536):
        buf += chunk
        if len(buf) > limit:
            raise ResponseTooLarge(f"response exceeds the limit of {limit} bytes")
    return bytes(buf)


def _error_detail(body: bytes) -> str:
    text = body[:300].decode("utf-8", "replace").strip()
    return text or "(empty body)"


def classify(exc: BaseException) -> tuple[str, str]:
    """Metric reason and a message for a failed upstream exchange."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connect", f"cannot connect: {exc.os_error or exc}"
    if isinstance(exc, aiohttp.ServerTimeoutError):
        return "timeout", "connect timeout" if isinstance(exc, aiohttp.ConnectionTimeoutError) else "read timeout"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "truncated", "response body truncated"
    if isinstance(exc, SSEError):
        return "invalid_response", str(exc)
    return "reset", f"connection failed: {type(exc).__name__}: {exc}"


class Upstream:
    """The OpenAI-compatible upstream: one pooled session, retries, breaker, deadlines."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        tuning: Tuning,
        breaker: CircuitBreaker,
        metrics: GuardMetrics,
        provider: Provider = Provider.OPENAI,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.tuning = tuning
        self.breaker = breaker
        self.metrics = metrics
        self._headers = {"Content-Type": "application/json", "User-Agent": "agentfleet-guard"}
        self._api_key = api_key
        self.provider = provider
        if api_key:
            if provider is Provider.AZURE_OPENAI:
                self._headers["api-key"] = api_key
            else:
                self._headers["Authorization"] = f"Bearer {api_key}"
        self._session: aiohttp.ClientSession | None = None

    def messages_headers(self, version: str, beta: str | None) -> dict[str, str]:
        """Headers for the Anthropic Messages API: Anthropic itself takes the key in
        ``x-api-key`` (never the agent's: the agent has none), other providers as usual."""
        headers = dict(self._headers)
        if self.provider is Provider.ANTHROPIC and self._api_key:
            headers.pop("Authorization", None)
            headers["x-api-key"] = self._api_key
        headers["anthropic-version"] = version
        if beta:
            headers["anthropic-beta"] = beta
        return headers

    @property
    def session(self) -> aiohttp.ClientSession:
        """The pooled client session (created by ``start``)."""
        if self._session is None:
            raise RuntimeError("upstream session not started")
        return self._session

    async def start(self) -> None:
        """Create the connection pool (must run on the serving loop)."""
        connector = aiohttp.TCPConnector(
            limit=self.tuning.upstream_connections, ttl_dns_cache=300, keepalive_timeout=30
        )
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=None), cookie_jar=aiohttp.DummyCookieJar()
        )

    async def close(self) -> None:
        """Close the pool."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _timeout(self, deadline_at: float) -> aiohttp.ClientTimeout:
        remaining = max(0.001, deadline_at - asyncio.get_running_loop().time())
        return aiohttp.ClientTimeout(total=None, sock_connect=min(self.tuning.connect_timeout, remaining))

    async def _check_status(self, resp: aiohttp.ClientResponse) -> Reply | None:
        """None for 200; a Reply for a non-retryable status; raises _Retryable otherwise."""
        if resp.status == 200:
            return None
        body = await read_limited(resp, 1024 * 1024)
        if resp.status in RETRYABLE_STATUS or resp.status >= 500:
            reason = "http_429" if resp.status == 429 else "http_5xx" if resp.status >= 500 else "http_4xx"
            raise _Retryable(
                reason, f"HTTP {resp.status}: {_error_detail(body)}", parse_retry_after(resp.headers.get("Retry-After"))
            )
        return Reply(resp.status, body, resp.content_type)

    async def call(self, path: str, body: bytes, deadline_at: float, headers: dict[str, str] | None = None) -> Reply:
        """POST ``body`` and read the whole JSON response, within ``deadline_at`` (loop time).

        A 200 whose body is not a JSON object counts as a failed attempt (and is retried).
        ``headers`` replace the default ones (another protocol's authentication)."""
        url = self.base_url + path
        sent = headers or self._headers

        async def attempt() -> Reply:
            async with self.session.post(url, data=body, headers=sent, timeout=self._timeout(deadline_at)) as resp:
                passthrough = await self._check_status(resp)
                if passthrough is not None:
                    return passthrough
                try:
                    raw = await read_limited(resp, self.tuning.max_response_bytes)
                except ResponseTooLarge as exc:
                    raise _Retryable("invalid_response", str(exc)) from exc
                try:
                    data = json.loads(raw)
                except ValueError:
                    data = None
                if not isinstance(data, dict):
                    raise _Retryable("invalid_response", f"HTTP 200 without a JSON object: {_error_detail(raw)}")
                return Reply(200, raw, resp.content_type, data)

        reply, attempts = await self._with_retries(attempt, deadline_at)
        reply.attempts = attempts
        return reply

    async def open_stream(
        self, path: str, body: bytes, deadline_at: float, headers: dict[str, str] | None = None
    ) -> StreamStart:
        """POST a streaming request and wait for its first event, retrying until then."""
        url = self.base_url + path
        headers = {**(headers or self._headers), "Accept": "text/event-stream"}

        async def attempt() -> StreamStart:
            resp = await self.session.post(url, data=body, headers=headers, timeout=self._timeout(deadline_at))
            try:
                passthrough = await self._check_status(resp)
                if passthrough is not None:
                    resp.release()
                    return StreamStart(None, None, None, passthrough)
                reader = SSEReader(resp.content, self.tuning.max_sse_line_bytes)
                first = await reader.next()
                if first is None:
                    raise _Retryable("truncated", "stream ended before its first event")
                return StreamStart(resp, reader, first, None)
            except BaseException:
                resp.close()
                raise

        start, attempts = await self._with_retries(attempt, deadline_at)
        start.attempts = attempts
        return start

    def _unavailable(self, message: str, retry_after: float | None = None) -> GuardError:
        return GuardError(Code.UPSTREAM_UNAVAILABLE, message, 503, retry_after=retry_after, should_retry=True)

    async def _with_retries(self, attempt: Callable[[], Awaitable[T]], deadline_at: float) -> tuple[T, int]:
        loop = asyncio.get_running_loop()
        tries = 0
        last = ""
        while True:
            wait = self.breaker.before_call()
            if wait is not None:
                self.metrics.upstream["breaker_open"].inc()
                raise self._unavailable(
                    f"upstream circuit breaker is open after repeated failures{last}; failing fast", wait
                )
            tries += 1
            try:
                async with asyncio.timeout_at(deadline_at):
                    result = await attempt()
            except aiohttp.ServerTimeoutError as exc:
                # One attempt's connect or read timeout: aiohttp makes it a TimeoutError too, but it is a
                # failed attempt to retry, not the call's deadline.
                (reason, detail), retry_after = classify(exc), None
            except TimeoutError:
                self.metrics.upstream["timeout"].inc()
                self.breaker.failure("deadline exceeded")
                raise self._unavailable(
                    f"upstream did not answer within the call deadline (attempt {tries}{last})"
                ) from None
            except _Retryable as exc:
                reason, detail, retry_after = exc.reason, exc.detail, exc.retry_after
            except (aiohttp.ClientError, OSError, ValueError) as exc:
                (reason, detail), retry_after = classify(exc), None
            except asyncio.CancelledError:
                self.breaker.abandon_probe()
                raise
            else:
                self.breaker.success()
                return result, tries
            self.metrics.upstream[reason].inc()
            self.breaker.failure(reason)
            last = f"; last error: {detail}"
            if tries >= self.tuning.max_attempts:
                raise self._unavailable(f"upstream failed {tries} attempts{last}", retry_after)
            delay = random.uniform(0, min(self.tuning.backoff_cap, self.tuning.backoff_base * 2 ** (tries - 1)))
            if retry_after is not None:
                delay = max(delay, retry_after)
            if loop.time() + delay >= deadline_at:
                raise self._unavailable(
                    f"upstream failed {tries} attempt(s) and the call deadline leaves no time to retry{last}",
                    retry_after,
                )
            await asyncio.sleep(delay)
