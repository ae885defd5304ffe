"""Helpers of the fault-injection suite (the fixtures are in conftest.py)."""

from __future__ import annotations

import json
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


def audited(files: list[Path], ns: str, name: str) -> list[dict[str, Any]]:
    """The operator's action records for one agent, from every replica's audit file."""
    records: list[dict[str, Any]] = []
    for path in files:
        lines = path.read_text().splitlines() if path.exists() else []
        records += [
            r
            for r in map(json.loads, lines)
            if r.get("kind") == "operator_action" and r.get("namespace") == ns and r.get("agent") == name
        ]
    return records


def actions_of(records: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """The distinct actions audit records describe: (action, revision acted on). A record written
    again for the same action (the intent before a crash, the announcement after) is one action."""
    return {(str(r.get("action")), str(r.get("revision"))) for r in records if r.get("action") != "Alert"}


def deployment_revision(kube: Kube, ns: str, name: str) -> int:
    """The Deployment controller's own count of template changes: one more per rollout."""
    d = kube.get_json("deployment", name, "-n", ns)
    return int(d["metadata"].get("annotations", {}).get("deployment.kubernetes.io/revision", "0"))


def warning_events(kube: Kube, ns: str, name: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = kube.get_json(
        "events", "-n", ns, "--field-selector", f"involvedObject.name={name},type=Warning"
    )["items"]
    return found


def fatal_lines(log: Path) -> list[str]:
    """Errors and tracebacks in an operator's log (SIGKILLs leave neither)."""
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    return [line for line in lines if '"severity": "error"' in line or "Traceback" in line]
