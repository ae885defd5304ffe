"""Prometheus goes away for a while (its process SIGKILLed) and comes back: agents that hold on
missing metrics are never suspended for it, agents that fail closed are all suspended, every
agent says `MetricsAvailable=False` meanwhile, and everything reports metrics again after."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hack.harness.agents import agent, condition, status
from hack.harness.kube import Kube, free_port, http_ok, poll
from tests.chaos.support import operator, scaled

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

LOOPS = [{"name": "loops", "metric": "loopDetections", "threshold": "0", "action": "Suspend"}]


class PrometheusProcess:
    """A real Prometheus (the Debian binary) on a free port, scraping only itself."""

    def __init__(self, work: Path) -> None:
        self.port = free_port()
        self.work = work
        self.proc: subprocess.Popen[bytes] | None = None
        (work / "prometheus.yml").write_text(
            "global: {scrape_interval: 2s, evaluation_interval: 2s}\n"
            f"scrape_configs: [{{job_name: self, static_configs: [{{targets: ['127.0.0.1:{self.port}']}}]}}]\n"
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        binary = shutil.which("prometheus") or "/usr/bin/prometheus"
        log = (self.work / "prometheus.log").open("ab")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={self.work / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.work / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        poll(lambda: http_ok(f"{self.url}/-/ready"), timeout=60, what="Prometheus to be ready")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[PrometheusProcess]:
    prom = PrometheusProcess(tmp_path)
    prom.start()
    try:
        yield prom
    finally:
        prom.kill()


def metrics_available(kube: Kube, ns: str, name: str) -> str | None:
    return condition(status(kube, ns, name), "MetricsAvailable").get("status")


def test_hold_agents_are_never_suspended_for_a_prometheus_outage(
    kube: Kube, prometheus: PrometheusProcess, tmp_path: Path
) -> None:
    ns = "promout"
    kube.kubectl("create", "namespace", ns)
    holders = [f"hold{i}" for i in range(scaled(4))]
    closers = [f"closed{i}" for i in range(scaled(4))]
    bodies: list[dict[str, Any]] = [agent(n, ns, replicas=1, guardrails=LOOPS) for n in holders]
    bodies += [
        agent(n, ns, replicas=1, guardrails=LOOPS, analysis={"onMetricsUnavailable": "Suspend"}) for n in closers
    ]
    op = operator(
        kube,
        tmp_path / "operator.log",
        "promout",
        f"--prometheus-url={prometheus.url}",
        "--evaluation-interval=1",
        "--query-timeout=1",
    )
    op.start()
    try:
        kube.apply(bodies)
        everyone = holders + closers
        poll(
            lambda: all(metrics_available(kube, ns, n) == "True" for n in everyone),
            timeout=90,
            what="every agent to report metrics",
        )

        prometheus.kill()
        down = time.monotonic()
        poll(
            lambda: all(status(kube, ns, n).get("phase") == "Suspended" for n in closers),
            timeout=60,
            what="every fail-closed agent to be suspended",
        )
        print(f"fail-closed agents suspended {time.monotonic() - down:.1f}s into the outage")
        outage = scaled(20)
        while time.monotonic() - down < outage:  # the outage lasts; Hold agents must never move
            for n in holders:
                st = status(kube, ns, n)
                assert condition(st, "Suspended").get("status") != "True", f"{n} was suspended for an outage"
            time.sleep(1)
        for n in holders:
            st = status(kube, ns, n)
            assert condition(st, "MetricsAvailable")["status"] == "False", n
            assert "lastBreach" not in st, n
            assert kube.get_json("deployment", n, "-n", ns)["spec"]["replicas"] == 1

        prometheus.start()
        poll(
            lambda: all(metrics_available(kube, ns, n) == "True" for n in everyone),
            timeout=90,
            what="metrics to be reported available again",
        )
        for n in holders:
            assert status(kube, ns, n)["phase"] == "Running", n
        # Fail-closed suspensions stay until someone resumes them, as documented.
        assert all(status(kube, ns, n)["phase"] == "Suspended" for n in closers)
        kube.kubectl("annotate", "agd", closers[0], "-n", ns, "agentfleet.dev/resume=now", "--overwrite")
        poll(
            lambda: kube.get_json("deployment", closers[0], "-n", ns)["spec"]["replicas"] == 1,
            timeout=30,
            what="the resumed agent to run",
        )
    finally:
        op.stop(kill=True)
