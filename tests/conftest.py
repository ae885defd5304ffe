"""Shared fixtures: the real local control plane, per-test namespaces, Prometheus.

The session starts the local control plane from ``hack/cluster`` unless
``AGENTFLEET_KUBECONFIG`` names an existing cluster (kind, say). It never fakes the API.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
HACK = ROOT / "hack"
sys.path.insert(0, str(ROOT))


def hack_versions() -> dict[str, str]:
    out: dict[str, str] = {}
    for line in (HACK / "versions.env").read_text().splitlines():
        if line.strip() and not line.startswith("#") and "=" in line:
            key, value = line.strip().split("=", 1)
            out[key] = value
    return out


VERSIONS = hack_versions()


def poll(check: Callable[[], Any], timeout: float = 30.0, interval: float = 0.2, what: str = "condition") -> Any:
    """Call ``check`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last value: {last!r}")


@dataclass
class Kube:
    """A handle on the cluster under test."""

    kubeconfig: str
    kubectl_bin: str

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            [self.kubectl_bin, f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            check=False,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and res.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({res.returncode}): {res.stderr.strip()}")
        return res

    def get_json(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def apply(self, obj: dict[str, Any] | list[dict[str, Any]], *extra: str) -> subprocess.CompletedProcess[str]:
        items = obj if isinstance(obj, list) else [obj]
        return self.kubectl(
            "apply", *extra, "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
        )

    def api_client(self) -> Any:
        from kubernetes import config

        return config.new_client_from_config(config_file=self.kubeconfig)


def _cluster_env() -> dict[str, str]:
    out = subprocess.run([str(HACK / "cluster"), "env"], capture_output=True, text=True, check=True).stdout
    env: dict[str, str] = {}
    for line in out.splitlines():
        key, value = line.removeprefix("export ").split("=", 1)
        env[key] = value
    return env


@pytest.fixture(scope="session")
def cluster_env() -> dict[str, str]:
    return _cluster_env()


@pytest.fixture(scope="session")
def kube(cluster_env: dict[str, str]) -> Iterator[Kube]:
    kubectl_bin = cluster_env["PATH"].split(":")[0] + "/kubectl"
    external = os.environ.get("AGENTFLEET_KUBECONFIG")
    if external:
        yield Kube(external, shutil.which("kubectl") or kubectl_bin)
        return
    status = subprocess.run([str(HACK / "cluster"), "status"], capture_output=True, text=True, check=False)
    started = status.returncode != 0
    if started:
        res = subprocess.run([str(HACK / "cluster"), "up"], text=True, check=False)
        if res.returncode != 0:
            pytest.fail(
                "hack/cluster up failed (see its output above); the integration suite needs the real control plane",
                pytrace=False,
            )
    yield Kube(cluster_env["KUBECONFIG"], kubectl_bin)
    if started and os.environ.get("AGENTFLEET_KEEP_CLUSTER") != "1":
        subprocess.run([str(HACK / "cluster"), "down"], check=False)


@pytest.fixture(scope="session")
def crds_installed(kube: Kube) -> Kube:
    """CRDs and the admission policy, applied and established."""
    paths = ["-f", str(ROOT / "crds")]
    if (ROOT / "crds" / "admission").exists():
        paths += ["-f", str(ROOT / "crds" / "admission")]
    kube.kubectl("apply", "--server-side", "--force-conflicts", *paths)
    kube.kubectl(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/agentdeployments.agentfleet.dev",
        "crd/agentpolicies.agentfleet.dev",
    )
    probe = json.dumps(
        {
            "apiVersion": "agentfleet.dev/v1alpha1",
            "kind": "AgentDeployment",
            "metadata": {"name": "admission-probe", "namespace": "default"},
            "spec": {
                "agent": {"image": "x", "model": {"name": "m", "endpoint": "http://127.0.0.1:1/v1"}},
                "guardrails": [{"name": "l", "metric": "loopDetections", "threshold": "0", "action": "Suspend"}],
            },
        }
    )

    def admission_ready() -> bool:  # the admission policy's paramKind must be synced before tests create agents
        res = kube.kubectl("create", "--dry-run=server", "-f", "-", input=probe, check=False)
        return res.returncode == 0 or "not yet synced" not in res.stderr

    poll(admission_ready, timeout=60, what="the admission policy to be ready")
    return kube


@pytest.fixture
def namespace(kube: Kube, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards (without waiting for finalization)."""
    base = "".join(ch if ch.isalnum() else "-" for ch in request.node.name.lower())[:40].strip("-")
    name = f"t-{base}-{uuid.uuid4().hex[:6]}"
    kube.kubectl("create", "namespace", name)
    kube.kubectl("label", "namespace", name, "agentfleet.dev/test=true")
    yield name
    kube.kubectl("delete", "namespace", name, "--wait=false", check=False)


@dataclass
class Prometheus:
    url: str
    targets_dir: Path

    def query(self, promql: str, timeout: float = 5.0) -> list[dict[str, Any]]:
        q = urllib.parse.urlencode({"query": promql})
        with urllib.request.urlopen(f"{self.url}/api/v1/query?{q}", timeout=timeout) as resp:
            body = json.load(resp)
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def add_target(self, name: str, address: str, labels: dict[str, str]) -> Path:
        """Drop a file-SD target; Prometheus picks it up within its refresh interval."""
        path = self.targets_dir / f"{name}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps([{"targets": [address], "labels": labels}]))
        tmp.rename(path)
        return path


@pytest.fixture(scope="session")
def prometheus(kube: Kube, cluster_env: dict[str, str]) -> Prometheus:
    url = os.environ.get("AGENTFLEET_PROMETHEUS_URL", cluster_env["PROMETHEUS_URL"])
    prom = Prometheus(url, Path(cluster_env["AGENTFLEET_PROMETHEUS_TARGETS"]))
    poll(lambda: _ready(url), timeout=30, what=f"Prometheus at {url}")
    return prom


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OperatorProcess:
    """``agentfleet operator`` as a real process, as it runs in its pod (minus the pod)."""

    def __init__(self, kubeconfig: str, log_path: Path, extra: list[str] | None = None) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.extra = extra or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.metrics_port = 0

    def start(self) -> None:
        self.metrics_port = free_port()
        health = free_port()
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                str(ROOT / ".venv" / "bin" / "agentfleet"),
                "operator",
                f"--metrics-port={self.metrics_port}",
                "--metrics-address=127.0.0.1",
                f"--liveness=http://127.0.0.1:{health}/healthz",
                "--guard-image=ghcr.io/agentfleet/agentfleet:test",
                *self.extra,
            ],
            env={**os.environ, "KUBECONFIG": self.kubeconfig},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        poll(lambda: self._healthy(health), timeout=60, what="the operator's liveness endpoint")

    def _healthy(self, port: int) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"operator exited with {self.proc.returncode}:\n{self.tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def stop(self, kill: bool = False) -> None:
        if self.proc and self.proc.poll() is None:
            (self.proc.kill if kill else self.proc.terminate)()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def metric(self, name: str) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as resp:
            for line in resp.read().decode().splitlines():
                if line.startswith(name + " ") or line.startswith(name + "{"):
                    return float(line.rsplit(" ", 1)[1])
        return 0.0


EVALUATION_INTERVAL = 2.0


@pytest.fixture(scope="session")
def operator(
    crds_installed: Kube, prometheus: Prometheus, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """One operator for the session, watching the whole cluster, evaluating every 2 s."""
    logs = tmp_path_factory.mktemp("operator")
    op = OperatorProcess(
        crds_installed.kubeconfig,
        logs / "operator.log",
        extra=[
            f"--prometheus-url={prometheus.url}",
            f"--evaluation-interval={EVALUATION_INTERVAL}",
            "--rate-window=30s",
            f"--audit-file={logs / 'audit.jsonl'}",
        ],
    )
    op.start()
    yield op
    op.stop()
    print(f"operator log: {op.log_path}")
