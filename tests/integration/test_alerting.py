"""Alerts reach the on-call through a real Alertmanager (Debian's prometheus-alertmanager),
which delivers them to a webhook receiver this test runs:

- the chart's rules file (charts/agentfleet/files/alerts.yaml) loaded by a real Prometheus that
  scrapes a guard's real metrics registry, firing into Alertmanager;
- the operator's guardrail action ``Alert``, sent to the Alertmanager (and straight to a
  webhook) that a covering AgentPolicy's ``spec.alerting`` names.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentfleet.guard.metrics import GuardMetrics
from hack.harness.agents import BIG_BUDGETS, agent, agent_policy, condition, status, wait_reconciled
from hack.harness.kube import ROOT, Kube, free_port, http_ok, poll
from hack.harness.processes import DataplaneProcess, OperatorProcess

pytestmark = pytest.mark.integration

RULES = ROOT / "charts" / "agentfleet" / "files" / "alerts.yaml"


class Receiver:
    """An HTTP server on loopback that keeps every JSON body POSTed to it."""

    def __init__(self, respond: Callable[[], bytes] | None = None) -> None:
        self.bodies: list[Any] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"null")
                with receiver._lock:
                    receiver.bodies.append(body)
                self.send_response(200)
                self.end_headers()

            def do_GET(self) -> None:
                payload = respond() if respond else b""
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def received(self) -> list[Any]:
        with self._lock:
            return list(self.bodies)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Process:
    """A program on loopback, stopped (TERM, then KILL) at the end."""

    def __init__(self, argv: list[str], log: Path, ready: str) -> None:
        self.log = log
        self._out = log.open("w")
        self.proc = subprocess.Popen(argv, stdout=self._out, stderr=subprocess.STDOUT)
        try:
            poll(lambda: self.proc.poll() is None and http_ok(ready), timeout=30, what=f"{argv[0]} at {ready}")
        except AssertionError:
            self.stop()
            raise AssertionError(f"{argv[0]} did not start:\n{log.read_text()[-3000:]}") from None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._out.close()


def binary(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is missing: run hack/deps"
    return path


@pytest.fixture
def webhook() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.close()


@pytest.fixture
def alertmanager(tmp_path: Path, webhook: Receiver) -> Iterator[str]:
    """A real Alertmanager (no clustering) routing every alert at once to ``webhook``."""
    config = {
        "route": {
            "receiver": "test",
            "group_by": ["alertname", "namespace", "agent"],
            "group_wait": "0s",
            "group_interval": "1s",
            "repeat_interval": "1h",
        },
        "receivers": [{"name": "test", "webhook_configs": [{"url": webhook.url + "/alerts", "send_resolved": False}]}],
    }
    (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    proc = Process(
        [
            binary("prometheus-alertmanager"),
            f"--config.file={tmp_path / 'alertmanager.yml'}",
            f"--storage.path={tmp_path / 'alertmanager-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--cluster.listen-address=",
        ],
        tmp_path / "alertmanager.log",
        f"http://127.0.0.1:{port}/-/ready",
    )
    yield f"http://127.0.0.1:{port}"
    proc.stop()


def alerts_named(webhook: Receiver, alertname: str) -> list[dict[str, Any]]:
    """Alerts Alertmanager delivered to ``webhook`` under ``alertname``."""
    return [
        a
        for body in webhook.received()
        if isinstance(body, dict)
        for a in body.get("alerts", [])
        if a["labels"].get("alertname") == alertname
    ]


def test_the_charts_rule_fires_in_prometheus_and_alertmanager_delivers_it(
    tmp_path: Path, alertmanager: str, webhook: Receiver
) -> None:
    guard = GuardMetrics("team-a", "support", "abc123", "gpt-4o-mini", ["search"], budgets=["costPerDay"])
    source = Receiver(respond=guard.render)
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [alertmanager.removeprefix("http://")]}]}]},
        "scrape_configs": [
            {"job_name": "agentfleet-guards", "static_configs": [{"targets": [source.url.removeprefix("http://")]}]}
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    prom = Process(
        [
            binary("prometheus"),
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'prometheus-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        tmp_path / "prometheus.log",
        f"http://127.0.0.1:{port}/-/ready",
    )
    try:

        def samples() -> int:
            query = "count_over_time(agentfleet_audit_dropped_records_total[1m])"
            url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": query})
            with urllib.request.urlopen(url, timeout=5) as resp:
                result = json.load(resp)["data"]["result"]
            return int(result[0]["value"][1]) if result else 0

        poll(lambda: samples() >= 2, timeout=30, what="Prometheus to scrape the guard twice")
        assert alerts_named(webhook, "AgentfleetAuditRecordsDropped") == []
        guard.audit_dropped_c.inc(7)  # the guard's writer fell behind
        (alert, *_) = poll(
            lambda: alerts_named(webhook, "AgentfleetAuditRecordsDropped"),
            timeout=60,
            what="Alertmanager to deliver AgentfleetAuditRecordsDropped to the webhook",
        )
    finally:
        prom.stop()
        source.close()
    assert alert["status"] == "firing"
    assert alert["labels"] == {
        "alertname": "AgentfleetAuditRecordsDropped",
        "severity": "critical",
        "namespace": "team-a",
        "agent": "support",
    }
    assert alert["annotations"]["runbook_url"].endswith("docs/operations.md#agentfleetauditrecordsdropped")
    assert "team-a/support dropped" in alert["annotations"]["description"]


ALERT_ON_LOOPS = {"name": "warn-loops", "metric": "loopDetections", "threshold": "0", "action": "Alert"}


def test_a_guardrail_alert_action_reaches_alertmanager_and_a_webhook(
    operator: OperatorProcess,
    kube: Kube,
    namespace: str,
    fake_llm: str,
    dataplane: DataplaneProcess,
    alertmanager: str,
    webhook: Receiver,
) -> None:
    direct = Receiver()
    policy_name = f"alerting-{namespace}"
    kube.apply(
        agent_policy(
            policy_name,
            namespaces=[namespace],
            alerting={"alertmanagerUrl": alertmanager, "webhookUrl": direct.url + "/agentfleet"},
        )
    )
    try:
        kube.apply(
            agent(
                "looper",
                namespace,
                endpoint=fake_llm,
                prompt="Triage tickets. [[sim:loop]]",
                replicas=1,
                budgets=BIG_BUDGETS,
                guardrails=[ALERT_ON_LOOPS],
            )
        )
        rev = wait_reconciled(kube, namespace, "looper")["currentRevision"]
        (alert, *_) = poll(
            lambda: [a for a in alerts_named(webhook, "AgentfleetGuardrailAction") if a["labels"]["agent"] == "looper"],
            timeout=120,
            what="the Alert action to reach the webhook through Alertmanager",
        )
        (sent, *_) = poll(direct.received, timeout=30, what="the Alert action at the policy's webhook")
    finally:
        kube.kubectl("delete", "agentpolicy", policy_name, "--wait=false", check=False)
        direct.close()
    assert alert["status"] == "firing"
    assert alert["labels"] == {
        "alertname": "AgentfleetGuardrailAction",
        "severity": "warning",
        "namespace": namespace,
        "agent": "looper",
        "rule": "warn-loops",
        "action": "Alert",
        "revision": rev,
    }
    assert "warn-loops" in alert["annotations"]["description"]
    assert {k: sent[k] for k in ("kind", "namespace", "agent", "action", "rule", "revision")} == {
        "kind": "AgentfleetGuardrailAction",
        "namespace": namespace,
        "agent": "looper",
        "action": "Alert",
        "rule": "warn-loops",
        "revision": rev,
    }
    assert float(sent["value"]) > 0 and sent["threshold"] == "> 0"
    # An Alert is only an alert: the agent runs on.
    assert condition(status(kube, namespace, "looper"), "Suspended").get("status") != "True"
