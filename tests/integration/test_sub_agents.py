"""Calls between agents, wired by the operator on a real API server: it reads the cluster's
service-account issuer and keys, renders them into the callee's guard config, projects a token
for the callee's audience into the caller's guard, and a token the API server mints for that
audience passes the callee guard's verification (and others do not)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import yaml

from agentfleet.api.guardconfig import GuardConfig, peer_audience
from agentfleet.guard.peer_auth import PeerAuthError, Verifier
from hack.harness.agents import agent, wait_reconciled
from hack.harness.kube import Kube
from hack.harness.processes import OperatorProcess

pytestmark = pytest.mark.integration


def guard_config(kube: Kube, namespace: str, name: str) -> tuple[GuardConfig, dict[str, Any]]:
    rev = wait_reconciled(kube, namespace, name)["currentRevision"]
    data = kube.get_json("configmap", f"{name}-guard-{rev}", "-n", namespace)["data"]["guard.yaml"]
    pod_spec = kube.get_json("deployment", name, "-n", namespace)["spec"]["template"]["spec"]
    return GuardConfig.model_validate(yaml.safe_load(data)), pod_spec


def token(kube: Kube, namespace: str, service_account: str, audience: str) -> str:
    out = kube.kubectl("create", "token", service_account, "-n", namespace, "--audience", audience, "--duration", "10m")
    return str(out.stdout).strip()


def test_the_operator_wires_calls_between_agents_with_the_clusters_keys(
    operator: OperatorProcess, kube: Kube, namespace: str
) -> None:
    caller = agent("caller", namespace, permissions={"tools": ["search"], "subAgents": ["callee"]})
    kube.apply([caller, agent("callee", namespace)])
    caller_cfg, caller_pod = guard_config(kube, namespace, "caller")
    callee_cfg, _ = guard_config(kube, namespace, "callee")

    discovery = json.loads(kube.kubectl("get", "--raw", "/.well-known/openid-configuration").stdout)
    assert callee_cfg.peer is not None and caller_cfg.peer is not None
    assert callee_cfg.peer.auth.issuer == discovery["issuer"]
    assert callee_cfg.peer.auth.audience == peer_audience(namespace, "callee")
    assert json.loads(callee_cfg.peer.auth.jwks)["keys"], "the cluster's keys"
    assert [(c.name, c.url) for c in caller_cfg.sub_agents.callees] == [
        ("callee", f"http://callee-metrics.{namespace}.svc:9443")
    ]
    assert callee_cfg.sub_agents.callees == []
    (tokens,) = [v for v in caller_pod["volumes"] if v["name"] == "peer-tokens"]
    assert tokens["projected"]["sources"][0]["serviceAccountToken"]["audience"] == peer_audience(namespace, "callee")
    guard, agent_c = caller_pod["initContainers"][0], caller_pod["containers"][0]
    assert any(m["name"] == "peer-tokens" for m in guard["volumeMounts"])
    assert not any(m["name"] == "peer-tokens" for m in agent_c.get("volumeMounts", []))

    # What the kubelet would mount (the API server mints it the same way) gets through...
    verifier = Verifier(callee_cfg.peer.auth, namespace)
    good = token(kube, namespace, "caller-agent", peer_audience(namespace, "callee"))
    assert verifier.verify(f"Bearer {good}", time.time()).agent == "caller"
    # ...and neither the caller's token for another agent nor a non-agent's token does.
    for service_account, audience, reason in (
        ("caller-agent", peer_audience(namespace, "caller"), "wrong_audience"),
        ("caller-agent", "https://kubernetes.default.svc.cluster.local", "wrong_audience"),
        ("default", peer_audience(namespace, "callee"), "not_an_agent"),
    ):
        with pytest.raises(PeerAuthError) as info:
            verifier.verify(f"Bearer {token(kube, namespace, service_account, audience)}", time.time())
        assert info.value.reason == reason, (service_account, audience)
