"""The chart's Grafana dashboard (charts/agentfleet/files/dashboards/agentfleet.json): every query
is valid PromQL to a real Prometheus and reads only series the code exports, and the dashboard
follows the rules of Grafana's dashboard-linter (which the Go module proxy does not serve:
github.com/grafana/dashboard-linter has no version it will hand out), checked here: a
Prometheus datasource variable that every panel and target uses, rate windows of
``$__rate_interval``, the namespace and agent variables on every per-agent query, unique ids and
titles, no overlapping panels.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from agentfleet import manager  # noqa: F401  (registers the leader gauge on REGISTRY)
from agentfleet.guard.metrics import GuardMetrics
from agentfleet.registry import REGISTRY
from hack.harness.kube import ROOT, free_port, http_ok, poll

pytestmark = pytest.mark.integration

DASHBOARD = ROOT / "charts" / "agentfleet" / "files" / "dashboards" / "agentfleet.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
FIXED_WINDOWS = {"[1d]"}
"""Windows a stat or bar gauge means literally ("last 24 h"), not a graph's resolution."""


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def targets() -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in panels() for t in p.get("targets", [])]


def exported_series() -> set[str]:
    """Every sample name the operator and a guard can export (labelled ones before their first child)."""
    guard = GuardMetrics("ns", "agent", "rev", "model", ["search"], budgets=["costPerDay"])
    return set(REGISTRY._names_to_collectors) | set(guard.registry._names_to_collectors)


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus with nothing to scrape: it parses and runs every query."""
    binary = shutil.which("prometheus")
    assert binary, "prometheus is missing: run hack/deps"
    tmp = tmp_path_factory.mktemp("dashboard-prometheus")
    (tmp / "prometheus.yml").write_text("global: {scrape_interval: 15s}\n")
    port = free_port()
    log = (tmp / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        poll(lambda: proc.poll() is None and http_ok(url + "/-/ready"), timeout=30, what="Prometheus")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def substituted(expr: str) -> str:
    """The query as Grafana sends it with every agent selected."""
    return expr.replace("$__rate_interval", "1m").replace("$namespace", ".*").replace("$agent", ".*")


def query_error(prometheus: str, expr: str) -> str | None:
    url = prometheus + "/api/v1/query?" + urllib.parse.urlencode({"query": substituted(expr)})
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = json.load(resp)
    except urllib.error.HTTPError as err:
        body = json.load(err)
    return None if body.get("status") == "success" else str(body.get("error"))


def test_every_query_is_valid_promql_to_a_real_prometheus(prometheus: str) -> None:
    errors = [(title, expr, err) for title, expr in targets() if (err := query_error(prometheus, expr))]
    assert not errors, errors
    variables = [v["definition"] for v in dashboard()["templating"]["list"] if v["type"] == "query"]
    for definition in variables:  # label_values(series, label): the series part must parse
        series = re.fullmatch(r"label_values\((.+), \w+\)", definition)
        assert series, definition
        assert query_error(prometheus, series.group(1)) is None, definition


def test_every_series_a_query_reads_is_exported_by_the_code() -> None:
    exported = exported_series()
    assert "gen_ai_server_time_to_first_token_seconds_bucket" in exported, "the guard's TTFT histogram"
    for title, expr in targets():
        names = set(re.findall(r"\b((?:agentfleet|gen_ai)_[a-z0-9_]+)\b", re.sub(r'"[^"]*"', "", expr)))
        assert names, title
        assert names <= exported, f"{title}: {sorted(names - exported)} are not exported"


def test_dashboard_follows_the_dashboard_linter_rules() -> None:
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "agent"):
        assert variables[name]["datasource"] == DATASOURCE, name
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    titles = [p["title"] for p in panels()]
    assert len(titles) == len(set(titles)) and all(titles), "panel titles must be unique and set"
    cells: dict[tuple[int, int], str] = {}
    for p in board["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = p["title"]
    for p in panels():
        assert p["datasource"] == DATASOURCE, p["title"]
        assert p["fieldConfig"]["defaults"].get("unit"), f"{p['title']} has no unit"
        for t in p["targets"]:
            assert t["datasource"] == DATASOURCE, p["title"]
            expr = t["expr"]
            windows = set(re.findall(r"\[[^\]]+\]", expr))
            assert windows <= {"[$__rate_interval]", *FIXED_WINDOWS}, f"{p['title']}: {windows}"
            if windows & FIXED_WINDOWS:
                assert p["type"] in {"stat", "bargauge"}, f"{p['title']}: a fixed window on a graph"
            if re.search(r"\b(agentfleet_(?!operator_)|gen_ai_)", expr):  # per-agent series
                assert 'namespace=~"$namespace"' in expr and 'agent=~"$agent"' in expr, p["title"]
