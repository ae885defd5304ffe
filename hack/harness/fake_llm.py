"""A fault-injecting fake OpenAI-compatible LLM API (and HTTP tool server).

Used in-process by tests (``FakeLLM``) and as a standalone process by the demo, the simulator
and the benchmark::

    python hack/harness/fake_llm.py --port 8900 [--host 127.0.0.1] [--default PRESET|JSON]

It prints ``fake-llm listening on http://HOST:PORT`` once it accepts connections (``--port 0``
picks a free port).

What a request gets is a *behaviour* (a JSON object, or a preset name), chosen per request, first
match wins:

1. the ``X-Fake-Behavior`` request header (direct calls);
2. a ``[[fake:PRESET]]`` or ``[[fake:{...json...}]]`` directive in the last user message, which
   survives any proxy in between (how a simulated agent picks its own fault);
3. the next entry of a script queued with ``POST /_control/script`` (``{"behaviors": [...],
   "key": API_KEY?}``), consumed one per request, optionally only by requests with that API key;
4. the default for the request's API key, then the global default (``POST /_control/default``
   with ``{"behavior": ..., "key": API_KEY?}``).

Behaviour fields (all optional): ``mode`` (ok, tool_call, error, reset, truncate, hang, garbage),
``text``, ``tool_calls`` ([{name, arguments}]), ``status``, ``retry_after``, ``latency_ms``
(before the response), ``chunk_delay_ms`` (between stream chunks), ``truncate_after`` (chunks
sent before the connection is cut), ``prompt_tokens`` / ``completion_tokens`` (usage to report;
completion is capped by max_tokens unless ``ignore_max_tokens``), ``usage`` (false: report none).

Presets: ok, slow, loop (the same tool call every time), tool, error (500), unavailable (503),
rate_limit (429 with Retry-After), bad_request (400), reset, truncate, hang, garbage, expensive.

``GET /_control/stats`` returns request counts and the token totals it reported (the ground
truth for budget tests); ``POST /_control/reset`` clears scripts, defaults and stats.
``/tools/NAME`` (any method) answers as an HTTP tool with the same behaviour selection: ok
returns ``{"result": text}``, error returns ``{"error": ...}`` with the status.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import sys
import time
import uuid
from collections import defaultdict, deque
from typing import Any

from aiohttp import web

PRESETS: dict[str, dict[str, Any]] = {
    "ok": {"mode": "ok"},
    "slow": {"mode": "ok", "latency_ms": 2000, "chunk_delay_ms": 100},
    "loop": {"mode": "tool_call", "tool_calls": [{"name": "search", "arguments": '{"query": "same thing"}'}]},
    "tool": {"mode": "tool_call"},
    "error": {"mode": "error", "status": 500},
    "unavailable": {"mode": "error", "status": 503},
    "rate_limit": {"mode": "error", "status": 429, "retry_after": "1"},
    "bad_request": {"mode": "error", "status": 400},
    "reset": {"mode": "reset"},
    "truncate": {"mode": "truncate", "truncate_after": 2},
    "hang": {"mode": "hang"},
    "garbage": {"mode": "garbage"},
    "expensive": {"mode": "ok", "completion_tokens": 200_000, "ignore_max_tokens": True},
}
DEFAULT_TEXT = "Hello from the fake LLM. Everything is fine."
_DIRECTIVE = re.compile(r"\[\[fake:(.+?)\]\]", re.DOTALL)


def resolve(spec: Any) -> dict[str, Any]:
    """A behaviour from a preset name, a JSON string or a dict (``preset`` key allowed)."""
    if spec is None:
        return {"mode": "ok"}
    if isinstance(spec, str):
        spec = spec.strip()
        if spec.startswith("{"):
            spec = json.loads(spec)
        elif spec in PRESETS:
            return dict(PRESETS[spec])
        else:
            raise ValueError(f"unknown fake behaviour {spec!r}; presets: {', '.join(PRESETS)}")
    if not isinstance(spec, dict):
        raise ValueError(f"behaviour must be a preset name or an object, got {spec!r}")
    base = dict(PRESETS[spec["preset"]]) if "preset" in spec else {}
    base.update({k: v for k, v in spec.items() if k != "preset"})
    return base


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def count_prompt_tokens(messages: list[Any]) -> int:
    """The fake's tokenizer: ceil(chars / 4) per message plus 4 per message, plus 3."""
    total = 3
    for m in messages:
        if isinstance(m, dict):
            total += 4 + math.ceil(len(_text(m.get("content"))) / 4)
            for call in m.get("tool_calls") or ():
                fn = call.get("function", {}) if isinstance(call, dict) else {}
                total += math.ceil(len(str(fn.get("arguments", ""))) / 4) + 2
    return total


class FakeLLM:
    """The fake server; ``start()`` it in-process or run this file as a script."""

    def __init__(self, default: Any = None) -> None:
        self.default = resolve(default)
        self.key_defaults: dict[str, dict[str, Any]] = {}
        self.scripts: dict[str, deque[dict[str, Any]]] = defaultdict(deque)
        self.requests = 0
        self.by_path: dict[str, int] = defaultdict(int)
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.last: deque[dict[str, Any]] = deque(maxlen=200)
        self.active = 0
        self.max_active = 0
        self._runner: web.AppRunner | None = None
        self.url = ""
        self.app = self._make_app()

    # ----------------------------------------------------------------- control (in-process)

    def set_default(self, behavior: Any, key: str | None = None) -> None:
        """Default behaviour for every request (or for requests with API key ``key``)."""
        if key is None:
            self.default = resolve(behavior)
        else:
            self.key_defaults[key] = resolve(behavior)

    def script(self, *behaviors: Any, key: str = "*") -> None:
        """Queue behaviours for the next requests (optionally only those with API key ``key``)."""
        self.scripts[key].extend(resolve(b) for b in behaviors)

    def reset(self) -> None:
        """Forget scripts, defaults and statistics."""
        self.default = resolve(None)
        self.key_defaults.clear()
        self.scripts.clear()
        self.requests = self.prompt_tokens = self.completion_tokens = self.max_active = 0
        self.by_path.clear()
        self.last.clear()

    def stats(self) -> dict[str, Any]:
        """Counts and the token totals reported in usage."""
        return {
            "requests": self.requests,
            "by_path": dict(self.by_path),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "max_active": self.max_active,
        }

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve in the running loop; returns the base URL (``http://host:port/v1``)."""
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, backlog=2048)
        await site.start()
        bound = self._runner.addresses[0][1]
        self.url = f"http://{host}:{bound}/v1"
        return self.url

    async def stop(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ----------------------------------------------------------------- selection

    def _choose(self, request: web.Request, payload: dict[str, Any] | None) -> dict[str, Any]:
        header = request.headers.get("X-Fake-Behavior")
        if header:
            return resolve(header)
        if payload is not None:
            for msg in reversed(payload.get("messages") or []):
                if isinstance(msg, dict) and msg.get("role") == "user":
                    match = _DIRECTIVE.search(_text(msg.get("content")))
                    if match:
                        return resolve(match.group(1))
                    break
        key = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        for k in (key, "*"):
            queue = self.scripts.get(k)
            if queue:
                return queue.popleft()
        return self.key_defaults.get(key, self.default)

    # ----------------------------------------------------------------- app

    def _make_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_get("/v1/models", self._models)
        app.router.add_route("*", "/tools/{name}", self._tool)
        app.router.add_post("/_control/default", self._ctl_default)
        app.router.add_post("/_control/script", self._ctl_script)
        app.router.add_post("/_control/reset", self._ctl_reset)
        app.router.add_get("/_control/stats", self._ctl_stats)
        return app

    async def _ctl_default(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.set_default(body.get("behavior"), body.get("key"))
        return web.json_response({"ok": True})

    async def _ctl_script(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.script(*body.get("behaviors", []), key=body.get("key") or "*")
        return web.json_response({"ok": True, "queued": sum(len(q) for q in self.scripts.values())})

    async def _ctl_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"ok": True})

    async def _ctl_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"object": "list", "data": [{"id": "fake-model", "object": "model", "created": 0, "owned_by": "fake"}]}
        )

    def _track(self, request: web.Request, payload: dict[str, Any] | None) -> None:
        self.requests += 1
        self.by_path[request.path] += 1
        self.last.append(
            {
                "path": request.path,
                "authorization": request.headers.get("Authorization"),
                "task": request.headers.get("X-Agentfleet-Task"),
                "model": payload.get("model") if payload else None,
                "tools": [t.get("function", {}).get("name") for t in payload.get("tools") or []] if payload else [],
                "tool_choice": payload.get("tool_choice") if payload else None,
                "stream_options": payload.get("stream_options") if payload else None,
                "max_tokens": payload.get("max_tokens") if payload else None,
            }
        )

    async def _pre(self, request: web.Request, beh: dict[str, Any]) -> web.StreamResponse | None:
        """Latency and the faults that do not depend on the endpoint."""
        if beh.get("latency_ms"):
            await asyncio.sleep(float(beh["latency_ms"]) / 1000)
        mode = beh.get("mode", "ok")
        if mode == "hang":  # until the client gives up (or an hour passes)
            for _ in range(72000):
                if request.transport is None or request.transport.is_closing():
                    break
                await asyncio.sleep(0.05)
            return web.Response(status=504)
        if mode == "reset":
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=500)
        if mode == "error":
            status = int(beh.get("status", 500))
            headers = {"Retry-After": str(beh["retry_after"])} if beh.get("retry_after") is not None else {}
            body = {
                "error": {
                    "message": beh.get("message", f"fake upstream error {status}"),
                    "type": "server_error" if status >= 500 else "invalid_request_error",
                    "code": beh.get("code", f"fake_{status}"),
                }
            }
            return web.json_response(body, status=status, headers=headers)
        if mode == "garbage":
            return web.Response(body=b"{this is not json", content_type="application/json")
        return None

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        payload = await request.json()
        self._track(request, payload)
        beh = self._choose(request, payload)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            early = await self._pre(request, beh)
            if early is not None:
                return early
            return await self._complete(request, payload, beh)
        finally:
            self.active -= 1

    def _usage(
        self, payload: dict[str, Any], beh: dict[str, Any], text: str, calls: list[dict[str, Any]]
    ) -> dict[str, int]:
        prompt = int(beh.get("prompt_tokens") or count_prompt_tokens(payload.get("messages") or []))
        natural = max(1, len(text.split()) + sum(2 + len(c["arguments"]) // 4 for c in calls))
        completion = int(beh.get("completion_tokens") or natural)
        cap = payload.get("max_completion_tokens") or payload.get("max_tokens")
        if isinstance(cap, int) and not beh.get("ignore_max_tokens"):
            completion = min(completion, cap)
        self.prompt_tokens += prompt
        self.completion_tokens += completion
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    @staticmethod
    def _calls(payload: dict[str, Any], beh: dict[str, Any]) -> list[dict[str, Any]]:
        if beh.get("mode") != "tool_call":
            return []
        calls = beh.get("tool_calls")
        if not calls:
            tools = payload.get("tools") or []
            name = tools[0]["function"]["name"] if tools else "search"
            calls = [{"name": name, "arguments": json.dumps({"query": "fake"})}]
        return [
            {
                "name": c["name"],
                "arguments": c["arguments"] if isinstance(c["arguments"], str) else json.dumps(c["arguments"]),
            }
            for c in calls
        ]

    async def _complete(self, request: web.Request, payload: dict[str, Any], beh: dict[str, Any]) -> web.StreamResponse:
        calls = self._calls(payload, beh)
        text = "" if calls else str(beh.get("text", DEFAULT_TEXT))
        cid = f"chatcmpl-{uuid.uuid4().hex[:16]}"
        created = int(time.time())
        model = payload.get("model", "fake-model")
        tool_calls = [
            {
                "id": f"call_{uuid.uuid4().hex[:12]}",
                "type": "function",
                "function": {"name": c["name"], "arguments": c["arguments"]},
            }
            for c in calls
        ]
        usage = self._usage(payload, beh, text, calls) if beh.get("usage", True) else None
        finish = "tool_calls" if calls else "stop"
        if not payload.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": text or None}
            if tool_calls:
                message["tool_calls"] = tool_calls
            body = {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
            }
            if usage is not None:
                body["usage"] = usage
            raw = json.dumps(body).encode()
            if beh.get("mode") == "truncate":
                resp = web.StreamResponse(headers={"Content-Type": "application/json", "Content-Length": str(len(raw))})
                await resp.prepare(request)
                await resp.write(raw[: len(raw) // 2])
                if request.transport is not None:
                    request.transport.abort()
                return resp
            return web.Response(body=raw, content_type="application/json")
        return await self._stream(
            request,
            payload,
            beh,
            text=text,
            tool_calls=tool_calls,
            usage=usage,
            envelope={"id": cid, "object": "chat.completion.chunk", "created": created, "model": model},
        )

    async def _stream(
        self,
        request: web.Request,
        payload: dict[str, Any],
        beh: dict[str, Any],
        *,
        text: str,
        tool_calls: list[dict[str, Any]],
        usage: dict[str, int] | None,
        envelope: dict[str, Any],
    ) -> web.StreamResponse:
        include_usage = bool((payload.get("stream_options") or {}).get("include_usage"))
        chunks: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
        words = text.split(" ") if text else []
        chunks += [{"content": (w if i == 0 else " " + w)} for i, w in enumerate(words)]
        for i, tc in enumerate(tool_calls):
            args = tc["function"]["arguments"]
            third = max(1, len(args) // 3)
            chunks.append(
                {
                    "tool_calls": [
                        {
                            "index": i,
                            "id": tc["id"],
                            "type": "function",
                            "function": {"name": tc["function"]["name"], "arguments": ""},
                        }
                    ]
                }
            )
            chunks += [
                {"tool_calls": [{"index": i, "function": {"arguments": args[j : j + third]}}]}
                for j in range(0, len(args), third)
            ]
        events = [{**envelope, "choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in chunks]
        events.append(
            {
                **envelope,
                "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls" if tool_calls else "stop"}],
            }
        )
        if include_usage and usage is not None:
            events.append({**envelope, "choices": [], "usage": usage})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        delay = float(beh.get("chunk_delay_ms", 0)) / 1000
        cut = int(beh["truncate_after"]) if beh.get("mode") == "truncate" else None
        try:
            for n, event in enumerate(events):
                if cut is not None and n >= cut:
                    if request.transport is not None:
                        request.transport.abort()
                    return resp
                if delay and n:
                    await asyncio.sleep(delay)
                await resp.write(b"data: " + json.dumps(event).encode() + b"\n\n")
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
        except ConnectionError:  # the client (the guard) hung up: nothing left to do
            pass
        return resp

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        payload = await request.json()
        self._track(request, payload)
        beh = self._choose(request, None)
        early = await self._pre(request, beh)
        if early is not None:
            return early
        inputs = payload.get("input")
        items = inputs if isinstance(inputs, list) else [inputs]
        tokens = sum(math.ceil(len(str(i)) / 4) for i in items)
        self.prompt_tokens += tokens
        data = [{"object": "embedding", "index": i, "embedding": [0.1] * 8} for i in range(len(items))]
        return web.json_response(
            {
                "object": "list",
                "data": data,
                "model": payload.get("model", "fake-embed"),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    async def _tool(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self._track(request, None)
        beh = self._choose(request, None)
        early = await self._pre(request, beh)
        if early is not None:
            return early
        if "text" in beh:
            return web.Response(text=str(beh["text"]), content_type=str(beh.get("content_type", "text/plain")))
        return web.json_response(
            {"result": f"tool {request.match_info['name']} ran", "echo": body.decode("utf-8", "replace")[:1000]}
        )


async def _serve(host: str, port: int, default: str | None) -> None:
    fake = FakeLLM(default)
    url = await fake.start(host, port)
    print(f"fake-llm listening on {url.removesuffix('/v1')}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    import signal

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await fake.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fault-injecting fake OpenAI-compatible API.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8900)
    parser.add_argument("--default", help="default behaviour: a preset name or a JSON object")
    args = parser.parse_args(argv)
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover
        runner = asyncio.Runner()
    with runner:
        runner.run(_serve(args.host, args.port, args.default))
    return 0


if __name__ == "__main__":
    sys.exit(main())
