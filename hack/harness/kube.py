"""The cluster everything runs against: ``hack/cluster`` on a run directory and port range of
its own, a kubectl handle, Prometheus, and a poll with a deadline.

Synchronous on purpose: tests, benchmark scripts and the demo wait by polling with deadlines,
never by sleeping a fixed time. Everything listens on and connects to loopback only.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
HACK = ROOT / "hack"
VENV = ROOT / ".venv" / "bin"
PYTHON = str(VENV / "python") if (VENV / "python").exists() else sys.executable
"""The project's interpreter (aiohttp, openai and agentfleet installed) for child processes, also
when the caller runs on another one (``hack/demo`` starts with the system ``python3``)."""


def hack_versions() -> dict[str, str]:
    """``hack/versions.env``: the pinned versions of the control plane's binaries."""
    out: dict[str, str] = {}
    for line in (HACK / "versions.env").read_text().splitlines():
        if line.strip() and not line.startswith("#") and "=" in line:
            key, value = line.strip().split("=", 1)
            out[key] = value
    return out


VERSIONS = hack_versions()


def poll(check: Callable[[], Any], timeout: float = 30.0, interval: float = 0.2, what: str = "condition") -> Any:
    """Call ``check`` until it returns something truthy, and return that; fail with ``what``
    (an AssertionError, so that a test reports it as its failure) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last value: {last!r}")


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_ok(url: str, timeout: float = 1.0) -> bool:
    """True if ``url`` answers 200 (a liveness or readiness endpoint); False while it cannot."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


@dataclass
class Kube:
    """kubectl on one cluster."""

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


@dataclass
class Prometheus:
    """The cluster's Prometheus and its file-SD directory."""

    url: str
    targets_dir: Path

    def query(self, promql: str, timeout: float = 10.0) -> list[dict[str, Any]]:
        """An instant query (POST, so a long query fits); its result vector."""
        data = urllib.parse.urlencode({"query": promql}).encode()
        with urllib.request.urlopen(f"{self.url}/api/v1/query", data=data, timeout=timeout) as resp:
            body = json.load(resp)
        if body.get("status") != "success":
            raise AssertionError(f"Prometheus answered {body}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def add_target(self, name: str, address: str, labels: dict[str, str]) -> Path:
        """Drop a file-SD target; Prometheus picks it up within its refresh interval."""
        path = self.targets_dir / f"{name}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps([{"targets": [address], "labels": labels}]))
        tmp.rename(path)
        return path

    def ready(self) -> bool:
        return http_ok(f"{self.url}/-/ready", timeout=2)


def install_crds(kube: Kube) -> None:
    """Apply the CRDs and the admission policy, and wait until agents can be created: the CRDs
    Established and the admission policy's paramKind (AgentPolicy) synced."""
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

    def admission_ready() -> bool:
        res = kube.kubectl("create", "--dry-run=server", "-f", "-", input=probe, check=False)
        # Until the API server has (re)discovered the paramKind it answers "not yet synced", or,
        # right after a restart, "failed to find resource referenced by paramKind".
        warming = ("not yet synced", "failed to find resource referenced by paramKind")
        return res.returncode == 0 or not any(w in res.stderr for w in warming)

    poll(admission_ready, timeout=60, what="the admission policy to be ready")


class Cluster:
    """``hack/cluster`` on a run directory and port range of its own; ``None`` keeps what the
    environment says (``AGENTFLEET_RUN_DIR``, ``AGENTFLEET_PORT_BASE``: the shared cluster unless set)."""

    def __init__(self, run_dir: Path | None = None, port_base: int | None = None, nodes: int | None = None) -> None:
        self.env = dict(os.environ)
        for key, value in (
            ("AGENTFLEET_RUN_DIR", run_dir),
            ("AGENTFLEET_PORT_BASE", port_base),
            ("AGENTFLEET_NODES", nodes),
        ):
            if value is not None:
                self.env[key] = str(value)

    def run(
        self, *args: str, check: bool = True, capture: bool = True, timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        """``hack/cluster ARGS`` (with ``capture=False`` its output goes to ours)."""
        res = subprocess.run(
            [str(HACK / "cluster"), *args],
            env=self.env,
            capture_output=capture,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and res.returncode != 0:
            raise RuntimeError(f"hack/cluster {' '.join(args)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
        return res

    @functools.cached_property
    def exports(self) -> dict[str, str]:
        """What ``hack/cluster env`` exports: KUBECONFIG, PROMETHEUS_URL, AGENTFLEET_PROMETHEUS_TARGETS, PATH."""
        out = self.run("env").stdout
        return dict(line.removeprefix("export ").split("=", 1) for line in out.splitlines())

    @property
    def kubeconfig(self) -> str:
        return self.exports["KUBECONFIG"]

    @property
    def run_dir(self) -> Path:
        return Path(self.kubeconfig).parent

    @property
    def bin_dirs(self) -> list[str]:
        """Where the pinned kubectl (first) and helm (second) are."""
        return self.exports["PATH"].split(":")[:2]

    @property
    def kubectl_bin(self) -> str:
        return f"{self.bin_dirs[0]}/kubectl"

    @property
    def helm_bin(self) -> str:
        return f"{self.bin_dirs[1]}/helm"

    @property
    def kube(self) -> Kube:
        return Kube(self.kubeconfig, self.kubectl_bin)

    @property
    def prometheus(self) -> Prometheus:
        return Prometheus(self.exports["PROMETHEUS_URL"], Path(self.exports["AGENTFLEET_PROMETHEUS_TARGETS"]))

    def running(self) -> bool:
        return self.run("status", check=False).returncode == 0

    def up(self, *flags: str, capture: bool = True, timeout: float = 600) -> None:
        self.run("up", *flags, capture=capture, timeout=timeout)

    def down(self, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Stop everything and remove the run directory; never raises (see the result)."""
        return self.run("down", check=False, timeout=timeout)
