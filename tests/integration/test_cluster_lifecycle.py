"""hack/cluster is idempotent and cleans up after itself (run on a second, private port range)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

import pytest

from tests.conftest import HACK

pytestmark = pytest.mark.integration


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(HACK / "cluster"), *args], env=env, capture_output=True, text=True, timeout=180, check=False
    )


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for init to reap it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_up_twice_then_down_leaves_no_process_and_no_port(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "AGENTFLEET_PORT_BASE": "17400",
        "AGENTFLEET_RUN_DIR": str(tmp_path / "run"),
        "AGENTFLEET_NODES": "1",
    }
    ports = json.loads(run(env, "ports").stdout)
    try:
        first = run(env, "up", "--no-prometheus")
        assert first.returncode == 0, first.stdout + first.stderr
        pids = [int(p.read_text()) for p in (tmp_path / "run" / "pids").glob("*.pid")]
        assert len(pids) == 5
        second = run(env, "up", "--no-prometheus")  # idempotent: nothing restarted
        assert second.returncode == 0, second.stdout + second.stderr
        assert sorted(int(p.read_text()) for p in (tmp_path / "run" / "pids").glob("*.pid")) == sorted(pids)
        assert run(env, "status").stdout.count("running") == 5
    finally:
        down = run(env, "down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert not [pid for pid in pids if alive(pid)]
    assert not [name for name, port in ports.items() if listening(port)]
    assert not (tmp_path / "run").exists()
