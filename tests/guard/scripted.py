"""A byte-exact scripted upstream: each request gets the next queued response, as written.

The fault-injecting fake LLM speaks well-formed OpenAI; the protocol-hole tests need answers it
would never give (a ``custom`` tool call, an error chunk carrying tool calls, multi-line SSE
events, odd content types), so this server sends exactly the bytes a test queues.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Canned:
    """One scripted response: a status, headers and the body in the chunks to write it in."""

    status: int = 200
    content_type: str = "application/json"
    chunks: list[bytes] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)


class ScriptedUpstream:
    """An upstream LLM API (and HTTP tool server) that replays queued responses."""

    def __init__(self) -> None:
        self.queue: deque[Canned] = deque()
        self.requests: list[dict[str, Any]] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> str:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_route("*", "/{path:.*}", self._serve)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def reset(self) -> None:
        self.queue.clear()
        self.requests.clear()

    # ------------------------------------------------------------------ scripting

    def json(self, body: Any, status: int = 200) -> None:
        """Queue a JSON response."""
        self.queue.append(Canned(status, "application/json", [json.dumps(body).encode()]))

    def completion(self, message: dict[str, Any], usage: dict[str, int] | None = None) -> None:
        """Queue a chat completion with one choice carrying ``message``."""
        body: dict[str, Any] = {
            "id": "chatcmpl-scripted",
            "object": "chat.completion",
            "created": 0,
            "model": "gpt-test",
            "choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": "stop"}],
            "usage": usage or {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        }
        self.json(body)

    def sse(self, *events: bytes, content_type: str = "text/event-stream") -> None:
        """Queue a stream of raw server-sent-event bytes (each written as its own chunk)."""
        self.queue.append(Canned(200, content_type, list(events)))

    def raw(self, body: bytes, content_type: str, status: int = 200, headers: dict[str, str] | None = None) -> None:
        """Queue any body."""
        self.queue.append(Canned(status, content_type, [body], headers or {}))

    # ------------------------------------------------------------------ serving

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            parsed: Any = json.loads(raw) if raw else None
        except ValueError:
            parsed = raw.decode("utf-8", "replace")
        self.requests.append(
            {"path": request.path, "method": request.method, "body": parsed, "headers": dict(request.headers)}
        )
        if not self.queue:
            return web.json_response({"error": {"message": "nothing scripted"}}, status=500)
        canned = self.queue.popleft()
        resp = web.StreamResponse(status=canned.status, headers=canned.headers)
        resp.content_type = canned.content_type
        await resp.prepare(request)
        for chunk in canned.chunks:
            await resp.write(chunk)
        await resp.write_eof()
        return resp


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> bytes:
    """One ``data:`` event of a chat completion stream."""
    body: dict[str, Any] = {"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 0, "model": "gpt-test"}
    body["choices"] = (
        [] if delta is None and finish is None else [{"index": 0, "delta": delta or {}, "finish_reason": finish}]
    )
    body.update(extra)
    return b"data: " + json.dumps(body).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"
USAGE = chunk(usage={"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15})
