"""``kubectl agentfleet audit``: check a guard's hash-chained audit trail with the guard's own
verifier (``agentfleet.audit.verify``), from the guard container's logs or from files.

The guard writes every audit record as one canonical JSON line to stdout (and to a file in the
pod). Its container log also carries the guard's own log lines (JSON on stderr, without a
hash chain), so records are picked out of a log first: a line is part of the trail when it is
a JSON object with ``hash``, or when it looks like a damaged record (mentions ``"hash"`` but is
no longer valid JSON). A broken record is reported with its line number in the original log.
Files given with ``--file`` are verified as they are, exactly as ``agentfleet audit verify``
does: they are the guard's own audit file (and its rotated predecessors, oldest first).

A guard that restarted continues its chain from its audit file (an emptyDir that outlives the
container), so its new container log starts mid-chain. The log of the run before it (the
kubelet keeps one) is read too and verified first, as one chain (``verify_runs``). A trail that
still starts mid-chain (two restarts, or a rotated log) is BROKEN unless an anchor vouches for
it: ``--anchor SEQ:HASH``, a head published earlier (the guard serves it at ``/audit/head``).
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentfleet.api.names import GUARD_CONTAINER  # ``guard_container_of`` also finds it by its command

if TYPE_CHECKING:
    from agentfleet.audit import Anchor


@dataclass(frozen=True)
class AuditReport:
    """The outcome for one source (a pod's guard log, or a set of files forming one chain)."""

    source: str
    records: int
    first: str | None
    last: str | None
    ok: bool
    message: str
    agents: tuple[str, ...] = ()
    """The "namespace/agent" identities the records name (a guard stamps its own on each)."""

    def json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "records": self.records,
            "first": self.first,
            "last": self.last,
            "ok": self.ok,
            "message": self.message,
            "agents": list(self.agents),
        }


def guard_container_of(pod: dict[str, Any]) -> str:
    """The guard container of a pod: the (init or regular) container run as ``agentfleet guard``."""
    spec = pod.get("spec") or {}
    for container in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        args = [*(container.get("command") or []), *(container.get("args") or [])]
        if container.get("name") == GUARD_CONTAINER or args[:1] == ["guard"]:
            return str(container.get("name"))
    return GUARD_CONTAINER


def guard_restarts(pod: dict[str, Any], container: str) -> int:
    """How often the pod's guard container restarted (its status's restartCount)."""
    status = pod.get("status") or {}
    for st in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
        if st.get("name") == container:
            return int(st.get("restartCount") or 0)
    return 0


def _record(line: str) -> dict[str, Any] | None:
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def is_audit_line(line: str) -> bool:
    """A record of the trail, or what is left of one after an edit (see the module docstring)."""
    rec = _record(line)
    if rec is not None:
        return "hash" in rec
    return '"hash"' in line


def audit_lines(log: str) -> list[tuple[int, str]]:
    """(line number in ``log``, line) of every audit record in a container log."""
    return [(n, line) for n, line in enumerate(log.splitlines(), 1) if is_audit_line(line)]


@dataclass(frozen=True)
class _Span:
    records: int
    first: str | None
    last: str | None
    agents: tuple[str, ...]


def _span(lines: Sequence[str]) -> _Span:
    """Records, the time of the first and last record that carry one, and whose they are."""
    parsed = [rec for line in lines if (rec := _record(line)) is not None]
    times = [str(rec["ts"]) for rec in parsed if "ts" in rec]
    agents = sorted({f"{rec.get('namespace', '?')}/{rec['agent']}" for rec in parsed if "agent" in rec})
    return _Span(len(lines), times[0] if times else None, times[-1] if times else None, tuple(agents))


def parse_anchors(texts: Sequence[str]) -> tuple[Anchor, ...]:
    """``SEQ:HASH`` values (ValueError naming the bad one)."""
    from agentfleet.audit import Anchor

    return tuple(Anchor.parse(text) for text in texts)


def status_anchors(status: dict[str, Any], pod: str) -> tuple[Anchor, ...]:
    """The anchor the operator published on the agent's status for this pod's guard (none if it
    published none, or an entry does not parse: then the trail is checked on its own)."""
    from agentfleet.audit import Anchor

    for entry in status.get("auditAnchors") or []:
        if isinstance(entry, dict) and entry.get("pod") == pod:
            try:
                return (Anchor.parse(f"{entry.get('seq')}:{entry.get('hash')}"),)
            except ValueError:
                return ()
    return ()


def verify_files(paths: Sequence[Path], anchors: Sequence[Anchor] = ()) -> AuditReport:
    """Verify files that form one chain, oldest first (``audit.jsonl.2 audit.jsonl.1 audit.jsonl``)."""
    from agentfleet.audit import verify

    lines: list[str] = []
    for path in paths:
        lines += [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    span = _span(lines)
    result = verify(list(paths), anchors)
    return AuditReport(
        ", ".join(str(p) for p in paths), span.records, span.first, span.last, result.ok, result.message, span.agents
    )


def verify_log(source: str, log: str, anchors: Sequence[Anchor] = ()) -> AuditReport:
    """Verify the audit records found in a guard container's log."""
    return verify_runs(source, [(source, log)], anchors)


def verify_runs(source: str, runs: Sequence[tuple[str, str]], anchors: Sequence[Anchor] = ()) -> AuditReport:
    """Verify the logs of consecutive runs of one guard (oldest first, each as ``(name, log)``)
    as one chain: a restarted guard goes on from the head its audit file holds, so the records
    of each run link to those of the run before. A broken record is named by its run and line."""
    from agentfleet.audit import verify

    picked = [(name, n, line) for name, log in runs for n, line in audit_lines(log)]
    span = _span([line for _, _, line in picked])
    if not picked:
        return AuditReport(
            source, 0, None, None, False, f"{source}: no audit records in the guard's log (is audit to stdout enabled?)"
        )
    with tempfile.TemporaryDirectory(prefix="agentfleet-audit-") as tmp:
        path = Path(tmp) / "audit.jsonl"
        path.write_text("".join(line + "\n" for _, _, line in picked))
        result = verify([path], anchors)
    original = {i: (name, n) for i, (name, n, _) in enumerate(picked, 1)}

    def where(m: re.Match[str]) -> str:
        name, n = original.get(int(m.group(1)), (source, int(m.group(1))))
        return f"{name} line {n}"

    message = re.sub(re.escape(str(path)) + r":(\d+)", where, result.message)
    return AuditReport(source, span.records, span.first, span.last, result.ok, message, span.agents)
