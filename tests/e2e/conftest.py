"""A real node for the session: ``hack/cluster up --real-node`` on a private port range and
network namespace, down at the end (or earlier, by the test that checks what down leaves).

Environment: AGENTFLEET_E2E_PORT_BASE (default 17400), AGENTFLEET_E2E_RUN_DIR (default
$AGENTFLEET_CACHE/e2e-run), AGENTFLEET_E2E_NETNS (default agentfleet-e2e-<port base>). Set
AGENTFLEET_KEEP_CLUSTER=1 to leave the cluster running after the session (for debugging:
``eval "$(AGENTFLEET_RUN_DIR=... AGENTFLEET_PORT_BASE=... AGENTFLEET_NETNS=... hack/cluster env)"``).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hack.harness.kube import HACK, Kube, poll
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
