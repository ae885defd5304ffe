"""AgentDeployment manifests, and waits on what the operator writes into their status.

One manifest for the integration tests and the benchmarks, so that a benchmark measures the
agent the tests check.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from hack.harness.kube import Kube, poll

BIG_BUDGETS: dict[str, Any] = {"tokensPerHour": 100_000_000, "costPerDay": "1000"}
"""Budgets that healthy simulated traffic never exhausts."""


def agent(
    name: str, namespace: str, *, endpoint: str | None = None, prompt: str | None = None, **spec: Any
) -> dict[str, Any]:
    """Two replicas of a small agent with a modest budget; ``spec`` replaces top-level spec
    fields, ``endpoint`` the model's endpoint (the fake LLM's URL, say) and ``prompt`` the inline
    system prompt (where the data plane reads a ``[[sim:...]]`` behaviour from)."""
    body: dict[str, Any] = {
        "apiVersion": "agentfleet.dev/v1alpha1",
        "kind": "AgentDeployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": 2,
            "agent": {
                "image": "registry.invalid/agent:1",
                "model": {
                    "name": "gpt-4o-mini",
                    "endpoint": "http://10.1.2.3:8000/v1",
                    "apiKeySecretRef": {"name": "llm-key"},
                    "pricing": {"inputPerMillion": "0.15", "outputPerMillion": "0.60"},
                },
                "systemPrompt": {"inline": "You are helpful."},
                "tools": [{"name": "search", "maxCallsPerTask": 3}],
            },
            "budgets": {"tokensPerHour": 10000, "costPerDay": "1.50"},
            "permissions": {"tools": ["search"]},
        },
    }
    body["spec"].update(spec)
    if endpoint is not None:
        body["spec"]["agent"]["model"]["endpoint"] = endpoint
    if prompt is not None:
        body["spec"]["agent"]["systemPrompt"] = {"inline": prompt}
    return body


def agent_policy(name: str, **spec: Any) -> dict[str, Any]:
    """An AgentPolicy (cluster-scoped) with ``spec``."""
    return {"apiVersion": "agentfleet.dev/v1alpha1", "kind": "AgentPolicy", "metadata": {"name": name}, "spec": spec}


def objects_of(kube: Kube, kind: str, namespace: str, name: str) -> list[dict[str, Any]]:
    """The objects of ``kind`` labelled as the agent's (pods, controllerrevisions, ...)."""
    items: list[dict[str, Any]] = kube.get_json(kind, "-n", namespace, "-l", f"agentfleet.dev/agent={name}")["items"]
    return items


def status(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    return dict(kube.get_json("agd", name, "-n", namespace).get("status") or {})


def condition(st: dict[str, Any], type_: str) -> dict[str, Any]:
    """The condition of that type in a status, or {}."""
    return next((c for c in st.get("conditions") or [] if c["type"] == type_), {})


def phase_is(kube: Kube, namespace: str, name: str, phase: str) -> dict[str, Any] | None:
    """The agent's status if it is in ``phase``, else None (a poll check)."""
    st = status(kube, namespace, name)
    return st if st.get("phase") == phase else None


def wait_reconciled(
    kube: Kube, namespace: str, name: str, timeout: float = 60, check: Callable[[], None] | None = None
) -> dict[str, Any]:
    """Status describes the current generation and the Deployment is ready; ``check`` runs on
    every poll, to fail fast on something the caller watches (an operator's log, say)."""

    def done() -> dict[str, Any] | None:
        if check is not None:
            check()
        obj = kube.get_json("agd", name, "-n", namespace)
        st = obj.get("status") or {}
        if st.get("observedGeneration") != obj["metadata"]["generation"] or not st.get("currentRevision"):
            return None
        dep = kube.kubectl("get", "deployment", name, "-n", namespace, "-o", "json", check=False)
        if dep.returncode != 0:
            return None
        d = json.loads(dep.stdout)
        want = d["spec"]["replicas"]
        ready = d.get("status", {}).get("readyReplicas", 0) or 0
        updated = d.get("status", {}).get("updatedReplicas", 0) or 0
        if ready != want or (want and updated != want) or st.get("readyReplicas", 0) != ready:
            return None
        return dict(st)

    result: dict[str, Any] = poll(done, timeout=timeout, what=f"agd {namespace}/{name} to be reconciled")
    return result
