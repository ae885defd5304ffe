"""The chart's scrape jobs select the port the operator renders for the guard's metrics.

The PodMonitor and the plain scrape config keep targets by container port name; a rename in the
renderer that the chart does not follow leaves every guard unscraped (and every guardrail without
data), which only a real Prometheus against real pods would otherwise notice (tests/e2e).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from agentfleet.api.types import AgentDeployment
from agentfleet.render import render
from agentfleet.render.base import RenderSettings

pytestmark = pytest.mark.unit

CHART = Path(__file__).resolve().parents[2] / "charts" / "agentfleet"


def guard_port() -> dict[str, object]:
    body = {
        "apiVersion": "agentfleet.dev/v1alpha1",
        "kind": "AgentDeployment",
        "metadata": {"name": "support", "namespace": "team-a", "uid": "u1"},
        "spec": {
            "agent": {
                "image": "example/agent:1",
                "model": {"name": "m", "endpoint": "https://llm.example.com/v1"},
            }
        },
    }
    spec = render(AgentDeployment.model_validate(body)).pod_template["spec"]
    containers = [*spec.get("initContainers", []), *spec["containers"]]
    ports = [p for c in containers for p in c.get("ports", [])]
    (port,) = ports  # the guard's metrics port is the pod's only port
    return dict(port)


def test_the_plain_scrape_config_keeps_the_rendered_port() -> None:
    port = guard_port()
    assert port["containerPort"] == RenderSettings().metrics_port
    (job,) = yaml.safe_load((CHART / "files" / "prometheus-scrape-config.yaml").read_text())
    keeps = [
        r["regex"]
        for r in job["relabel_configs"]
        if r.get("action") == "keep" and r["source_labels"] == ["__meta_kubernetes_pod_container_port_name"]
    ]
    assert keeps == [port["name"]]


def test_the_podmonitor_scrapes_the_rendered_port() -> None:
    text = (CHART / "templates" / "podmonitor.yaml").read_text()
    ports = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.strip().startswith("- port:")]
    assert ports == [guard_port()["name"]]
