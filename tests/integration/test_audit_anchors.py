"""Audit anchors end to end: real guards publish their chain heads, the real Prometheus scrapes
them, and the operator copies them onto the agent's status, where they vouch for the trail and
catch a trail cut back before them."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from agentfleet.audit import verify
from agentfleet.cli.kubectl.audit import status_anchors
from hack.harness.agents import BIG_BUDGETS, agent, status
from hack.harness.kube import Kube, poll
from hack.harness.processes import DataplaneProcess, OperatorProcess

pytestmark = pytest.mark.integration


def test_the_operator_publishes_each_guards_audit_head_on_status(
    operator: OperatorProcess, kube: Kube, namespace: str, fake_llm: str, dataplane: DataplaneProcess, tmp_path: Path
) -> None:
    ns = namespace
    kube.apply(agent("scribe", ns, endpoint=fake_llm, prompt="Summarise.", replicas=1, budgets=BIG_BUDGETS))

    def anchored() -> list[dict[str, Any]] | None:
        anchors: list[dict[str, Any]] = status(kube, ns, "scribe").get("auditAnchors") or []
        return anchors if anchors and anchors[0]["seq"] >= 2 else None

    anchor = poll(anchored, timeout=90, interval=1, what="an audit anchor on status")[0]
    pod = anchor["pod"]
    assert anchor["revision"] == status(kube, ns, "scribe")["currentRevision"]
    assert len(anchor["hash"]) == 24
    trail = dataplane.work_dir / ns / pod / "audit.jsonl"
    copy = tmp_path / "audit.jsonl"
    shutil.copy(trail, copy)  # the guard goes on writing; the copy holds at least the anchored record
    anchors = status_anchors(status(kube, ns, "scribe"), pod)
    assert anchors and anchors[0].seq == anchor["seq"]
    result = verify([copy], anchors)
    assert result.ok, result.message

    # Cut the trail back to just before the anchored record: on its own it still verifies
    # (a well-formed shorter chain), against the anchor it does not.
    cut = copy.read_text().splitlines(keepends=True)[: anchor["seq"]]  # records 0 .. seq-1
    copy.write_text("".join(cut))
    assert verify([copy]).ok, "a truncated chain is well formed: only the anchor can tell"
    result = verify([copy], anchors)
    assert not result.ok and "not in the trail" in result.message, result.message
