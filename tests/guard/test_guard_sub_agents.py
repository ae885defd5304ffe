"""Calls between agents through real guards: A's agent calls its own guard on loopback, A's guard
presents a ServiceAccount token (signed by a test issuer, the way the kubelet's are) to B's peer
port, and B's guard verifies it and forwards to B's agent. Also as real guard processes."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import yaml
from aiohttp import web

from agentfleet.api.guardconfig import peer_audience
from agentfleet.guard import peers
from hack.harness.fake_llm import FakeLLM
from tests.guard.peer_tokens import Issuer
from tests.guard.support import AGENTFLEET, Harness, MakeGuard, base_config, merge, start, wait_for

CHAT = {"model": "any", "messages": [{"role": "user", "content": "find sources on X"}]}


@dataclass
class FakeAgent:
    """An agent's own server (what the callee guard forwards to): records what it was sent, and
    answers, possibly after calling ``then`` (a sub-agent call of its own)."""

    then: Callable[[web.Request], Awaitable[tuple[int, Any]]] | None = None
    seen: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""
    runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append({"path": request.path, "headers": dict(request.headers), "body": await request.json()})
        extra: dict[str, Any] = {}
        if self.then is not None:
            extra["sub_status"], extra["sub_body"] = await self.then(request)
        answer = {"object": "chat.completion", "choices": [{"message": {"role": "assistant", "content": "done"}}]}
        return web.json_response({**answer, **extra})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"


@pytest_asyncio.fixture(loop_scope="session")
async def agents() -> AsyncIterator[Callable[..., Awaitable[FakeAgent]]]:
    made: list[FakeAgent] = []

    async def factory(**kwargs: Any) -> FakeAgent:
        agent = FakeAgent(**kwargs)
        await agent.start()
        made.append(agent)
        return agent

    yield factory
    for a in made:
        assert a.runner is not None
        await a.runner.cleanup()


@pytest.fixture(scope="module")
def issuer() -> Issuer:
    return Issuer()


def peer_config(issuer: Issuer, agent: str, agent_url: str) -> dict[str, Any]:
    return {
        "host": "127.0.0.1",
        "port": 0,
        "agent_url": agent_url,
        "auth": {"issuer": issuer.issuer, "jwks": issuer.jwks, "audience": peer_audience("team-a", agent)},
    }


def token_file(tmp_path: Path, issuer: Issuer, callee: str, caller: str = "support") -> str:
    path = tmp_path / f"{caller}-to-{callee}.token"
    path.write_text(issuer.token(peer_audience("team-a", callee), service_account=f"{caller}-agent") + "\n")
    return str(path)


def peer_url(h: Harness) -> str:
    return f"http://127.0.0.1:{peers.state_of(h.guard).peer_port}"


async def call(url: str, headers: dict[str, str] | None = None, body: Any = CHAT) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.post(url, json=body, headers=headers or {}) as r:
        return r.status, await r.json(content_type=None)


async def test_an_agent_calls_a_permitted_sub_agent_through_both_guards(
    make_guard: MakeGuard, agents: Callable[..., Awaitable[FakeAgent]], issuer: Issuer, tmp_path: Path
) -> None:
    researcher = await agents()
    b = await make_guard(agent="researcher", peer=peer_config(issuer, "researcher", researcher.url))
    a = await make_guard(
        sub_agents={
            "callees": [
                {"name": "researcher", "url": peer_url(b), "token_file": token_file(tmp_path, issuer, "researcher")}
            ],
            "max_calls_per_task": 2,
        }
    )
    headers = {"X-Agentfleet-Task": "t-1", "Authorization": "Bearer sk-agent-placeholder"}
    status, body = await call(a.url + "/agents/researcher/v1/chat/completions", headers)
    assert status == 200 and body["choices"][0]["message"]["content"] == "done"
    [seen] = researcher.seen
    assert seen["path"] == "/v1/chat/completions" and seen["body"] == CHAT
    got = {k.lower(): v for k, v in seen["headers"].items()}
    assert (got["x-agentfleet-caller"], got["x-agentfleet-depth"], got["x-agentfleet-task"]) == ("support", "1", "t-1")
    assert "authorization" not in got, "neither the token nor the agent's placeholder reaches the callee agent"

    # Fan-out: the task's second call passes, its third is refused before it leaves A.
    assert (await call(a.url + "/agents/researcher/v1/chat/completions", headers))[0] == 200
    status, body = await call(a.url + "/agents/researcher/v1/chat/completions", headers)
    assert status == 429 and body["error"]["code"] == "sub_agent_fan_out" and len(researcher.seen) == 2
    # Not permitted: a name outside permissions.subAgents never leaves A.
    status, body = await call(a.url + "/agents/planner/v1/chat/completions", {"X-Agentfleet-Task": "t-2"})
    assert status == 403 and body["error"]["code"] == "sub_agent_not_permitted"
    status, body = await call(a.url + "/agents/researcher/v1/chat/completions")
    assert status == 400 and "X-Agentfleet-Task" in body["error"]["message"]

    out = {"namespace": "team-a", "agent": "support", "revision": "rev1", "model": "gpt-test"}
    sample = a.guard.metrics.registry.get_sample_value
    assert (
        sample("agentfleet_sub_agent_calls_total", {**out, "direction": "out", "peer": "researcher", "outcome": "ok"})
        == 2
    )
    assert (
        sample("agentfleet_sub_agent_calls_total", {**out, "direction": "out", "peer": "_other", "outcome": "rejected"})
        == 1
    )
    into = {**out, "agent": "researcher", "direction": "in", "peer": "support", "outcome": "ok"}
    assert b.guard.metrics.registry.get_sample_value("agentfleet_sub_agent_calls_total", into) == 2
    made = [r for r in await a.audit_records() if r["kind"] == "sub_agent_call"]
    assert [(r["callee"], r["decision"], r.get("reason")) for r in made] == [
        ("researcher", "allow", None),
        ("researcher", "allow", None),
        ("researcher", "reject", "sub_agent_fan_out"),
        ("planner", "reject", "sub_agent_not_permitted"),
        ("researcher", "reject", "invalid_request"),
    ]
    served = [r for r in await b.audit_records() if r["kind"] == "peer_call"]
    assert [(r["caller"], r["decision"], r["depth"]) for r in served] == [("support", "allow", 1)] * 2


async def test_the_peer_port_refuses_anyone_without_a_token_for_this_agent(
    make_guard: MakeGuard, agents: Callable[..., Awaitable[FakeAgent]], issuer: Issuer
) -> None:
    researcher = await agents()
    b = await make_guard(agent="researcher", peer=peer_config(issuer, "researcher", researcher.url))
    url = peer_url(b) + "/v1/chat/completions"
    good = {"X-Agentfleet-Depth": "1", "X-Agentfleet-Task": "t"}
    now = int(time.time())
    attempts = {
        "no token": ({}, 401, "missing_token"),
        "another callee's token": (
            {"Authorization": "Bearer " + issuer.token(peer_audience("team-a", "planner"))},
            401,
            "wrong_audience",
        ),
        "expired": (
            {
                "Authorization": "Bearer "
                + issuer.token(peer_audience("team-a", "researcher"), exp=now - 100, iat=now - 700)
            },
            401,
            "expired",
        ),
        "forged": (
            {"Authorization": "Bearer " + Issuer(kid=issuer.kid).token(peer_audience("team-a", "researcher"))},
            401,
            "bad_signature",
        ),
        "other namespace": (
            {"Authorization": "Bearer " + issuer.token(peer_audience("team-a", "researcher"), namespace="team-b")},
            403,
            "wrong_namespace",
        ),
        "not an agent": (
            {
                "Authorization": "Bearer "
                + issuer.token(peer_audience("team-a", "researcher"), service_account="default")
            },
            403,
            "not_an_agent",
        ),
    }
    for what, (auth, status, _) in attempts.items():
        got, body = await call(url, {**good, **auth})
        assert got == status, (what, body)
        assert body["error"]["code"] == ("peer_unauthenticated" if status == 401 else "peer_forbidden"), what
    valid = {"Authorization": "Bearer " + issuer.token(peer_audience("team-a", "researcher"))}
    got, body = await call(url, {"X-Agentfleet-Depth": "4", "X-Agentfleet-Task": "t", **valid})
    assert got == 403 and body["error"]["code"] == "sub_agent_depth"
    async with aiohttp.ClientSession() as session, session.delete(url, headers={**good, **valid}) as r:
        assert r.status == 405
    assert researcher.seen == [], "nothing refused reached the agent"
    records = [r for r in await b.audit_records() if r["kind"] == "peer_call"]
    assert [r["reason"] for r in records] == [reason for _, _, reason in attempts.values()] + ["sub_agent_depth"]
    assert all(r["decision"] == "reject" for r in records)
    # The API listener is still loopback only, and the peer port serves no LLM API of B's own.
    assert b.server.where.api_host == "127.0.0.1"
    sample = b.guard.metrics.registry.get_sample_value
    labels = {"namespace": "team-a", "agent": "researcher", "revision": "rev1", "model": "gpt-test"}
    assert sample("agentfleet_requests_total", {**labels, "outcome": "ok"}) in (None, 0.0)


async def test_a_chain_is_limited_in_depth_whatever_the_agents_send(
    make_guard: MakeGuard, agents: Callable[..., Awaitable[FakeAgent]], issuer: Issuer, tmp_path: Path
) -> None:
    """A -> B -> C: B's agent calls C through B's guard while it serves A's call; the depth comes
    from B's guard, not from anything B's agent says. With max depth 1 the second hop is refused."""
    c_agent = await agents()
    c = await make_guard(agent="critic", peer=peer_config(issuer, "critic", c_agent.url))
    b_guard: list[Harness] = []

    async def b_calls_c(request: web.Request) -> tuple[int, Any]:
        # B's agent drops the depth header and invents a new task: neither lowers the depth.
        return await call(b_guard[0].url + "/agents/critic/v1/chat/completions", {"X-Agentfleet-Task": "fresh"})

    b_agent = await agents(then=b_calls_c)
    for max_depth, expect in ((2, 200), (1, 403)):
        b_agent.seen.clear()
        c_agent.seen.clear()
        b = await make_guard(
            agent="researcher",
            peer=peer_config(issuer, "researcher", b_agent.url),
            sub_agents={
                "callees": [
                    {
                        "name": "critic",
                        "url": peer_url(c),
                        "token_file": token_file(tmp_path, issuer, "critic", caller="researcher"),
                    }
                ],
                "max_depth": max_depth,
            },
        )
        b_guard[:] = [b]
        a = await make_guard(
            sub_agents={
                "callees": [
                    {"name": "researcher", "url": peer_url(b), "token_file": token_file(tmp_path, issuer, "researcher")}
                ]
            }
        )
        status, body = await call(a.url + "/agents/researcher/v1/chat/completions", {"X-Agentfleet-Task": "root"})
        assert status == 200 and body["sub_status"] == expect, (max_depth, body)
        if expect == 200:
            [seen] = c_agent.seen
            got = {k.lower(): v for k, v in seen["headers"].items()}
            assert (got["x-agentfleet-depth"], got["x-agentfleet-caller"]) == ("2", "researcher")
        else:
            assert body["sub_body"]["error"]["code"] == "sub_agent_depth" and c_agent.seen == []
        # After the call returned, B's agent still acts at depth 2 (within its task duration).
        status, _ = await call(b.url + "/agents/critic/v1/chat/completions", {"X-Agentfleet-Task": "later"})
        assert status == expect


async def test_calls_in_flight_are_capped_whatever_their_tasks(
    make_guard: MakeGuard, agents: Callable[..., Awaitable[FakeAgent]], issuer: Issuer, tmp_path: Path
) -> None:
    """Inventing a task id per call does not widen the fan-out at any moment."""
    release = asyncio.Event()

    async def hold(request: web.Request) -> tuple[int, Any]:
        await release.wait()
        return 200, None

    researcher = await agents(then=hold)
    b = await make_guard(agent="researcher", peer=peer_config(issuer, "researcher", researcher.url))
    route = {"name": "researcher", "url": peer_url(b), "token_file": token_file(tmp_path, issuer, "researcher")}
    a = await make_guard(sub_agents={"callees": [route], "max_concurrent_calls": 2})
    url = a.url + "/agents/researcher/v1/chat/completions"
    held = [asyncio.create_task(call(url, {"X-Agentfleet-Task": f"t-{i}"})) for i in range(2)]
    await wait_for(lambda: len(researcher.seen) == 2, what="two calls in flight")
    status, body = await call(url, {"X-Agentfleet-Task": "t-new"})
    assert status == 429 and body["error"]["code"] == "concurrency_limit" and len(researcher.seen) == 2
    release.set()
    assert [s for s, _ in await asyncio.gather(*held)] == [200, 200]
    assert (await call(url, {"X-Agentfleet-Task": "t-after"}))[0] == 200


@pytest.mark.timeout(60)
async def test_real_guard_processes_call_each_other(
    fake: FakeLLM, agents: Callable[..., Awaitable[FakeAgent]], issuer: Issuer, tmp_path: Path
) -> None:
    researcher = await agents()
    b_cfg = merge(
        base_config(fake.url, tmp_path / "b-audit.jsonl"),
        {"agent": "researcher", "peer": peer_config(issuer, "researcher", researcher.url)},
    )
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(b_cfg))
    b, line = start(
        [AGENTFLEET, "guard", "--config", str(tmp_path / "b.yaml"), "--port", "0"],
        '"peer_listening"',
        tmp_path / "b.log",
        stream="stderr",
    )
    try:
        b_port = json.loads(line)["port"]
        route = {
            "name": "researcher",
            "url": f"http://127.0.0.1:{b_port}",
            "token_file": token_file(tmp_path, issuer, "researcher"),
        }
        a_cfg = merge(base_config(fake.url, tmp_path / "a-audit.jsonl"), {"sub_agents": {"callees": [route]}})
        (tmp_path / "a.yaml").write_text(yaml.safe_dump(a_cfg))
        a, line = start(
            [AGENTFLEET, "guard", "--config", str(tmp_path / "a.yaml"), "--port", "0"],
            '"event": "listening"',
            tmp_path / "a.log",
            stream="stderr",
        )
        try:
            a_url = json.loads(line)["url"]
            status, body = await call(a_url + "/agents/researcher/v1/chat/completions", {"X-Agentfleet-Task": "p-1"})
            assert status == 200 and body["choices"][0]["message"]["content"] == "done"
            got = {k.lower(): v for k, v in researcher.seen[0]["headers"].items()}
            assert (got["x-agentfleet-caller"], got["x-agentfleet-depth"]) == ("support", "1")
            # Straight to B's peer port, without A's guard: refused.
            status, body = await call(f"http://127.0.0.1:{b_port}/v1/chat/completions", {"X-Agentfleet-Depth": "1"})
            assert status == 401 and len(researcher.seen) == 1
            await wait_for(
                lambda: (
                    (tmp_path / "b-audit.jsonl").exists()
                    and (tmp_path / "b-audit.jsonl").read_text().count('"peer_call"') == 2
                ),
                what="B's audit records",
            )
        finally:
            a.terminate()
            a.wait(10)
    finally:
        b.terminate()
        b.wait(10)
