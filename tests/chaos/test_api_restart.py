"""The API server and etcd die (SIGKILL) under a running operator and come back: the operator
rides it out without a restart of its own, converges every change made after, and logs the
outage as warnings, not as error tracebacks."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from hack.harness.agents import agent
from hack.harness.kube import Cluster, Kube, install_crds, poll
from tests.chaos.support import converged, operator, scaled

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def kill_component(cluster: Cluster, name: str) -> None:
    pid = int((cluster.run_dir / "pids" / f"{name}.pid").read_text().split()[0])
    os.kill(pid, signal.SIGKILL)


def test_the_operator_rides_out_an_api_server_and_etcd_restart(
    chaos_cluster: Cluster, kube: Kube, tmp_path: Path
) -> None:
    ns = "outage"
    kube.kubectl("create", "namespace", ns)
    names = [f"o{i:02d}" for i in range(scaled(16))]
    op = operator(kube, tmp_path / "operator.log", "outage")
    op.start()
    try:
        kube.apply([agent(n, ns, replicas=1) for n in names[: len(names) // 2]])
        poll(lambda: converged(kube, ns, names[: len(names) // 2]), timeout=120, interval=1, what="the first half")

        down = time.monotonic()
        kill_component(chaos_cluster, "kube-apiserver")
        kill_component(chaos_cluster, "etcd")
        time.sleep(5)  # the outage itself: the operator must wait it out, not crash
        assert op.proc is not None and op.proc.poll() is None, "the operator died with the API server"
        chaos_cluster.up("--no-prometheus")
        back = time.monotonic()
        install_crds(kube)  # idempotent; waits until the admission policy's paramKind is synced again
        kube.apply([agent(n, ns, replicas=1, prompt="after the outage") for n in names])
        poll(lambda: converged(kube, ns, names), timeout=180, interval=1, what="every agent after the outage")
        print(f"outage {back - down:.1f}s; converged {time.monotonic() - back:.1f}s after the API server was back")
        assert op.proc.poll() is None, "the operator restarted"

        log = op.log_path.read_text(errors="replace").splitlines()
        tracebacks = [line for line in log if "Traceback" in line]
        assert tracebacks == [], f"{len(tracebacks)} tracebacks for a transient outage"
    finally:
        op.stop(kill=True)
