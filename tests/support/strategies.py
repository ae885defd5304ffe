"""Hypothesis strategies for valid API objects, shared by every suite.

"Valid" means what the API server accepts: the pydantic constraints plus the CRD's CEL rules
(exactly one prompt source, permitted tools and Secrets only, ScaleTo with a count, ...)
and what the rendered children need (real quantities with requests <= limits, parseable
endpoints, non-empty RBAC API groups).
"""

from __future__ import annotations

import ipaddress
import uuid
from typing import Any, TypeVar

from hypothesis import strategies as st
from pydantic import BaseModel

from agentfleet.api.types import (
    Action,
    AgentDeployment,
    AgentDeploymentSpec,
    AgentSpec,
    Analysis,
    Budgets,
    Comparison,
    ConfigMapKeyRef,
    EgressRule,
    EnvVar,
    GuardrailRule,
    GuardSettings,
    InjectionMode,
    KubernetesRule,
    LatencyBudget,
    Metric,
    ModelSpec,
    ObjectMeta,
    OnMetricsUnavailable,
    Permissions,
    Pricing,
    Provider,
    Resources,
    SecretKeyRef,
    SystemPrompt,
    ToolSpec,
)

RESERVED_ENV = ("OPENAI_BASE_URL", "OPENAI_API_KEY")
M = TypeVar("M", bound=BaseModel)


def model(cls: type[M], **fields: st.SearchStrategy[Any]) -> st.SearchStrategy[M]:
    """Like ``st.builds`` but by field name only: ``builds`` would also infer the camelCase
    aliases from the pydantic signature and pass the field twice."""
    return st.fixed_dictionaries(fields).map(lambda kw: cls(**kw))


dns_labels = st.from_regex(r"\A[a-z]([a-z0-9-]{0,20}[a-z0-9])?\Z")
"""Short DNS labels starting with a letter: valid as any object name."""
agent_names = st.from_regex(r"\A[a-z]([a-z0-9-]{0,50}[a-z0-9])?\Z")
"""What the CRD admits as an agent name: a letter-led DNS label of at most 52 chars."""
object_keys = st.from_regex(r"\A[A-Za-z0-9_-][-._A-Za-z0-9]{0,30}\Z")
"""ConfigMap/Secret keys (never "." or a leading "..")."""
tool_names = st.from_regex(r"\A[a-zA-Z0-9_-]{1,24}\Z")
env_names = st.from_regex(r"\A[A-Za-z_][A-Za-z0-9_]{0,20}\Z").filter(
    lambda n: n not in RESERVED_ENV and not n.startswith("AGENTFLEET_")
)
texts = st.text(max_size=120)
"""Free text: prompts, env values, descriptions (any Unicode the API accepts)."""
money = st.builds(lambda units, cents: f"{units}.{cents:02d}", st.integers(0, 10_000), st.integers(0, 99))
durations = st.one_of(
    st.builds(lambda n, unit: f"{n}{unit}", st.integers(1, 600), st.sampled_from(["ms", "s", "m", "h"])),
    st.builds(lambda h, m: f"{h}h{m}m", st.integers(1, 24), st.integers(1, 59)),
)
images = st.one_of(
    st.sampled_from(["python:3.11-slim", "ghcr.io/acme/support-agent:1.4.2", "busybox"]),
    st.builds(lambda repo, tag: f"registry.example.com/agents/{repo}:{tag}", dns_labels, dns_labels),
)

_hostnames = st.builds(lambda a, b: f"{a}.{b}.example", dns_labels, dns_labels) | st.sampled_from(
    ["api.openai.com", "localhost", "vllm.models.svc.cluster.local"]
)
_ipv4_hosts = st.ip_addresses(v=4).map(str)
_ipv6_hosts = st.ip_addresses(v=6).map(lambda ip: f"[{ip}]")


@st.composite
def endpoints(draw: st.DrawFn) -> str:
    """http(s) URLs to hostnames, IPv4 or IPv6 literals, with or without a port."""
    scheme = draw(st.sampled_from(["http", "https"]))
    host = draw(st.one_of(_hostnames, _ipv4_hosts, _ipv6_hosts))
    port = draw(st.none() | st.integers(1, 65535))
    path = draw(st.sampled_from(["", "/", "/v1", "/openai/deployments/x"]))
    return f"{scheme}://{host}{'' if port is None else f':{port}'}{path}"


@st.composite
def resources(draw: st.DrawFn) -> Resources:
    """cpu and memory with requests <= limits, as the API server requires."""
    cpu = draw(st.integers(10, 4000))
    memory = draw(st.integers(16, 8192))
    requests = {"cpu": f"{cpu}m", "memory": f"{memory}Mi"}
    limits = {
        "cpu": f"{cpu + draw(st.integers(0, 4000))}m",
        "memory": f"{memory + draw(st.integers(0, 4096))}Mi",
    }
    return Resources(
        requests=draw(st.sampled_from([requests, None])),
        limits=draw(st.sampled_from([limits, None])),
    )


@st.composite
def models(draw: st.DrawFn) -> ModelSpec:
    key = draw(st.none() | model(SecretKeyRef, name=dns_labels, key=object_keys))
    return ModelSpec(
        provider=draw(st.sampled_from(Provider)),
        name=draw(st.sampled_from(["gpt-4o-mini", "claude-sonnet", "llama-3-70b"])),
        endpoint=draw(endpoints()),
        api_key_secret_ref=key,
        pricing=Pricing(input_per_million=draw(money), output_per_million=draw(money)),
    )


tools = model(
    ToolSpec,
    name=tool_names,
    description=st.none() | texts,
    endpoint=st.none() | endpoints(),
    max_calls_per_task=st.none() | st.integers(1, 100),
)

system_prompts = st.one_of(
    st.builds(lambda text: SystemPrompt(inline=text), st.text(max_size=400)),
    st.builds(
        lambda name, key: SystemPrompt(config_map_key_ref=ConfigMapKeyRef(name=name, key=key)),
        dns_labels,
        object_keys,
    ),
)

budgets = model(
    Budgets,
    tokens_per_hour=st.none() | st.integers(1, 10**9),
    cost_per_day=st.none() | money,
    max_tool_calls_per_task=st.integers(1, 1000),
    max_iterations_per_task=st.integers(1, 1000),
    max_task_duration=durations,
    latency=model(LatencyBudget, per_call_deadline=durations, p99_target=st.none() | durations),
    max_concurrent_tasks=st.integers(1, 256),
)

kubernetes_rules = model(
    KubernetesRule,
    api_groups=st.lists(st.sampled_from(["", "apps", "batch"]), min_size=1, max_size=3, unique=True),
    resources=st.lists(
        st.sampled_from(["pods", "pods/log", "configmaps", "deployments", "jobs"]),
        min_size=1,
        max_size=3,
        unique=True,
    ),
    verbs=st.lists(st.sampled_from(["get", "list", "watch"]), min_size=1, max_size=3, unique=True),
    resource_names=st.none() | st.lists(dns_labels, min_size=1, max_size=2),
)


def _not_mapped(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return not isinstance(address, ipaddress.IPv6Address) or address.ipv4_mapped is None


@st.composite
def cidrs(draw: st.DrawFn) -> str:
    """Canonical IPv4 or IPv6 networks; not IPv4-mapped IPv6, which the API server rejects."""
    address = draw(st.ip_addresses(v=4) | st.ip_addresses(v=6).filter(_not_mapped))
    prefix = draw(st.integers(8 if address.version == 4 else 16, address.max_prefixlen))
    return str(ipaddress.ip_network(f"{address}/{prefix}", strict=False))


egress_rules = model(
    EgressRule, cidr=cidrs(), ports=st.none() | st.lists(st.integers(1, 65535), min_size=1, max_size=4)
)


@st.composite
def guardrails(draw: st.DrawFn) -> list[GuardrailRule] | None:
    names = draw(st.lists(dns_labels, max_size=4, unique=True))
    rules = []
    for name in names:
        metric = draw(st.sampled_from(Metric))
        action = draw(st.sampled_from(Action))
        rules.append(
            GuardrailRule(
                name=name,
                metric=metric,
                query='sum(rate(agentfleet_errors_total{agent="{{agent}}"}[5m]))' if metric == Metric.CUSTOM else None,
                comparison=draw(st.sampled_from(Comparison)),
                threshold=draw(st.sampled_from(["0", "0.05", "1", "250.5"])),
                for_=draw(durations),
                action=action,
                scale_to=draw(st.integers(0, 10)) if action == Action.SCALE_TO else None,
                cooldown=draw(durations),
            )
        )
    return rules or None


@st.composite
def agent_specs(draw: st.DrawFn) -> AgentDeploymentSpec:
    """A spec that satisfies every CEL rule of the CRD."""
    declared = draw(st.lists(tools, max_size=5, unique_by=lambda t: t.name))
    names = [t.name for t in declared]
    allowed = draw(st.none() | st.lists(st.sampled_from(names), unique=True)) if names else None
    secrets = draw(st.none() | st.lists(dns_labels, min_size=1, max_size=3, unique=True))
    env_values: list[EnvVar] = []
    for name in draw(st.lists(env_names, max_size=5, unique=True)):
        if secrets and draw(st.booleans()):
            ref = SecretKeyRef(name=draw(st.sampled_from(secrets)), key=draw(object_keys))
            env_values.append(EnvVar(name=name, secret_key_ref=ref))
        else:
            env_values.append(EnvVar(name=name, value=draw(texts)))
    agent = AgentSpec(
        image=draw(images),
        command=draw(st.none() | st.lists(texts, max_size=3)),
        args=draw(st.none() | st.lists(texts, max_size=4)),
        env=env_values or None,
        resources=draw(st.none() | resources()),
        model=draw(models()),
        system_prompt=draw(st.none() | system_prompts),
        tools=declared or None,
    )
    permissions = Permissions(
        tools=allowed,
        egress=draw(st.none() | st.lists(egress_rules, max_size=3)),
        kubernetes=draw(st.none() | st.lists(kubernetes_rules, min_size=1, max_size=3)),
        secrets=secrets,
        sub_agents=draw(st.none() | st.lists(dns_labels, min_size=1, max_size=3, unique=True)),
    )
    return AgentDeploymentSpec(
        replicas=draw(st.integers(0, 5)),
        suspended=draw(st.booleans()),
        agent=agent,
        budgets=draw(budgets),
        permissions=permissions,
        guard=draw(
            model(
                GuardSettings,
                loop_threshold=st.integers(2, 10),
                injection=st.sampled_from(InjectionMode),
                capture_content=st.booleans(),
            )
        ),
        guardrails=draw(guardrails()),
        analysis=draw(
            model(
                Analysis,
                interval=durations,
                stabilization_window=durations,
                on_metrics_unavailable=st.sampled_from(OnMetricsUnavailable),
            )
        ),
        revision_history_limit=draw(st.integers(0, 20)),
    )


@st.composite
def agent_deployments(draw: st.DrawFn, namespace: str | None = None) -> AgentDeployment:
    """A stored AgentDeployment: name, namespace and uid set, as the reconciler sees it."""
    meta = ObjectMeta(
        name=draw(agent_names),
        namespace=namespace or draw(dns_labels),
        uid=str(uuid.UUID(int=draw(st.integers(0, 2**128 - 1)))),
        generation=draw(st.integers(1, 100)),
    )
    return AgentDeployment(metadata=meta, spec=draw(agent_specs()))


def manifest(agent: AgentDeployment) -> dict[str, Any]:
    """The object as a user would ``kubectl apply`` it (no uid, no status)."""
    meta = {"name": agent.metadata.name, "namespace": agent.metadata.namespace}
    return {"apiVersion": agent.api_version, "kind": agent.kind, "metadata": meta, "spec": agent.spec.wire()}
