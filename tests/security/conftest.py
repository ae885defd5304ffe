"""The adversarial suite's world: a private control plane with the chart installed as a platform
engineer would (its defaults, plus the cluster's service range), the operator running with
exactly the chart's RBAC and platform file, and a tenant whose only right is to manage
AgentDeployments in one namespace (real RBAC, reached by impersonation; see support.py).

A private cluster because the chart installs cluster-scoped objects and because the session's
operator (which watches every namespace with a development platform) must not judge these agents.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import yaml

from hack.harness.chart import CHART, helm, token_kubeconfig
from hack.harness.kube import Cluster
from hack.harness.processes import OperatorProcess
from tests.security.support import PORT_BASE, RELEASE, RELEASE_NS, SA, SERVICE_CIDR, World


@pytest.fixture(scope="package")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    run_dir = tmp_path_factory.mktemp("security") / "run"
    cluster = Cluster(run_dir, port_base=PORT_BASE, nodes=1)
    up = cluster.run("up", "--no-prometheus", check=False, timeout=240)
    operator: OperatorProcess | None = None
    try:
        if up.returncode != 0:
            pytest.fail(f"the security suite's cluster did not start:\n{up.stdout}\n{up.stderr}", pytrace=False)
        admin = cluster.kube
        admin.kubectl("create", "namespace", RELEASE_NS)
        values = run_dir.parent / "values.yaml"
        values.write_text(yaml.safe_dump({"clusterCIDRs": [SERVICE_CIDR]}))
        helm(
            cluster.helm_bin,
            "install",
            RELEASE,
            str(CHART),
            "-n",
            RELEASE_NS,
            "-f",
            str(values),
            "--wait",
            "--timeout=120s",
            kubeconfig=admin.kubeconfig,
        )
        admin.kubectl(
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/agentdeployments.agentfleet.dev",
            "crd/agentpolicies.agentfleet.dev",
        )
        # The operator runs as the chart's ServiceAccount with the chart's own platform file.
        platform = run_dir.parent / "platform.yaml"
        cm = admin.get_json("configmap", f"{SA}-platform", "-n", RELEASE_NS)
        platform.write_text(cm["data"]["platform.yaml"])
        kubeconfig = token_kubeconfig(admin, SA, RELEASE_NS, run_dir.parent / "operator.kubeconfig")
        operator = OperatorProcess(kubeconfig, run_dir.parent / "operator.log", extra=[f"--platform={platform}"])
        operator.start()
        yield World(admin, cluster, operator, run_dir)
    finally:
        if operator is not None:
            operator.stop()
            print(f"operator log: {operator.log_path}")
        cluster.down()
