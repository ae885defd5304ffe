"""A held tool call at a real guard (in process) against the real API server: the guard creates
the AgentApproval with the agent's ServiceAccount token; the tool is not called before a person
approves (an impersonated user), runs once after; a denial and a timeout refuse it with the
documented errors; the audit trail records request and decision."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from agentfleet.guard.app import Server
from agentfleet.guard.config import build_config, listeners
from agentfleet.guard.state import Guard
from hack.harness.kube import Kube
from tests.guard.support import FAST, UPSTREAM_KEY, base_config, merge
from tests.integration.test_approvals import setup

pytestmark = pytest.mark.integration


async def wait_for(check: Any, within: float, what: str) -> Any:
    loop = asyncio.get_running_loop()
    end = loop.time() + within
    while loop.time() < end:
        if value := await check():
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_held_call(crds_installed: Kube, namespace: str, tmp_path: Path) -> None:
    kube, ns = crds_installed, namespace
    setup(kube, ns)
    token = kube.kubectl("-n", ns, "create", "token", "support-agent", "--duration=1h").stdout.strip()
    (tmp_path / "token").write_text(token)
    view = json.loads(kube.kubectl("config", "view", "--raw", "-o", "json").stdout)
    api_url = view["clusters"][0]["cluster"]["server"]
    ca = view["clusters"][0]["cluster"].get("certificate-authority")
    asyncio.run(scenario(kube, ns, tmp_path, api_url, ca))


async def scenario(kube: Kube, ns: str, tmp: Path, api_url: str, ca: str | None) -> None:
    calls: list[dict[str, Any]] = []

    async def refund(request: web.Request) -> web.Response:
        calls.append(await request.json())
        return web.json_response({"refunded": True})

    app = web.Application()
    app.router.add_post("/refund", refund)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    audit_file = tmp / "audit.jsonl"
    cfg = build_config(
        None,
        merge(
            base_config("http://127.0.0.1:1/v1", audit_file),
            {
                "namespace": ns,
                "tools": [
                    {
                        "name": "refund",
                        "endpoint": f"http://127.0.0.1:{port}/refund",
                        "approval": {"when": [{"argument": "amount", "greaterThan": "100"}], "timeout": "3s"},
                    }
                ],
                "allowed_tools": ["refund"],
                "approvals": {"api_url": api_url, "ca_file": ca, "token_file": str(tmp / "token")},
            },
        ),
    )
    guard = Guard(cfg, FAST, api_key=UPSTREAM_KEY)
    server = Server(guard, listeners(cfg, api_port=0, metrics_port=0))
    await server.start()
    try:
        async with aiohttp.ClientSession() as http:

            async def call(amount: int) -> tuple[int, dict[str, Any]]:
                async with http.post(f"{server.api_url}/tools/refund", json={"amount": amount}) as resp:
                    return resp.status, await resp.json()

            # under the limit: not held
            assert (await call(50))[0] == 200 and len(calls) == 1

            async def pending() -> list[dict[str, Any]]:
                items = await asyncio.to_thread(kube.get_json, "-n", ns, "agentapprovals")
                return [i for i in items["items"] if "decision" not in i["spec"] and i["spec"]["request"]["pod"]]

            # approved: runs after the decision and not before
            held = asyncio.create_task(call(500))
            [item] = await wait_for(pending, 10, "the approval")
            name = item["metadata"]["name"]
            assert item["spec"]["request"]["arguments"] == '{"amount": 500}'
            await asyncio.sleep(0.5)
            assert not held.done() and len(calls) == 1
            patch = json.dumps({"spec": {"decision": {"state": "Approved", "decidedBy": "alice"}}})
            await asyncio.to_thread(
                kube.kubectl, "--as=alice", "-n", ns, "patch", "agentapproval", name, "--type=merge", "-p", patch
            )
            status, body = await asyncio.wait_for(held, 10)
            assert status == 200 and body == {"refunded": True} and calls[-1] == {"amount": 500}

            # denied
            held = asyncio.create_task(call(700))
            [item] = [i for i in await wait_for(pending, 10, "the approval") if i["metadata"]["name"] != name]
            patch = json.dumps({"spec": {"decision": {"state": "Denied", "decidedBy": "alice", "reason": "too much"}}})
            await asyncio.to_thread(
                kube.kubectl,
                "--as=alice", "-n", ns, "patch", "agentapproval", item["metadata"]["name"], "--type=merge", "-p", patch,
            )  # fmt: skip
            status, body = await asyncio.wait_for(held, 10)
            assert status == 403 and body["error"]["code"] == "approval_denied", body
            assert "by alice" in body["error"]["message"] and "too much" in body["error"]["message"]

            # nobody decides: refused at the deadline
            status, body = await asyncio.wait_for(call(900), 15)
            assert status == 403 and body["error"]["code"] == "approval_timeout", body
            assert len(calls) == 2  # only the approved call and the small one ran
    finally:
        await server.stop()
        await runner.cleanup()
    records = [json.loads(line) for line in audit_file.read_text().splitlines()]
    kinds = [(r.get("kind") or r.get("event"), r.get("state")) for r in records]
    assert ("approval_requested", None) in kinds
    decided = [r for r in records if (r.get("kind") or r.get("event")) == "approval_decided"]
    assert [d["state"] for d in decided] == ["Approved", "Denied", "Expired"], decided
    assert decided[0]["decided_by"] == "alice"
    phases: dict[str, str] = {
        i["metadata"]["name"]: (i.get("status") or {}).get("phase", "")
        for i in kube.get_json("-n", ns, "agentapprovals")["items"]
    }
    assert sorted(phases.values()) == ["Approved", "Denied", "Expired"], phases
