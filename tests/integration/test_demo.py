"""`make demo` tells its whole story in real pods on a real node of its own (its own ports, state
and network namespace: ``hack/cluster up --real-node``), and ``hack/demo down`` takes it all down."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from hack.harness.kube import HACK, Cluster

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


def test_demo_runs_its_story_end_to_end(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path / "run", port_base=20400, nodes=2)
    env = cluster.env
    try:
        demo = subprocess.run([str(HACK / "demo")], env=env, capture_output=True, text=True, timeout=900, check=False)
        out = demo.stdout
        assert demo.returncode == 0, f"{out[-4000:]}\n{demo.stderr[-4000:]}"
        for line in (
            "Suspended=True  reason=loop_detected",
            "RolledBack=True  reason=error_rate_high",
            "BudgetExceeded=True",
            "kubectl agentfleet census",
            "denied request",
            "breach visible in Prometheus -> replicas=0",
            "Tear down:",
        ):
            assert line in out, f"missing {line!r} in the demo's output:\n{out[-4000:]}"
    finally:
        subprocess.run([str(HACK / "demo"), "down"], env=env, capture_output=True, timeout=120, check=False)
        cluster.down()
