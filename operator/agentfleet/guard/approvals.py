"""Tool calls held at the guard until a person decides (docs/approvals.md).

A call of a tool that needs approval (the tool's ``approval``, or an AgentPolicy's
``requiredApprovals``) is held: the guard creates an ``AgentApproval`` with the agent's
ServiceAccount token and watches that one object until ``spec.decision`` appears, the deadline
passes (the call is refused: onTimeout is Deny), or the object disappears (refused). The
decision is trusted because the API server checks it (gen/approvals.py: the decider records their
own name; the agent's own ServiceAccount never decides; a decision is final), and because the
guard follows only the object it created (by name *and* uid): an approval the agent forges, or
recreates under the same name, never releases a call.

Nothing here runs a call without a decision: a guard stopped while calls are held fails them (the
agent's request errors) and marks their approvals Abandoned; a restarted guard marks its pod's
leftover pending approvals Abandoned too.

The pure decisions (which rule applies, what a stored object means) are functions; ``Approvals``
is the thin I/O shell over aiohttp.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import ssl
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client import Counter, Gauge

from agentfleet.api.guardconfig import ApprovalRule, ApprovalsConfig, GuardConfig
from agentfleet.api.names import AGENT, AGENT_KIND, API_VERSION, APPROVAL_KIND, APPROVAL_PLURAL, MANAGED_BY, MANAGER
from agentfleet.api.types import ApprovalCondition, ApprovalMode, ApprovalPhase, ApprovalState
from agentfleet.api.units import duration_seconds
from agentfleet.guard.errors import Code, GuardError

DEFAULT_TIMEOUT = "15m"
MAX_ARGUMENTS = 16384
"""Characters of the arguments copied into the approval (the hash covers them all)."""
MAX_REASON = 2048
REASON_HEADER = "X-Agentfleet-Reason"
"""The agent may say why it makes the call; the approver sees it (cut at MAX_REASON)."""
POD_LABEL = "agentfleet.dev/approval-pod"
_MAX_DEPTH = 8


# ------------------------------------------------------------------ pure decisions


def _lookup(arguments: Any, path: str) -> tuple[bool, Any]:
    node = arguments
    for part in path.split(".")[:_MAX_DEPTH]:
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _number(value: Any) -> Decimal | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float, str)):
        try:
            number = Decimal(str(value).strip())
        except InvalidOperation:
            return None
        return number if number.is_finite() else None
    return None


def condition_holds(cond: ApprovalCondition, arguments: Any) -> bool:
    """Whether ``cond`` calls for approval. A missing or unreadable argument does (fail closed):
    an agent cannot skip approval by misspelling or stringifying the amount."""
    found, value = _lookup(arguments, cond.argument)
    if not found:
        return True
    if cond.equals is not None:
        text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        return text == cond.equals
    number = _number(value)
    if number is None:
        return True
    if cond.greater_than is not None:
        return number > Decimal(cond.greater_than)
    assert cond.less_than is not None
    return number < Decimal(cond.less_than)


def rules_of(cfg: GuardConfig) -> list[ApprovalRule]:
    """Every approval rule of this guard: the tools' own ``approval`` blocks, then the policies'."""
    rules = [
        ApprovalRule(
            tool=t.name,
            when=t.approval.when,
            timeout=t.approval.timeout,
            mode=t.approval.mode,
            redact_arguments=t.approval.redact_arguments,
        )
        for t in cfg.tools
        if t.approval is not None and t.approval.required
    ]
    return rules + (list(cfg.approvals.rules) if cfg.approvals else [])


def rule_for(rules: Iterable[ApprovalRule], tool: str, arguments: str) -> ApprovalRule | None:
    """The first rule that holds this call, or None. Arguments that are not a JSON object match
    every condition (fail closed). Several matching rules: the shortest timeout and redaction if
    any asks for it, so a policy's stricter rule is never weakened by the agent's."""
    try:
        parsed: Any = json.loads(arguments) if arguments.strip() else {}
    except (ValueError, RecursionError):
        parsed = None
    matched = [
        r
        for r in rules
        if r.tool == tool and (not r.when or parsed is None or any(condition_holds(c, parsed) for c in r.when))
    ]
    if not matched:
        return None
    timeout = min((r.timeout or DEFAULT_TIMEOUT for r in matched), key=duration_seconds)
    mode = ApprovalMode.REFUSE if any(r.mode is ApprovalMode.REFUSE for r in matched) else ApprovalMode.HOLD
    return ApprovalRule(
        tool=tool, timeout=timeout, mode=mode, redact_arguments=any(r.redact_arguments for r in matched)
    )


def approval_name(agent: str) -> str:
    """A fresh, unguessable name: the agent cannot create the object before the guard does."""
    return f"{agent}-{secrets.token_hex(8)}"


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def service_account_of(namespace: str, agent: str) -> str:
    """The username of the agent's ServiceAccount (``render.children``: ``<agent>-agent``)."""
    return f"system:serviceaccount:{namespace}:{agent}-agent"


@dataclass(frozen=True)
class Decision:
    """What the guard makes of a decided approval."""

    approved: bool
    decided_by: str
    reason: str


def decision_of(obj: dict[str, Any], uid: str, agent_sa: str) -> Decision | None:
    """The decision in a stored approval, or None while pending. An object that is not the one
    the guard created (another uid) is a denial, and so is a decision recorded by the agent's own
    ServiceAccount (the admission policy refuses it; this holds if the policy is missing)."""
    meta = obj.get("metadata", {})
    if meta.get("uid") != uid:
        return Decision(False, "", "the approval object was replaced")
    decision = obj.get("spec", {}).get("decision")
    if not isinstance(decision, dict):
        return None
    decided_by = str(decision.get("decidedBy", ""))
    reason = str(decision.get("reason") or "")[:1024]
    if not decided_by or decided_by == agent_sa:
        return Decision(False, decided_by, "the decision was not recorded by a person")
    return Decision(decision.get("state") == ApprovalState.APPROVED.value, decided_by, reason)


def approval_object(
    cfg: GuardConfig,
    name: str,
    pod: str,
    tool: str,
    arguments: str,
    task: str | None,
    reason: str | None,
    deadline: float,
    redact: bool,
) -> dict[str, Any]:
    """The AgentApproval the guard creates for one held call."""
    request: dict[str, Any] = {
        "agent": cfg.agent,
        "revision": cfg.revision[:64],
        "pod": pod[:253],
        "tool": tool,
        "argumentsSha256": hashlib.sha256(arguments.encode()).hexdigest(),
        "deadline": rfc3339(deadline),
    }
    if task:
        request["task"] = task[:256]
    if not redact:
        request["arguments"] = arguments[:MAX_ARGUMENTS]
    if reason:
        request["reason"] = reason[:MAX_REASON]
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": cfg.namespace,
        "labels": {MANAGED_BY: MANAGER, AGENT: cfg.agent, POD_LABEL: pod[:63].rstrip("-.")},
    }
    if cfg.approvals and cfg.approvals.owner_uid:
        metadata["ownerReferences"] = [
            {"apiVersion": API_VERSION, "kind": AGENT_KIND, "name": cfg.agent, "uid": cfg.approvals.owner_uid}
        ]
    return {"apiVersion": API_VERSION, "kind": APPROVAL_KIND, "metadata": metadata, "spec": {"request": request}}


# ------------------------------------------------------------------ the I/O shell


class ApiError(Exception):
    """The API server refused or could not be reached."""


class Approvals:
    """Held calls of one guard and its connection to the API server."""

    def __init__(self, cfg: GuardConfig, registry: Any, audit: Any, pod: str | None = None) -> None:
        self.cfg = cfg
        self.rules = rules_of(cfg)
        self.settings: ApprovalsConfig | None = cfg.approvals
        self.pod = pod or os.environ.get("POD_NAME") or os.environ.get("HOSTNAME") or "local"
        self.agent_sa = service_account_of(cfg.namespace, cfg.agent)
        self.audit = audit
        self.held: dict[str, asyncio.Task[Any] | None] = {}
        self.ready: dict[tuple[str, str], str] = {}
        """Refuse mode: (tool, arguments hash) -> the approval a repeated call waits for."""
        self._session: aiohttp.ClientSession | None = None
        labels = ("namespace", "agent", "revision")
        self._labels = (cfg.namespace, cfg.agent, cfg.revision)
        self.waiting = Gauge(
            "agentfleet_approvals_waiting", "Tool calls waiting for a person's decision.", labels, registry=registry
        )
        self.decisions = Counter(
            "agentfleet_approval_decisions",
            "Held tool calls by result (approved, denied, expired, abandoned, unavailable).",
            [*labels, "result"],
            registry=registry,
        )
        self.waiting.labels(*self._labels).set(0)

    @property
    def enabled(self) -> bool:
        return bool(self.rules)

    # -------------------------------------------------------------- API access

    def _timeout(self) -> float:
        return duration_seconds(self.settings.request_timeout) if self.settings else 10.0

    def _base(self) -> str:
        assert self.settings is not None
        return (
            f"{self.settings.api_url.rstrip('/')}/apis/{API_VERSION}/namespaces/{self.cfg.namespace}/{APPROVAL_PLURAL}"
        )

    def _session_(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            assert self.settings is not None
            ctx = ssl.create_default_context(cafile=self.settings.ca_file) if self.settings.ca_file else None
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx if ctx else True, limit=0))
        return self._session

    async def _headers(self) -> dict[str, str]:
        assert self.settings is not None
        path = Path(self.settings.token_file)
        token = (await asyncio.to_thread(path.read_text)).strip()  # projected tokens rotate: read each time
        return {"Authorization": f"Bearer {token}", "Accept": "application/json"}

    async def _call(self, method: str, url: str, body: Any = None, content_type: str = "application/json") -> Any:
        try:
            async with asyncio.timeout(self._timeout()):
                headers = {**await self._headers(), "Content-Type": content_type}
                data = json.dumps(body).encode() if body is not None else None
                async with self._session_().request(method, url, data=data, headers=headers) as resp:
                    text = await resp.text()
                    if resp.status >= 400:
                        raise ApiError(f"{method} {url.rsplit('/', 1)[-1]}: {resp.status} {text[:300]}")
                    return json.loads(text)
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            raise ApiError(f"{type(exc).__name__}: {exc}") from None

    async def _set_phase(self, name: str, phase: ApprovalPhase, outcome: str | None, message: str) -> None:
        """Record what happened on the approval (best effort: the call's fate never depends on it)."""
        status: dict[str, Any] = {"phase": phase.value, "message": message[:1024]}
        if outcome:
            status["outcome"] = outcome
        try:
            await self._call(
                "PATCH", f"{self._base()}/{name}/status", {"status": status}, "application/merge-patch+json"
            )
        except ApiError as exc:
            _log("approval_status_failed", approval=name, error=str(exc))

    async def _wait(self, name: str, uid: str, version: str, deadline: float) -> Decision | None:
        """Watch the one approval until a decision or the deadline (None). Re-opens the watch when
        the server ends it; re-reads the object when its version is too old."""
        while (left := deadline - time.monotonic()) > 0:
            url = (
                f"{self._base()}?watch=1&fieldSelector=metadata.name%3D{name}"
                f"&resourceVersion={version}&timeoutSeconds={max(1, min(int(left) + 1, 300))}"
            )
            try:
                async with asyncio.timeout(left):
                    async with self._session_().get(url, headers=await self._headers()) as resp:
                        if resp.status >= 400:
                            raise ApiError(f"watch {name}: {resp.status} {(await resp.text())[:300]}")
                        async for line in resp.content:
                            event = json.loads(line)
                            kind, obj = event.get("type"), event.get("object", {})
                            if kind == "ERROR":  # 410 Gone: start again from the current object
                                current = await self._call("GET", f"{self._base()}/{name}")
                                version = current["metadata"]["resourceVersion"]
                                found = decision_of(current, uid, self.agent_sa)
                                if found:
                                    return found
                                break
                            if kind == "DELETED":
                                return Decision(False, "", "the approval object was deleted")
                            version = obj.get("metadata", {}).get("resourceVersion", version)
                            found = decision_of(obj, uid, self.agent_sa)
                            if found:
                                return found
            except TimeoutError:
                return None
            except aiohttp.ClientError:
                await asyncio.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
            except ApiError as exc:
                if "404" in str(exc):
                    return Decision(False, "", "the approval object was deleted")
                raise
        return None

    # -------------------------------------------------------------- the gate

    async def check(self, tool: str, arguments: str, task: str | None, reason: str | None) -> str | None:
        """Return (the approval's name) when the call may run; raise a refusal otherwise.
        None: the call needs no approval."""
        rule = rule_for(self.rules, tool, arguments)
        if rule is None:
            return None
        if self.settings is None:
            raise GuardError(
                Code.APPROVAL_UNAVAILABLE,
                f"tool {tool!r} needs approval but this guard has no approvals configured; the call was not run",
                503,
            )
        digest = hashlib.sha256(arguments.encode()).hexdigest()
        if rule.mode is ApprovalMode.REFUSE:
            return await self._refuse_mode(rule, tool, arguments, digest, task, reason)
        return await self._hold(rule, tool, arguments, task, reason)

    def _admit(self) -> None:
        assert self.settings is not None
        if len(self.held) >= self.settings.max_held:
            raise GuardError(
                Code.OVERLOADED,
                f"{len(self.held)} tool calls are already waiting for approval; retry later",
                503,
                retry_after=5,
                should_retry=True,
            )

    async def _create(
        self, rule: ApprovalRule, tool: str, arguments: str, task: str | None, reason: str | None
    ) -> tuple[str, str, str, float]:
        timeout = duration_seconds(rule.timeout or DEFAULT_TIMEOUT)
        name = approval_name(self.cfg.agent)
        obj = approval_object(
            self.cfg, name, self.pod, tool, arguments, task, reason, time.time() + timeout, rule.redact_arguments
        )
        try:
            created = await self._call("POST", self._base(), obj)
        except ApiError as exc:
            self.decisions.labels(*self._labels, "unavailable").inc()
            self.audit.record(
                "approval", decision="deny", reason=f"could not create the approval: {exc}", tool=tool, task=task
            )
            raise GuardError(
                Code.APPROVAL_UNAVAILABLE,
                f"tool {tool!r} needs approval and the approval could not be requested ({exc}); the call was not run",
                503,
                retry_after=5,
                should_retry=True,
            ) from None
        meta = created["metadata"]
        self.audit.record(
            "approval_requested",
            decision="hold",
            reason=f"tool {tool!r} needs approval",
            approval=name,
            tool=tool,
            task=task,
            arguments_sha256=obj["spec"]["request"]["argumentsSha256"],
            deadline=obj["spec"]["request"]["deadline"],
        )
        await self._set_phase(name, ApprovalPhase.PENDING, None, "waiting for a decision")
        return name, meta["uid"], meta["resourceVersion"], time.monotonic() + timeout

    def _decided(self, name: str, tool: str, task: str | None, decision: Decision | None) -> GuardError | None:
        """Audit the decision; the refusal to raise, if any."""
        if decision is None:
            self.decisions.labels(*self._labels, "expired").inc()
            self.audit.record(
                "approval_decided", decision="deny", reason="no decision before the deadline", approval=name, tool=tool,
                task=task, state="Expired",
            )  # fmt: skip
            return GuardError(
                Code.APPROVAL_TIMEOUT,
                f"tool {tool!r} was not approved before the deadline of AgentApproval {name}; the call was not run",
                403,
            )
        state = "Approved" if decision.approved else "Denied"
        self.decisions.labels(*self._labels, state.lower()).inc()
        self.audit.record(
            "approval_decided",
            decision="allow" if decision.approved else "deny",
            reason=decision.reason or state,
            approval=name,
            tool=tool,
            task=task,
            state=state,
            decided_by=decision.decided_by,
        )
        if decision.approved:
            return None
        said = f": {decision.reason}" if decision.reason else ""
        who = f" by {decision.decided_by}" if decision.decided_by else ""
        return GuardError(
            Code.APPROVAL_DENIED,
            f"tool {tool!r} was denied{who} (AgentApproval {name}){said}; the call was not run",
            403,
        )

    async def _hold(self, rule: ApprovalRule, tool: str, arguments: str, task: str | None, reason: str | None) -> str:
        self._admit()
        key = secrets.token_hex(8)
        self.held[key] = None  # counted before the first await, so max_held is a hard bound
        gauge = self.waiting.labels(*self._labels)
        gauge.inc()
        name = ""
        try:
            name, uid, version, deadline = await self._create(rule, tool, arguments, task, reason)
            try:
                decision = await self._wait(name, uid, version, deadline)
            except ApiError as exc:
                self.decisions.labels(*self._labels, "unavailable").inc()
                await self._set_phase(name, ApprovalPhase.ABANDONED, "failed", f"the guard lost the approval: {exc}")
                raise GuardError(
                    Code.APPROVAL_UNAVAILABLE,
                    f"the guard could not follow AgentApproval {name} ({exc}); the call was not run",
                    503,
                ) from None
            refusal = self._decided(name, tool, task, decision)
            if refusal is not None:
                phase = ApprovalPhase.EXPIRED if decision is None else ApprovalPhase.DENIED
                await self._set_phase(name, phase, "refused", refusal.message)
                raise refusal
            await self._set_phase(name, ApprovalPhase.APPROVED, None, "approved; the call runs")
            return name
        except asyncio.CancelledError:  # the guard is stopping or the agent hung up: never run
            if name:
                self.decisions.labels(*self._labels, "abandoned").inc()
                self.audit.record(
                    "approval_decided", decision="deny", reason="the held call ended before a decision",
                    approval=name, tool=tool, task=task, state="Abandoned",
                )  # fmt: skip
                await asyncio.shield(
                    self._set_phase(name, ApprovalPhase.ABANDONED, "failed", "the held call ended before a decision")
                )
            raise
        finally:
            self.held.pop(key, None)
            gauge.dec()

    async def _refuse_mode(
        self, rule: ApprovalRule, tool: str, arguments: str, digest: str, task: str | None, reason: str | None
    ) -> str:
        """Non-blocking: the first call creates the approval and is refused (409 naming it); the same
        call sent again runs once the approval is Approved (and only once)."""
        known = self.ready.get((tool, digest))
        if known is not None:
            name, uid = known.split("/", 1)
            try:
                obj = await self._call("GET", f"{self._base()}/{name}")
            except ApiError as exc:
                if "404" not in str(exc):
                    raise GuardError(
                        Code.APPROVAL_UNAVAILABLE, f"AgentApproval {name} cannot be read ({exc})", 503
                    ) from None
                obj = {"metadata": {}}
            decision = decision_of(obj, uid, self.agent_sa)
            if decision is None and time.time() < _deadline_of(obj):
                raise _pending(tool, name)
            del self.ready[(tool, digest)]
            refusal = self._decided(name, tool, task, decision)
            if refusal is not None:
                await self._set_phase(name, ApprovalPhase.DENIED if decision else ApprovalPhase.EXPIRED, "refused", "")
                raise refusal
            await self._set_phase(name, ApprovalPhase.APPROVED, None, "approved; the call runs")
            return name
        assert self.settings is not None
        if len(self.ready) >= self.settings.max_held:
            self._admit()  # same bound as held calls
            self.ready.pop(next(iter(self.ready)))
        name, uid, _, _ = await self._create(rule, tool, arguments, task, reason)
        self.ready[(tool, digest)] = f"{name}/{uid}"
        raise _pending(tool, name)

    async def finished(self, name: str | None, outcome: str, message: str = "") -> None:
        """Record how an approved call went (ran, failed)."""
        if name:
            self.audit.record("approval_outcome", decision="allow", reason=outcome, approval=name, outcome=outcome)
            await self._set_phase(name, ApprovalPhase.APPROVED, outcome, message or outcome)

    async def abandon_leftovers(self) -> int:
        """At start: this pod's approvals still pending belong to calls a previous run of the guard
        held; those calls failed with it, so the approvals say Abandoned (none can run now)."""
        if not self.enabled or self.settings is None:
            return 0
        selector = f"{AGENT}={self.cfg.agent},{POD_LABEL}={self.pod[:63].rstrip('-.')}"
        try:
            listing = await self._call("GET", f"{self._base()}?labelSelector={selector}&limit=500")
        except ApiError as exc:
            _log("approval_sweep_failed", error=str(exc))
            return 0
        count = 0
        for item in listing.get("items", []):
            phase = (item.get("status") or {}).get("phase")
            if phase in (None, ApprovalPhase.PENDING.value):
                await self._set_phase(
                    item["metadata"]["name"], ApprovalPhase.ABANDONED, "failed", "the guard restarted while holding it"
                )
                count += 1
        return count

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


def _log(event: str, **fields: Any) -> None:
    """One JSON line on stderr, like ``state.log`` (not imported: state imports this module)."""
    print(json.dumps({"ts": round(time.time(), 3), "event": event, **fields}, default=str), file=sys.stderr, flush=True)


def _deadline_of(obj: dict[str, Any]) -> float:
    text = obj.get("spec", {}).get("request", {}).get("deadline")
    if not text:
        return 0.0
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


def _pending(tool: str, name: str) -> GuardError:
    return GuardError(
        Code.APPROVAL_PENDING,
        f"tool {tool!r} needs approval: waiting for AgentApproval {name} "
        f"(kubectl agentfleet approve {name}); send the same call again once it is decided",
        409,
        retry_after=10,
        should_retry=False,
    )
