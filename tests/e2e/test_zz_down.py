"""Runs last (pytest orders the files by name): the node is taken down with pods still running;
no process, mount, network namespace, cgroup, firewall rule, ipset, link, sysctl or state
directory may remain."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from hack.harness.kube import ROOT
from tests.e2e.machine import processes_matching, snapshot
from tests.e2e.support import NETNS, RUN_DIR, FakeLLM, RealNode

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.timeout(900)]


def test_down_leaves_the_machine_as_it_was(real_node: RealNode, fake_llm: FakeLLM) -> None:
    """Runs last: the node is taken down with pods still running; no process, mount, network
    namespace, cgroup, firewall rule, ipset, link, sysctl or state directory may remain."""
    node_ctr = [str(ROOT / "hack" / "node"), "ctr", "containers", "ls", "-q"]
    listed = subprocess.run(node_ctr, env=real_node.env, capture_output=True, text=True, timeout=30, check=True)
    containers = listed.stdout.split()
    assert len(containers) >= 2, f"expected running containers to be cleaned up, got {containers}"
    t0 = time.monotonic()
    res = real_node.down()
    real_node.timings["down"] = time.monotonic() - t0
    print("timings:", json.dumps({k: round(v, 1) for k, v in real_node.timings.items()}))
    assert res.returncode == 0, f"hack/cluster down failed:\n{res.stdout}\n{res.stderr}"
    left = processes_matching(
        real_node.netns_inode, real_node.mntns_inode, (str(RUN_DIR), f"/run/netns/{NETNS}", *containers)
    )
    assert left == [], f"processes left behind: {left}"
    deadline = time.monotonic() + 10  # a cgroup can stay busy for a moment after its last process
    diff = real_node.before.diff(snapshot())
    while diff and time.monotonic() < deadline:
        time.sleep(0.2)
        diff = real_node.before.diff(snapshot())
    assert diff == {}, f"the machine changed: {json.dumps(diff, indent=1, default=str)[:5000]}"
    assert not RUN_DIR.exists()
