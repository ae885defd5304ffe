"""Shared fixtures: the real local control plane, per-test namespaces, Prometheus, the operator.

The session starts the local control plane from ``hack/cluster`` unless
``AGENTFLEET_KUBECONFIG`` names an existing cluster (kind, say). It never fakes the API.
The helpers behind these fixtures live in ``hack/harness`` (shared with the benchmarks and the demo).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator

import pytest

from hack.harness.kube import Cluster, Kube, Prometheus, install_crds, poll
from hack.harness.processes import DEV_PLATFORM, OperatorProcess
from tests.support.session import EVALUATION_INTERVAL


@pytest.fixture(scope="session")
def cluster() -> Cluster:
    """``hack/cluster`` as the environment configures it (``AGENTFLEET_RUN_DIR``, ``AGENTFLEET_PORT_BASE``)."""
    return Cluster()


@pytest.fixture(scope="session")
def kube(cluster: Cluster) -> Iterator[Kube]:
    external = os.environ.get("AGENTFLEET_KUBECONFIG")
    if external:
        yield Kube(external, shutil.which("kubectl") or cluster.kubectl_bin)
        return
    started = not cluster.running()
    if started:
        res = cluster.run("up", check=False, capture=False)
        if res.returncode != 0:
            pytest.fail(
                "hack/cluster up failed (see its output above); the integration suite needs the real control plane",
                pytrace=False,
            )
    yield cluster.kube
    if started and os.environ.get("AGENTFLEET_KEEP_CLUSTER") != "1":
        cluster.down()


@pytest.fixture(scope="session")
def crds_installed(kube: Kube) -> Kube:
    """CRDs and the admission policy, applied and established."""
    install_crds(kube)
    return kube


@pytest.fixture
def namespace(kube: Kube, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards (without waiting for finalization)."""
    base = "".join(ch if ch.isalnum() else "-" for ch in request.node.name.lower())[:40].strip("-")
    name = f"t-{base}-{uuid.uuid4().hex[:6]}"
    kube.kubectl("create", "namespace", name)
    kube.kubectl("label", "namespace", name, "agentfleet.dev/test=true")
    yield name
    kube.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="session")
def prometheus(kube: Kube, cluster: Cluster) -> Prometheus:
    prom = cluster.prometheus
    prom.url = os.environ.get("AGENTFLEET_PROMETHEUS_URL", prom.url)
    poll(prom.ready, timeout=30, what=f"Prometheus at {prom.url}")
    return prom


@pytest.fixture(scope="session")
def operator(
    crds_installed: Kube, prometheus: Prometheus, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """One operator for the session, watching the whole cluster, evaluating every 2 s."""
    logs = tmp_path_factory.mktemp("operator")
    op = OperatorProcess(
        crds_installed.kubeconfig,
        logs / "operator.log",
        extra=[
            f"--prometheus-url={prometheus.url}",
            f"--evaluation-interval={EVALUATION_INTERVAL}",
            "--rate-window=30s",
            f"--audit-file={logs / 'audit.jsonl'}",
            f"--platform={DEV_PLATFORM}",
        ],
    )
    op.start()
    yield op
    op.stop()
    print(f"operator log: {op.log_path}")
