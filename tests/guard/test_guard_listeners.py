"""Two listeners: the LLM API and tools on loopback only, metrics/health/audit head on their own port.

Only the agent in the same pod may spend the budget or call the tools, so the API listener can
only be bound to a loopback address; Prometheus, the kubelet and the operator reach a second
port that serves no API. The bind check reads the guard process's listening sockets from /proc.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import signal
import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from agentfleet.audit import Anchor, chain_head, verify
from agentfleet.guard import cli
from agentfleet.guard.config import ConfigError, build_config, is_loopback, listeners
from hack.harness.fake_llm import FakeLLM
from tests.guard.support import AGENTFLEET, USER, MakeGuard, start, wait_for, write_config

CFG = {"namespace": "n", "agent": "a", "revision": "r", "model": {"name": "m", "endpoint": "http://127.0.0.1:9/v1"}}


@pytest.mark.unit
def test_the_api_listener_is_loopback_only() -> None:
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        assert is_loopback(host) and listeners(build_config(None, {**CFG, "listen_host": host})).api_host == host
    for host in ("0.0.0.0", "::", "10.1.2.3", "guard.example", ""):
        with pytest.raises(ConfigError, match="not a loopback address"):
            listeners(build_config(None, {**CFG, "listen_host": host}))
    defaults = listeners(build_config(None, CFG))
    assert (defaults.api_host, defaults.api_port, defaults.metrics_host, defaults.metrics_port) == (
        "127.0.0.1",
        4000,
        "0.0.0.0",
        9090,
    )
    with pytest.raises(ConfigError, match="must differ"):
        listeners(build_config(None, {**CFG, "listen_port": 9090}))
    assert listeners(build_config(None, CFG), api_port=0, metrics_port=0).metrics_port == 0


@pytest.mark.unit
def test_the_old_single_port_config_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """What the operator rendered before (API on 0.0.0.0:4000) fails loudly instead of exposing the API."""
    path = tmp_path / "guard.yaml"
    path.write_text(yaml.safe_dump({**CFG, "listenHost": "0.0.0.0", "listenPort": 4000}))
    assert cli.main(["--config", str(path)]) == 2
    assert "metricsHost:metricsPort" in capsys.readouterr().err
    assert cli.main(["--config", str(path), "--host", "127.0.0.1", "--check"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["listenHost"], shown["metricsHost"], shown["metricsPort"]) == ("127.0.0.1", "0.0.0.0", 9090)


async def test_the_metrics_port_serves_no_api(make_guard: MakeGuard, fake: FakeLLM) -> None:
    h = await make_guard(tools=[{"name": "search", "endpoint": fake.url.removesuffix("/v1") + "/tools/search"}])
    await h.client().chat.completions.create(model="x", messages=USER)
    async with aiohttp.ClientSession() as s:
        async with s.get(h.metrics_url + "/metrics") as r:
            assert r.status == 200 and "agentfleet_requests_total" in await r.text()
        for path in ("/healthz", "/readyz"):
            async with s.get(h.metrics_url + path) as r:
                assert r.status == 200, path
        before = fake.requests
        for method, path in (("POST", "/v1/chat/completions"), ("POST", "/v1/embeddings"), ("POST", "/tools/search")):
            async with s.request(method, h.metrics_url + path, json={"model": "x", "messages": USER}) as r:
                body = await r.json()
                assert r.status == 404 and body["error"]["code"] == "invalid_request", path
        assert fake.requests == before and fake.by_path.get("/tools/search", 0) == 0
        async with s.get(h.metrics_url + "/v1/models") as r:
            assert r.status == 404


async def test_the_audit_head_is_served_and_anchors_the_trail(make_guard: MakeGuard, fake: FakeLLM) -> None:
    h = await make_guard()
    await h.client().chat.completions.create(model="x", messages=USER)
    records = await h.audit_records()
    async with aiohttp.ClientSession() as s, s.get(h.metrics_url + "/audit/head") as r:
        head = await r.json()
    assert (head["seq"], head["hash"]) == (records[-1]["seq"], records[-1]["hash"])
    assert (head["agent"], head["anchor"]) == ("support", f"{head['seq']}:{head['hash']}")
    await wait_for(lambda: chain_head(h.audit_file) == (head["seq"], head["hash"]), what="the file to catch up")
    assert verify([h.audit_file], [Anchor.parse(head["anchor"])]).ok
    published = json.loads((h.audit_file.parent / "audit-0.head.json").read_text())
    assert published == {"seq": head["seq"], "hash": head["hash"]}


def listening_sockets(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket in LISTEN state that process ``pid`` holds."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found: set[tuple[str, int]] = set()
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in inodes:  # 0A: LISTEN
                continue
            hex_addr, hex_port = fields[1].split(":")
            raw = bytes.fromhex(hex_addr)  # 32-bit words in host (little-endian) order
            packed = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            found.add((socket.inet_ntop(family, packed), int(hex_port, 16)))
    return found


@pytest.mark.integration
async def test_the_guard_process_binds_the_api_to_loopback_only(fake_process: str, tmp_path: Path) -> None:
    config = write_config(tmp_path, fake_process)
    proc, line = await asyncio.to_thread(
        start,
        [AGENTFLEET, "guard", "--config", str(config), "--port", "0"],
        '"event": "listening"',
        tmp_path / "guard.log",
        "stderr",
    )
    try:
        event: dict[str, Any] = json.loads(line)
        api, metrics = event["port"], event["metrics_port"]
        assert event["metrics_host"] == "0.0.0.0" and api != metrics
        bound = listening_sockets(proc.pid)
        assert bound == {("127.0.0.1", api), ("0.0.0.0", metrics)}, bound
        # Nothing on any non-loopback address serves the API port: its only socket is on 127.0.0.1.
        assert not [a for a, p in bound if p == api and not ipaddress.ip_address(a).is_loopback]
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{metrics}/metrics") as r:
                assert r.status == 200 and "agentfleet_requests_total" in await r.text()
            async with s.post(f"http://127.0.0.1:{metrics}/v1/chat/completions", json={}) as r:
                assert r.status == 404
            async with s.get(f"http://127.0.0.1:{api}/v1/models") as r:
                assert r.status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0
