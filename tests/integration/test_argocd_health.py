"""The chart's Argo CD health checks (charts/agentfleet/files/argocd/*.lua), run by a real Lua 5.1
interpreter (Argo CD's gopher-lua speaks Lua 5.1) over real AgentDeployments and AgentPolicies
that the operator brought into each state on the real control plane."""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

import pytest

from hack.harness.agents import agent, agent_policy, phase_is, status, wait_reconciled
from hack.harness.kube import ROOT, Kube, poll
from hack.harness.processes import OperatorProcess

pytestmark = pytest.mark.integration

SCRIPTS = ROOT / "charts" / "agentfleet" / "files" / "argocd"


def lua_string(text: str) -> str:
    """A Lua 5.1 string literal: printable ASCII as is, every other byte as a decimal escape."""
    return '"' + "".join(chr(b) if 32 <= b < 127 and chr(b) not in '"\\' else f"\\{b:03d}" for b in text.encode()) + '"'


def lua_literal(value: Any) -> str:
    """``value`` (parsed JSON) as a Lua table constructor, as Argo CD hands ``obj`` to the
    script: objects as tables, arrays as sequences from 1, null as nil."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return lua_string(value)
    if isinstance(value, list):
        return "{" + ", ".join(lua_literal(v) for v in value) + "}"
    return "{" + ", ".join(f"[{lua_literal(k)}] = {lua_literal(v)}" for k, v in value.items() if v is not None) + "}"


def health(kind: str, obj: dict[str, Any]) -> tuple[str, str]:
    """Argo CD's (status, message) for ``obj``: the script as a function body over a global ``obj``."""
    script = (SCRIPTS / f"{kind}-health.lua").read_text()
    program = f"obj = {lua_literal(obj)}\nlocal function check()\n{script}\nend\nlocal hs = check()\n"
    program += 'io.write(hs.status, "\\n", hs.message or "")\n'
    lua = shutil.which("lua5.1")
    assert lua, "lua5.1 is missing: run hack/deps"
    res = subprocess.run([lua, "-"], input=program, capture_output=True, text=True, timeout=30, check=False)
    assert res.returncode == 0, res.stderr
    state, _, message = res.stdout.partition("\n")
    return state, message


def get(kube: Kube, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
    return kube.get_json(kind, name, *(["-n", namespace] if namespace else []))


def written(kube: Kube, verb: str, obj: dict[str, Any]) -> dict[str, Any]:
    """The object as the API server answered a create or apply: what Argo CD sees the moment
    after a sync, before the operator has acted on it."""
    out = kube.kubectl(verb, "-f", "-", "-o", "json", input=json.dumps(obj)).stdout
    body: dict[str, Any] = json.loads(out)
    return body


def test_lua_literal_round_trips_through_lua() -> None:
    obj = {"a": [1, {"b": 'quo"te\\ é\n'}], "n": None, "t": True}
    program = f"local o = {lua_literal(obj)}\nio.write(o.a[2].b, #o.a, tostring(o.n), tostring(o.t))"
    res = subprocess.run(
        [shutil.which("lua5.1") or "lua5.1", "-"], input=program.encode(), capture_output=True, check=False
    )
    assert res.stdout == 'quo"te\\ é\n'.encode() + b"2niltrue", res.stderr


def test_agentdeployment_health_in_every_state(operator: OperatorProcess, kube: Kube, namespace: str) -> None:
    ns = namespace
    # Progressing: just created, no status yet (what Argo CD sees right after the sync).
    fresh = written(kube, "create", agent("steady", ns))
    assert "status" not in fresh
    assert health("agentdeployment", fresh) == (
        "Progressing",
        "Waiting for the agentfleet operator to reconcile the agent",
    )
    # Healthy: reconciled, pods ready.
    wait_reconciled(kube, ns, "steady")
    state, message = health("agentdeployment", get(kube, "agd", "steady", ns))
    assert state == "Healthy", message
    # Progressing: a new generation the operator has not observed yet.
    changed = agent("steady", ns)
    changed["spec"]["agent"]["systemPrompt"] = {"inline": "You are terse."}
    applied = written(kube, "apply", changed)
    assert applied["metadata"]["generation"] > applied["status"]["observedGeneration"]
    gen = applied["metadata"]["generation"]
    assert health("agentdeployment", applied) == (
        "Progressing",
        f"Waiting for the agentfleet operator to observe generation {gen}",
    )
    second = wait_reconciled(kube, ns, "steady")["currentRevision"]
    assert health("agentdeployment", get(kube, "agd", "steady", ns))[0] == "Healthy"

    # Suspended.
    kube.apply(agent("paused", ns))
    wait_reconciled(kube, ns, "paused")
    kube.kubectl("patch", "agd", "paused", "-n", ns, "--type=merge", "-p", '{"spec":{"suspended":true}}')
    poll(lambda: phase_is(kube, ns, "paused", "Suspended"), timeout=30, what="phase Suspended")
    state, message = health("agentdeployment", get(kube, "agd", "paused", ns))
    assert state == "Suspended" and message, message

    # Degraded: rolled back to an earlier revision.
    third = agent("steady", ns)
    third["spec"]["agent"]["model"]["name"] = "gpt-4o"
    kube.apply(third)
    poll(lambda: wait_reconciled(kube, ns, "steady")["currentRevision"] != second, timeout=60, what="a new revision")
    kube.kubectl("annotate", "agd", "steady", "-n", ns, "agentfleet.dev/rollback-to=2")
    poll(lambda: phase_is(kube, ns, "steady", "RolledBack"), timeout=60, what="phase RolledBack")
    state, message = health("agentdeployment", get(kube, "agd", "steady", ns))
    assert state == "Degraded" and message, message

    # Degraded: a policy tightened under a running agent.
    name = f"cap-{ns}"[:63]
    kube.apply(agent_policy(name, namespaces=[ns], ceilings={"tokensPerHour": 5000}))
    try:
        poll(lambda: phase_is(kube, ns, "paused", "PolicyViolation"), timeout=60, what="PolicyViolation")
        state, message = health("agentdeployment", get(kube, "agd", "paused", ns))
        assert state == "Degraded" and "tokensPerHour" in message, message
    finally:
        kube.kubectl("delete", "agentpolicy", name, check=False)
    assert status(kube, ns, "paused")["phase"] in {"PolicyViolation", "Suspended"}


def test_agentpolicy_health_in_every_state(operator: OperatorProcess, kube: Kube, namespace: str) -> None:
    ns = namespace
    kube.apply(agent("covered", ns))
    wait_reconciled(kube, ns, "covered")
    name = f"health-{ns}"[:63]
    fresh = written(kube, "create", agent_policy(name, namespaces=[ns], allowedModels=["gpt-4o-mini"]))
    try:
        assert health("agentpolicy", fresh)[0] == "Progressing"

        def counted() -> dict[str, Any] | None:
            body = get(kube, "agentpolicy", name)
            st = body.get("status") or {}
            return body if st.get("observedGeneration") == body["metadata"]["generation"] else None

        body = poll(counted, timeout=30, what="the policy's census")
        assert health("agentpolicy", body) == ("Healthy", "Covers 1 agents, none violating it")

        tightened = agent_policy(name, namespaces=[ns], allowedModels=["gpt-4o"])
        applied = written(kube, "apply", tightened)
        assert health("agentpolicy", applied)[0] == "Progressing"
        body = poll(
            lambda: (b := counted()) is not None and (b["status"].get("violations") or 0) > 0 and b,
            timeout=60,
            what="the violation counted",
        )
        assert health("agentpolicy", body) == ("Degraded", "1 of 1 covered agents violate this policy")

        kube.apply(agent_policy(name, namespaces=[ns], allowedModels=["gpt-4o-mini"], suspendAll=True))
        body = poll(counted, timeout=30, what="the policy's census")
        assert health("agentpolicy", body) == ("Suspended", "Fleet kill switch on: its 1 covered agents are suspended")
    finally:
        kube.kubectl("delete", "agentpolicy", name, check=False)
