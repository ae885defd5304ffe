"""What the kubectl plugin says about agents (pure): status rows, the census, the revision
history and which revision a rollback goes to. Everything here works on the objects as the
API server returns them (plain dicts, camelCase), so it is tested without a cluster."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from agentfleet.api.names import REVISION as REVISION_LABEL
from agentfleet.cli.kubectl.format import NONE, age, cell, shorten, table

DEFAULT_PROVIDER = "openai"
NO_PROMPT = "(none)"
NO_TOOLS = "(none)"


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


# ------------------------------------------------------------------------------- spec summaries


def model_key(spec: Mapping[str, Any]) -> str:
    """ "provider/name" of the agent's model, e.g. "openai/gpt-4o-mini"."""
    model = _dict(_dict(spec.get("agent")).get("model"))
    return f"{model.get('provider') or DEFAULT_PROVIDER}/{model.get('name') or '?'}"


def prompt_text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def prompt_key(spec: Mapping[str, Any], namespace: str) -> str:
    """Identity of the system prompt: the hash of inline text, or the ConfigMap key it comes
    from (namespaced: the same ConfigMap name in two namespaces is two objects)."""
    prompt = _dict(_dict(spec.get("agent")).get("systemPrompt"))
    if isinstance(prompt.get("inline"), str):
        return f"inline:{prompt_text_hash(prompt['inline'])}"
    ref = _dict(prompt.get("configMapKeyRef"))
    if ref:
        return f"configmap:{namespace}/{ref.get('name')}#{ref.get('key')}"
    return NO_PROMPT


def prompt_summary(spec: Mapping[str, Any], limit: int = 24) -> str:
    """Short human form: `3f2a9c1b0d4e "You are helpful."` or `configmap/NAME[KEY]`."""
    prompt = _dict(_dict(spec.get("agent")).get("systemPrompt"))
    if isinstance(prompt.get("inline"), str):
        text = prompt["inline"]
        return f'{prompt_text_hash(text)[:8]} "{shorten(text, limit)}"'
    ref = _dict(prompt.get("configMapKeyRef"))
    if ref:
        return f"configmap/{ref.get('name')}[{ref.get('key')}]"
    return NO_PROMPT


def tool_set(spec: Mapping[str, Any]) -> tuple[str, ...]:
    """The tools the agent may actually use: the declared ones, narrowed by permissions.tools."""
    declared = {str(t.get("name")) for t in _list(_dict(spec.get("agent")).get("tools")) if isinstance(t, dict)}
    allowed = _dict(spec.get("permissions")).get("tools")
    if isinstance(allowed, list):
        declared &= {str(t) for t in allowed}
    return tuple(sorted(declared))


def tool_set_key(spec: Mapping[str, Any]) -> str:
    tools = tool_set(spec)
    return ",".join(tools) if tools else NO_TOOLS


# ------------------------------------------------------------------------------- revisions


def spec_revision(spec: Mapping[str, Any]) -> str | None:
    """The revision hash the operator gives this spec (None if the spec does not validate)."""
    from pydantic import ValidationError

    from agentfleet.api.types import AgentDeploymentSpec
    from agentfleet.render.revision import revision_hash

    try:
        return revision_hash(AgentDeploymentSpec.model_validate(dict(spec)))
    except ValidationError:
        return None


@dataclass(frozen=True)
class Revision:
    """One ControllerRevision of an agent."""

    number: int
    hash: str
    created: str | None = None
    spec: dict[str, Any] = field(default_factory=dict)
    """The pod-relevant spec stored with the revision (``.data.spec``)."""

    @classmethod
    def of(cls, obj: Mapping[str, Any]) -> Revision:
        meta = _dict(obj.get("metadata"))
        labels = _dict(meta.get("labels"))
        name = str(meta.get("name", ""))
        number = obj.get("revision")
        return cls(
            number=int(number) if isinstance(number, int) else 0,
            hash=str(labels.get(REVISION_LABEL) or name.rsplit("-", 1)[-1]),
            created=meta.get("creationTimestamp"),
            spec=_dict(_dict(obj.get("data")).get("spec")),
        )


def revisions_of(objects: Iterable[Mapping[str, Any]]) -> list[Revision]:
    """ControllerRevisions as ``Revision``s, oldest (lowest number) first."""
    return sorted((Revision.of(o) for o in objects), key=lambda r: (r.number, r.hash))


def number_of(revisions: Iterable[Revision], revision_hash: str | None) -> int | None:
    return next((r.number for r in revisions if revision_hash and r.hash == revision_hash), None)


class RevisionNotFound(LookupError):
    """No revision matches what was asked for (the message says what exists)."""


@dataclass(frozen=True)
class RollbackTarget:
    revision: Revision
    why: str


def _describe(revisions: list[Revision]) -> str:
    if not revisions:
        return "the agent has no recorded revisions yet (has the operator reconciled it?)"
    return "revisions: " + ", ".join(f"{r.number} ({r.hash})" for r in revisions)


def find_revision(revisions: list[Revision], wanted: str) -> Revision:
    """A revision by number ("3"), by hash, or by an unambiguous hash prefix of 4+ characters."""
    wanted = wanted.strip()
    if wanted.isdigit():
        match = next((r for r in revisions if r.number == int(wanted)), None)
        if match:
            return match
    exact = next((r for r in revisions if r.hash == wanted), None)
    if exact:
        return exact
    if len(wanted) >= 4:
        prefixed = [r for r in revisions if r.hash.startswith(wanted)]
        if len(prefixed) == 1:
            return prefixed[0]
        if len(prefixed) > 1:
            raise RevisionNotFound(
                f"{wanted!r} matches several revisions: " + ", ".join(f"{r.number} ({r.hash})" for r in prefixed)
            )
    raise RevisionNotFound(f"no revision {wanted!r}; {_describe(revisions)}")


def rollback_target(
    revisions: list[Revision], current: str | None, stable: str | None, requested: str | None = None
) -> RollbackTarget:
    """Where ``rollback`` goes: the requested revision; otherwise the stable revision when it
    differs from the current one; otherwise the revision numbered just below the current one."""
    if requested is not None:
        rev = find_revision(revisions, requested)
        return RollbackTarget(rev, f"revision {rev.number} as requested")
    if stable and stable != current:
        found = next((r for r in revisions if r.hash == stable), None)
        if found is None:
            raise RevisionNotFound(
                f"the stable revision {stable} is no longer recorded; {_describe(revisions)}; pass --to-revision"
            )
        return RollbackTarget(found, f"the stable revision ({found.number})")
    number = number_of(revisions, current)
    if number is None:
        raise RevisionNotFound(
            f"the current revision {current or '(none)'} is not recorded; {_describe(revisions)}; pass --to-revision"
        )
    older = [r for r in revisions if r.number < number]
    if not older:
        raise RevisionNotFound(
            f"nothing to roll back to: revision {number} ({current}) is the oldest recorded "
            f"revision; {_describe(revisions)}"
        )
    why = "the previous revision" + (
        f" (the current revision {number} is the stable one)" if stable else " (no stable revision yet)"
    )
    return RollbackTarget(older[-1], why)


@dataclass(frozen=True)
class HistoryRow:
    revision: Revision
    current: bool
    stable: bool

    @property
    def marks(self) -> str:
        return ",".join(m for m, on in (("current", self.current), ("stable", self.stable)) if on) or NONE

    def json(self) -> dict[str, Any]:
        spec = self.revision.spec
        agent = _dict(spec.get("agent"))
        return {
            "revision": self.revision.number,
            "hash": self.revision.hash,
            "created": self.revision.created,
            "current": self.current,
            "stable": self.stable,
            "model": model_key(spec),
            "image": agent.get("image"),
            "prompt": prompt_summary(spec, limit=60),
            "tools": list(tool_set(spec)),
        }


def history_rows(revisions: list[Revision], current: str | None, stable: str | None) -> list[HistoryRow]:
    return [HistoryRow(r, r.hash == current, r.hash == stable) for r in revisions]


def history_table(rows: list[HistoryRow], now: datetime, wide: bool = False) -> str:
    headers = ["revision", "hash", "age", "status", "model", "prompt", "tools"]
    if wide:
        headers += ["created", "image"]
    out = []
    for row in rows:
        spec = row.revision.spec
        line = [
            str(row.revision.number),
            row.revision.hash,
            age(row.revision.created, now),
            row.marks,
            model_key(spec),
            prompt_summary(spec, limit=60 if wide else 24),
            ",".join(tool_set(spec)) or NONE,
        ]
        if wide:
            line += [cell(row.revision.created), cell(_dict(spec.get("agent")).get("image"))]
        out.append(line)
    return table(headers, out)


# ------------------------------------------------------------------------------- status


CONDITION_ORDER = (
    "Ready",
    "Progressing",
    "Suspended",
    "RolledBack",
    "BudgetExceeded",
    "MetricsAvailable",
    "PolicyViolation",
)


@dataclass(frozen=True)
class AgentStatus:
    """What ``status`` shows about one AgentDeployment."""

    namespace: str
    name: str
    phase: str | None
    ready: str
    suspended: bool
    model: str
    """The model of the revision the pods run when known (it differs from the spec after a rollback)."""
    current_revision: str | None
    stable_revision: str | None
    current_number: int | None
    stable_number: int | None
    spend_today: str | None
    tokens_last_hour: int | None
    usage_updated_at: str | None
    last_breach: dict[str, Any] | None
    conditions: list[dict[str, Any]]
    created: str | None

    @classmethod
    def of(cls, obj: Mapping[str, Any], revisions: Iterable[Revision] = ()) -> AgentStatus:
        meta, spec, status = _dict(obj.get("metadata")), _dict(obj.get("spec")), _dict(obj.get("status"))
        usage = _dict(status.get("usage"))
        revs = list(revisions)
        ready = status.get("ready")
        if not isinstance(ready, str) or not ready:
            ready = f"{status.get('readyReplicas') or 0}/{spec.get('replicas', 1)}"
        order = {t: i for i, t in enumerate(CONDITION_ORDER)}
        conditions = sorted(
            (c for c in _list(status.get("conditions")) if isinstance(c, dict)),
            key=lambda c: (order.get(str(c.get("type")), len(order)), str(c.get("type"))),
        )
        tokens = usage.get("tokensLastHour")
        running = next((r.spec for r in revs if r.hash == status.get("currentRevision") and r.spec), spec)
        return cls(
            namespace=str(meta.get("namespace", "")),
            name=str(meta.get("name", "")),
            phase=status.get("phase"),
            ready=ready,
            suspended=bool(spec.get("suspended", False)),
            model=model_key(running),
            current_revision=status.get("currentRevision"),
            stable_revision=status.get("stableRevision"),
            current_number=number_of(revs, status.get("currentRevision")),
            stable_number=number_of(revs, status.get("stableRevision")),
            spend_today=usage.get("spendToday"),
            tokens_last_hour=tokens if isinstance(tokens, int) else None,
            usage_updated_at=usage.get("updatedAt"),
            last_breach=_dict(status.get("lastBreach")) or None,
            conditions=conditions,
            created=meta.get("creationTimestamp"),
        )

    def json(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "name": self.name,
            "phase": self.phase,
            "ready": self.ready,
            "suspended": self.suspended,
            "model": self.model,
            "currentRevision": self.current_revision,
            "currentRevisionNumber": self.current_number,
            "stableRevision": self.stable_revision,
            "stableRevisionNumber": self.stable_number,
            "spendToday": self.spend_today,
            "tokensLastHour": self.tokens_last_hour,
            "usageUpdatedAt": self.usage_updated_at,
            "lastBreach": self.last_breach,
            "conditions": self.conditions,
            "created": self.created,
        }


def money(value: str | None) -> str:
    return f"${value}" if value else NONE


def breach_text(breach: Mapping[str, Any] | None, now: datetime, wide: bool = False) -> str:
    """ "loop-guard: Suspend 2m ago", or in wide output with what was seen against what
    threshold: "loop-guard: loopDetections=5 (> 3) -> Suspend 2m ago"."""
    if not breach:
        return NONE
    when = age(breach.get("time"), now)
    tail = f"{breach.get('action', '?')} {when} ago" if when != NONE else str(breach.get("action", "?"))
    if not wide:
        return f"{breach.get('rule', '?')}: {tail}"
    return (
        f"{breach.get('rule', '?')}: {breach.get('metric', '?')}={breach.get('observedValue', '?')} "
        f"({breach.get('threshold', '?')}) -> {tail}"
    )


def conditions_text(conditions: list[dict[str, Any]]) -> str:
    return ",".join(f"{c.get('type')}={c.get('status')}" for c in conditions) or NONE


def status_table(rows: list[AgentStatus], now: datetime, wide: bool = False, namespaces: bool = False) -> str:
    headers = ["name", "ready", "phase", "revision", "stable", "spend-today", "tokens/h", "last-breach", "age"]
    if namespaces:
        headers.insert(0, "namespace")
    if wide:
        headers += ["model", "suspended", "conditions"]
    out = []
    for s in rows:
        line = [
            s.name,
            s.ready,
            cell(s.phase),
            cell(s.current_revision),
            cell(s.stable_revision),
            money(s.spend_today),
            cell(s.tokens_last_hour),
            breach_text(s.last_breach, now, wide),
            age(s.created, now),
        ]
        if namespaces:
            line.insert(0, s.namespace)
        if wide:
            line += [s.model, cell(s.suspended), conditions_text(s.conditions)]
        out.append(line)
    return table(headers, out)


def conditions_table(conditions: list[dict[str, Any]], now: datetime) -> str:
    return table(
        ["type", "status", "reason", "age", "message"],
        [
            [
                cell(c.get("type")),
                cell(c.get("status")),
                cell(c.get("reason")),
                age(c.get("lastTransitionTime"), now),
                shorten(str(c.get("message") or NONE), 200),
            ]
            for c in conditions
        ],
    )


def breach_details(breach: Mapping[str, Any]) -> str:
    keys = ("rule", "metric", "observedValue", "threshold", "action", "revision", "time")
    headers = ("rule", "metric", "observed", "threshold", "action", "revision", "time")
    return table(headers, [[cell(breach.get(k)) for k in keys]])


# ------------------------------------------------------------------------------- census


@dataclass
class Census:
    """An honest count of a fleet: how many distinct things actually run, not how many rows of
    configuration exist. Feed it AgentDeployments one at a time (it keeps counters, not objects)."""

    agent_deployments: int = 0
    namespaces: set[str] = field(default_factory=set)
    declared_replicas: int = 0
    ready_replicas: int = 0
    suspended: int = 0
    not_reconciled: int = 0
    phases: Counter[str] = field(default_factory=Counter)
    models: Counter[str] = field(default_factory=Counter)
    prompts: Counter[str] = field(default_factory=Counter)
    tool_sets: Counter[str] = field(default_factory=Counter)
    revisions: Counter[str] = field(default_factory=Counter)

    def add(self, obj: Mapping[str, Any], running: Mapping[str, Any] | None = None) -> None:
        """Count one AgentDeployment. ``running`` is the pod-relevant spec of the revision its pods
        run when that differs from its spec (after a rollback): models, prompts and tool sets
        are counted from what runs, not from what is declared."""
        meta, spec, status = _dict(obj.get("metadata")), _dict(obj.get("spec")), _dict(obj.get("status"))
        namespace = str(meta.get("namespace", ""))
        self.agent_deployments += 1
        self.namespaces.add(namespace)
        replicas = spec.get("replicas", 1)
        self.declared_replicas += replicas if isinstance(replicas, int) else 0
        ready = status.get("readyReplicas")
        self.ready_replicas += ready if isinstance(ready, int) else 0
        phase = status.get("phase")
        self.phases[str(phase) if phase else "Unknown"] += 1
        if spec.get("suspended") or phase == "Suspended":
            self.suspended += 1
        runs = running if running is not None else spec
        self.models[model_key(runs)] += 1
        self.prompts[prompt_key(runs, namespace)] += 1
        self.tool_sets[tool_set_key(runs)] += 1
        revision = status.get("currentRevision")
        if revision:
            self.revisions[str(revision)] += 1
        else:
            self.not_reconciled += 1

    def add_all(self, objects: Iterable[Mapping[str, Any]]) -> Census:
        for obj in objects:
            self.add(obj)
        return self

    def json(self) -> dict[str, Any]:
        return {
            "agentDeployments": self.agent_deployments,
            "namespaces": len(self.namespaces),
            "declaredReplicas": self.declared_replicas,
            "readyReplicas": self.ready_replicas,
            "suspended": self.suspended,
            "notReconciled": self.not_reconciled,
            "distinctModels": len(self.models),
            "distinctPrompts": len(self.prompts),
            "distinctToolSets": len(self.tool_sets),
            "distinctRevisions": len(self.revisions),
            "phases": dict(sorted(self.phases.items())),
            "models": _ranked(self.models),
            "prompts": _ranked(self.prompts),
            "toolSets": _ranked(self.tool_sets),
            "revisions": _ranked(self.revisions),
        }

    def headline(self) -> str:
        n = self.agent_deployments
        ns = len(self.namespaces)
        return (
            f"{n} AgentDeployment{'s' if n != 1 else ''} in {ns} namespace{'s' if ns != 1 else ''} "
            f"run {len(self.revisions)} distinct configuration{'s' if len(self.revisions) != 1 else ''} "
            f"on {len(self.models)} model{'s' if len(self.models) != 1 else ''} "
            f"with {self.ready_replicas} ready replica{'s' if self.ready_replicas != 1 else ''}."
        )

    def table(self, wide: bool = False) -> str:
        top = 0 if wide else 3
        phases = ", ".join(f"{k} {v}" for k, v in sorted(self.phases.items()))
        suspended = f"; {self.suspended} suspended" if self.suspended else ""
        rows = [
            ["AgentDeployments", str(self.agent_deployments), phases or NONE],
            ["Namespaces", str(len(self.namespaces)), NONE],
            ["Replicas ready", str(self.ready_replicas), f"of {self.declared_replicas} declared{suspended}"],
            ["Distinct models", str(len(self.models)), _top(self.models, top)],
            ["Distinct prompts", str(len(self.prompts)), _top(self.prompts, top)],
            ["Distinct tool sets", str(len(self.tool_sets)), _top(self.tool_sets, top)],
            [
                "Distinct revisions",
                str(len(self.revisions)),
                "distinct pod configurations"
                + (f"; {self.not_reconciled} not reconciled yet" if self.not_reconciled else ""),
            ],
        ]
        return table(["what", "count", "detail"], rows) + "\n\n" + self.headline()


def _ranked(counter: Counter[str]) -> dict[str, int]:
    return dict(sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])))


def _top(counter: Counter[str], limit: int) -> str:
    ranked = list(_ranked(counter).items())
    shown = ranked if limit <= 0 else ranked[:limit]
    text = ", ".join(f"{k} x{v}" for k, v in shown)
    if len(ranked) > len(shown):
        text += f", … ({len(ranked) - len(shown)} more; -o wide lists all)"
    return text or NONE
