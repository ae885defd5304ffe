"""The chart's alerting rules (charts/agentfleet/files/alerts.yaml): valid for Prometheus, every
alert unit-tested by promtool (tests/alerts/alerts_test.yaml), every metric they read one the
code exports, and every runbook link a section of docs/operations.md.

promtool is Debian's (package prometheus, installed by hack/deps); a missing promtool fails the
test rather than skipping it: the rules would otherwise ship untested.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from agentfleet import manager  # noqa: F401  (registers the leader gauge on REGISTRY)
from agentfleet.controller import metrics as _controller_metrics  # noqa: F401
from agentfleet.evaluator import metrics as _evaluator_metrics  # noqa: F401
from agentfleet.guard.metrics import GuardMetrics
from agentfleet.registry import REGISTRY

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "charts" / "agentfleet" / "files" / "alerts.yaml"
TESTS = ROOT / "tests" / "alerts" / "alerts_test.yaml"
OPERATIONS = ROOT / "docs" / "operations.md"
RUNBOOK_BASE = "https://github.com/agentfleet/agentfleet/blob/main/docs/operations.md#"


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is missing: run hack/deps (Debian package prometheus)"
    return path


def alerts() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def exported_series() -> set[str]:
    """Every sample name the operator and a guard (with a budget and a ledger) export."""
    guard = GuardMetrics("ns", "agent", "rev", "model", ["search"], budgets=["costPerDay"])
    guard.bind_ledger()
    names: set[str] = set()
    registry: CollectorRegistry
    for registry in (REGISTRY, guard.registry):
        for family in registry.collect():
            names.update(sample.name for sample in family.samples)
    return names


def test_rules_pass_promtool_check() -> None:
    res = subprocess.run(
        [promtool(), "check", "rules", str(RULES)], check=False, capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in res.stdout, res.stdout


def test_every_alert_passes_its_promtool_unit_tests() -> None:
    res = subprocess.run(
        [promtool(), "test", "rules", str(TESTS)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=TESTS.parent,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout, res.stdout


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    """promtool passes a test file that never mentions an alert: check each one is exercised both ways."""
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check["exp_alerts"] else quiet).add(check["alertname"])
    names = {a["alert"] for a in alerts()}
    assert len(names) == len(alerts()), "alert names must be unique"
    assert names - fired == set(), f"alerts never tested firing: {sorted(names - fired)}"
    assert names - quiet == set(), f"alerts never tested quiet: {sorted(names - quiet)}"


def test_every_metric_an_alert_reads_is_exported_by_the_code() -> None:
    exported = exported_series()
    for alert in alerts():
        expr = re.sub(r'\{[^}]*\}|"[^"]*"|\[[^\]]*\]', " ", alert["expr"])
        words = set(re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr))
        metrics = {w for w in words if w.startswith("agentfleet_")}
        assert metrics, alert["alert"]
        missing = metrics - exported
        assert not missing, f"{alert['alert']} reads series no code exports: {sorted(missing)}"


def github_anchor(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower-case, punctuation dropped, spaces to dashes."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_alert_has_a_severity_a_summary_and_a_runbook_section() -> None:
    anchors = {github_anchor(m) for m in re.findall(r"^#{1,6} (.+)$", OPERATIONS.read_text(), re.M)}
    for alert in alerts():
        assert alert["labels"]["severity"] in {"warning", "critical"}, alert["alert"]
        annotations = alert["annotations"]
        assert annotations["summary"] and annotations["description"], alert["alert"]
        url = annotations["runbook_url"]
        assert url.startswith(RUNBOOK_BASE), url
        anchor = url.removeprefix(RUNBOOK_BASE)
        assert anchor == alert["alert"].lower(), url
        assert anchor in anchors, f"docs/operations.md has no section '### {alert['alert']}'"
