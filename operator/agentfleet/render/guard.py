"""The guard's configuration file and the ConfigMap that carries it into the pod."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import yaml

from agentfleet.api.guardconfig import (
    AuditSink,
    GuardConfig,
    PeerAuth,
    PeerListener,
    PolicyQuota,
    SubAgentRoute,
    SubAgents,
    peer_audience,
)
from agentfleet.api.ledger import PlatformLedger
from agentfleet.api.types import AgentDeploymentSpec, LedgerPolicy, Pricing, TelemetryPolicy
from agentfleet.render import mcp
from agentfleet.render.base import RenderSettings
from agentfleet.render.children import ChildNames, Owner, child_names

CONFIG_DIR = "/etc/agentfleet"
CONFIG_KEY = "guard.yaml"
CONFIG_PATH = f"{CONFIG_DIR}/{CONFIG_KEY}"
UPSTREAM_KEY_DIR = "/var/run/agentfleet/upstream"
AUDIT_DIR = "/var/log/agentfleet"
AUDIT_FILE = f"{AUDIT_DIR}/audit.jsonl"
PEER_TOKEN_DIR = "/var/run/agentfleet/peers"
"""Projected ServiceAccount tokens, one per callee (``<callee>/token``), in the guard only."""


def sub_agents(owner: Owner, spec: AgentDeploymentSpec, settings: RenderSettings) -> SubAgents:
    """The callees of ``permissions.subAgents`` (AgentDeployments of the same namespace), each at its
    guard's peer port behind its Service, with the token whose audience names it."""
    return SubAgents(
        callees=[
            SubAgentRoute(
                name=callee,
                url=f"http://{child_names(callee).service}.{owner.namespace}.svc:{settings.peer_port}",
                token_file=f"{PEER_TOKEN_DIR}/{callee}/token",
            )
            for callee in (spec.permissions.sub_agents or [])
            if settings.peers_enabled
        ],
        max_depth=spec.budgets.max_sub_agent_depth,
        max_calls_per_task=spec.budgets.max_sub_agent_calls_per_task,
    )


def peer_listener(owner: Owner, settings: RenderSettings) -> PeerListener | None:
    """The peer listener, when the operator knows the cluster's signing keys (else no agent
    can be called, and none is exposed)."""
    if not (settings.peer_issuer and settings.peer_jwks):
        return None
    return PeerListener(
        host="0.0.0.0",
        port=settings.peer_port,
        agent_url=f"http://127.0.0.1:{settings.agent_serve_port}",
        auth=PeerAuth(
            issuer=settings.peer_issuer,
            jwks=settings.peer_jwks,
            audience=peer_audience(owner.namespace, owner.name),
        ),
    )


def guard_config(
    owner: Owner,
    spec: AgentDeploymentSpec,
    revision: str,
    settings: RenderSettings,
    pricing: Pricing,
    ledger: PlatformLedger | None = None,
    ledger_policy: LedgerPolicy | None = None,
    quotas: Sequence[PolicyQuota] = (),
    telemetry: TelemetryPolicy | None = None,
) -> GuardConfig:
    """``pricing`` is the effective price (policy table or the agent's own); it replaces the
    model's declared price so the guard sees one number. ``ledger`` (the platform's) with
    ``ledger_policy`` (the covering policies' strictest; FailClosed when None) becomes the guard's
    shared ledger; ``quotas`` are the covering policies' spend quotas (the guard refuses to
    pretend it enforces them without a ledger, and says so in its log)."""
    model = spec.agent.model
    key_ref = model.api_key_secret_ref
    return GuardConfig(
        namespace=owner.namespace,
        agent=owner.name,
        revision=revision,
        model=model.model_copy(update={"pricing": pricing}),
        pricing=pricing,
        api_key_file=f"{UPSTREAM_KEY_DIR}/{key_ref.key}" if key_ref else None,
        tools=list(spec.agent.tools or []),
        mcp_credential_files=mcp.credential_files(spec),
        allowed_tools=list(spec.permissions.tools) if spec.permissions.tools is not None else None,
        budgets=spec.budgets,
        guard=spec.guard,
        listen_host="127.0.0.1",  # the LLM API and tools: for the agent in this pod only
        listen_port=settings.guard_port,
        metrics_host="0.0.0.0",  # metrics, probes and the audit head: for Prometheus and the kubelet
        metrics_port=settings.metrics_port,
        audit=AuditSink(stdout=True, file=AUDIT_FILE),
        quotas=list(quotas),
        ledger=ledger.guard_config(ledger_policy or LedgerPolicy()) if ledger is not None else None,
        sub_agents=sub_agents(owner, spec, settings),
        peer=peer_listener(owner, settings),
        telemetry=telemetry,
    )


def guard_yaml(config: GuardConfig) -> str:
    """Deterministic YAML (sorted keys); non-ASCII is escaped so odd prompts round-trip."""
    return yaml.safe_dump(config.wire(), sort_keys=True, allow_unicode=False, default_flow_style=False)


def config_map(owner: Owner, names: ChildNames, revision: str, config: GuardConfig) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": owner.metadata(names.config_map(revision), revision=revision),
        "data": {CONFIG_KEY: guard_yaml(config)},
    }
