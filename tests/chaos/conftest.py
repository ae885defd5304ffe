"""The fault-injection suite's world: a private control plane (KWOK nodes) and its Prometheus
(file SD: the data plane's real guards register there), so that operators can be killed,
restarted and elected without disturbing the session's operator. ``AGENTFLEET_CHAOS_SCALE``
multiplies the sizes (``make chaos`` runs the full size; ``make test`` a CI-sized one)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hack.harness.kube import Cluster, Kube, Prometheus, install_crds, poll
from hack.harness.processes import FakeLLMProcess
from tests.chaos.support import PORT_BASE


@pytest.fixture(scope="package")
def chaos_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    run_dir = tmp_path_factory.mktemp("chaos") / "run"
    cluster = Cluster(run_dir, port_base=PORT_BASE, nodes=2)
    up = cluster.run("up", check=False, timeout=240)
    try:
        if up.returncode != 0:
            pytest.fail(f"the chaos suite's cluster did not start:\n{up.stdout}\n{up.stderr}", pytrace=False)
        install_crds(cluster.kube)
        yield cluster
    finally:
        cluster.down()


@pytest.fixture(scope="package")
def kube(chaos_cluster: Cluster) -> Kube:
    return chaos_cluster.kube


@pytest.fixture(scope="package")
def prometheus(chaos_cluster: Cluster) -> Prometheus:
    prom = chaos_cluster.prometheus
    poll(prom.ready, timeout=60, what=f"the chaos cluster's Prometheus at {prom.url}")
    return prom


@pytest.fixture
def fake_llm(tmp_path: Path) -> Iterator[str]:
    """The fault-injecting fake LLM as a process; yields its OpenAI base URL."""
    llm = FakeLLMProcess.start(tmp_path / "fake-llm.log")
    try:
        yield llm.url
    finally:
        llm.stop()
