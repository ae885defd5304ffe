"""The Helm chart as tests and the demo use it: ``helm`` with the pinned binary, and a kubeconfig
holding nothing but a ServiceAccount's token (to run the operator with exactly the chart's RBAC)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import yaml

from hack.harness.kube import ROOT, Kube

CHART = ROOT / "charts" / "agentfleet"


def helm(
    helm_bin: str, *args: str, kubeconfig: str | None = None, check: bool = True, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """``helm ARGS`` with a private home (no repositories, no cache shared with the user's)."""
    home = Path(os.environ.get("AGENTFLEET_HELM_HOME", "/tmp/agentfleet-helm-home"))
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    cmd = [helm_bin, *args] + ([f"--kubeconfig={kubeconfig}"] if kubeconfig else [])
    res = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, env=env)
    if check and res.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    return res


def token_kubeconfig(admin: Kube, service_account: str, namespace: str, path: Path) -> str:
    """A kubeconfig at ``path`` whose only credential is a fresh token of the ServiceAccount."""
    token = admin.kubectl("create", "token", service_account, "-n", namespace, "--duration=2h").stdout.strip()
    cluster = yaml.safe_load(Path(admin.kubeconfig).read_text())["clusters"][0]["cluster"]
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "sa",
                "clusters": [
                    {
                        "name": "c",
                        "cluster": {
                            "server": cluster["server"],
                            "certificate-authority": cluster["certificate-authority"],
                        },
                    }
                ],
                "users": [{"name": "sa", "user": {"token": token}}],
                "contexts": [{"name": "sa", "context": {"cluster": "c", "user": "sa"}}],
            }
        )
    )
    path.chmod(0o600)
    who = json.loads(Kube(str(path), admin.kubectl_bin).kubectl("auth", "whoami", "-o", "json").stdout)
    assert who["status"]["userInfo"]["username"] == f"system:serviceaccount:{namespace}:{service_account}"
    return str(path)
