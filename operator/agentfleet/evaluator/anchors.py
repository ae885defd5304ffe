"""Audit anchors: each guard's audit chain head, as Prometheus scraped it, published on the
agent's status. Pure.

A guard's audit trail lives where the agent's pod writes it (container logs, a file), so whoever
can rewrite those could cut records off its start or end, or truncate it and start a new chain.
The head (sequence number and the first 96 bits of its hash) copied off the node, into status
that only the operator writes, is what ``kubectl agentfleet audit`` checks the trail against:
the anchored record must be in the trail with that hash, which proves every record before it
and detects a trail cut back before it. The guard publishes the head as three gauges
(``agentfleet_audit_head_seq``, ``..._hash_high``, ``..._hash_low``) with fixed labels, so
there is no series per hash; the pod label comes from the scrape (Kubernetes metadata).
"""

from __future__ import annotations

import math
from typing import Any

from agentfleet.audit import hash_prefix

HEADS_QUERY = '{__name__=~"agentfleet_audit_head_(seq|hash_high|hash_low)"}'
MAX_ANCHORS = 16
"""Anchors kept per agent: the newest per pod, the most recently seen pods first."""

AgentKey = tuple[str, str]
Head = tuple[int, str, str]  # seq, hash prefix, revision


def heads(result: list[tuple[dict[str, str], float]]) -> dict[AgentKey, dict[str, Head]]:
    """Per agent and pod, the head its guard published (pods whose three gauges do not make one
    consistent head are left out: never a wrong anchor)."""
    parts: dict[tuple[str, str, str, str], dict[str, float]] = {}
    for labels, value in result:
        name = labels.get("__name__", "").removeprefix("agentfleet_audit_head_")
        key = (labels.get("namespace", ""), labels.get("agent", ""), labels.get("pod", ""), labels.get("revision", ""))
        if all(key[:3]) and name in ("seq", "hash_high", "hash_low"):
            parts.setdefault(key, {})[name] = value
    out: dict[AgentKey, dict[str, Head]] = {}
    for (namespace, agent, pod, revision), got in parts.items():
        seq = got.get("seq")
        if seq is None or math.isnan(seq) or seq < 0 or seq != int(seq) or len(got) != 3:
            continue
        try:
            prefix = hash_prefix(got["hash_high"], got["hash_low"])
        except ValueError:
            continue
        out.setdefault((namespace, agent), {})[pod] = (int(seq), prefix, revision)
    return out


def anchors_change(recorded: Any, published: dict[str, Head], now: str) -> list[dict[str, Any]] | None:
    """The agent's ``auditAnchors`` with what its guards publish now, or None if nothing moved:
    each pod's newest head replaces its older one; pods no longer publishing keep theirs (their
    logs may still be read) until newer pods push them past ``MAX_ANCHORS``."""
    current = [a for a in recorded if isinstance(a, dict)] if isinstance(recorded, list) else []
    by_pod = {str(a.get("pod")): a for a in current}
    changed = False
    for pod, (seq, prefix, revision) in sorted(published.items()):
        old = by_pod.get(pod)
        if old is not None and old.get("seq") == seq and old.get("hash") == prefix:
            continue
        by_pod[pod] = {"pod": pod, "revision": revision, "seq": seq, "hash": prefix, "time": now}
        changed = True
    if not changed:
        return None
    kept = sorted(by_pod.values(), key=lambda a: (str(a.get("time", "")), str(a.get("pod"))), reverse=True)
    return sorted(kept[:MAX_ANCHORS], key=lambda a: str(a.get("pod")))
