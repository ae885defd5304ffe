"""The NetworkPolicy the operator renders, enforced by kube-router and tested by traffic.

Every blocked connection has a positive control next to it (the same destination reached from
where the policy allows it), so a test cannot pass because a server is simply down:

- egress: the agent reaches the fake LLM on its allowed port, but not a second server on another
  port (which a pod in an unpoliced namespace reaches), nor the API server it was given no egress
  to, nor a Service's ClusterIP whose backend is outside the allowlist;
- ingress: the guard's LLM API (port 4000) listens on the pod's loopback and is unreachable from
  any other pod, even from the scraper namespace; the metrics port (9090) admits only the
  namespaces in the chart's ``guardMetricsScrapers`` (``monitoring``): a pod there connects, a pod
  elsewhere is rejected, and Prometheus in ``monitoring`` scrapes the guard (target up).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.support import (
    API_PORT,
    MONITORING,
    NODE_IP,
    NS,
    FakeLLM,
    Prometheus,
    RealNode,
    connect_from,
    poll,
    probe_pod,
    start_fake_llm,
)

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.timeout(600)]

OUTSIDER = "e2e-outsider"
"""A namespace with no NetworkPolicy that is not a metrics scraper."""
SECOND_PORT = 8901
BLOCKED = {"refused", "timeout"}
"""kube-router rejects what a policy does not allow (an ICMP error: refused); each blocked
destination is shown reachable from somewhere else, so refused never means "nothing listens"."""


@pytest.fixture(scope="module")
def outsider(real_node: RealNode) -> dict[str, Any]:
    """A probe pod in the outsider namespace, a second server there on another port, and a probe
    pod in the scraper namespace."""
    pod = probe_pod(real_node, "probe", OUTSIDER)
    server = start_fake_llm(real_node, "second-server", OUTSIDER, SECOND_PORT)
    scraper = probe_pod(real_node, "probe", MONITORING)
    return {"pod_ip": pod["status"]["podIP"], "server": server, "scraper": scraper}


def test_agent_egress_is_limited_to_its_allowlist(
    real_node: RealNode, greeter: dict[str, Any], fake_llm: FakeLLM, outsider: dict[str, Any]
) -> None:
    agent_pod = greeter["metadata"]["name"]
    server: FakeLLM = outsider["server"]

    def from_agent(host: str, port: int) -> str:
        return connect_from(real_node, agent_pod, NS, "agent", host, port)

    # Allowed: the model endpoint's pods on the model port.
    assert from_agent(fake_llm.pod_ip, fake_llm.port) == "connected"
    assert from_agent(fake_llm.cluster_ip, fake_llm.port) == "connected"
    # Not allowed: a second server on another port (reachable from an unpoliced pod).
    assert connect_from(real_node, "probe", OUTSIDER, "probe", server.pod_ip, SECOND_PORT) == "connected"
    assert from_agent(server.pod_ip, SECOND_PORT) in BLOCKED
    assert from_agent(server.cluster_ip, SECOND_PORT) in BLOCKED
    # Not allowed: the API server (this agent has no Kubernetes permissions and no egress to it),
    # by its Service and by its address; an unpoliced pod reaches it.
    assert connect_from(real_node, "probe", OUTSIDER, "probe", "10.96.0.1", 443) == "connected"
    assert from_agent("10.96.0.1", 443) in BLOCKED
    assert from_agent(NODE_IP, API_PORT) in BLOCKED


def test_no_other_pod_can_use_the_guard_and_only_scrapers_read_its_metrics(
    real_node: RealNode, greeter: dict[str, Any], outsider: dict[str, Any], prometheus: Prometheus
) -> None:
    agent_ip = greeter["status"]["podIP"]
    agent_pod = greeter["metadata"]["name"]
    scraper = outsider["scraper"]["metadata"]["name"]
    # The guard's API answers its own agent on the pod's loopback...
    assert connect_from(real_node, agent_pod, NS, "agent", "127.0.0.1", 4000) == "connected"
    # ...and nobody on the pod's address: not from another namespace, not from the scraper's.
    assert connect_from(real_node, "probe", OUTSIDER, "probe", agent_ip, 4000) in BLOCKED
    assert connect_from(real_node, scraper, MONITORING, "probe", agent_ip, 4000) in BLOCKED
    # Metrics: only from the scraper namespace.
    assert connect_from(real_node, "probe", OUTSIDER, "probe", agent_ip, 9090) in BLOCKED
    assert connect_from(real_node, scraper, MONITORING, "probe", agent_ip, 9090) == "connected"

    # Prometheus (Kubernetes discovery, the chart's scrape job) scrapes the guard, and files its
    # series under the pod's own namespace, agent and revision.
    revision = greeter["metadata"]["labels"]["agentfleet.dev/revision"]

    def scraped() -> list[dict[str, Any]]:
        return [
            t
            for t in prometheus.targets()
            if t["labels"].get("agent") == "greeter" and t["labels"].get("pod") == agent_pod and t["health"] == "up"
        ]

    (target,) = poll(scraped, timeout=60, interval=1, what="Prometheus to scrape greeter's guard")
    assert target["labels"]["namespace"] == NS and target["labels"]["revision"] == revision
    assert target["scrapeUrl"] == f"http://{agent_ip}:9090/metrics"
    up = prometheus.query(f'up{{job="agentfleet-guards", namespace="{NS}", agent="greeter"}}')
    assert [s["value"][1] for s in up] == ["1"]
