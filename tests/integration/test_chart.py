"""The Helm chart (charts/agentfleet) on a real control plane of its own.

The chart installs cluster-scoped objects (ClusterRoles, the ValidatingAdmissionPolicy named like
the one in crds/admission), so these tests start a private cluster on their own port range
instead of sharing the session's. Beyond lint and server-side validation, the operator is run
locally *as the chart's ServiceAccount* (a token in a kubeconfig): it must reconcile, suspend,
resume, prune and evaluate agents without a single "forbidden", while that identity cannot read
Secrets, create ClusterRoles or escalate.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from hack.harness.agents import agent, agent_policy, condition, objects_of, phase_is, status
from hack.harness.agents import wait_reconciled as reconciled
from hack.harness.kube import ROOT, VERSIONS, Cluster, Kube, free_port, poll
from hack.harness.processes import DEV_PLATFORM, OperatorProcess

pytestmark = pytest.mark.integration

CHART = ROOT / "charts" / "agentfleet"
RELEASE, RELEASE_NS = "af", "agentfleet-system"
FULLNAME = f"{RELEASE}-agentfleet"  # the release name does not contain the chart name
SA = FULLNAME
K8S_VERSION = VERSIONS["KUBERNETES_VERSION"]
PORT_BASE = 18400
DASHBOARD_METRICS = (
    "agentfleet_requests_total",
    "agentfleet_tokens_total",
    "agentfleet_cost_dollars_total",
    "agentfleet_tool_calls_total",
    "agentfleet_loop_detections_total",
    "agentfleet_budget_rejections_total",
    "agentfleet_injection_suspicions_total",
    "agentfleet_request_duration_seconds_bucket",
    "agentfleet_breaker_state",
    "agentfleet_operator_actions_total",
    "agentfleet_operator_agents",
)
# What a permission problem looks like in the operator's log: the API server's 403 (our client
# and kopf's), and kopf's warnings when it may not list or watch something.
PERMISSION_PROBLEMS = ("forbidden", "not enough permissions")


def _bins() -> dict[str, Path]:
    pinned = Cluster()  # where hack/cluster finds the pinned binaries (the same on every port range)
    return {"helm": Path(pinned.helm_bin), "kubectl": Path(pinned.kubectl_bin)}


BINS = _bins()


def helm_env() -> dict[str, str]:
    """Helm with its own (empty) config, cache and data directories, and no ambient KUBECONFIG."""
    home = Path(os.environ.get("AGENTFLEET_HELM_HOME", "/tmp/agentfleet-chart-test-helm"))
    env = {
        **os.environ,
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    env.pop("KUBECONFIG", None)
    return env


def helm(
    *args: str, kubeconfig: str | None = None, check: bool = True, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    cmd = [str(BINS["helm"]), *args] + ([f"--kubeconfig={kubeconfig}"] if kubeconfig else [])
    res = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, env=helm_env())
    if check and res.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res


def values_file(tmp: Path, values: dict[str, Any]) -> str:
    path = tmp / f"values-{uuid.uuid4().hex[:8]}.json"
    path.write_text(json.dumps(values))
    return str(path)


def render(tmp: Path, values: dict[str, Any] | None = None, *extra: str) -> list[dict[str, Any]]:
    """``helm template`` of the chart, parsed (no cluster needed)."""
    args = ["template", RELEASE, str(CHART), "-n", RELEASE_NS, f"--kube-version={K8S_VERSION}", *extra]
    if values:
        args += ["-f", values_file(tmp, values)]
    return [d for d in yaml.safe_load_all(helm(*args).stdout) if d]


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


# ----------------------------------------------------------------------------- the private cluster


@dataclass
class Private:
    kube: Kube
    cluster: Cluster
    run_dir: Path
    refused: set[str] = field(default_factory=set)
    """Namespaces whose agents are refused on purpose: their 403s are expected in the log."""

    def helm(self, *args: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return helm(*args, kubeconfig=self.kube.kubeconfig, check=check, timeout=timeout)

    def namespace(self, prefix: str) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:6]}"
        self.kube.kubectl("create", "namespace", name)
        return name


def ensure_namespace(kube: Kube, name: str) -> None:
    if kube.kubectl("get", "namespace", name, "-o", "name", check=False).returncode != 0:
        kube.kubectl("create", "namespace", name)


@pytest.fixture(scope="module")
def private(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Private]:
    run_dir = tmp_path_factory.mktemp("chart-cluster") / "run"
    cluster = Cluster(run_dir, port_base=PORT_BASE, nodes=1)
    up = cluster.run("up", "--no-prometheus", check=False, timeout=240)
    try:
        if up.returncode != 0:
            pytest.fail(f"private cluster for the chart tests did not start:\n{up.stdout}\n{up.stderr}", pytrace=False)
        yield Private(cluster.kube, cluster, run_dir)
    finally:
        cluster.down()


@pytest.fixture(scope="module")
def installed(private: Private) -> Private:
    """The chart installed with its defaults, as a platform engineer would."""
    ensure_namespace(private.kube, RELEASE_NS)
    private.helm("install", RELEASE, str(CHART), "-n", RELEASE_NS, "--wait", "--timeout=120s")
    private.kube.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/agentdeployments.agentfleet.dev",
        "crd/agentpolicies.agentfleet.dev",
    )
    return private


@pytest.fixture(scope="module")
def sa_kubeconfig(installed: Private) -> str:
    """A kubeconfig holding a token of the chart's ServiceAccount (and nothing else)."""
    token = installed.kube.kubectl("create", "token", SA, "-n", RELEASE_NS, "--duration=2h").stdout.strip()
    admin = yaml.safe_load(Path(installed.kube.kubeconfig).read_text())
    cluster = admin["clusters"][0]["cluster"]
    path = installed.run_dir.parent / "operator-sa.kubeconfig"
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "chart-sa",
                "clusters": [
                    {
                        "name": "private",
                        "cluster": {
                            "server": cluster["server"],
                            "certificate-authority": cluster["certificate-authority"],
                        },
                    }
                ],
                "users": [{"name": "chart-sa", "user": {"token": token}}],
                "contexts": [{"name": "chart-sa", "context": {"cluster": "private", "user": "chart-sa"}}],
            }
        )
    )
    path.chmod(0o600)
    who = Kube(str(path), str(BINS["kubectl"])).kubectl("auth", "whoami", "-o", "json").stdout
    assert json.loads(who)["status"]["userInfo"]["username"] == f"system:serviceaccount:{RELEASE_NS}:{SA}"
    return str(path)


@pytest.fixture(scope="module")
def sa_operator(
    installed: Private, sa_kubeconfig: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """``agentfleet operator`` with only the chart's RBAC. Its fleet evaluator points at a port
    where nothing listens, so agents that fail closed on missing metrics get suspended by it."""
    log = tmp_path_factory.mktemp("chart-operator") / "operator.log"
    op = OperatorProcess(
        sa_kubeconfig,
        log,
        # The chart's RBAC, with a development cluster's platform file (the chart's own default
        # policy, which refuses these agents' Secrets, is what tests/security runs with).
        extra=[
            f"--prometheus-url=http://127.0.0.1:{free_port()}",
            "--evaluation-interval=1",
            "--query-timeout=1",
            f"--platform={DEV_PLATFORM}",
        ],
    )
    op.start()
    yield op
    op.stop()
    print(f"operator (as the chart's ServiceAccount) log: {log}")


def permission_problems(op: OperatorProcess, skip_namespaces: set[str]) -> list[str]:
    """Log lines about missing permissions, except those about agents refused on purpose."""
    out = []
    for line in op.log_path.read_text(errors="replace").splitlines():
        if not any(p in line.lower() for p in PERMISSION_PROBLEMS):
            continue
        try:
            about = json.loads(line).get("object") or {}
        except ValueError:
            about = {}
        if about.get("namespace") not in skip_namespaces:
            out.append(line[:600])
    return out


# ----------------------------------------------------------------------------- agents


def exists(kube: Kube, kind: str, name: str, namespace: str) -> bool:
    return kube.kubectl("get", kind, name, "-n", namespace, "-o", "name", check=False).returncode == 0


def wait_reconciled(
    kube: Kube,
    namespace: str,
    name: str,
    op: OperatorProcess | None = None,
    skip: set[str] | None = None,
    timeout: float = 60,
) -> dict[str, Any]:
    """The harness's ``wait_reconciled``; with ``op``, a permission problem in its log fails at once."""

    def no_permission_problems() -> None:
        if op is not None:
            problems = permission_problems(op, skip or set())
            assert not problems, "the chart's RBAC is not enough:\n" + "\n".join(problems)

    return reconciled(kube, namespace, name, timeout=timeout, check=no_permission_problems)


# ============================================================================= without a cluster


def test_helm_lint_is_clean_with_defaults_and_with_every_option(tmp_path: Path) -> None:
    res = helm("lint", "--strict", str(CHART), f"--kube-version={K8S_VERSION}")
    assert "0 chart(s) failed" in res.stdout, res.stdout
    everything = {
        "image": {"digest": "sha256:" + "a" * 64},
        "operator": {"watchNamespaces": ["team-a", "team-b"], "upstreamCIDRs": ["203.0.113.0/24"], "verbose": True},
        "evaluator": {"prometheusURL": "http://prometheus.monitoring.svc:9090", "interval": 2.5},
        "agentPermissionsCeiling": {"namespaces": ["team-a"]},
        "serviceMonitor": {"enabled": True},
        "podMonitor": {"enabled": True},
        "dashboard": {"namespace": "monitoring"},
        "ledger": {"install": True, "agentNamespaces": ["team-a"], "redis": {"persistence": {"enabled": False}}},
    }
    res = helm("lint", "--strict", str(CHART), f"--kube-version={K8S_VERSION}", "-f", values_file(tmp_path, everything))
    assert "0 chart(s) failed" in res.stdout, res.stdout


def test_chart_crds_are_byte_identical_to_the_generated_ones() -> None:
    generated = {p.name: p.read_bytes() for p in (ROOT / "crds").glob("agentfleet.dev_*.yaml")}
    in_chart = {p.name: p.read_bytes() for p in (CHART / "crds").iterdir()}
    assert sorted(generated) == [
        "agentfleet.dev_agentapprovals.yaml",
        "agentfleet.dev_agentdeployments.yaml",
        "agentfleet.dev_agentpolicies.yaml",
    ]
    assert sorted(in_chart) == sorted(generated), "charts/agentfleet/crds/ must hold exactly the generated CRDs"
    stale = [name for name in generated if in_chart[name] != generated[name]]
    assert not stale, f"copy crds/{stale[0]} to charts/agentfleet/crds/ (regenerated by `make crds`)"


def test_admission_policy_template_is_the_generated_policy(tmp_path: Path) -> None:
    source = ROOT / "crds" / "admission" / "agentpolicy-admission.yaml"
    copy_in_chart = CHART / "files" / "agentpolicy-admission.yaml"
    assert copy_in_chart.read_bytes() == source.read_bytes(), (
        "copy crds/admission/agentpolicy-admission.yaml to charts/agentfleet/files/"
    )
    generated = [d for d in yaml.safe_load_all(source.read_text()) if d]
    rendered = [d for d in render(tmp_path, None, "-s", "templates/admission-policy.yaml")]

    def key(doc: dict[str, Any]) -> tuple[str, str]:
        return doc["kind"], doc["metadata"]["name"]

    assert sorted(map(key, rendered)) == sorted(map(key, generated)) and len(generated) >= 2
    by_key = {key(d): d for d in rendered}  # Helm orders by kind; compare object by object
    for source_doc in generated:
        got, want = copy.deepcopy(by_key[key(source_doc)]), copy.deepcopy(source_doc)
        labels = got["metadata"].pop("labels")
        assert want["metadata"].pop("labels", {}).items() <= labels.items()
        assert labels["app.kubernetes.io/instance"] == RELEASE  # owned by the release, so uninstall removes it
        assert got == want, f"{want['kind']} {want['metadata']['name']} differs from the generated one"
    off = render(tmp_path, {"admissionPolicy": {"enabled": False}})
    assert not [d for d in off if d["kind"].startswith("ValidatingAdmissionPolicy")]


def test_values_schema_rejects_unsafe_or_mistyped_values(tmp_path: Path) -> None:
    pods = {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}
    bad: list[tuple[dict[str, Any], str]] = [
        ({"agentPermissionsCeiling": {"rules": [{**pods, "verbs": ["*"]}]}}, "/rules/0/verbs/0"),
        ({"agentPermissionsCeiling": {"rules": [{**pods, "verbs": ["escalate"]}]}}, "/verbs/0"),
        ({"agentPermissionsCeiling": {"rules": [{**pods, "verbs": ["bind"]}]}}, "/verbs/0"),
        ({"agentPermissionsCeiling": {"rules": [{**pods, "resources": ["*"]}]}}, "/resources/0"),
        ({"agentPermissionsCeiling": {"rules": [{**pods, "resources": ["secrets"]}]}}, "/resources/0"),
        ({"agentPermissionsCeiling": {"rules": [{**pods, "apiGroups": ["*"]}]}}, "/apiGroups/0"),
        ({"securityContext": {"readOnlyRootFilesystem": False}}, "/securityContext/readOnlyRootFilesystem"),
        ({"securityContext": {"allowPrivilegeEscalation": True}}, "/securityContext/allowPrivilegeEscalation"),
        ({"podSecurityContext": {"runAsNonRoot": False}}, "/podSecurityContext/runAsNonRoot"),
        ({"replicaCount": 2}, "replicaCount"),  # one replica by design (no kopf peering)
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"operator": {"metricsPort": 70000}}, "/operator/metricsPort"),
    ]
    for values, where in bad:
        res = helm(
            "template",
            RELEASE,
            str(CHART),
            f"--kube-version={K8S_VERSION}",
            "-f",
            values_file(tmp_path, values),
            check=False,
        )
        assert res.returncode != 0, f"accepted {values}"
        assert "schema" in res.stderr and where in res.stderr, (values, res.stderr)


def test_rendered_rbac_is_least_privilege_and_the_pod_is_hardened(tmp_path: Path) -> None:
    docs = render(tmp_path)
    roles = find(docs, "ClusterRole")
    # The approver role is shipped for platform teams to bind to people; the chart binds it to nobody.
    assert sorted(r["metadata"]["name"] for r in roles) == sorted(
        ["agentfleet-approver", FULLNAME, f"{FULLNAME}-agent-ceiling"]
    )
    assert not [b for b in find(docs, "ClusterRoleBinding") if b["roleRef"]["name"] == "agentfleet-approver"]
    for role in roles:
        for rule in role["rules"]:
            flat = [*rule["apiGroups"], *rule["resources"], *rule["verbs"]]
            assert not [x for x in flat if "*" in x], rule
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), rule
            assert not {"secrets", "clusterroles", "clusterrolebindings"} & set(rule["resources"]), rule
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    ceiling = find(docs, "ClusterRole", f"{FULLNAME}-agent-ceiling")[0]
    assert ceiling["rules"] == defaults["agentPermissionsCeiling"]["rules"]
    for binding in find(docs, "ClusterRoleBinding"):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": SA, "namespace": RELEASE_NS}]
    # A ceiling limited to some namespaces is bound there only.
    scoped = render(tmp_path, {"agentPermissionsCeiling": {"namespaces": ["team-a", "team-b"]}})
    assert [b["metadata"]["name"] for b in find(scoped, "ClusterRoleBinding")] == [FULLNAME]
    ceiling_bindings = [b for b in find(scoped, "RoleBinding") if b["roleRef"]["kind"] == "ClusterRole"]
    assert sorted(b["metadata"]["namespace"] for b in ceiling_bindings) == ["team-a", "team-b"]
    # Leader election: one Role on leases in the release namespace, nothing else.
    (election,) = find(docs, "Role", f"{FULLNAME}-leader-election")
    assert election["metadata"]["namespace"] == RELEASE_NS
    assert election["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]}
    ]

    dep = find(docs, "Deployment", FULLNAME)[0]
    # A leader and a standby, never both down for a rollout or a drain.
    assert dep["spec"]["replicas"] == 2
    assert dep["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    assert f"--leader-election-namespace={RELEASE_NS}" in dep["spec"]["template"]["spec"]["containers"][0]["args"]
    (pdb,) = find(docs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    pod = dep["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == SA
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert (sc["readOnlyRootFilesystem"], sc["allowPrivilegeEscalation"], sc["capabilities"]) == (
        True,
        False,
        {"drop": ["ALL"]},
    )
    assert container["image"] == "ghcr.io/agentfleet/agentfleet:0.1.0"
    assert container["args"][0] == "operator"
    assert "--guard-image=ghcr.io/agentfleet/agentfleet:0.1.0" in container["args"]
    assert "--liveness=http://0.0.0.0:8081/healthz" in container["args"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}, probe
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"metrics": 8080, "health": 8081}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    assert not find(docs, "ServiceMonitor") and not find(docs, "PodMonitor")  # off by default

    monitored = render(
        tmp_path,
        {
            "serviceMonitor": {"enabled": True},
            "podMonitor": {"enabled": True},
            "evaluator": {"prometheusURL": "http://prom:9090"},
        },
    )
    (sm,) = find(monitored, "ServiceMonitor")
    svc = find(monitored, "Service", f"{FULLNAME}-metrics")[0]
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] == svc["spec"]["ports"][0]["name"] == "metrics"
    (pm,) = find(monitored, "PodMonitor")
    assert pm["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/managed-by": "agentfleet"}
    assert pm["spec"]["namespaceSelector"] == {"any": True}
    endpoint = pm["spec"]["podMetricsEndpoints"][0]
    assert (endpoint["port"], endpoint["path"], endpoint["honorLabels"]) == ("metrics", "/metrics", False)
    # A pod cannot choose whose series it publishes: the identity labels come from its metadata.
    targets = {r.get("targetLabel"): r.get("sourceLabels") for r in endpoint["relabelings"]}
    assert targets["namespace"] == ["__meta_kubernetes_namespace"]
    assert targets["agent"] == ["__meta_kubernetes_pod_label_agentfleet_dev_agent"]
    assert targets["revision"] == ["__meta_kubernetes_pod_label_agentfleet_dev_revision"]
    assert sm["spec"]["endpoints"][0]["honorLabels"] is False
    args = find(monitored, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--prometheus-url=http://prom:9090" in args


def test_dashboard_shows_the_fleet_with_valid_promql(tmp_path: Path) -> None:
    (cm,) = find(render(tmp_path), "ConfigMap", f"{FULLNAME}-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    (raw,) = cm["data"].values()
    dash = json.loads(raw)
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
    exprs = {(p["id"], t["refId"]): t["expr"] for p in panels for t in p["targets"]}
    text = "\n".join(exprs.values())
    missing = [m for m in DASHBOARD_METRICS if m not in text]
    assert not missing, f"dashboard does not show {missing}"
    titles = " | ".join(p["title"].lower() for p in panels)
    for topic in ("phase", "spend", "tokens", "tool calls", "loop", "suspensions and rollbacks", "p99", "breaker"):
        assert topic in titles, f"no panel about {topic!r}: {titles}"
    # Every query parses: promtool checks them as recording rules (Grafana variables substituted).
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: run hack/deps (Debian package prometheus)"
    rules = [
        {
            "record": f"dashboard:panel_{pid}_{ref}",
            "expr": e.replace("$__rate_interval", "5m").replace("$namespace", ".*").replace("$agent", ".*"),
        }
        for (pid, ref), e in sorted(exprs.items())
    ]
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    res = subprocess.run(
        [promtool, "check", "rules", str(path)], check=False, capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"{len(rules)} rules found" in res.stdout


# ============================================================================= on the private cluster


def test_rendered_manifests_pass_server_side_validation(private: Private, tmp_path: Path) -> None:
    kube = private.kube
    for ns in (RELEASE_NS, "dry-team-a"):  # the namespaced objects need their namespaces
        ensure_namespace(kube, ns)
    variants: list[dict[str, Any]] = [
        {},
        {
            "agentPermissionsCeiling": {"namespaces": ["dry-team-a"]},
            "operator": {"watchNamespaces": ["dry-team-a"]},
            "evaluator": {"prometheusURL": "http://prometheus:9090"},
            "admissionPolicy": {"enabled": False},
            "dashboard": {"enabled": False},
            "tests": {"enabled": False},
        },
    ]
    for values in variants:
        args = ["template", RELEASE, str(CHART), "-n", RELEASE_NS, f"--kube-version={K8S_VERSION}", "--include-crds"]
        if values:
            args += ["-f", values_file(tmp_path, values)]
        manifests = helm(*args).stdout
        res = kube.kubectl("apply", "--dry-run=server", "--validate=strict", "-f", "-", input=manifests, check=False)
        assert res.returncode == 0, f"{values}: {res.stderr}"
        kinds = {line.split("/")[0] for line in res.stdout.splitlines()}
        assert "deployment.apps" in kinds and "clusterrole.rbac.authorization.k8s.io" in kinds, res.stdout
        assert res.stdout.count("(server dry run)") == len([d for d in yaml.safe_load_all(manifests) if d])


def test_install_upgrade_uninstall_leaves_nothing_behind(private: Private, tmp_path: Path) -> None:
    """A second release of its own ("life"), so this test needs nothing from the others. Its
    admission policy is off: those objects have fixed names and belong to the main release."""
    kube, name, ns = private.kube, "life", private.namespace("life-system")
    team = private.namespace("life-team")
    full = f"{name}-agentfleet"
    base = ["--set", "admissionPolicy.enabled=false", "--wait", "--timeout=120s"]
    private.helm("install", name, str(CHART), "-n", ns, *base)
    assert json.loads(private.helm("status", name, "-n", ns, "-o", "json").stdout)["info"]["status"] == "deployed"
    for kind, obj in (
        ("deployment", full),
        ("serviceaccount", full),
        ("service", f"{full}-metrics"),
        ("configmap", f"{full}-dashboard"),
    ):
        assert exists(kube, kind, obj, ns), (kind, obj)
    for kind, obj in (
        ("clusterrole", full),
        ("clusterrole", f"{full}-agent-ceiling"),
        ("clusterrolebinding", full),
        ("clusterrolebinding", f"{full}-agent-ceiling"),
    ):
        assert exists(kube, kind, obj, "default"), (kind, obj)
    assert kube.get_json("deployment", full, "-n", ns)["status"]["readyReplicas"] == 2  # KWOK "runs" them
    kube.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/agentdeployments.agentfleet.dev")

    # Upgrade with changed values: new args roll the pods, objects follow the values.
    changed = values_file(
        tmp_path,
        {
            "operator": {"workers": 8},
            "dashboard": {"enabled": False},
            "agentPermissionsCeiling": {"namespaces": [team]},
        },
    )
    private.helm("upgrade", name, str(CHART), "-n", ns, "-f", changed, *base)
    info = json.loads(private.helm("status", name, "-n", ns, "-o", "json").stdout)
    assert (info["version"], info["info"]["status"]) == (2, "deployed")
    dep = kube.get_json("deployment", full, "-n", ns)
    assert "--workers=8" in dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert dep["status"].get("updatedReplicas") == 2 and dep["metadata"]["generation"] == 2
    assert not exists(kube, "configmap", f"{full}-dashboard", ns)
    assert not exists(kube, "clusterrolebinding", f"{full}-agent-ceiling", "default")
    binding = kube.get_json("rolebinding", f"{full}-agent-ceiling", "-n", team)
    assert binding["roleRef"]["name"] == f"{full}-agent-ceiling"

    private.helm("uninstall", name, "-n", ns, "--wait", "--timeout=120s")
    selector = f"app.kubernetes.io/instance={name}"
    types = ",".join(kube.kubectl("api-resources", "--verbs=list", "--namespaced", "-o", "name").stdout.split())

    def leftovers() -> list[str]:
        found = []
        for where in (ns, team):
            found += kube.kubectl("get", types, "-n", where, "-l", selector, "-o", "name").stdout.split()
        found += kube.kubectl(
            "get",
            "clusterroles,clusterrolebindings,validatingadmissionpolicies,validatingadmissionpolicybindings",
            "-l",
            selector,
            "-o",
            "name",
        ).stdout.split()
        found += kube.kubectl("get", "secrets", "-n", ns, "-l", f"owner=helm,name={name}", "-o", "name").stdout.split()
        return found

    poll(lambda: not leftovers(), timeout=60, what=f"nothing left of release {name}")
    assert name not in private.helm("list", "-A", "-q").stdout.split()
    # Helm never deletes CRDs (that would delete every agent); they stay, as documented.
    assert exists(kube, "crd", "agentdeployments.agentfleet.dev", "default")
    assert exists(kube, "crd", "agentpolicies.agentfleet.dev", "default")


def test_chart_admission_policy_rejects_agents_over_a_ceiling(installed: Private) -> None:
    kube = installed.kube
    vap = kube.get_json("validatingadmissionpolicy", "agentfleet-agentpolicy")
    assert vap["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE
    ns = installed.namespace("admission")
    policy = agent_policy(f"cap-{ns}", namespaces=[ns], ceilings={"tokensPerHour": 5000})
    kube.apply(policy)
    try:
        over = agent("greedy-tokens", ns)

        def rejected() -> str | None:
            res = kube.kubectl("apply", "-f", "-", input=json.dumps(over), check=False)
            if res.returncode == 0:
                kube.kubectl("delete", "agd", "greedy-tokens", "-n", ns, "--wait=false")
                return None
            if "not yet synced" in res.stderr:  # the API server is still loading the policy's paramKind
                return None
            return res.stderr

        message = poll(rejected, timeout=60, what="the chart's admission policy to reject the agent")
        assert f"AgentPolicy cap-{ns}" in message and "tokensPerHour" in message, message
        within = agent("modest", ns, budgets={"tokensPerHour": 4000, "costPerDay": "1.00"})
        kube.apply(within)
    finally:
        kube.kubectl("delete", "agentpolicy", f"cap-{ns}", check=False)


def test_chart_identity_cannot_read_secrets_create_cluster_roles_or_escalate(
    installed: Private, sa_kubeconfig: str
) -> None:
    kube = installed.kube
    ns = installed.namespace("no-secrets")
    kube.kubectl("create", "secret", "generic", "llm-key", "-n", ns, "--from-literal=api-key=sk-do-not-read")
    who = f"--as=system:serviceaccount:{RELEASE_NS}:{SA}"

    def can(*args: str) -> bool:
        res = kube.kubectl("auth", "can-i", *args, who, check=False)
        assert res.stdout.strip() in {"yes", "no"}, res.stdout + res.stderr
        return res.stdout.strip() == "yes"

    denied = [
        ("get", "secrets", "-n", ns),
        ("list", "secrets", "-n", ns),
        ("watch", "secrets", "-n", ns),
        ("list", "secrets", "-A"),
        ("get", "secrets/llm-key", "-n", ns),
        ("create", "secrets", "-n", ns),
        ("create", "clusterroles"),
        ("create", "clusterrolebindings"),
        ("patch", "clusterroles"),
        ("escalate", "roles", "-n", ns),
        ("bind", "roles", "-n", ns),
        ("escalate", "clusterroles"),
        ("bind", "clusterroles"),
        ("impersonate", "users"),
        ("impersonate", "serviceaccounts", "-n", ns),
        ("create", "pods", "-n", ns),
        ("delete", "deployments", "-n", ns),
        ("update", "agentpolicies"),
        ("create", "serviceaccounts", "--subresource=token", "-n", ns),
        ("*", "*", "-n", ns),
    ]
    allowed = [
        ("patch", "agentdeployments.agentfleet.dev", "--subresource=status", "-n", ns),
        ("patch", "agentdeployments.agentfleet.dev", "--subresource=scale", "-n", ns),
        ("create", "roles", "-n", ns),
        ("create", "rolebindings", "-n", ns),
        ("create", "events", "-n", ns),
        ("list", "pods", "-n", ns),  # within the ceiling, to delegate it
    ]
    assert [a for a in denied if can(*a)] == []
    assert [a for a in allowed if not can(*a)] == []

    # Real requests with the token, not just the authorizer's opinion.
    as_sa = Kube(sa_kubeconfig, str(BINS["kubectl"]))
    for args in (("get", "secrets", "-n", ns), ("get", "secret", "llm-key", "-n", ns), ("get", "secrets", "-A")):
        res = as_sa.kubectl(*args, "-o", "json", check=False)
        assert res.returncode != 0 and "forbidden" in res.stderr.lower(), (args, res.stdout[:200], res.stderr)
        assert "sk-do-not-read" not in res.stdout and "c2stZG8tbm90LXJlYWQ" not in res.stdout
    cluster_role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": f"sneaky-{ns}"},
        "rules": [],
    }
    res = as_sa.kubectl("create", "-f", "-", input=json.dumps(cluster_role), check=False)
    assert res.returncode != 0 and "forbidden" in res.stderr.lower(), res.stderr
    # Escalation: a Role reading Secrets, or a binding to cluster-admin, is refused.
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "read-secrets", "namespace": ns},
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}],
    }
    res = as_sa.kubectl("create", "-f", "-", input=json.dumps(role), check=False)
    assert res.returncode != 0 and "attempting to grant RBAC permissions not currently held" in res.stderr, res.stderr
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "admin-me", "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "ServiceAccount", "name": SA, "namespace": RELEASE_NS}],
    }
    res = as_sa.kubectl("create", "-f", "-", input=json.dumps(binding), check=False)
    assert res.returncode != 0 and "forbidden" in res.stderr.lower(), res.stderr
    assert not exists(kube, "role", "read-secrets", ns) and not exists(kube, "rolebinding", "admin-me", ns)


def test_operator_as_chart_service_account_reconciles_suspends_and_resumes(
    installed: Private, sa_operator: OperatorProcess
) -> None:
    kube = installed.kube
    ns = installed.namespace("chart-agent")
    rules = [
        {"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list"]},
        {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "list", "watch"]},
    ]
    body = agent("alpha", ns)
    body["spec"]["permissions"]["kubernetes"] = rules
    kube.apply(body)
    st = wait_reconciled(kube, ns, "alpha", sa_operator, installed.refused)
    assert st["phase"] == "Running" and condition(st, "Ready")["status"] == "True"
    rev = st["currentRevision"]
    uid = kube.get_json("agd", "alpha", "-n", ns)["metadata"]["uid"]
    for kind, name in (
        ("serviceaccount", "alpha-agent"),
        ("configmap", f"alpha-guard-{rev}"),
        ("service", "alpha-metrics"),
        ("networkpolicy", "alpha"),
        ("deployment", "alpha"),
        ("controllerrevision", f"alpha-{rev}"),
        ("role", "alpha-agent"),
        ("rolebinding", "alpha-agent"),
    ):
        obj = kube.get_json(kind, name, "-n", ns)
        assert obj["metadata"]["ownerReferences"][0]["uid"] == uid, (kind, name)
    # The operator, holding the ceiling, delegated exactly the requested subset of it.
    role = kube.get_json("role", "alpha-agent", "-n", ns)
    assert [{k: r[k] for k in ("apiGroups", "resources", "verbs")} for r in role["rules"]] == rules
    fields = json.loads(
        kube.kubectl("get", "role", "alpha-agent", "-n", ns, "--show-managed-fields", "-o", "json").stdout
    )["metadata"]["managedFields"]
    assert {m["manager"] for m in fields} == {"agentfleet"}  # written by the operator, as the chart's identity
    poll(
        lambda: (
            kube.kubectl(
                "auth", "can-i", "list", "pods", "-n", ns, f"--as=system:serviceaccount:{ns}:alpha-agent", check=False
            ).returncode
            == 0
        ),
        timeout=30,
        what="the agent's delegated Role to take effect",
    )

    kube.kubectl("patch", "agd", "alpha", "-n", ns, "--type=merge", "-p", '{"spec":{"suspended":true}}')
    st = poll(lambda: phase_is(kube, ns, "alpha", "Suspended"), timeout=60, what="phase Suspended")
    assert condition(st, "Suspended")["reason"] == "ManualSuspend"
    assert kube.get_json("deployment", "alpha", "-n", ns)["spec"]["replicas"] == 0
    poll(
        lambda: not objects_of(kube, "pods", ns, "alpha"),
        timeout=60,
        what="the agent's pods to go away",
    )

    kube.kubectl("patch", "agd", "alpha", "-n", ns, "--type=merge", "-p", '{"spec":{"suspended":false}}')
    st = wait_reconciled(kube, ns, "alpha", sa_operator, installed.refused)
    assert st["phase"] == "Running" and condition(st, "Suspended")["status"] == "False"
    assert kube.get_json("deployment", "alpha", "-n", ns)["spec"]["replicas"] == 2
    reasons = {e["reason"] for e in kube.get_json("events", "-n", ns)["items"]}
    assert {"RevisionApplied", "Suspended", "Resumed"} <= reasons  # Events, posted by the chart's identity
    assert permission_problems(sa_operator, installed.refused) == []


def test_operator_as_chart_service_account_prunes_withdraws_and_enforces_policy(
    installed: Private, sa_operator: OperatorProcess
) -> None:
    """The less common writes: deleting old revisions and their ConfigMaps, withdrawing a Role,
    scaling to zero on a policy violation, touching agents when a policy changes."""
    kube = installed.kube
    ns = installed.namespace("chart-prune")
    body = agent("beta", ns, revisionHistoryLimit=0)
    body["spec"]["permissions"]["kubernetes"] = [{"apiGroups": [""], "resources": ["events"], "verbs": ["list"]}]
    kube.apply(body)
    first = wait_reconciled(kube, ns, "beta", sa_operator, installed.refused)["currentRevision"]
    assert exists(kube, "role", "beta-agent", ns)
    seen = [first]
    for prompt in ("Second.", "Third."):
        body["spec"]["agent"]["systemPrompt"] = {"inline": prompt}
        kube.apply(body)
        seen.append(
            poll(
                lambda: (
                    (r := wait_reconciled(kube, ns, "beta", sa_operator, installed.refused)["currentRevision"])
                    not in seen
                    and r
                ),
                timeout=60,
                what=f"the revision for {prompt!r}",
            )
        )
    poll(
        lambda: (
            not exists(kube, "controllerrevision", f"beta-{first}", ns)
            and not exists(kube, "configmap", f"beta-guard-{first}", ns)
        ),
        timeout=60,
        what="the oldest revision and its guard ConfigMap to be pruned",
    )

    body["spec"]["permissions"].pop("kubernetes")
    kube.apply(body)
    poll(
        lambda: not exists(kube, "role", "beta-agent", ns) and not exists(kube, "rolebinding", "beta-agent", ns),
        timeout=60,
        what="the Role and RoleBinding to be withdrawn",
    )

    policy = agent_policy(f"tight-{ns}", namespaces=[ns], ceilings={"tokensPerHour": 5000})
    kube.apply(policy)
    try:
        st = poll(lambda: phase_is(kube, ns, "beta", "PolicyViolation"), timeout=60, what="PolicyViolation")
        assert "tokensPerHour" in condition(st, "PolicyViolation")["message"]
        assert kube.get_json("deployment", "beta", "-n", ns)["spec"]["replicas"] == 0
    finally:
        kube.kubectl("delete", "agentpolicy", f"tight-{ns}", check=False)
    poll(lambda: phase_is(kube, ns, "beta", "Running"), timeout=60, what="the violation to clear")
    assert wait_reconciled(kube, ns, "beta", sa_operator, installed.refused)["phase"] == "Running"
    assert kube.get_json("deployment", "beta", "-n", ns)["spec"]["replicas"] == 2
    kube.kubectl("delete", "agd", "beta", "-n", ns, "--wait=true", "--timeout=60s")
    assert permission_problems(sa_operator, installed.refused) == []


def test_evaluator_as_chart_service_account_suspends_when_metrics_are_unavailable(
    installed: Private, sa_operator: OperatorProcess
) -> None:
    """The evaluator's writes (status, Events, the reconcile it triggers) with the chart's RBAC:
    Prometheus is unreachable and the agent says fail closed."""
    kube = installed.kube
    ns = installed.namespace("chart-eval")
    kube.apply(
        agent(
            "gamma",
            ns,
            analysis={"onMetricsUnavailable": "Suspend"},
            guardrails=[{"name": "loops", "metric": "loopDetections", "threshold": "0", "action": "Suspend"}],
        )
    )
    st = poll(lambda: phase_is(kube, ns, "gamma", "Suspended"), timeout=60, what="the evaluator to suspend")
    assert condition(st, "MetricsAvailable")["status"] == "False"
    assert condition(st, "Suspended")["reason"] != "ManualSuspend"
    poll(
        lambda: kube.get_json("deployment", "gamma", "-n", ns)["spec"]["replicas"] == 0,
        timeout=60,
        what="the Deployment to be scaled to zero",
    )
    # Posted by the evaluator after its status write and reconcile: poll for them.
    poll(
        lambda: (
            "MetricsUnavailable"
            in {
                e["reason"]
                for e in kube.get_json("events", "-n", ns, "--field-selector", "involvedObject.name=gamma")["items"]
            }
        ),
        timeout=30,
        what="the evaluator's Events",
    )
    assert permission_problems(sa_operator, installed.refused) == []


def test_agent_asking_beyond_the_ceiling_is_refused_safely(installed: Private, sa_operator: OperatorProcess) -> None:
    """A misconfigured AgentPolicy allows more than the chart lets the operator hold (and this
    operator has no delegation ceiling in its platform file, so its own check lets it through):
    the API server still refuses the Role, nothing runs, the operator says why and keeps working."""
    kube = installed.kube
    ns = installed.namespace("chart-greedy")
    installed.refused.add(ns)
    delete_pods = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["delete", "list"]}]
    kube.apply(agent_policy(f"lax-{ns}", namespaces=[ns], allowedKubernetesRules=delete_pods))
    body = agent("greedy", ns)
    body["spec"]["permissions"]["kubernetes"] = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["delete"]}]
    kube.apply(body)

    def refusal() -> str | None:
        progressing = condition(status(kube, ns, "greedy"), "Progressing")
        return str(progressing["message"]) if progressing.get("reason") == "Refused" else None

    message = poll(refusal, timeout=60, what="the refused Role on the agent's status")
    assert "Role greedy-agent" in message and "attempting to grant RBAC permissions not currently held" in message
    assert status(kube, ns, "greedy")["phase"] == "Degraded"
    warnings = kube.get_json("events", "-n", ns, "--field-selector", "involvedObject.name=greedy")["items"]
    assert any(e["reason"] == "Refused" and e["type"] == "Warning" for e in warnings), warnings
    # Fails closed: no Role, no binding, no Deployment; nothing recorded as applied.
    assert not exists(kube, "role", "greedy-agent", ns)
    assert not exists(kube, "rolebinding", "greedy-agent", ns)
    assert not exists(kube, "deployment", "greedy", ns)
    assert not status(kube, ns, "greedy").get("currentRevision")
    assert sa_operator.proc is not None and sa_operator.proc.poll() is None, "the operator must not crash"

    # Within the ceiling again, the same agent deploys: nothing is stuck.
    body["spec"]["permissions"]["kubernetes"] = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]
    kube.apply(body)
    assert wait_reconciled(kube, ns, "greedy", sa_operator, installed.refused)["phase"] == "Running"
    assert kube.get_json("role", "greedy-agent", "-n", ns)["rules"][0]["verbs"] == ["list"]
    kube.kubectl("delete", "agd", "greedy", "-n", ns, "--wait=true", "--timeout=60s")
    kube.kubectl("delete", "agentpolicy", f"lax-{ns}")


def test_helm_test_hook_checks_the_operator_metrics(installed: Private, sa_operator: OperatorProcess) -> None:
    hooks = [d for d in yaml.safe_load_all(installed.helm("get", "hooks", RELEASE, "-n", RELEASE_NS).stdout) if d]
    (pod,) = [h for h in hooks if h["kind"] == "Pod"]
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (container,) = pod["spec"]["containers"]
    operator_image = installed.kube.get_json("deployment", FULLNAME, "-n", RELEASE_NS)["spec"]["template"]["spec"][
        "containers"
    ][0]["image"]
    assert container["image"] == operator_image
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    python, flag, script, url = container["command"]
    assert (python, flag) == ("python", "-c")
    assert url == f"http://{FULLNAME}-metrics.{RELEASE_NS}.svc:8080/metrics"

    # The hook's check, run here against the operator running as the chart's ServiceAccount.
    metrics = f"http://127.0.0.1:{sa_operator.metrics_port}/metrics"
    with urllib.request.urlopen(metrics, timeout=5) as resp:
        assert b"agentfleet_operator_reconciles_total" in resp.read()
    ok = subprocess.run(
        [sys.executable, "-c", script, metrics, "20"], capture_output=True, text=True, timeout=60, check=False
    )
    assert ok.returncode == 0 and ok.stdout.startswith("ok:"), ok.stdout + ok.stderr
    bad = subprocess.run(
        [sys.executable, "-c", script, f"http://127.0.0.1:{free_port()}/metrics", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 1 and "FAIL" in bad.stderr, bad.stdout + bad.stderr

    # `helm test` itself: KWOK runs no containers, so we report the exit code of the same check,
    # run above, as the kubelet would (pod phase Succeeded), and Helm must take it from there.
    kube, pod_name = installed.kube, pod["metadata"]["name"]
    proc = subprocess.Popen(
        [str(BINS["helm"]), "test", RELEASE, "-n", RELEASE_NS, "--timeout=90s", f"--kubeconfig={kube.kubeconfig}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=helm_env(),
    )
    try:
        poll(
            lambda: (
                kube.kubectl(
                    "get", "pod", pod_name, "-n", RELEASE_NS, "-o", "jsonpath={.status.phase}", check=False
                ).stdout
                == "Running"
            ),
            timeout=60,
            what="the test pod to start",
        )
        terminated = {"terminated": {"exitCode": ok.returncode, "reason": "Completed"}}
        kube.kubectl(
            "patch",
            "pod",
            pod_name,
            "-n",
            RELEASE_NS,
            "--subresource=status",
            "--type=merge",
            "-p",
            json.dumps(
                {
                    "status": {
                        "phase": "Succeeded",
                        "containerStatuses": [
                            {
                                "name": container["name"],
                                "image": container["image"],
                                "imageID": "",
                                "ready": False,
                                "restartCount": 0,
                                "state": terminated,
                            }
                        ],
                    }
                }
            ),
        )
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 0, out + err
    assert re.search(rf"TEST SUITE:\s+{pod_name}\n.*\n.*\nPhase:\s+Succeeded", out), out
    poll(
        lambda: not exists(kube, "pod", pod_name, RELEASE_NS),
        timeout=60,
        what="the succeeded test pod to be deleted (hook-delete-policy)",
    )


def test_no_permission_problems_in_the_whole_operator_log(installed: Private, sa_operator: OperatorProcess) -> None:
    """Last: whatever ran before, the chart's identity was enough for everything but the agents
    refused on purpose."""
    assert sa_operator.proc is not None and sa_operator.proc.poll() is None
    assert permission_problems(sa_operator, installed.refused) == []
    assert (
        "agentfleet_operator_reconciles_total"
        in urllib.request.urlopen(f"http://127.0.0.1:{sa_operator.metrics_port}/metrics", timeout=5).read().decode()
    )
