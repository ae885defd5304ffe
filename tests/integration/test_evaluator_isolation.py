"""One tenant cannot stop the evaluator for everyone, nor forge another's metrics: the real control
plane, the real Prometheus, real guard processes and the operator as a process.

- A poisoned agent (durations stored before the bounds existed), an agent whose custom query
  Prometheus rejects and one whose query reaches for another namespace's series sit next to a
  looping agent: the looper is suspended in the usual time, each of the others is told what is
  wrong with it, and no evaluation cycle fails.
- The chart's scrape job (files/prometheus-scrape-config.yaml) in a private Prometheus, scraping
  a pod that exposes series labelled as another namespace's agent: they are filed under the pod's
  own namespace and agent.
"""

from __future__ import annotations

import contextlib
import copy
import http.server
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentfleet.api.types import DURATION_PATTERN
from hack.harness.agents import BIG_BUDGETS, agent, condition, status, wait_reconciled
from hack.harness.kube import Kube, Prometheus, free_port, http_ok, install_crds, poll
from hack.harness.processes import DataplaneProcess, OperatorProcess

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SCRAPE_CONFIG = ROOT / "charts" / "agentfleet" / "files" / "prometheus-scrape-config.yaml"
LOOP_RULE = {"name": "stop-loops", "metric": "loopDetections", "threshold": "0", "action": "Suspend", "cooldown": "10m"}
FAST_FAILING = {**BIG_BUDGETS, "latency": {"perCallDeadline": "2s"}}
UNBOUNDED_DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
"""The duration pattern before the bound (any number of digits)."""
OVERFLOW = "99999999999h"  # matched the duration pattern before the bound; overflows every timer


def tenant(
    namespace: str, name: str, llm: str, prompt: str, rules: list[dict[str, Any]], **spec: Any
) -> dict[str, Any]:
    return agent(
        name, namespace, endpoint=llm, prompt=prompt, replicas=1, budgets=FAST_FAILING, guardrails=rules, **spec
    )


def events(kube: Kube, namespace: str, name: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = kube.get_json(
        "events", "-n", namespace, "--field-selector", f"involvedObject.name={name}"
    )["items"]
    return items


def relaxed_crd() -> dict[str, Any]:
    """The AgentDeployment CRD as it was before durations were bounded: the CEL bound removed and
    the unbounded pattern of that time back."""
    crd: dict[str, Any] = yaml.safe_load((ROOT / "crds" / "agentfleet.dev_agentdeployments.yaml").read_text())
    crd = copy.deepcopy(crd)

    def strip(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("pattern") == DURATION_PATTERN:
                node["pattern"] = UNBOUNDED_DURATION_PATTERN
            rules = node.get("x-kubernetes-validations")
            if isinstance(rules, list):
                kept = [r for r in rules if "duration(self)" not in r.get("rule", "")]
                if kept:
                    node["x-kubernetes-validations"] = kept
                else:
                    del node["x-kubernetes-validations"]
            for value in node.values():
                strip(value)
        elif isinstance(node, list):
            for value in node:
                strip(value)

    strip(crd)
    return crd


@contextlib.contextmanager
def crd_before_the_bounds(kube: Kube) -> Iterator[None]:
    """The AgentDeployment CRD as a cluster upgraded with Helm keeps it (Helm never upgrades the
    CRDs of a chart's crds/ folder): without the duration bound. The current one is restored."""
    try:
        kube.apply(relaxed_crd(), "--server-side", "--force-conflicts")
        yield
    finally:
        install_crds(kube)


def store_poisoned(kube: Kube, namespace: str, name: str) -> None:
    """Durations the current schema refuses, stored through the CRD as it was before the bound."""
    patch = json.dumps(
        {
            "spec": {
                "guardrails": [{**LOOP_RULE, "name": "forever", "for": OVERFLOW}, LOOP_RULE],
                "analysis": {"stabilizationWindow": OVERFLOW},
            }
        }
    )
    poll(
        lambda: (
            kube.kubectl("patch", "agd", name, "-n", namespace, "--type=merge", "-p", patch, check=False).returncode
            == 0
        ),
        timeout=30,
        what="the CRD without the bound to accept the overflowing durations",
    )
    stored = kube.get_json("agd", name, "-n", namespace)["spec"]
    assert stored["analysis"]["stabilizationWindow"] == OVERFLOW and stored["guardrails"][0]["for"] == OVERFLOW


def test_poisoned_and_broken_agents_do_not_stop_a_looping_neighbours_suspension(
    operator: OperatorProcess,
    kube: Kube,
    prometheus: Prometheus,
    namespace: str,
    fake_llm: str,
    dataplane: DataplaneProcess,
) -> None:
    ns = namespace
    rejected_query = (  # passes the scope check; Prometheus refuses the regex when it runs it
        'label_replace(sum by (namespace, agent, revision) (agentfleet_tasks_total{namespace="{{namespace}}", '
        'agent="{{agent}}"}), "x", "$1", "model", "(")'
    )
    peeking_query = 'sum(agentfleet_cost_dollars_total{namespace!="{{namespace}}"})'
    kube.apply(
        [
            tenant(ns, "poisoned", fake_llm, "Answer politely.", [LOOP_RULE]),
            tenant(
                ns,
                "rejected",
                fake_llm,
                "Answer politely.",
                [
                    {
                        "name": "tasks",
                        "metric": "custom",
                        "query": rejected_query,
                        "threshold": "1000000000",
                        "action": "Alert",
                    }
                ],
            ),
            tenant(
                ns,
                "peeker",
                fake_llm,
                "Answer politely.",
                [{"name": "peek", "metric": "custom", "query": peeking_query, "threshold": "0", "action": "Alert"}],
            ),
        ]
    )
    for name in ("poisoned", "rejected", "peeker"):
        wait_reconciled(kube, ns, name)
    refused = kube.kubectl(
        "patch",
        "agd",
        "poisoned",
        "-n",
        ns,
        "--type=merge",
        "-p",
        '{"spec":{"analysis":{"stabilizationWindow":"' + OVERFLOW + '"}}}',
        check=False,
    )
    assert refused.returncode != 0 and "8760h" in refused.stderr, "the current schema must refuse the overflow"
    with crd_before_the_bounds(kube):
        store_poisoned(kube, ns, "poisoned")
        check_isolation(operator, kube, prometheus, ns, fake_llm)


def check_isolation(operator: OperatorProcess, kube: Kube, prometheus: Prometheus, ns: str, fake_llm: str) -> None:
    cycle_errors = operator.metric("agentfleet_operator_evaluation_cycle_errors_total")

    # Each is told what is wrong with it, on its own status and as a Warning Event.
    def told(name: str, *words: str) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            c = condition(status(kube, ns, name), "MetricsAvailable")
            if (
                c.get("status") == "False"
                and c.get("reason") == "InvalidGuardrail"
                and all(w in c["message"] for w in words)
            ):
                return c
            return None

        found: dict[str, Any] = poll(check, timeout=60, what=f"{name} told {words}")
        return found

    told("poisoned", "guardrail 'forever' is not judged: for:", "analysis.stabilizationWindow is ignored")
    told("rejected", "Prometheus rejected its query", "invalid regular expression")
    told("peeker", "may read only this agent's own series", 'namespace only with namespace="')
    for name in ("poisoned", "rejected", "peeker"):
        poll(
            lambda n=name: any(
                e["reason"] == "InvalidGuardrail" and e["type"] == "Warning" for e in events(kube, ns, n)
            ),
            timeout=30,
            what=f"the InvalidGuardrail Event on {name}",
        )

    # Meanwhile a looping neighbour is suspended in the usual time.
    kube.apply(tenant(ns, "looper", fake_llm, "Triage tickets. [[sim:loop]]", [LOOP_RULE]))
    rev = wait_reconciled(kube, ns, "looper")["currentRevision"]
    breach_q = (
        f'sum(increase(agentfleet_loop_detections_total{{namespace="{ns}",agent="looper",revision="{rev}"}}[30s])) > 0'
    )
    t_breach = t_action = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and t_action is None:
        if t_breach is None and prometheus.query(breach_q):
            t_breach = time.monotonic()
        if kube.get_json("deployment", "looper", "-n", ns)["spec"]["replicas"] == 0:
            t_action = time.monotonic()
        time.sleep(0.2)
    assert t_action is not None, "the looping agent was never suspended"
    assert t_breach is not None, "Prometheus never showed the loop"
    latency = t_action - t_breach
    print(f"\nlooper: breach visible in Prometheus -> replicas=0 in {latency:.2f} s next to three broken agents")
    assert latency < 20, latency  # interval 2 s + scrape 2 s + a reconcile; the usual is ~3-5 s
    st = status(kube, ns, "looper")
    assert condition(st, "Suspended")["reason"] == "loop_detected"
    assert condition(st, "MetricsAvailable")["status"] == "True"
    # The broken ones were not suspended for it (they chose Hold), and no cycle failed throughout.
    for name in ("poisoned", "rejected", "peeker"):
        assert condition(status(kube, ns, name), "Suspended").get("status") != "True", name
    assert operator.metric("agentfleet_operator_evaluation_cycle_errors_total") == cycle_errors


# ---------------------------------------------------------------------- forged metrics


class Exporter(http.server.BaseHTTPRequestHandler):
    """A pod's /metrics that claims another namespace's agent."""

    body = (
        b"# TYPE agentfleet_loop_detections_total counter\n"
        b'agentfleet_loop_detections_total{namespace="victim-ns",agent="victim",revision="r1",model="m"} 7\n'
    )

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture
def exporter() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Exporter)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def pod_meta(namespace: str, agent_label: str | None) -> dict[str, str]:
    """The meta labels Kubernetes discovery (role pod) gives a guard's port."""
    meta = {
        "__meta_kubernetes_namespace": namespace,
        "__meta_kubernetes_pod_name": f"{agent_label or 'stray'}-pod",
        "__meta_kubernetes_pod_phase": "Running",
        "__meta_kubernetes_pod_container_port_name": "metrics",
        "__meta_kubernetes_pod_label_app_kubernetes_io_managed_by": "agentfleet",
        "__meta_kubernetes_pod_label_agentfleet_dev_revision": "r9",
    }
    if agent_label is not None:
        meta["__meta_kubernetes_pod_label_agentfleet_dev_agent"] = agent_label
    return meta


def test_the_charts_scrape_job_files_series_under_the_pods_own_namespace_and_agent(
    exporter: str, tmp_path: Path
) -> None:
    """Kubernetes discovery is replaced by file discovery carrying the same meta labels (Debian's
    Prometheus is built without Kubernetes discovery, and KWOK pods have no reachable IPs); the
    relabelling under test is the chart's, unchanged."""
    (job,) = yaml.safe_load(SCRAPE_CONFIG.read_text())
    assert job["honor_labels"] is False and job["kubernetes_sd_configs"] == [{"role": "pod"}]
    targets = tmp_path / "targets.json"
    targets.write_text(
        json.dumps(
            [
                {"targets": [exporter], "labels": pod_meta("attacker-ns", "evil")},
                {"targets": [exporter], "labels": pod_meta("attacker-ns", None)},  # no agent label: not scraped
            ]
        )
    )
    job = {k: v for k, v in job.items() if k != "kubernetes_sd_configs"}
    job["file_sd_configs"] = [{"files": [str(targets)], "refresh_interval": "1s"}]
    config = tmp_path / "prometheus.yml"
    config.write_text(
        yaml.safe_dump({"global": {"scrape_interval": "1s", "scrape_timeout": "900ms"}, "scrape_configs": [job]})
    )
    port = free_port()
    proc = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "prometheus.log").open("w"),
    )
    try:
        prom = Prometheus(f"http://127.0.0.1:{port}", tmp_path)
        poll(lambda: http_ok(f"{prom.url}/-/ready"), timeout=30, what="the private Prometheus")
        series = poll(lambda: prom.query("agentfleet_loop_detections_total"), timeout=30, what="the scraped series")
        assert [s["metric"] for s in series] == [
            {
                "__name__": "agentfleet_loop_detections_total",
                "namespace": "attacker-ns",
                "agent": "evil",
                "revision": "r9",
                "pod": "evil-pod",
                "model": "m",
                "instance": exporter,
                "job": "agentfleet-guards",
            }
        ]
        assert prom.query('agentfleet_loop_detections_total{namespace="victim-ns"}') == []
        # The evaluator's own grouping still works on the relabelled series.
        grouped = prom.query("sum by (namespace, agent, revision) (agentfleet_loop_detections_total)")
        assert [s["metric"] for s in grouped] == [{"namespace": "attacker-ns", "agent": "evil", "revision": "r9"}]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
