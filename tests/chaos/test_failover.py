"""High availability: two replicas elect one leader through a Lease; when the leader is killed
(SIGKILL, no goodbye) the standby takes over within a bounded time, and only ever one of them
acts: no agent is reconciled by both, no decision is lost or repeated."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from hack.harness.agents import agent, status
from hack.harness.kube import Kube, poll
from tests.chaos.support import operator

pytestmark = pytest.mark.integration

LEASE_NS = "agentfleet-system"


def holder(kube: Kube) -> str | None:
    res = kube.kubectl("get", "lease", "agentfleet-operator", "-n", LEASE_NS, "-o", "json", check=False)
    if res.returncode != 0:
        return None
    import json

    spec: dict[str, Any] = json.loads(res.stdout).get("spec") or {}
    return spec.get("holderIdentity") or None


def reconciled(kube: Kube, ns: str, name: str) -> bool:
    obj = kube.get_json("agd", name, "-n", ns)
    return bool((obj.get("status") or {}).get("observedGeneration") == obj["metadata"]["generation"])


def test_the_standby_takes_over_when_the_leader_is_killed(kube: Kube, tmp_path: Path) -> None:
    if kube.kubectl("get", "namespace", LEASE_NS, check=False).returncode != 0:
        kube.kubectl("create", "namespace", LEASE_NS)
    ns = "failover"
    kube.kubectl("create", "namespace", ns)
    election = (f"--leader-election-namespace={LEASE_NS}", "--lease-duration=5")
    first = operator(kube, tmp_path / "first.log", "replica-a", *election)
    second = operator(kube, tmp_path / "second.log", "replica-b", *election)
    first.start()
    poll(lambda: holder(kube) == "replica-a", timeout=30, what="replica-a to lead")
    second.start()  # healthy as a standby while it waits
    try:
        kube.apply(agent("before", ns))
        poll(lambda: reconciled(kube, ns, "before"), timeout=60, what="the leader to reconcile")
        assert "became the leader" not in second.log_path.read_text(), "the standby acted while the leader lived"

        killed = time.monotonic()
        first.stop(kill=True)
        kube.apply(agent("after", ns))  # a change nobody can handle until the standby leads
        poll(lambda: holder(kube) == "replica-b", timeout=30, what="replica-b to take the lease")
        poll(lambda: reconciled(kube, ns, "after"), timeout=30, what="the new leader to reconcile")
        failover = time.monotonic() - killed
        print(f"failover: leader SIGKILL to the first reconcile by the new leader: {failover:.1f}s")
        st = status(kube, ns, "before")
        assert st["currentRevision"], st
        deployments = kube.get_json("deployments", "-n", ns)["items"]
        assert sorted(d["metadata"]["name"] for d in deployments) == ["after", "before"]
    finally:
        second.stop()
        first.stop(kill=True)
