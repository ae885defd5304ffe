"""What one reconcile decides, as pure functions of what it read.

The reconciler (``reconcile.py``) is the shell: it reads the object, the agent's revisions and
the policies, asks ``judge`` and ``plan`` what to do, renders and applies, and then asks
``conclude`` for the status to write. Everything that can be decided without the API server is
decided here, so each rule (a rollback pin, a resume request, a suspension's reason, the events
a transition posts) is unit-tested without a cluster.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from agentfleet import policy as policy_core
from agentfleet.api import conditions as cond
from agentfleet.api import names
from agentfleet.api.guardconfig import PolicyQuota
from agentfleet.api.types import (
    AgentDeployment,
    AgentDeploymentSpec,
    AgentPolicy,
    LedgerPolicy,
    Pricing,
    TelemetryPolicy,
)
from agentfleet.policy.platform import NetworkAllowances, Platform, all_violations
from agentfleet.policy.platform import judge as judge_with
from agentfleet.policy.rules import Violation

BUILTIN = Platform()
"""Deny by default when the operator is given no platform file."""

Event = tuple[str, str, str]  # (type, reason, message)

OWNED = frozenset({cond.POLICY_VIOLATION, cond.ROLLED_BACK, cond.SUSPENDED, cond.PROGRESSING})
"""Conditions the reconciler decides; the evaluator and the Deployment watcher decide theirs, and
the status writer merges each writer's change into the freshest status."""

OPERATOR_REASONS = frozenset({"ManualSuspend", "FleetKillSwitch"})
"""Suspension reasons the reconciler derives from the spec and policies (not the evaluator's)."""


@dataclass(frozen=True)
class Problem:
    """The spec cannot be carried out (``reason`` InvalidSpec) or a policy forbids it."""

    reason: str
    message: str
    conditions: cond.Conditions
    """Owned conditions to write."""
    events: list[Event]
    withdraw: bool = False
    """True for a policy violation: scale to zero and withdraw delegated permissions."""


@dataclass
class Plan:
    """What to render and run, and what status so far says about it."""

    agent: AgentDeployment
    source: AgentDeployment
    """The agent to render: the spec, or a pinned revision's snapshot of it."""
    pinned: dict[str, Any] | None
    """The ControllerRevision whose exact pod template runs, if any."""
    replicas: int
    zero_reason: str | None
    pricing: Pricing | None
    conditions: cond.Conditions
    resumed: bool = False
    consumed: dict[str, None] = field(default_factory=dict)
    """Request annotations to remove once status records their result."""
    events: list[Event] = field(default_factory=list)
    allowances: NetworkAllowances = field(default_factory=NetworkAllowances)
    """What the NetworkPolicy may open (hostname CIDRs, excluded ranges)."""
    ledger_policy: LedgerPolicy = field(default_factory=LedgerPolicy)
    """What the guard does while the shared ledger is unreachable (the strictest covering policy's)."""
    quotas: list[PolicyQuota] = field(default_factory=list)
    """The covering policies' spend quotas."""
    telemetry: TelemetryPolicy | None = None
    """Where the guard sends traces (the first covering policy's ``telemetry``; None: nowhere)."""


@dataclass(frozen=True)
class StatusChange:
    """Fields and owned conditions to merge into status, and the events to post."""

    fields: dict[str, Any]
    conditions: cond.Conditions
    events: list[Event]


def invalid(body: dict[str, Any], message: str, now: str, reason: str = "InvalidSpec") -> Problem:
    """A spec that cannot be deployed: say so on status and as an Event; keep what runs."""
    generation = body["metadata"].get("generation")
    conditions = (body.get("status") or {}).get("conditions") or []
    conditions = cond.set_condition(conditions, cond.PROGRESSING, False, reason, message, generation, now)
    return Problem(reason, message, owned(conditions), [("Warning", reason, message)])


def violation(body: dict[str, Any], messages: list[str], now: str) -> Problem:
    """Policy violation: create nothing new, withdraw what could exceed the policy."""
    generation = body["metadata"].get("generation")
    message = "; ".join(messages)
    conditions = (body.get("status") or {}).get("conditions") or []
    conditions = cond.set_condition(
        conditions, cond.POLICY_VIOLATION, True, "PolicyViolation", message, generation, now
    )
    return Problem("PolicyViolation", message, owned(conditions), [("Warning", "PolicyViolation", message)], True)


def owned(conditions: cond.Conditions) -> cond.Conditions:
    return [c for c in conditions if c["type"] in OWNED]


def judge(
    body: dict[str, Any],
    policies: list[AgentPolicy],
    namespace_labels: dict[str, str],
    now: str,
    platform: Platform = BUILTIN,
) -> AgentDeployment | Problem:
    """The agent, parsed, small enough to record, and within every effective policy (the
    covering ones, or the platform's default) and the platform's own rules; or why not."""
    try:
        agent = AgentDeployment.model_validate(body)
    except ValidationError as exc:  # the CRD schema should have caught it; never crash on it
        err = exc.errors()[0]
        return invalid(body, f"spec is invalid at {'.'.join(map(str, err['loc']))}: {err['msg']}", now)
    size = encoded_size(body.get("spec"))
    if size > MAX_SPEC_BYTES:
        return invalid(
            body,
            f"spec is {size} bytes once encoded (JSON escapes counted); at most {MAX_SPEC_BYTES} fit a revision "
            "snapshot: shorten the prompt, env or args, or load the prompt from a ConfigMap",
            now,
        )
    found = all_violations(agent, policies, namespace_labels, platform)
    if found:
        return violation(body, [_said(v) for v in found], now)
    return agent


def _said(v: Violation) -> str:
    """A violation as the condition says it: "POLICY: message" (platform rules say "platform")."""
    return f"{v.policy}: {v.message}"


_ESCAPED = re.compile('[\x00-\x1f"\\\\<>&]')

MAX_SPEC_BYTES = 256 * 1024
"""The largest spec the operator carries out. Its revision snapshot (the pod-relevant spec plus
the pod template, which repeats env, args and the prompt's config) must stay well inside etcd's
1.5 MiB object limit whatever the content."""


def encoded_size(value: Any) -> int:
    """Bytes of ``value`` as JSON when every string character is escaped the way the API server
    may escape it (control characters, quotes, backslashes and <, >, & as 6-byte escapes;
    others as UTF-8): an upper bound on what any copy of it costs in etcd or an annotation."""
    if isinstance(value, str):
        escaped = len(value) - len(_ESCAPED.sub("", value))  # each a 1-byte character that becomes 6
        return 2 + len(value.encode("utf-8", "surrogatepass")) + 5 * escaped
    if isinstance(value, dict):
        return 2 + sum(encoded_size(str(k)) + 1 + encoded_size(v) + 1 for k, v in value.items())
    if isinstance(value, list):
        return 2 + sum(encoded_size(v) + 1 for v in value)
    return len(json.dumps(value))


def must_stop(body: dict[str, Any]) -> bool:
    """Whether the agent must run no replica, read from the raw object (also when its spec does
    not parse): suspended by spec, or a Suspended condition that is True."""
    spec = body.get("spec")
    manual = isinstance(spec, dict) and spec.get("suspended") is True
    return manual or cond.is_true((body.get("status") or {}).get("conditions"), cond.SUSPENDED)


def pinned_revision(body: dict[str, Any]) -> str | None:
    """A rollback pins a revision until the spec changes (a new generation is a fresh attempt)."""
    status = body.get("status") or {}
    rolled = cond.get(status.get("conditions"), cond.ROLLED_BACK)
    if (
        rolled
        and rolled.get("status") == "True"
        and rolled.get("observedGeneration") == body["metadata"].get("generation")
    ):
        pin = status.get("currentRevision")
        return str(pin) if pin else None
    return None


def revision_hash(revision: dict[str, Any]) -> str | None:
    value = ((revision.get("metadata") or {}).get("labels") or {}).get(names.REVISION)
    return str(value) if value else None


def find_revision(revisions: list[dict[str, Any]], wanted: str) -> dict[str, Any] | None:
    """The revision a user named, by number or by hash."""
    return next((r for r in revisions if wanted in {str(r.get("revision")), revision_hash(r)}), None)


def snapshot_agent(agent: AgentDeployment, revision: dict[str, Any]) -> AgentDeployment:
    """The agent as it was at ``revision``: pod-relevant spec from the snapshot, the rest current."""
    spec = agent.spec.wire()
    spec.update(revision["data"]["spec"])
    return agent.model_copy(update={"spec": AgentDeploymentSpec.model_validate(spec)})


def desired_replicas(
    agent: AgentDeployment, status: dict[str, Any], policies: list[AgentPolicy], namespace_labels: dict[str, str]
) -> tuple[int, str | None]:
    """Replica count to run and, when it is zero on purpose, the reason (for the condition)."""
    if agent.spec.suspended:
        return 0, "ManualSuspend"
    if policy_core.suspend_all(agent, policies, namespace_labels):
        return 0, "FleetKillSwitch"
    auto = cond.get(status.get("conditions"), cond.SUSPENDED)
    if auto and auto.get("status") == "True" and auto.get("reason") not in OPERATOR_REASONS:
        return 0, str(auto.get("reason"))
    return agent.spec.replicas, None


def plan(
    agent: AgentDeployment,
    body: dict[str, Any],
    revisions: list[dict[str, Any]],
    policies: list[AgentPolicy],
    namespace_labels: dict[str, str],
    now: str,
    platform: Platform = BUILTIN,
) -> Plan | Problem:
    """What to run: the spec or a pinned revision, how many replicas, and the conditions so far.

    ``revisions`` are the agent's ControllerRevisions (empty for an agent never reconciled).
    A pinned revision is checked against the policies like the spec is: a rollback never
    restores what a policy has since withdrawn."""
    meta = body["metadata"]
    name, generation = meta["name"], meta.get("generation")
    status: dict[str, Any] = dict(body.get("status") or {})
    annotations = meta.get("annotations") or {}
    conditions = cond.set_condition(
        status.get("conditions") or [],
        cond.POLICY_VIOLATION,
        False,
        "WithinPolicy",
        "all covering AgentPolicies allow this agent",
        generation,
        now,
    )
    events: list[Event] = []
    consumed: dict[str, None] = {}
    pin = pinned_revision(body)
    pinned: dict[str, Any] | None = None
    rollback_to = annotations.get(names.ROLLBACK_TO)
    if rollback_to:
        pinned = find_revision(revisions, str(rollback_to))
        if pinned is None:
            events.append(
                ("Warning", "RollbackFailed", f"no revision {rollback_to!r}; see `kubectl agentfleet history {name}`")
            )
        else:
            pin = revision_hash(pinned)
            number = pinned.get("revision")
            conditions = cond.set_condition(
                conditions,
                cond.ROLLED_BACK,
                True,
                "ManualRollback",
                f"rolled back by request to revision {number} ({pin})",
                generation,
                now,
            )
            events.append(("Normal", "RolledBack", f"manual rollback to revision {number} ({pin})"))
        consumed[names.ROLLBACK_TO] = None
    elif pin:
        pinned = next((r for r in revisions if revision_hash(r) == pin), None)
    if not pin or pinned is None:
        conditions = cond.set_condition(
            conditions,
            cond.ROLLED_BACK,
            False,
            "NewGeneration" if cond.get(conditions, cond.ROLLED_BACK) else "NotRolledBack",
            "running the revision the spec describes",
            generation,
            now,
        )
    source = agent if pinned is None else snapshot_agent(agent, pinned)
    judgement = judge_with(source, policies, namespace_labels, platform)
    if pinned is not None:
        found = judgement.violations
        if found:
            return violation(
                body,
                [f"{_said(v)} (in pinned revision {pinned.get('revision')})" for v in found],
                now,
            )

    resumed = False
    if names.RESUME in annotations:
        if cond.is_true(conditions, cond.SUSPENDED):
            resumed = True
            conditions = cond.set_condition(
                conditions, cond.SUSPENDED, False, "Resumed", "resumed by request", generation, now
            )
            status["conditions"] = conditions
        consumed[names.RESUME] = None
    replicas, zero_reason = desired_replicas(agent, status, policies, namespace_labels)
    ledger_policy, quotas = policy_core.ledger_terms(agent, policies, namespace_labels)
    return Plan(
        ledger_policy=ledger_policy,
        quotas=quotas,
        telemetry=policy_core.telemetry_terms(agent, policies, namespace_labels),
        allowances=judgement.allowances,
        agent=agent,
        source=source,
        pinned=pinned,
        replicas=replicas,
        zero_reason=zero_reason,
        pricing=policy_core.effective_pricing(agent, policies, namespace_labels),
        conditions=conditions,
        resumed=resumed,
        consumed=consumed,
        events=events,
    )


def suspended_message(reason: str, conditions: cond.Conditions) -> str:
    if reason == "ManualSuspend":
        return "spec.suspended is true; set it to false to resume"
    if reason == "FleetKillSwitch":
        return "an AgentPolicy covering this namespace has suspendAll: true"
    existing = cond.get(conditions, cond.SUSPENDED)
    return str(existing.get("message", reason)) if existing else reason


def selector_string(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def conclude(
    p: Plan, body: dict[str, Any], revision: str, number: int, selector: dict[str, str], now: str
) -> StatusChange:
    """The status after ``revision`` (numbered ``number``) was applied with ``p.replicas``."""
    generation = body["metadata"].get("generation")
    status = body.get("status") or {}
    events = list(p.events)
    started = status.get("revisionStartedAt", now)
    if revision != status.get("currentRevision"):
        events.append(("Normal", "RevisionApplied", f"applied revision {number} ({revision})"))
        started = now
    conditions = p.conditions
    was_zero = cond.is_true(conditions, cond.SUSPENDED)
    if p.zero_reason:
        msg = suspended_message(p.zero_reason, conditions)
        conditions = cond.set_condition(conditions, cond.SUSPENDED, True, p.zero_reason, msg, generation, now)
        if not was_zero:
            events.append(("Warning", "Suspended", msg))
    else:
        conditions = cond.set_condition(
            conditions,
            cond.SUSPENDED,
            False,
            "Resumed" if p.resumed else "Running",
            f"{'resumed by request: ' if p.resumed else ''}running {p.replicas} replica(s)",
            generation,
            now,
        )
        if was_zero or p.resumed:
            events.append(("Normal", "Resumed", f"scaled back to {p.replicas} replica(s)"))
    conditions = cond.set_condition(
        conditions, cond.PROGRESSING, True, "RevisionApplied", f"revision {revision} applied", generation, now
    )
    fields = {
        "observedGeneration": generation,
        "selector": selector_string(selector),
        "currentRevision": revision,
        "revisionStartedAt": started,
    }
    return StatusChange(fields, owned(conditions), events)


def revision_number(revisions: list[dict[str, Any]], revision: str) -> tuple[int, bool]:
    """The number of ``revision``: its existing ControllerRevision's, or the next free one
    (numbered like Deployments do); True when it must be recorded."""
    same = next((r for r in revisions if revision_hash(r) == revision), None)
    if same is not None:
        return int(same.get("revision", 0)), False
    return max((int(r.get("revision", 0)) for r in revisions), default=0) + 1, True


def prunable(
    revisions: list[dict[str, Any]], keep: set[str | None], history_limit: int
) -> list[tuple[str, str | None]]:
    """(ControllerRevision name, revision hash) of the oldest revisions beyond the history limit,
    never one in ``keep`` (the running, current and stable revisions)."""
    old = [r for r in revisions if revision_hash(r) not in keep]
    excess = max(len(old) - history_limit, 0)
    return [(r["metadata"]["name"], revision_hash(r)) for r in old[:excess]]
