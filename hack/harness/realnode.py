"""A cluster whose pods really run, and what the e2e tier and the demo put on it.

Two kinds of cluster, one handle (``RealCluster``):

- ``hack/cluster up --real-node``: the control plane and a real node (containerd, kubelet,
  kube-proxy, kube-router) in a private network namespace. Nothing listens on the machine's
  loopback: kubectl, helm, the kubectl plugin and requests to pod and Service addresses go
  through the run directory's wrappers (``bin/kubectl``, ``bin/helm``, ``bin/netns-exec``);
- an existing cluster given by its kubeconfig (kind, with the images loaded by
  ``hack/kind load``): kubectl reaches it from here, and pod and Service addresses are reached
  from a small client pod in ``monitoring`` (the namespace the guards' metrics port admits).

On it: a real Prometheus in ``monitoring`` that finds the guards with Kubernetes service
discovery (the chart's own scrape job, ``charts/agentfleet/files/prometheus-scrape-config.yaml``),
the chart with the locally built image, and the fake LLM as a pod behind a Service. There is no
cluster DNS on the real node: Services are addressed by ClusterIP.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

from hack.harness.kube import HACK, ROOT, VENV, VERSIONS, Kube, poll

CACHE = Path(os.environ.get("AGENTFLEET_CACHE", Path.home() / ".cache" / "agentfleet"))
KUBECTL = CACHE / "bin" / f"kubernetes-{VERSIONS['KUBERNETES_VERSION']}" / "kubectl"
HELM = CACHE / "bin" / f"helm-{VERSIONS['HELM_VERSION']}" / "helm"
NODE_IP = "10.200.0.2"
"""hack/node's node IP; the API server advertises it, so the `kubernetes` Service leads there."""
POD_CIDR = "10.244.0.0/16"
SERVICE_CIDR = "10.96.0.0/16"
"""hack/cluster's ranges, which are also kind's defaults."""
MONITORING = "monitoring"
"""The chart's default ``guardMetricsScrapers``: the one namespace the guards' metrics port admits."""
SCRAPE_CONFIG = ROOT / "charts" / "agentfleet" / "files" / "prometheus-scrape-config.yaml"
FAKE_LLM_PORT = 8900
HARDENED = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
}
SLEEPER = "import signal, sys; signal.signal(signal.SIGTERM, lambda *_: sys.exit(0)); signal.pause()"
"""A container that idles and stops at once on TERM (probe pods with python3 in their image)."""
CLIENT_POD = "agentfleet-client"
"""On an existing cluster: the pod in ``monitoring`` from which pod and Service addresses are reached."""

HTTP_GET = """
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])) as resp:
        sys.stdout.write(resp.read().decode())
except OSError as exc:
    sys.stderr.write(str(exc))
    sys.exit(3)
"""


# ----------------------------------------------------------------------------- the node


def node_env(run_dir: Path, port_base: int | str, netns: str | None = None) -> dict[str, str]:
    """The environment ``hack/cluster`` and ``hack/node`` take for this cluster."""
    env = {**os.environ, "AGENTFLEET_RUN_DIR": str(run_dir), "AGENTFLEET_PORT_BASE": str(port_base)}
    if netns:
        env["AGENTFLEET_NETNS"] = netns
    return env


def cluster_cmd(
    env: dict[str, str], *args: str, capture: bool = True, timeout: float = 1800
) -> subprocess.CompletedProcess[str]:
    """``hack/cluster ARGS`` in ``env`` (with ``capture=False`` its output goes to ours)."""
    return subprocess.run(
        [str(HACK / "cluster"), *args], env=env, text=True, capture_output=capture, timeout=timeout, check=False
    )


def up(env: dict[str, str], *, capture: bool = True) -> subprocess.CompletedProcess[str]:
    """``hack/cluster up --real-node --no-prometheus``: builds what is missing (binaries, images),
    starts the control plane and the node in the namespace; Prometheus comes later, as a pod."""
    return cluster_cmd(env, "up", "--real-node", "--no-prometheus", capture=capture)


def down(env: dict[str, str], *, capture: bool = True) -> subprocess.CompletedProcess[str]:
    """``hack/cluster down``: node (containers, shims, cgroups), control plane, namespace, state."""
    return cluster_cmd(env, "down", capture=capture, timeout=300)


def node_running(run_dir: Path) -> bool:
    return (run_dir / "real-node.json").exists()


# ----------------------------------------------------------------------------- the handle


@dataclass(kw_only=True)
class RealCluster:
    """kubectl, helm, the kubectl plugin and HTTP to pod and Service addresses, on a cluster
    whose pods run for real."""

    kubeconfig: str
    images: dict[str, str]
    """Image name (agentfleet, agent, fake-llm, prometheus, pause) -> reference on the node."""
    run_dir: Path | None = None
    """hack/cluster's run directory; None: an existing cluster (kind) reached directly."""

    @classmethod
    def of_node(cls, run_dir: Path) -> RealCluster:
        """The cluster ``hack/cluster up --real-node`` started in ``run_dir``."""
        images = json.loads((run_dir / "images.json").read_text())["images"]
        return cls(kubeconfig=str(run_dir / "kubeconfig"), images=images, run_dir=run_dir)

    @classmethod
    def existing(cls, kubeconfig: str) -> RealCluster:
        """A cluster of your own (kind): the images must already be on its nodes (``hack/kind load``)."""
        names = subprocess.run(
            [str(HACK / "image"), "names"], capture_output=True, text=True, timeout=120, check=True
        ).stdout
        return cls(kubeconfig=kubeconfig, images=json.loads(names))

    @property
    def kubectl_bin(self) -> str:
        return str(self.run_dir / "bin" / "kubectl") if self.run_dir else str(KUBECTL)

    @property
    def kube(self) -> Kube:
        return Kube(self.kubeconfig, self.kubectl_bin)

    def helm(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        """``helm ARGS`` with a private home (no repositories, no cache shared with the user's)."""
        home = (self.run_dir or CACHE) / "helm-home"
        env = {
            **os.environ,
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_DATA_HOME": str(home / "data"),
        }
        helm = str(self.run_dir / "bin" / "helm") if self.run_dir else str(HELM)
        cmd = [helm, *args, f"--kubeconfig={self.kubeconfig}"]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
        if res.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
        return res

    def in_cluster(self, argv: list[str]) -> list[str]:
        """``argv`` run where the API server and the pod network are reachable."""
        return [str(self.run_dir / "bin" / "netns-exec"), *argv] if self.run_dir else argv

    def python(self, code: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Python code run where pod and Service addresses route: the node's network namespace,
        or the client pod of an existing cluster. The caller's process stays where it is."""
        if self.run_dir:
            cmd = self.in_cluster([str(VENV / "python"), "-c", code, *args])
        else:
            self.ensure_client()
            cmd = [self.kubectl_bin, f"--kubeconfig={self.kubeconfig}", "exec", CLIENT_POD, "-n", MONITORING]
            cmd += ["--", "python3", "-c", code, *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)

    def get(self, url: str, timeout: float = 5) -> str:
        """GET ``url`` from inside the cluster's network; the body (AssertionError if it fails)."""
        res = self.python(HTTP_GET, url, str(timeout), timeout=timeout + 20)
        if res.returncode != 0:
            raise AssertionError(f"GET {url} failed: {res.stderr.strip()[-500:]}")
        return res.stdout

    def plugin(
        self, *args: str, input_text: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """``kubectl agentfleet ARGS`` (the installed plugin), where the API server is reachable."""
        return subprocess.run(
            self.in_cluster([str(VENV / "kubectl-agentfleet"), *args]),
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "KUBECONFIG": self.kubeconfig},
            input=input_text,
            check=False,
        )

    def ensure_namespace(self, name: str) -> None:
        if self.kube.kubectl("get", "namespace", name, check=False).returncode != 0:
            self.kube.kubectl("create", "namespace", name)

    def ensure_client(self) -> None:
        """The client pod of an existing cluster (the agent image: it has python3)."""
        kube = self.kube
        if kube.kubectl("get", "pod", CLIENT_POD, "-n", MONITORING, check=False).returncode == 0:
            return
        self.ensure_namespace(MONITORING)
        kube.apply(idle_pod(CLIENT_POD, MONITORING, self.images["agent"]))
        wait_pod_ready(kube, MONITORING, f"app={CLIENT_POD}", timeout=120)


# ----------------------------------------------------------------------------- pods


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


def idle_pod(name: str, namespace: str, image: str) -> dict[str, Any]:
    """A hardened pod that idles (``image`` must have python3), labelled ``app=NAME``."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
        "spec": {
            "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {"name": "probe", "image": image, "command": ["python3", "-c", SLEEPER], "securityContext": HARDENED}
            ],
        },
    }


# ----------------------------------------------------------------------------- Prometheus


@dataclass
class Prometheus:
    """A Prometheus pod (Kubernetes service discovery), queried from inside the cluster's network."""

    url: str
    pod: str
    cluster: RealCluster

    def query(self, promql: str) -> list[dict[str, Any]]:
        body = json.loads(self.cluster.get(f"{self.url}/api/v1/query?query={quote(promql)}"))
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def targets(self) -> list[dict[str, Any]]:
        active: list[dict[str, Any]] = json.loads(self.cluster.get(f"{self.url}/api/v1/targets?state=active"))["data"][
            "activeTargets"
        ]
        return active


def prometheus_config(interval: str = "2s") -> dict[str, Any]:
    """The chart's scrape job as it is, at a short interval so changes show within seconds."""
    (job,) = yaml.safe_load(SCRAPE_CONFIG.read_text())
    return {
        "global": {"scrape_interval": interval, "scrape_timeout": "1500ms", "evaluation_interval": interval},
        "scrape_configs": [job],
    }


def prometheus_objects(
    image: str, namespace: str = MONITORING, rbac_name: str = "e2e-prometheus"
) -> list[dict[str, Any]]:
    """Prometheus as a pod with the RBAC Kubernetes discovery needs (list and watch pods), so the
    guards' NetworkPolicies admit its scrapes the way they would in a cluster; a Service in front."""
    labels = {"app": "prometheus"}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "prometheus", "namespace": namespace}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": rbac_name},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": rbac_name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": rbac_name},
            "subjects": [{"kind": "ServiceAccount", "name": "prometheus", "namespace": namespace}],
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "prometheus", "namespace": namespace},
            "data": {"prometheus.yml": yaml.safe_dump(prometheus_config())},
        },
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "prometheus", "namespace": namespace, "labels": labels},
            "spec": {
                "serviceAccountName": "prometheus",
                "terminationGracePeriodSeconds": 2,
                "securityContext": {"runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532},
                "containers": [
                    {
                        "name": "prometheus",
                        "image": image,
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
            "metadata": {"name": "prometheus", "namespace": namespace},
            "spec": {"selector": labels, "ports": [{"port": 9090, "targetPort": "http"}]},
        },
    ]


def apply_prometheus(cluster: RealCluster, rbac_name: str = "e2e-prometheus") -> Prometheus:
    """Prometheus applied in ``monitoring`` (not waited for: see ``wait_pod_ready``)."""
    cluster.ensure_namespace(MONITORING)
    cluster.kube.apply(prometheus_objects(cluster.images["prometheus"], MONITORING, rbac_name))
    ip = cluster.kube.get_json("service", "prometheus", "-n", MONITORING)["spec"]["clusterIP"]
    return Prometheus(f"http://{ip}:9090", "prometheus", cluster)


def start_prometheus(cluster: RealCluster, rbac_name: str = "e2e-prometheus") -> Prometheus:
    """Prometheus in ``monitoring``, Ready."""
    prom = apply_prometheus(cluster, rbac_name)
    wait_pod_ready(cluster.kube, MONITORING, "app=prometheus", timeout=120)
    return prom


# ----------------------------------------------------------------------------- the chart


def install_chart(
    cluster: RealCluster, release: str, namespace: str, prometheus_url: str, *sets: str, timeout: float = 180
) -> None:
    """``helm install`` of the chart with the locally built image and the evaluator on
    ``prometheus_url`` (not waited for: ``wait_operator``). ``sets``: more ``--set=...``."""
    repository, tag = cluster.images["agentfleet"].rsplit(":", 1)
    cluster.helm(
        "install",
        release,
        str(ROOT / "charts" / "agentfleet"),
        "-n",
        namespace,
        "--create-namespace",
        f"--set=image.repository={repository}",
        f"--set=image.tag={tag}",
        # No cluster DNS on the real node: Prometheus by its Service's ClusterIP.
        f"--set=evaluator.prometheusURL={prometheus_url}",
        *sets,
        timeout=timeout,
    )


def wait_operator(cluster: RealCluster, namespace: str, timeout: float = 180) -> dict[str, Any]:
    """A Ready operator pod of the chart."""
    return wait_pod_ready(cluster.kube, namespace, "app.kubernetes.io/component=operator", timeout=timeout)


# ----------------------------------------------------------------------------- the fake LLM


def fake_llm_objects(image: str, name: str, namespace: str, port: int = FAKE_LLM_PORT) -> list[dict[str, Any]]:
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
    """A fake LLM pod behind a Service; its control API read from inside the cluster's network."""

    name: str
    cluster_ip: str
    pod_ip: str
    cluster: RealCluster
    port: int = FAKE_LLM_PORT

    @property
    def endpoint(self) -> str:
        return f"http://{self.cluster_ip}:{self.port}/v1"

    def tool_url(self, tool: str) -> str:
        return f"http://{self.cluster_ip}:{self.port}/tools/{tool}"

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.cluster.get(f"http://{self.pod_ip}:{self.port}/_control/stats"))
        return result


def start_fake_llm(cluster: RealCluster, name: str, namespace: str, port: int = FAKE_LLM_PORT) -> FakeLLM:
    """The fake LLM pod and its Service, Ready."""
    kube = cluster.kube
    kube.apply(fake_llm_objects(cluster.images["fake-llm"], name, namespace, port))
    pod = wait_pod_ready(kube, namespace, f"app={name}", timeout=120)
    svc = kube.get_json("service", name, "-n", namespace)
    return FakeLLM(name, svc["spec"]["clusterIP"], pod["status"]["podIP"], cluster, port)


def api_endpoint(cluster: RealCluster) -> tuple[str, int]:
    """Where the `kubernetes` Service leads (after kube-proxy's DNAT): the address a
    NetworkPolicy must allow for a pod to reach the API server."""
    ep = cluster.kube.get_json("endpoints", "kubernetes", "-n", "default")
    subset = ep["subsets"][0]
    return str(subset["addresses"][0]["ip"]), int(subset["ports"][0]["port"])
