"""The Deployment (agent + guard sidecar in a hardened pod) and the guard's metrics Service."""

from __future__ import annotations

import math
from typing import Any

from agentfleet.api.ledger import LEDGER_PASSWORD_DIR, LEDGER_VOLUME, PlatformLedger
from agentfleet.api.names import AGENT_CONTAINER, CONFIG_HASH_ANNOTATION, GUARD_CONTAINER, REVISION_ANNOTATION
from agentfleet.api.names import METRICS as METRICS_LABEL
from agentfleet.api.types import AgentDeploymentSpec, EnvVar
from agentfleet.render import mcp, peers
from agentfleet.render.base import RenderError, RenderSettings, duration_seconds
from agentfleet.render.children import ChildNames, Owner, labels, selector
from agentfleet.render.guard import AUDIT_DIR, CONFIG_DIR, CONFIG_PATH, UPSTREAM_KEY_DIR

NONROOT_ID = 65532
METRICS_PORT_NAME = "metrics"
API_KEY_PLACEHOLDER = "agentfleet-placeholder-the-guard-holds-the-key"
RESERVED_ENV = frozenset({"OPENAI_BASE_URL", "OPENAI_API_KEY", "ANTHROPIC_BASE_URL", "ANTHROPIC_API_KEY"})
RESERVED_ENV_PREFIX = "AGENTFLEET_"
GUARD_RESOURCES = {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"cpu": "1", "memory": "256Mi"}}
GRACE_SECONDS = (30, 300)
"""Bounds of terminationGracePeriodSeconds, which follows maxTaskDuration so a task in flight
can finish on a rollout; the guard, a sidecar, outlives the agent during shutdown."""


def container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
    }


def pod_security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": NONROOT_ID,
        "runAsGroup": NONROOT_ID,
        "fsGroup": NONROOT_ID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _http_probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": METRICS_PORT_NAME},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def _user_env(spec: AgentDeploymentSpec) -> list[dict[str, Any]]:
    """Declared env minus the names the operator owns; Secret refs only to allowed Secrets."""
    allowed = set(spec.permissions.secrets or [])
    result: list[dict[str, Any]] = []
    for var in spec.agent.env or []:
        if var.name in RESERVED_ENV or var.name.startswith(RESERVED_ENV_PREFIX):
            continue
        result.append(_env_var(var, allowed))
    return result


def _env_var(var: EnvVar, allowed_secrets: set[str]) -> dict[str, Any]:
    ref = var.secret_key_ref
    if ref is None:
        return {"name": var.name, "value": var.value or ""}
    if ref.name not in allowed_secrets:
        raise RenderError(f"agent.env[{var.name}] references Secret {ref.name!r}, not in permissions.secrets")
    return {"name": var.name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}


def agent_env(owner: Owner, spec: AgentDeploymentSpec, revision: str, port: int) -> list[dict[str, Any]]:
    """The agent talks to its guard on loopback; the key it gets is a useless placeholder."""
    guard = f"http://127.0.0.1:{port}"
    env: list[dict[str, Any]] = [
        {"name": "OPENAI_BASE_URL", "value": f"{guard}/v1"},
        {"name": "OPENAI_API_KEY", "value": API_KEY_PLACEHOLDER},
        {"name": "ANTHROPIC_BASE_URL", "value": guard},  # the Anthropic SDKs add /v1 themselves
        {"name": "ANTHROPIC_API_KEY", "value": API_KEY_PLACEHOLDER},
        {"name": "AGENTFLEET_AGENT", "value": owner.name},
        {"name": "AGENTFLEET_NAMESPACE", "value": owner.namespace},
        {"name": "AGENTFLEET_REVISION", "value": revision},
        {"name": "AGENTFLEET_MODEL", "value": spec.agent.model.name},
        {"name": "AGENTFLEET_TOOLS_URL", "value": f"{guard}/tools"},
    ]
    prompt = spec.agent.system_prompt
    if prompt and prompt.config_map_key_ref:
        ref = prompt.config_map_key_ref
        source = {"configMapKeyRef": {"name": ref.name, "key": ref.key}}
        env.append({"name": "AGENTFLEET_SYSTEM_PROMPT", "valueFrom": source})
    elif prompt and prompt.inline is not None:
        env.append({"name": "AGENTFLEET_SYSTEM_PROMPT", "value": prompt.inline})
    user = _user_env(spec)
    if not any(var["name"] == "HOME" for var in user):
        env.append({"name": "HOME", "value": "/tmp"})  # the root filesystem is read-only
    return env + user


def agent_container(owner: Owner, spec: AgentDeploymentSpec, revision: str, port: int) -> dict[str, Any]:
    agent = spec.agent
    container: dict[str, Any] = {"name": AGENT_CONTAINER, "image": agent.image}
    if agent.command is not None:
        container["command"] = list(agent.command)
    if agent.args is not None:
        container["args"] = list(agent.args)
    container["env"] = agent_env(owner, spec, revision, port)
    if agent.resources is not None:
        container["resources"] = agent.resources.wire()
    container["securityContext"] = container_security()
    container["terminationMessagePolicy"] = "FallbackToLogsOnError"
    container["volumeMounts"] = [{"name": "agent-tmp", "mountPath": "/tmp"}]
    return container


def guard_container(
    spec: AgentDeploymentSpec, settings: RenderSettings, ledger: PlatformLedger | None = None
) -> dict[str, Any]:
    """A native sidecar: it starts, and passes its startup probe, before the agent starts.
    It alone mounts the upstream key and the shared ledger's password."""
    mounts = [
        {"name": "guard-config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "guard-tmp", "mountPath": "/tmp"},
        {"name": "audit-log", "mountPath": AUDIT_DIR},
    ]
    if spec.agent.model.api_key_secret_ref:
        mounts.insert(1, {"name": "upstream-key", "mountPath": UPSTREAM_KEY_DIR, "readOnly": True})
    if ledger is not None and ledger.password_secret:
        mounts.append({"name": LEDGER_VOLUME, "mountPath": LEDGER_PASSWORD_DIR, "readOnly": True})
    return {
        "name": GUARD_CONTAINER,
        "image": settings.guard_image,
        "args": ["guard", "--config", CONFIG_PATH],
        "restartPolicy": "Always",
        # Only the metrics listener is a container port: the LLM API listens on loopback.
        "ports": [{"name": METRICS_PORT_NAME, "containerPort": settings.metrics_port, "protocol": "TCP"}],
        "startupProbe": _http_probe("/healthz", period=1, failures=60),
        "readinessProbe": _http_probe("/readyz", period=5, failures=2),
        "livenessProbe": _http_probe("/healthz", period=10, failures=3),
        "resources": {kind: dict(values) for kind, values in GUARD_RESOURCES.items()},
        "securityContext": container_security(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": mounts,
    }


def volumes(
    names: ChildNames, spec: AgentDeploymentSpec, revision: str, ledger: PlatformLedger | None = None
) -> list[dict[str, Any]]:
    """Only the API key's item is projected, group-readable (fsGroup), into the guard alone.

    The ledger's password Secret is not checked against the policies' ``allowedSecrets``: those
    bound what a *tenant* may reference, and this one is the platform's choice (the operator's
    ``--platform`` file), the same in every namespace, mounted into the guard only. Tenants are
    refused for naming it themselves (``policy.platform.ledger_secret_violations``)."""
    result: list[dict[str, Any]] = [
        {"name": "guard-config", "configMap": {"name": names.config_map(revision), "defaultMode": 0o444}}
    ]
    ref = spec.agent.model.api_key_secret_ref
    if ref:
        secret = {"secretName": ref.name, "items": [{"key": ref.key, "path": ref.key}], "defaultMode": 0o440}
        result.append({"name": "upstream-key", "secret": secret})
    if ledger is not None and ledger.password_secret:
        key = ledger.password_key
        secret = {"secretName": ledger.password_secret, "items": [{"key": key, "path": key}], "defaultMode": 0o440}
        result.append({"name": LEDGER_VOLUME, "secret": secret})
    result += [
        {"name": "agent-tmp", "emptyDir": {"sizeLimit": "1Gi"}},
        {"name": "guard-tmp", "emptyDir": {"sizeLimit": "64Mi"}},
        {"name": "audit-log", "emptyDir": {"sizeLimit": "256Mi"}},
    ]
    return result


def grace_seconds(spec: AgentDeploymentSpec) -> int:
    low, high = GRACE_SECONDS
    return min(high, max(low, math.ceil(duration_seconds(spec.budgets.max_task_duration))))


def pod_template(
    owner: Owner,
    names: ChildNames,
    spec: AgentDeploymentSpec,
    *,
    revision: str,
    settings: RenderSettings,
    config_hash: str,
    ledger: PlatformLedger | None = None,
) -> dict[str, Any]:
    """``config_hash`` rolls the pods when the guard config changes without a new revision
    (a policy price change), since the guard reads its config once, at start."""
    mount_token = bool(spec.permissions.kubernetes)
    template: dict[str, Any] = {
        "metadata": {
            "labels": labels(owner.name, revision),
            "annotations": {
                REVISION_ANNOTATION: revision,
                CONFIG_HASH_ANNOTATION: config_hash,
                "kubectl.kubernetes.io/default-container": "agent",
            },
        },
        "spec": {
            "serviceAccountName": names.service_account,
            "automountServiceAccountToken": mount_token,
            "enableServiceLinks": False,
            "securityContext": pod_security(),
            "terminationGracePeriodSeconds": grace_seconds(spec),
            "initContainers": [guard_container(spec, settings, ledger)],
            "containers": [agent_container(owner, spec, revision, settings.guard_port)],
            "volumes": volumes(names, spec, revision, ledger),
        },
    }
    peers.add_to_pod(template["spec"], owner, spec, settings)  # calls between agents
    mcp.add_to_pod(template["spec"], spec, settings)  # MCP servers through the guard
    return template


def deployment(
    owner: Owner, names: ChildNames, revision: str, replicas: int, template: dict[str, Any]
) -> dict[str, Any]:
    """History lives in ControllerRevisions, so no old ReplicaSets are kept; rollouts surge
    rather than take capacity away from tasks in flight."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": owner.metadata(names.deployment, revision=revision, annotations={REVISION_ANNOTATION: revision}),
        "spec": {
            "replicas": replicas,
            "revisionHistoryLimit": 0,
            "selector": {"matchLabels": selector(owner.name)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}},
            "template": template,
        },
    }


def service(owner: Owner, names: ChildNames, settings: RenderSettings) -> dict[str, Any]:
    """Found by Prometheus through the ``agentfleet.dev/metrics`` label or the usual
    ``prometheus.io/*`` annotations."""
    port = settings.metrics_port
    annotations = {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(port),
        "prometheus.io/path": "/metrics",
    }
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": owner.metadata(names.service, extra_labels={METRICS_LABEL: "true"}, annotations=annotations),
        "spec": {
            "type": "ClusterIP",
            "selector": selector(owner.name),
            "ports": [
                {"name": "metrics", "port": port, "targetPort": METRICS_PORT_NAME, "protocol": "TCP"},
                *peers.service_ports(settings),
            ],
        },
    }
