"""A real node for the session: ``hack/cluster up --real-node`` on a private port range and
network namespace, down at the end (or earlier, by the test that checks what down leaves).

On it, for every test of the tier: a real Prometheus in namespace ``monitoring`` that finds the
guards with Kubernetes service discovery (the chart's own scrape job,
``charts/agentfleet/files/prometheus-scrape-config.yaml``), the chart's operator with its
evaluator pointed at that Prometheus, the fake LLM behind a Service, and ``greeter``, an agent
whose guard answers through the fake LLM.

Environment: AGENTFLEET_E2E_PORT_BASE (default 17400), AGENTFLEET_E2E_RUN_DIR (default
$AGENTFLEET_CACHE/e2e-run), AGENTFLEET_E2E_NETNS (default agentfleet-e2e-<port base>). Set
AGENTFLEET_KEEP_CLUSTER=1 to leave the cluster running after the session (for debugging:
``eval "$(AGENTFLEET_RUN_DIR=... AGENTFLEET_PORT_BASE=... AGENTFLEET_NETNS=... hack/cluster env)"``).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from hack.harness.kube import HACK, ROOT, Kube, poll
from tests.e2e.machine import Snapshot, snapshot

CACHE = Path(os.environ.get("AGENTFLEET_CACHE", Path.home() / ".cache" / "agentfleet"))
PORT_BASE = os.environ.get("AGENTFLEET_E2E_PORT_BASE", "17400")
RUN_DIR = Path(os.environ.get("AGENTFLEET_E2E_RUN_DIR", CACHE / "e2e-run"))
NETNS = os.environ.get("AGENTFLEET_E2E_NETNS", f"agentfleet-e2e-{PORT_BASE}")


@dataclass
class RealNode:
    """The cluster with a real node; kubectl and helm run inside its network namespace."""

    env: dict[str, str]
    before: Snapshot
    images: dict[str, str]
    netns_inode: int
    mntns_inode: int
    timings: dict[str, float] = field(default_factory=dict)
    is_down: bool = False

    @property
    def kube(self) -> Kube:
        return Kube(str(RUN_DIR / "kubeconfig"), str(RUN_DIR / "bin" / "kubectl"))

    def helm(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        home = RUN_DIR / "helm-home"
        env = {
            **os.environ,
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_DATA_HOME": str(home / "data"),
        }
        cmd = [str(RUN_DIR / "bin" / "helm"), *args, f"--kubeconfig={RUN_DIR / 'kubeconfig'}"]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
        if res.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
        return res

    def cluster(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(HACK / "cluster"), *args], env=self.env, text=True, capture_output=True, timeout=timeout, check=False
        )

    def down(self) -> subprocess.CompletedProcess[str]:
        res = self.cluster("down", timeout=300)
        self.is_down = True
        return res


@pytest.fixture(scope="session")
def real_node() -> Iterator[RealNode]:
    env = {
        **os.environ,
        "AGENTFLEET_RUN_DIR": str(RUN_DIR),
        "AGENTFLEET_PORT_BASE": PORT_BASE,
        "AGENTFLEET_NETNS": NETNS,
    }
    if (RUN_DIR / "real-node.json").exists():  # a previous session that was killed: start clean
        subprocess.run([str(HACK / "cluster"), "down"], env=env, check=False, timeout=300)
    before = snapshot()
    t0 = time.monotonic()
    up = subprocess.run(
        [str(HACK / "cluster"), "up", "--real-node", "--no-prometheus"],
        env=env,
        text=True,
        capture_output=True,
        timeout=1800,
        check=False,
    )
    print(up.stdout[-3000:], up.stderr[-3000:])
    if up.returncode != 0:
        subprocess.run([str(HACK / "cluster"), "down"], env=env, check=False, timeout=300)
        pytest.fail(f"hack/cluster up --real-node failed:\n{up.stdout[-3000:]}\n{up.stderr[-3000:]}", pytrace=False)
    state = json.loads((RUN_DIR / "node" / "node.json").read_text())
    node = RealNode(
        env=env,
        before=before,
        images=json.loads((RUN_DIR / "images.json").read_text())["images"],
        netns_inode=os.stat(f"/run/netns/{NETNS}").st_ino,
        mntns_inode=int(state["mntns"]),
        timings={"up": time.monotonic() - t0},
    )
    poll(
        lambda: node.kube.kubectl("get", "serviceaccount", "default", "-n", "default", check=False).returncode == 0,
        timeout=60,
        what="the default ServiceAccount",
    )
    yield node
    if not node.is_down and os.environ.get("AGENTFLEET_KEEP_CLUSTER") != "1":
        res = node.down()
        assert res.returncode == 0, f"hack/cluster down failed:\n{res.stdout}\n{res.stderr}"


def wait_pod_ready(kube: Kube, namespace: str, selector: str, timeout: float = 120) -> dict[str, Any]:
    """The first pod matching ``selector`` once all its containers are ready; fails fast on a
    container that keeps crashing, with its log."""

    def ready() -> dict[str, Any] | None:
        pods = kube.get_json("pods", "-n", namespace, "-l", selector)["items"]
        for pod in pods:
            statuses = pod.get("status", {}).get("containerStatuses", []) + pod.get("status", {}).get(
                "initContainerStatuses", []
            )
            for st in statuses:
                if st.get("restartCount", 0) >= 3:
                    logs = kube.kubectl(
                        "logs", pod["metadata"]["name"], "-n", namespace, "-c", st["name"], "--previous", check=False
                    )
                    raise AssertionError(f"container {st['name']} keeps crashing:\n{logs.stdout[-3000:]}")
            conds = pod.get("status", {}).get("conditions", [])
            if any(c["type"] == "Ready" and c["status"] == "True" for c in conds):
                return dict(pod)
        return None

    result: dict[str, Any] = poll(ready, timeout=timeout, interval=0.5, what=f"a Ready pod {selector} in {namespace}")
    return result


# ----------------------------------------------------------------------------- inside containers

PROBE = r"""
import json, os
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
try:
    open("/probe-write", "w").close()
    root_read_only = False
except OSError as exc:
    root_read_only = exc.errno == 30
key_dir = "/var/run/agentfleet/upstream"
key_files = {}
if os.path.isdir(key_dir):
    for name in os.listdir(key_dir):
        if not name.startswith(".."):
            with open(os.path.join(key_dir, name)) as f:
                key_files[name] = f.read()
sa = "/var/run/secrets/kubernetes.io/serviceaccount"
sa_token = None
if os.path.exists(f"{sa}/token"):
    sa_token = {"namespace": open(f"{sa}/namespace").read(), "length": len(open(f"{sa}/token").read())}
print(json.dumps({
    "uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(),
    "cap_eff": status["CapEff"].strip(), "cap_prm": status["CapPrm"].strip(), "cap_bnd": status["CapBnd"].strip(),
    "no_new_privs": status["NoNewPrivs"].strip(), "seccomp": status["Seccomp"].strip(),
    "root_read_only": root_read_only, "env": dict(os.environ), "key_files": key_files,
    "sa_token": sa_token,
}))
"""


def probe(node: RealNode, pod: str, container: str, namespace: str) -> dict[str, Any]:
    """Facts about a running container, read by python3 inside it."""
    res = node.kube.kubectl("exec", pod, "-n", namespace, "-c", container, "--", "python3", "-c", PROBE)
    result: dict[str, Any] = json.loads(res.stdout)
    return result


def assert_hardened(facts: dict[str, Any], what: str) -> None:
    assert facts["uid"] == 65532 and facts["gid"] == 65532, f"{what}: {facts['uid']}:{facts['gid']}"
    assert int(facts["cap_eff"], 16) == 0, f"{what}: effective capabilities {facts['cap_eff']}"
    assert int(facts["cap_prm"], 16) == 0, f"{what}: permitted capabilities {facts['cap_prm']}"
    assert int(facts["cap_bnd"], 16) == 0, f"{what}: bounding set {facts['cap_bnd']} (capabilities not dropped)"
    assert facts["no_new_privs"] == "1", f"{what}: allowPrivilegeEscalation is not false"
    assert facts["seccomp"] == "2", f"{what}: seccomp mode {facts['seccomp']} (RuntimeDefault is a filter, 2)"
    assert facts["root_read_only"], f"{what}: the root filesystem is writable"


# ----------------------------------------------------------------------------- the fleet on the node

RELEASE, RELEASE_NS = "af", "agentfleet-system"
NS = "e2e-agents"
NODE_IP = "10.200.0.2"
"""hack/node's node IP; the API server advertises it, so the `kubernetes` Service leads there."""
API_PORT = int(PORT_BASE) + 2
MONITORING = "monitoring"
"""The chart's default ``guardMetricsScrapers``: the one namespace the guards' metrics port admits."""
API_KEY = "sk-e2e-upstream-key-only-the-guard-may-see"
FAKE_TEXT = "Hello from the fake LLM. Everything is fine."
"""The fake LLM's default answer (hack/harness/fake_llm.py, DEFAULT_TEXT)."""
SCRAPE_CONFIG = ROOT / "charts" / "agentfleet" / "files" / "prometheus-scrape-config.yaml"
HARDENED = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
}
SLEEPER = "import signal, sys; signal.signal(signal.SIGTERM, lambda *_: sys.exit(0)); signal.pause()"
"""A container that idles and stops at once on TERM (probe pods with python3 in their image)."""


def netns_python(code: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run Python code in the node's network namespace (where pod and Service IPs route), from
    the host; the test process itself stays outside."""
    return subprocess.run(
        [str(RUN_DIR / "bin" / "netns-exec"), sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


HTTP_GET = """
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])) as resp:
        sys.stdout.write(resp.read().decode())
except OSError as exc:
    sys.stderr.write(str(exc))
    sys.exit(3)
"""


def netns_get(url: str, timeout: float = 5) -> str:
    """GET ``url`` from inside the node's network namespace; the body (AssertionError if it fails)."""
    res = netns_python(HTTP_GET, url, str(timeout), timeout=timeout + 20)
    if res.returncode != 0:
        raise AssertionError(f"GET {url} failed: {res.stderr.strip()[-500:]}")
    return res.stdout


@dataclass
class Prometheus:
    """The e2e Prometheus pod (Kubernetes service discovery), queried from the node's namespace."""

    url: str
    pod: str

    def query(self, promql: str) -> list[dict[str, Any]]:
        from urllib.parse import quote

        body = json.loads(netns_get(f"{self.url}/api/v1/query?query={quote(promql)}"))
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def targets(self) -> list[dict[str, Any]]:
        active: list[dict[str, Any]] = json.loads(netns_get(f"{self.url}/api/v1/targets?state=active"))["data"][
            "activeTargets"
        ]
        return active


def prometheus_config() -> dict[str, Any]:
    """The chart's scrape job as it is, at a short interval so tests see data within seconds."""
    (job,) = yaml.safe_load(SCRAPE_CONFIG.read_text())
    return {
        "global": {"scrape_interval": "2s", "scrape_timeout": "1500ms", "evaluation_interval": "2s"},
        "scrape_configs": [job],
    }


@pytest.fixture(scope="session")
def prometheus(real_node: RealNode) -> Prometheus:
    """Prometheus as a pod in ``monitoring``, with the RBAC Kubernetes discovery needs (list and
    watch pods), so the guards' NetworkPolicies admit its scrapes the way they would in a cluster."""
    kube = real_node.kube
    labels = {"app": "prometheus"}
    t0 = time.monotonic()
    kube.kubectl("create", "namespace", MONITORING)
    kube.apply(
        [
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "prometheus", "namespace": MONITORING}},
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": "e2e-prometheus"},
                "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": "e2e-prometheus"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "e2e-prometheus"},
                "subjects": [{"kind": "ServiceAccount", "name": "prometheus", "namespace": MONITORING}],
            },
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "prometheus", "namespace": MONITORING},
                "data": {"prometheus.yml": yaml.safe_dump(prometheus_config())},
            },
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "prometheus", "namespace": MONITORING, "labels": labels},
                "spec": {
                    "serviceAccountName": "prometheus",
                    "terminationGracePeriodSeconds": 2,
                    "securityContext": {"runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532},
                    "containers": [
                        {
                            "name": "prometheus",
                            "image": real_node.images["prometheus"],
                            "args": [
                                "--config.file=/etc/prometheus/prometheus.yml",
                                "--storage.tsdb.path=/prometheus",
                                "--storage.tsdb.retention.time=2h",
                                "--web.listen-address=0.0.0.0:9090",
                                "--log.level=warn",
                            ],
                            "ports": [{"containerPort": 9090, "name": "http"}],
                            "readinessProbe": {"httpGet": {"path": "/-/ready", "port": "http"}, "periodSeconds": 1},
                            "securityContext": HARDENED,
                            "volumeMounts": [
                                {"name": "config", "mountPath": "/etc/prometheus"},
                                {"name": "data", "mountPath": "/prometheus"},
                            ],
                        }
                    ],
                    "volumes": [
                        {"name": "config", "configMap": {"name": "prometheus"}},
                        {"name": "data", "emptyDir": {}},
                    ],
                },
            },
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "prometheus", "namespace": MONITORING},
                "spec": {"selector": labels, "ports": [{"port": 9090, "targetPort": "http"}]},
            },
        ]
    )
    wait_pod_ready(kube, MONITORING, "app=prometheus", timeout=120)
    real_node.timings["Prometheus pod Ready"] = time.monotonic() - t0
    ip = kube.get_json("service", "prometheus", "-n", MONITORING)["spec"]["clusterIP"]
    return Prometheus(f"http://{ip}:9090", "prometheus")


@pytest.fixture(scope="session")
def operator_installed(real_node: RealNode, prometheus: Prometheus) -> dict[str, Any]:
    """The chart, with the local image and the evaluator on the e2e Prometheus; the operator Ready."""
    image = real_node.images["agentfleet"]
    repository, tag = image.rsplit(":", 1)
    t0 = time.monotonic()
    real_node.helm(
        "install",
        RELEASE,
        str(ROOT / "charts" / "agentfleet"),
        "-n",
        RELEASE_NS,
        "--create-namespace",
        f"--set=image.repository={repository}",
        f"--set=image.tag={tag}",
        "--set=operator.workers=4",
        "--set=operator.apiConcurrency=8",
        f"--set=operator.watchNamespaces={{{NS}}}",
        # No cluster DNS on this node: Prometheus by its Service's ClusterIP.
        f"--set=evaluator.prometheusURL={prometheus.url}",
        "--set=evaluator.interval=2",
        "--set=evaluator.rateWindow=30s",
    )
    pod = wait_pod_ready(real_node.kube, RELEASE_NS, "app.kubernetes.io/component=operator", timeout=180)
    real_node.timings["chart install to operator Ready"] = time.monotonic() - t0
    return pod


def fake_llm_objects(image: str, name: str, namespace: str, port: int = 8900) -> list[dict[str, Any]]:
    """The fake LLM as a pod (listening on ``port``) behind a Service of the same name."""
    labels = {"app": name}
    return [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {
                "automountServiceAccountToken": False,
                "terminationGracePeriodSeconds": 1,
                "containers": [
                    {
                        "name": "fake-llm",
                        "image": image,
                        "args": ["--host", "0.0.0.0", "--port", str(port)],
                        "ports": [{"containerPort": port, "name": "http"}],
                        "readinessProbe": {"httpGet": {"path": "/v1/models", "port": "http"}, "periodSeconds": 1},
                        "securityContext": HARDENED,
                    }
                ],
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"selector": labels, "ports": [{"port": port, "targetPort": "http"}]},
        },
    ]


@dataclass
class FakeLLM:
    """A fake LLM pod behind a Service; its control API read from the node's namespace."""

    name: str
    cluster_ip: str
    pod_ip: str
    port: int = 8900

    @property
    def endpoint(self) -> str:
        return f"http://{self.cluster_ip}:{self.port}/v1"

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(netns_get(f"http://{self.pod_ip}:{self.port}/_control/stats"))
        return result


def start_fake_llm(real_node: RealNode, name: str, namespace: str, port: int = 8900) -> FakeLLM:
    kube = real_node.kube
    kube.apply(fake_llm_objects(real_node.images["fake-llm"], name, namespace, port))
    pod = wait_pod_ready(kube, namespace, f"app={name}", timeout=120)
    svc = kube.get_json("service", name, "-n", namespace)
    return FakeLLM(name, svc["spec"]["clusterIP"], pod["status"]["podIP"], port)


@pytest.fixture(scope="session")
def agents_namespace(real_node: RealNode) -> str:
    """The agents' namespace, with the policy every e2e agent runs under and the LLM key."""
    kube = real_node.kube
    kube.kubectl("create", "namespace", NS)
    kube.apply(
        [
            {
                "apiVersion": "agentfleet.dev/v1alpha1",
                "kind": "AgentPolicy",
                "metadata": {"name": "e2e-agents"},
                "spec": {
                    "namespaces": [NS],
                    "allowedSecrets": ["llm-key"],
                    "allowedEgress": ["10.244.0.0/16", f"{NODE_IP}/32"],
                    "allowedEndpoints": [{"cidr": "10.96.0.0/16", "ports": [8900]}],
                    "allowedKubernetesRules": [
                        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}
                    ],
                },
            },
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": "llm-key", "namespace": NS},
                "data": {"api-key": base64.b64encode(API_KEY.encode()).decode()},
            },
        ]
    )
    return NS


@pytest.fixture(scope="session")
def fake_llm(real_node: RealNode, agents_namespace: str) -> FakeLLM:
    """The fake LLM as a pod behind a Service, in the agents' namespace."""
    return start_fake_llm(real_node, "fake-llm", agents_namespace)


def agent_spec(
    name: str,
    image: str,
    llm: FakeLLM,
    *,
    env: dict[str, str] | None = None,
    tools: list[str] | None = None,
    guardrails: list[dict[str, Any]] | None = None,
    kubernetes: list[dict[str, Any]] | None = None,
    egress: list[dict[str, Any]] | None = None,
    stabilization: str = "5m",
) -> dict[str, Any]:
    """An AgentDeployment of the agent image whose model (and tools) are the fake LLM."""
    spec: dict[str, Any] = {
        "replicas": 1,
        "agent": {
            "image": image,
            "model": {
                # No cluster DNS on this node: the Service by its ClusterIP.
                "name": "gpt-4o-mini",
                "endpoint": llm.endpoint,
                "apiKeySecretRef": {"name": "llm-key"},
            },
            "systemPrompt": {"inline": "You are a test agent."},
            "env": [{"name": k, "value": v} for k, v in {"AGENT_INTERVAL_SECONDS": "3600", **(env or {})}.items()],
        },
        "budgets": {"tokensPerHour": 10_000_000, "costPerDay": "100"},
        "permissions": {
            # A NetworkPolicy sees the packet after kube-proxy's DNAT: the egress rule the
            # operator renders for the endpoint (the ClusterIP) alone does not let it through;
            # the Service's pod network does.
            "egress": [{"cidr": "10.244.0.0/16", "ports": [llm.port]}, *(egress or [])],
            "secrets": ["llm-key"],
        },
        "analysis": {"stabilizationWindow": stabilization},
    }
    if tools:
        spec["agent"]["tools"] = [
            {"name": t, "endpoint": f"http://{llm.cluster_ip}:{llm.port}/tools/{t}"} for t in tools
        ]
        spec["agent"]["env"].append({"name": "AGENT_TOOLS", "value": ",".join(tools)})
        spec["permissions"]["tools"] = tools
    if guardrails:
        spec["guardrails"] = guardrails
    if kubernetes:
        spec["permissions"]["kubernetes"] = kubernetes
    return {
        "apiVersion": "agentfleet.dev/v1alpha1",
        "kind": "AgentDeployment",
        "metadata": {"name": name, "namespace": NS},
        "spec": spec,
    }


@pytest.fixture(scope="session")
def greeter(real_node: RealNode, operator_installed: dict[str, Any], fake_llm: FakeLLM) -> dict[str, Any]:
    """An agent that only answers when asked (``kubectl exec ... agent.py ask``); its Ready pod."""
    t0 = time.monotonic()
    real_node.kube.apply(agent_spec("greeter", real_node.images["agent"], fake_llm))
    pod = wait_pod_ready(real_node.kube, NS, "agentfleet.dev/agent=greeter", timeout=180)
    real_node.timings["AgentDeployment to agent pod Ready"] = time.monotonic() - t0
    return pod


def probe_pod(real_node: RealNode, name: str, namespace: str) -> dict[str, Any]:
    """An idle pod with python3 (the agent image) from which connections are tried."""
    kube = real_node.kube
    if kube.kubectl("get", "namespace", namespace, check=False).returncode != 0:
        kube.kubectl("create", "namespace", namespace)
    kube.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
            "spec": {
                "automountServiceAccountToken": False,
                "terminationGracePeriodSeconds": 1,
                "containers": [
                    {
                        "name": "probe",
                        "image": real_node.images["agent"],
                        "command": ["python3", "-c", SLEEPER],
                        "securityContext": HARDENED,
                    }
                ],
            },
        }
    )
    return wait_pod_ready(kube, namespace, f"app={name}", timeout=120)


CONNECT = """
import socket, sys
s = socket.socket()
s.settimeout(float(sys.argv[3]))
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    print("connected")
except socket.timeout:
    print("timeout")
except ConnectionRefusedError:
    print("refused")
except OSError as exc:
    print(f"error {exc.errno}")
"""


def connect_from(
    real_node: RealNode, pod: str, namespace: str, container: str, host: str, port: int, timeout: float = 2
) -> str:
    """What a TCP connect from inside a pod's container gets: connected, refused, timeout, error N."""
    res = real_node.kube.kubectl(
        "exec", pod, "-n", namespace, "-c", container, "--", "python3", "-c", CONNECT, host, str(port), str(timeout)
    )
    return res.stdout.strip()


def plugin(*args: str, input_text: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``kubectl agentfleet ARGS`` (the installed plugin), run in the node's network namespace
    where the API server listens."""
    return subprocess.run(
        [str(RUN_DIR / "bin" / "netns-exec"), str(ROOT / ".venv" / "bin" / "kubectl-agentfleet"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "KUBECONFIG": str(RUN_DIR / "kubeconfig")},
        input=input_text,
        check=False,
    )


def agent_pods(kube: Kube, name: str) -> list[dict[str, Any]]:
    """The agent's pods that are not being deleted."""
    pods = kube.get_json("pods", "-n", NS, "-l", f"agentfleet.dev/agent={name}")["items"]
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == type_), {})
