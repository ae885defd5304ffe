"""Helpers of the fault-injection suite (the fixtures are in conftest.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hack.harness.kube import Kube
from hack.harness.processes import DEV_PLATFORM, OperatorProcess

PORT_BASE = 22400
SCALE = float(os.environ.get("AGENTFLEET_CHAOS_SCALE", "1"))


def scaled(n: int) -> int:
    return max(1, round(n * SCALE))


def operator(kube: Kube, log: Path, identity: str, *extra: str) -> OperatorProcess:
    """An operator process as a replica of the chart would run it (its own identity)."""
    return OperatorProcess(
        kube.kubeconfig,
        log,
        extra=[f"--platform={DEV_PLATFORM}", *extra],
        env={"POD_NAME": identity},
    )


def items(kube: Kube, kind: str, ns: str) -> list[dict[str, Any]]:
    return list(kube.get_json(kind, "-n", ns)["items"])


def converged(kube: Kube, ns: str, names: list[str]) -> bool:
    """Every agent named exists and its status describes its current generation and revision."""
    agents = {a["metadata"]["name"]: a for a in items(kube, "agd", ns)}
    if set(agents) != set(names):
        return False
    for a in agents.values():
        st = a.get("status") or {}
        if st.get("observedGeneration") != a["metadata"]["generation"] or not st.get("currentRevision"):
            return False
    return True
