"""``render``: an AgentDeployment in, every desired child out. Pure: no I/O, no clock, and the
same input always gives the same output, so the reconciler can apply it idempotently."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from agentfleet.api.guardconfig import PolicyQuota
from agentfleet.api.ledger import PlatformLedger
from agentfleet.api.types import AgentDeployment, LedgerPolicy, Pricing, TelemetryPolicy
from agentfleet.render import guard, network, rbac, workload
from agentfleet.render.base import Rendered, RenderError, RenderSettings
from agentfleet.render.children import Owner, child_names
from agentfleet.render.revision import pod_relevant_spec, revision_hash, short_hash

DEFAULT_SETTINGS = RenderSettings()


def render(
    agent: AgentDeployment,
    settings: RenderSettings = DEFAULT_SETTINGS,
    pricing: Pricing | None = None,
    replicas: int | None = None,
    hostname_cidrs: Mapping[str, tuple[str, ...]] | None = None,
    excluded_cidrs: tuple[str, ...] = (),
    ledger: PlatformLedger | None = None,
    ledger_policy: LedgerPolicy | None = None,
    quotas: Sequence[PolicyQuota] = (),
    telemetry: TelemetryPolicy | None = None,
) -> Rendered:
    """``pricing`` (from an AgentPolicy's table) wins over the agent's declared price;
    ``replicas`` overrides the Deployment's count (0 when suspended by policy, or the current
    scale); by default it is ``spec.replicas``, or 0 when ``spec.suspended``.
    ``hostname_cidrs`` and ``excluded_cidrs`` (from the policies) shape the NetworkPolicy's egress.
    ``ledger`` (the platform's shared budget ledger) goes into the guard config with
    ``ledger_policy`` and the covering policies' ``quotas``; its password is mounted into the
    guard alone and the pod may reach it."""
    owner = Owner.of(agent)
    names = child_names(owner.name)
    spec = agent.spec
    revision = revision_hash(spec)
    if replicas is None:
        replicas = 0 if spec.suspended else spec.replicas
    if replicas < 0:
        raise RenderError(f"replicas must not be negative, got {replicas}")

    effective = pricing if pricing is not None else spec.agent.model.pricing
    config = guard.guard_config(
        owner, spec, revision, settings, effective, ledger, ledger_policy, quotas, telemetry=telemetry
    )
    config_map = guard.config_map(owner, names, revision, config)
    config_hash = short_hash(config_map["data"][guard.CONFIG_KEY])
    template = workload.pod_template(
        owner, names, spec, revision=revision, settings=settings, config_hash=config_hash, ledger=ledger
    )
    objects = [rbac.service_account(owner, names, mount_token=bool(spec.permissions.kubernetes))]
    if spec.permissions.kubernetes:
        objects += [
            rbac.role(owner, names, spec.permissions.kubernetes),
            rbac.role_binding(owner, names),
        ]
    objects += [
        config_map,
        workload.service(owner, names, settings),
        network.network_policy(owner, names, spec, settings, hostname_cidrs, excluded_cidrs, ledger),
        workload.deployment(owner, names, revision, replicas, copy.deepcopy(template)),
    ]
    return Rendered(revision=revision, objects=objects, pod_template=template, guard_config=config)


def render_controller_revision(agent: AgentDeployment, rendered: Rendered, number: int) -> dict[str, Any]:
    """A snapshot that lets a rollback re-create revision ``rendered.revision`` exactly: the
    pod-relevant spec to restore, plus the template and guard config it produced.

    ControllerRevision ``data`` is immutable: create it once per revision, never re-apply.
    """
    owner = Owner.of(agent)
    if rendered.revision != revision_hash(agent.spec):
        raise RenderError(f"rendered revision {rendered.revision} does not belong to this agent's spec")
    if number < 0:
        raise RenderError(f"revision number must not be negative, got {number}")
    return {
        "apiVersion": "apps/v1",
        "kind": "ControllerRevision",
        "metadata": owner.metadata(child_names(owner.name).controller_revision(rendered.revision), rendered.revision),
        "revision": number,
        "data": {
            "spec": pod_relevant_spec(agent.spec),
            "template": copy.deepcopy(rendered.pod_template),
            "configMap": {guard.CONFIG_KEY: guard.guard_yaml(rendered.guard_config)},
        },
    }
