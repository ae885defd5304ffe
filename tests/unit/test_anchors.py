"""Audit anchors: the head a guard publishes as gauges, read back exactly, and kept on status."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agentfleet.api.guardconfig import AuditSink
from agentfleet.api.types import AgentDeploymentStatus
from agentfleet.audit import Anchor, AuditLog, hash_parts, hash_prefix, verify
from agentfleet.evaluator.anchors import MAX_ANCHORS, anchors_change, heads
from agentfleet.guard.metrics import GuardMetrics

pytestmark = pytest.mark.unit

DIGEST = hashlib.sha256(b"x").hexdigest()


def test_hash_parts_are_exact_as_float_samples() -> None:
    high, low = hash_parts(DIGEST)
    assert hash_prefix(float(high), float(low)) == DIGEST[:24]
    assert hash_prefix(float(16**12 - 1), 0.0) == "f" * 12 + "0" * 12
    for bad in (float("nan"), -1.0, 0.5, float(16**12)):
        with pytest.raises(ValueError):
            hash_prefix(bad, 0.0)


def scraped(seq: float, digest: str, pod: str = "p1", **drop: bool) -> list[tuple[dict[str, str], float]]:
    high, low = hash_parts(digest)
    base = {"namespace": "ns", "agent": "a", "revision": "r1", "pod": pod}
    out = []
    for name, value in (("seq", seq), ("hash_high", float(high)), ("hash_low", float(low))):
        if not drop.get(name):
            out.append(({"__name__": f"agentfleet_audit_head_{name}", **base}, value))
    return out


def test_heads_are_read_per_pod_and_incomplete_ones_are_left_out() -> None:
    got = heads(scraped(7, DIGEST) + scraped(3, DIGEST, pod="p2", hash_low=True) + scraped(1.5, DIGEST, pod="p3"))
    assert got == {("ns", "a"): {"p1": (7, DIGEST[:24], "r1")}}


def test_anchors_change_only_when_a_head_moved_and_are_bounded() -> None:
    first = anchors_change(None, {"p1": (7, DIGEST[:24], "r1")}, "2026-12-04T00:00:00Z")
    assert first == [{"pod": "p1", "revision": "r1", "seq": 7, "hash": DIGEST[:24], "time": "2026-12-04T00:00:00Z"}]
    AgentDeploymentStatus.model_validate({"auditAnchors": first})  # what the CRD accepts
    assert anchors_change(first, {"p1": (7, DIGEST[:24], "r1")}, "2026-12-04T00:01:00Z") is None
    moved = anchors_change(first, {"p1": (9, DIGEST[:24], "r1")}, "2026-12-04T00:01:00Z")
    assert moved is not None and moved[0]["seq"] == 9
    many = {f"p{i:02d}": (i, DIGEST[:24], "r1") for i in range(40)}
    bounded = anchors_change(first, many, "2026-12-04T00:02:00Z")
    assert bounded is not None and len(bounded) == MAX_ANCHORS


def trail(tmp_path: Path, n: int) -> tuple[Path, tuple[int, str]]:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(AuditSink(stdout=False, file=str(path)), {"agent": "a"})
    log.start()
    for i in range(n):
        log.record("llm_call", i=i)
    log.close()
    assert log.head is not None
    return path, log.head


def test_a_prefix_anchor_proves_the_trail_and_detects_cuts(tmp_path: Path) -> None:
    path, (seq, digest) = trail(tmp_path, 5)
    anchor = Anchor.parse(f"{seq}:{digest[:24]}")
    assert verify([path], [anchor]).ok
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]))  # the newest record removed: the anchor is not in the trail
    result = verify([path], [anchor])
    assert not result.ok and "not in the trail" in result.message
    with pytest.raises(ValueError):
        Anchor.parse(f"{seq}:{digest[:23]}")  # under 96 bits is not an anchor


def test_the_guard_publishes_its_head_as_three_gauges() -> None:
    m = GuardMetrics("ns", "a", "r1", "m", [])
    head: list[tuple[int, str] | None] = [None]
    m.publish_audit_head(lambda: head[0])
    names = {f.name for f in text_string_to_metric_families(m.render().decode())}
    assert not any(n.startswith("agentfleet_audit_head") for n in names), "no head before a record is written"
    head[0] = (42, DIGEST)
    samples = {
        s.name: s
        for f in text_string_to_metric_families(m.render().decode())
        for s in f.samples
        if s.name.startswith("agentfleet_audit_head")
    }
    assert samples["agentfleet_audit_head_seq"].value == 42
    assert samples["agentfleet_audit_head_seq"].labels == {"namespace": "ns", "agent": "a", "revision": "r1"}
    got = hash_prefix(samples["agentfleet_audit_head_hash_high"].value, samples["agentfleet_audit_head_hash_low"].value)
    assert got == DIGEST[:24]
    assert json.dumps(got)  # a plain string
