"""hack/cluster is idempotent and cleans up after itself (run on a second, private port range)."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import pytest

from hack.harness.kube import Cluster
from hack.harness.processes import alive

pytestmark = pytest.mark.integration


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_up_twice_then_down_leaves_no_process_and_no_port(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path / "run", port_base=17400, nodes=1)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return cluster.run(*args, check=False, timeout=180)

    ports = json.loads(run("ports").stdout)
    try:
        first = run("up", "--no-prometheus")
        assert first.returncode == 0, first.stdout + first.stderr
        pids = [int(p.read_text()) for p in (tmp_path / "run" / "pids").glob("*.pid")]
        assert len(pids) == 5
        second = run("up", "--no-prometheus")  # idempotent: nothing restarted
        assert second.returncode == 0, second.stdout + second.stderr
        assert sorted(int(p.read_text()) for p in (tmp_path / "run" / "pids").glob("*.pid")) == sorted(pids)
        assert run("status").stdout.count("running") == 5
    finally:
        down = run("down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert not [pid for pid in pids if alive(pid)]
    assert not [name for name, port in ports.items() if listening(port)]
    assert not (tmp_path / "run").exists()
