"""SIGKILL the operator at random points while a fleet is created and its specs churn, restart
it, and check that everything converges to one consistent state: every agent's status describes
its current generation, exactly one Deployment per agent running the revision status names,
revision numbers unique and contiguous, no orphaned or leaked children."""

from __future__ import annotations

import collections
import json
import random
import time
from pathlib import Path

import pytest

from hack.harness.agents import agent
from hack.harness.kube import Kube, poll
from tests.chaos.support import converged, items, operator, scaled

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def test_killed_at_random_points_the_fleet_converges(kube: Kube, tmp_path: Path) -> None:
    seed = int(time.time())
    rng = random.Random(seed)
    ns = "churn"
    kube.kubectl("create", "namespace", ns)
    names = [f"a{i:03d}" for i in range(scaled(40))]
    kills = scaled(5)
    print(f"seed {seed}: {len(names)} agents, {kills} kills")
    op = operator(kube, tmp_path / "operator.log", "chaos")
    op.start()
    started = time.monotonic()
    try:
        kube.apply([agent(n, ns, replicas=1) for n in names])
        for round_ in range(kills):
            time.sleep(rng.uniform(0.2, 2.5))  # the random point at which the process dies
            op.stop(kill=True)
            churned = rng.sample(names, k=max(1, len(names) // 4))
            kube.apply([agent(n, ns, replicas=1, prompt=f"round {round_}") for n in churned])
            op.start()
        poll(lambda: converged(kube, ns, names), timeout=300, interval=1, what="every agent to converge")
        print(f"converged {time.monotonic() - started:.1f}s after the first apply, through {kills} SIGKILLs")

        agents = {a["metadata"]["name"]: a for a in items(kube, "agd", ns)}
        uids = {a["metadata"]["uid"]: n for n, a in agents.items()}
        deployments = collections.Counter()
        for d in items(kube, "deployments", ns):
            owner = d["metadata"]["ownerReferences"][0]["uid"]
            name = uids[owner]
            deployments[name] += 1
            assert d["metadata"]["name"] == name
            running = d["spec"]["template"]["metadata"]["labels"]["agentfleet.dev/revision"]
            assert running == agents[name]["status"]["currentRevision"], f"{name} runs another revision"
        assert deployments == {n: 1 for n in names}, "not exactly one Deployment per agent"

        numbers: dict[str, list[int]] = collections.defaultdict(list)
        snapshots: set[str] = set()
        for r in items(kube, "controllerrevisions", ns):
            owner = uids.get(r["metadata"]["ownerReferences"][0]["uid"])
            assert owner is not None, f"orphaned revision {r['metadata']['name']}"
            numbers[owner].append(int(r["revision"]))
            snapshots.add(r["metadata"]["name"])
        for name, got in numbers.items():
            assert sorted(got) == list(range(1, len(got) + 1)), f"{name}: revision numbers {sorted(got)}"
        for cm in items(kube, "configmaps", ns):
            meta = cm["metadata"]
            if "agentfleet.dev/agent" not in (meta.get("labels") or {}):
                continue
            owner = uids.get(meta["ownerReferences"][0]["uid"])
            assert owner is not None, f"orphaned ConfigMap {meta['name']}"
            revision = meta["labels"]["agentfleet.dev/revision"]
            assert f"{owner}-{revision}" in snapshots, f"{meta['name']} has no revision snapshot"
        log = op.log_path.read_text(errors="replace").splitlines()
        errors = [line for line in log if '"severity": "error"' in line or "Traceback" in line]
        assert errors == [], "\n".join(errors[:5])
        print(json.dumps({"agents": len(names), "revisions": sum(map(len, numbers.values()))}))
    finally:
        op.stop(kill=True)
