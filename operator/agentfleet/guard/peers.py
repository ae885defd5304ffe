"""Calls between agents: the caller's side (``/agents/NAME/...`` on loopback) and the callee's
side (the peer listener), with the checks that keep a swarm from amplifying one task.

An agent calls another through its *own* guard, on loopback, like everything else it does::

    POST http://127.0.0.1:4000/agents/researcher/v1/chat/completions
    X-Agentfleet-Task: t-42

The caller's guard (``call_sub_agent``) lets the call through only if the callee is one of its
``sub_agents.callees`` (``permissions.subAgents`` after the policy check), the task has calls
left (``max_calls_per_task``) and the chain is not too deep (``max_depth``); it counts and audits
the call, and forwards it to the callee's Service on the callee guard's peer port with the
projected ServiceAccount token whose audience names the callee (mounted into the guard alone)
and the call's depth. The callee's guard (``PeerServer``) verifies the token (``peer_auth``),
refuses a depth beyond its own ``max_depth``, counts and audits the call, and forwards it to its
agent on loopback (``AGENTFLEET_SERVE_PORT``); whatever the callee agent then does goes through
its own guard, under its own budgets.

Depth does not trust the agent: a guard that served a call at depth d within the last task
duration (or is serving one) makes every call of its agent at depth d+1 or more, whatever task
header the agent sends, so an agent cannot shed depth by dropping or inventing headers. A pod
that both serves calls and starts tasks of its own thus gets the deeper of the two depths.

Bodies pass through untouched in both directions (the callee's API is the callee agent's, by
convention OpenAI chat completions); only ``Content-Type`` and ``Accept`` of the agent's headers
are forwarded, never its ``Authorization``.
"""

from __future__ import annotations

import asyncio
import re
import time
import weakref
from collections import OrderedDict
from pathlib import Path

import aiohttp
from aiohttp import web
from prometheus_client import Counter

from agentfleet.api.guardconfig import SubAgentRoute
from agentfleet.guard.config import TASK_HEADER, parse_duration
from agentfleet.guard.errors import Code, GuardError, invalid
from agentfleet.guard.httpio import error_response, read_body
from agentfleet.guard.metrics import BASE
from agentfleet.guard.peer_auth import Caller, PeerAuthError, Verifier
from agentfleet.guard.state import Guard, log

DEPTH_HEADER = "X-Agentfleet-Depth"
"""Depth of a call between agents: 1 for a call made by an agent no one called."""
CALLER_HEADER = "X-Agentfleet-Caller"
"""On calls the callee guard forwards to its agent: the calling agent's name."""
MAX_TASK_ID = 256
TOKEN_CACHE_SECONDS = 30.0
"""How long a read token is reused: the kubelet rewrites it at 80% of its life (minutes at
least), and an old one stays valid until it expires."""
FORWARDED_HEADERS = ("Content-Type", "Accept")
_TAIL = re.compile(r"^[A-Za-z0-9._~/-]{0,512}$")
UNAUTHENTICATED = "_unauthenticated"
"""Metric label of inbound calls whose caller is unknown."""
OTHER = "_other"
"""Metric label of outbound calls to a name that is not a permitted callee."""


def check_tail(tail: str) -> str:
    """The path to call on the callee: plain characters, no ``..`` segments (400 otherwise)."""
    if not _TAIL.match(tail) or ".." in tail.split("/"):
        raise invalid("the sub-agent path may hold only letters, digits and ._~/- and no '..' segment")
    return "/" + tail.lstrip("/")


def check_callee(routes: dict[str, SubAgentRoute], callee: str) -> SubAgentRoute:
    """The route to a permitted callee, or 403."""
    route = routes.get(callee)
    if route is None:
        allowed = ", ".join(sorted(routes)) or "none"
        raise GuardError(
            Code.SUB_AGENT_NOT_PERMITTED,
            f"agent {callee[:63]!r} is not one this agent may call (permissions.subAgents: {allowed})",
            403,
        )
    return route


def check_task(task_id: str | None) -> str:
    """Sub-agent calls must name their task (fan-out is counted per task)."""
    if not task_id:
        raise invalid(f"a sub-agent call needs the {TASK_HEADER} header (calls are counted per task)")
    if len(task_id) > MAX_TASK_ID:
        raise invalid(f"{TASK_HEADER} is longer than {MAX_TASK_ID} characters")
    return task_id


def check_inbound_depth(value: str | None, max_depth: int) -> int:
    """The depth an inbound call claims: an integer in [1, max_depth] (403 beyond)."""
    if value is None or not value.isdigit() or len(value) > 3 or int(value) < 1:
        raise invalid(f"{DEPTH_HEADER} must be a positive integer")
    depth = int(value)
    if depth > max_depth:
        raise GuardError(Code.SUB_AGENT_DEPTH, f"call depth {depth} exceeds this agent's limit of {max_depth}", 403)
    return depth


class Depths:
    """The depth this pod's agent acts at: the deepest inbound call it is serving, or served
    within ``window`` seconds (0 when it has served none)."""

    def __init__(self, window: float) -> None:
        self.window = window
        self._active: dict[int, int] = {}
        self._last: dict[int, float] = {}

    def enter(self, depth: int, now: float) -> None:
        self._active[depth] = self._active.get(depth, 0) + 1
        self._last[depth] = now

    def leave(self, depth: int, now: float) -> None:
        left = self._active.get(depth, 0) - 1
        if left > 0:
            self._active[depth] = left
        else:
            self._active.pop(depth, None)
        self._last[depth] = now

    def current(self, now: float) -> int:
        recent = [d for d, at in self._last.items() if d in self._active or now - at <= self.window]
        return max(recent, default=0)


class FanOut:
    """Sub-agent calls made per task, for the most recently used ``capacity`` tasks."""

    def __init__(self, limit: int, capacity: int) -> None:
        self.limit = limit
        self.capacity = capacity
        self._calls: OrderedDict[str, int] = OrderedDict()

    def take(self, task_id: str) -> int:
        """Count one call of ``task_id`` (429 when it has none left); the count so far."""
        made = self._calls.get(task_id, 0)
        if made >= self.limit:
            raise GuardError(
                Code.SUB_AGENT_FAN_OUT,
                f"task {task_id[:64]!r} made its {self.limit} sub-agent calls; start a new task",
                429,
            )
        self._calls[task_id] = made + 1
        self._calls.move_to_end(task_id)
        while len(self._calls) > self.capacity:
            self._calls.popitem(last=False)
        return made + 1


class PeerState:
    """What one guard knows about calls between agents."""

    def __init__(self, guard: Guard) -> None:
        cfg = guard.cfg
        self.guard = guard
        self.routes = {r.name: r for r in cfg.sub_agents.callees}
        self.max_depth = cfg.sub_agents.max_depth
        self.call_timeout = parse_duration(cfg.sub_agents.call_timeout)
        self.depths = Depths(window=guard.limits.max_task_duration)
        self.fan_out = FanOut(cfg.sub_agents.max_calls_per_task, guard.tuning.max_tasks)
        self.verifier = Verifier(cfg.peer.auth, cfg.namespace) if cfg.peer is not None else None
        self.inbound = 0
        self.outbound = 0
        self.max_outbound = cfg.sub_agents.max_concurrent_calls
        self.peer_port = 0
        """The peer listener's port once bound (0: none)."""
        self._tokens: dict[str, tuple[float, str]] = {}
        base = (cfg.namespace, cfg.agent, cfg.revision, guard.model)
        self.calls = Counter(
            "agentfleet_sub_agent_calls",
            "Calls between agents, by direction (out: made by this agent; in: served), peer and outcome.",
            [*BASE, "direction", "peer", "outcome"],
            registry=guard.metrics.registry,
        )
        self._base = base
        for name in self.routes:
            self.calls.labels(*base, "out", name, "ok")

    def count(self, direction: str, peer: str, outcome: str) -> None:
        self.calls.labels(*self._base, direction, peer, outcome).inc()

    async def token(self, route: SubAgentRoute) -> str:
        """The projected token for ``route`` (re-read every ``TOKEN_CACHE_SECONDS``)."""
        now = time.monotonic()
        cached = self._tokens.get(route.name)
        if cached is not None and now - cached[0] < TOKEN_CACHE_SECONDS:
            return cached[1]
        try:
            text = (await asyncio.to_thread(Path(route.token_file).read_text, encoding="utf-8")).strip()
        except OSError as exc:
            raise GuardError(
                Code.UPSTREAM_UNAVAILABLE,
                f"the token for calling {route.name!r} cannot be read: {exc.strerror or exc}",
                503,
                retry_after=1,
                should_retry=True,
            ) from None
        if not text:
            raise GuardError(Code.UPSTREAM_UNAVAILABLE, f"the token for calling {route.name!r} is empty", 503)
        self._tokens[route.name] = (now, text)
        return text


_STATES: weakref.WeakKeyDictionary[Guard, PeerState] = weakref.WeakKeyDictionary()


def state_of(guard: Guard) -> PeerState:
    """The guard's peer state (created on first use; ``app`` creates it at start)."""
    state = _STATES.get(guard)
    if state is None:
        state = _STATES[guard] = PeerState(guard)
    return state


async def _relay(
    session: aiohttp.ClientSession,
    request: web.Request,
    url: str,
    headers: dict[str, str],
    body: bytes,
    within: float,
    limit: int,
    other: str,
) -> web.StreamResponse:
    """Send the call on and stream the answer back (status, type and body), all within
    ``within`` seconds, at most ``limit`` bytes of body. A failure before the answer starts is the
    guard's 504 (no answer in time) or 502 (``other`` cannot be reached); one after it cuts the
    connection (the status line is already sent)."""
    out: web.StreamResponse | None = None
    try:
        async with asyncio.timeout(within):
            async with session.request(request.method, url, data=body or None, headers=headers) as resp:
                out = web.StreamResponse(status=resp.status)
                if resp.content_type:
                    out.content_type = resp.content_type
                await out.prepare(request)
                sent = 0
                async for chunk in resp.content.iter_any():
                    sent += len(chunk)
                    if sent > limit:
                        raise aiohttp.ClientPayloadError(f"the answer exceeds {limit} bytes")
                    await out.write(chunk)
                await out.write_eof()
                return out
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        if out is None:
            if isinstance(exc, TimeoutError):
                raise GuardError(Code.UPSTREAM_UNAVAILABLE, f"{other} did not answer within {within:g}s", 504) from None
            detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise GuardError(
                Code.UPSTREAM_UNAVAILABLE, f"{other} cannot be reached: {detail}", 502, should_retry=True
            ) from None
        out.force_close()
        log("relay_cut", url=url, error=type(exc).__name__)
        return out


def _forwarded(request: web.Request) -> dict[str, str]:
    return {k: request.headers[k] for k in FORWARDED_HEADERS if k in request.headers}


# ------------------------------------------------------------------------------ caller's side


async def call_sub_agent(guard: Guard, request: web.Request) -> web.StreamResponse:
    """``/agents/{callee}/{tail}`` on the API listener (loopback): a call to another agent."""
    st = state_of(guard)
    callee = request.match_info["callee"]
    t0 = time.perf_counter()
    task_id = request.headers.get(TASK_HEADER)
    peer, outcome, status, reason, depth = OTHER, "rejected", 0, None, 0
    started = False
    try:
        with guard.slot():
            route = check_callee(st.routes, callee)
            peer = route.name
            path = check_tail(request.match_info["tail"])
            task = check_task(task_id)
            depth = st.depths.current(time.monotonic()) + 1
            if depth > st.max_depth:
                raise GuardError(
                    Code.SUB_AGENT_DEPTH,
                    f"this agent serves a call at depth {depth - 1}; a call from it would be at depth {depth}, "
                    f"beyond the limit of {st.max_depth}",
                    403,
                )
            if st.outbound >= st.max_outbound:
                raise GuardError(
                    Code.CONCURRENCY_LIMIT,
                    f"{st.max_outbound} sub-agent calls are already in flight; try again shortly",
                    429,
                    retry_after=1,
                    should_retry=True,
                )
            st.outbound += 1  # taken before the first await, so the cap holds under concurrency
            try:
                st.fan_out.take(task)
                body = await read_body(request)
                token = await st.token(route)
                headers = {
                    **_forwarded(request),
                    "Authorization": f"Bearer {token}",
                    DEPTH_HEADER: str(depth),
                    TASK_HEADER: task,
                }
                url = f"{route.url}{path}" + (f"?{request.query_string}" if request.query_string else "")
                started = True
                resp = await _relay(
                    guard.upstream.session,
                    request,
                    url,
                    headers,
                    body,
                    st.call_timeout,
                    guard.tuning.max_response_bytes,
                    f"agent {peer!r}",
                )
            finally:
                st.outbound -= 1
            status = resp.status
            outcome = "ok" if status < 400 else "error"
            return resp
    except GuardError as err:
        outcome = "rejected" if err.is_rejection else "error"
        status, reason = err.status, err.code.value
        return error_response(err)
    finally:
        st.count("out", peer, outcome)
        guard.audit.record(
            "sub_agent_call",
            callee=callee[:63],
            task=task_id[:MAX_TASK_ID] if task_id else None,
            depth=depth or None,
            decision="allow" if started else "reject" if outcome == "rejected" else "error",
            outcome=outcome,
            reason=reason,
            status=status,
            latency_ms=round((time.perf_counter() - t0) * 1000, 3),
        )


# ------------------------------------------------------------------------------ callee's side


async def serve_peer(guard: Guard, request: web.Request) -> web.StreamResponse:
    """Any request on the peer listener: verify the caller, then forward to this agent."""
    st = state_of(guard)
    peer_cfg = guard.cfg.peer
    assert peer_cfg is not None and st.verifier is not None  # the listener exists only with a peer config
    t0 = time.perf_counter()
    caller: Caller | None = None
    depth = 0
    entered = False
    outcome, status, reason, detail = "rejected", 0, None, None
    task_id = request.headers.get(TASK_HEADER)
    try:
        try:
            caller = st.verifier.verify(request.headers.get("Authorization"), time.time())
        except PeerAuthError as exc:
            code = Code.PEER_UNAUTHENTICATED if exc.status == 401 else Code.PEER_FORBIDDEN
            reason, detail = exc.reason, exc.message
            raise GuardError(code, f"caller refused: {exc.message}", exc.status) from None
        depth = check_inbound_depth(request.headers.get(DEPTH_HEADER), st.max_depth)
        task = check_task(task_id)
        path = check_tail(request.match_info["tail"])
        if st.inbound >= peer_cfg.max_inflight:
            raise GuardError(
                Code.CONCURRENCY_LIMIT,
                f"this agent is serving {peer_cfg.max_inflight} calls from other agents; try again shortly",
                429,
                retry_after=1,
                should_retry=True,
            )
        st.inbound += 1  # before the first await, so the cap holds under concurrency
        st.depths.enter(depth, time.monotonic())
        entered = True
        body = await read_body(request)
        headers = {**_forwarded(request), TASK_HEADER: task, CALLER_HEADER: caller.agent, DEPTH_HEADER: str(depth)}
        url = f"{peer_cfg.agent_url}{path}" + (f"?{request.query_string}" if request.query_string else "")
        resp = await _relay(
            guard.upstream.session,
            request,
            url,
            headers,
            body,
            st.call_timeout,
            guard.tuning.max_response_bytes,
            f"this agent (serving on {peer_cfg.agent_url})",
        )
        status = resp.status
        outcome = "ok" if status < 400 else "error"
        return resp
    except GuardError as err:
        outcome = "rejected" if err.is_rejection else "error"
        status, reason = err.status, reason or err.code.value
        return error_response(err)
    finally:
        if entered:
            st.inbound -= 1
            st.depths.leave(depth, time.monotonic())
        st.count("in", caller.agent if caller is not None else UNAUTHENTICATED, outcome)
        guard.audit.record(
            "peer_call",
            caller=caller.agent if caller is not None else None,
            caller_pod=caller.pod if caller is not None else None,
            task=task_id[:MAX_TASK_ID] if task_id else None,
            depth=depth or None,
            decision="reject" if outcome == "rejected" else "allow" if entered else "error",
            outcome=outcome,
            reason=reason,
            detail=detail,
            status=status,
            latency_ms=round((time.perf_counter() - t0) * 1000, 3),
        )


class PeerServer:
    """The peer listener (only when the config has ``peer``): nothing but ``serve_peer``."""

    def __init__(self, guard: Guard, max_line: int = 8190, max_headers: int = 128) -> None:
        self.guard = guard
        self.port = 0
        self._runner: web.AppRunner | None = None
        if guard.cfg.peer is None:
            return
        state_of(guard)  # fail at start on an unusable JWKS, not at the first call
        app = web.Application(client_max_size=guard.tuning.max_request_bytes)

        async def handler(request: web.Request) -> web.StreamResponse:
            try:
                return await serve_peer(guard, request)
            except Exception as exc:  # one request, never the process
                log("internal_error", path="peer", error=f"{type(exc).__name__}: {exc}")
                return error_response(GuardError(Code.INTERNAL_ERROR, "internal guard error", 500))

        app.router.add_post("/{tail:.*}", handler)  # the methods the caller's guard forwards
        app.router.add_get("/{tail:.*}", handler, allow_head=False)
        self._runner = web.AppRunner(
            app,
            access_log=None,
            shutdown_timeout=guard.tuning.drain_timeout,
            max_line_size=max_line,
            max_field_size=max_line,
            max_headers=max_headers,
        )

    async def start(self) -> None:
        peer = self.guard.cfg.peer
        if self._runner is None or peer is None:
            return
        await self._runner.setup()
        await web.TCPSite(self._runner, peer.host, peer.port).start()
        self.port = state_of(self.guard).peer_port = self._runner.addresses[0][1]
        log("peer_listening", host=peer.host, port=self.port, agent_url=peer.agent_url, audience=peer.auth.audience)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
