"""What holds where no AgentPolicy covers a namespace, and what holds whatever policies say.

Deny by default: an agent in a namespace no AgentPolicy covers is judged against the platform's
default policy (the chart's ``defaultPolicy``; built in: no Kubernetes permissions, no Secrets,
no ConfigMaps, no extra egress, public model and tool endpoints only), never against nothing.

Whatever the policies say, the operator itself checks:

- every delegated Kubernetes rule against what the operator may delegate (the chart's
  ``agentPermissionsCeiling``), never relying only on the API server's escalation check;
- every model and tool endpoint: loopback, link-local (cloud metadata), unspecified, multicast
  and the cluster's pod and service ranges are refused unless a covering policy's
  ``allowedEndpoints`` names them with a CIDR rule; a policy that sets ``allowedEndpoints``
  admits only what its rules match.

It also works out what the NetworkPolicy may open (``network_allowances``): hostname endpoints
go to the CIDR their rule names, or to the public internet on their port only, with the
forbidden ranges cut out of every egress block.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from agentfleet.api import addresses
from agentfleet.api.addresses import network
from agentfleet.api.ledger import PlatformLedger
from agentfleet.api.types import (
    AgentDeployment,
    AgentPolicy,
    AgentPolicySpec,
    EndpointRule,
    KubernetesRule,
    ObjectMeta,
)
from agentfleet.policy.rules import Violation, check, covering, describe_rule, rule_covered, secrets_of

FORBIDDEN_RANGES: tuple[str, ...] = (
    "0.0.0.0/8",  # "this network", 0.0.0.0
    "127.0.0.0/8",  # loopback: the node itself, the guard's own port
    "169.254.0.0/16",  # link-local: cloud metadata (169.254.169.254) and friends
    "100.100.100.200/32",  # Alibaba Cloud metadata
    "192.0.0.192/32",  # Oracle Cloud metadata
    "224.0.0.0/4",  # multicast
    "240.0.0.0/4",  # reserved, broadcast
    "::/128",
    "::1/128",
    "fe80::/10",
    "fd00:ec2::254/128",  # AWS metadata over IPv6
    "ff00::/8",
)
"""Addresses no agent reaches unless a policy names them explicitly."""

FORBIDDEN_HOSTS: tuple[str, ...] = ("localhost", "metadata", "metadata.google.internal", "instance-data")
"""Hostnames that mean the node or a metadata service; also every "*.localhost" name."""

PLATFORM = "platform"
"""The name violations of the platform's own rules carry (not an AgentPolicy)."""

DEFAULT_POLICY_NAME = "default"
"""The name the default policy's violations carry: "AgentPolicy default (no AgentPolicy covers ...)"."""

BUILTIN_DEFAULT = AgentPolicySpec(allowed_egress=[], allowed_secrets=[], allowed_config_maps=[])
"""No Kubernetes permissions (allowedKubernetesRules unset), no Secrets, no ConfigMaps, no extra
egress, public endpoints only."""

DEFAULTED_FIELDS = ("allowed_secrets", "allowed_config_maps", "allowed_egress", "allowed_endpoints")
"""Where no covering policy sets one of these, the default policy's value holds: a policy written
for another purpose (a kill switch, budget ceilings) never opens what the platform denies by
default. (allowedKubernetesRules needs no such rule: unset, a policy already allows nothing.)"""

_NEUTRAL_RULES = [KubernetesRule(api_groups=["*"], resources=["*"], verbs=["*"])]


@dataclass(frozen=True)
class Platform:
    """The platform's own rules, from the operator's ``--platform`` file (the chart writes it)."""

    default_policy: AgentPolicySpec = BUILTIN_DEFAULT
    delegation_ceiling: tuple[KubernetesRule, ...] | None = None
    """What the operator may delegate (None: not configured, nothing beyond the policies)."""
    cluster_cidrs: tuple[str, ...] = ()
    """The cluster's pod and service ranges."""
    ledger: PlatformLedger | None = None
    """The shared budget ledger every guard uses (None: each guard counts alone, in memory)."""

    def residual(self, fields: tuple[str, ...]) -> AgentPolicy:
        """The default policy reduced to ``fields`` (judging nothing else), built once per set."""
        cached = self._residuals.get(fields)
        if cached is None:
            spec = AgentPolicySpec.model_validate(
                {
                    **AgentPolicySpec(**{f: getattr(self.default_policy, f) for f in fields}).wire(),
                    "allowedKubernetesRules": [r.wire() for r in _NEUTRAL_RULES],
                }
            )
            name = f"{DEFAULT_POLICY_NAME} (for what no covering AgentPolicy sets)"
            cached = self._residuals[fields] = AgentPolicy(metadata=ObjectMeta(name=name), spec=spec)
        return cached

    @functools.cached_property
    def _residuals(self) -> dict[tuple[str, ...], AgentPolicy]:
        return {}

    @functools.cached_property
    def forbidden(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """Parsed once per platform: every reconcile reads them."""
        return tuple(network(c) for c in (*FORBIDDEN_RANGES, *self.cluster_cidrs))


@dataclass(frozen=True)
class NetworkAllowances:
    """What the NetworkPolicy may open for one agent (computed here, rendered by ``render``)."""

    hostname_cidrs: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """Where a hostname endpoint lives, when a policy rule says so."""
    excluded: tuple[str, ...] = ()
    """Ranges cut out of every egress block (forbidden and not explicitly allowed)."""


@dataclass(frozen=True)
class Endpoint:
    """A model or tool endpoint of the agent, where it stands in the spec."""

    where: str
    target: addresses.Endpoint

    @property
    def host(self) -> str:
        return self.target.host

    @property
    def port(self) -> int:
        return self.target.port


def endpoints_of(agent: AgentDeployment) -> list[Endpoint]:
    """The model endpoint and every tool endpoint, parsed (unparseable ones are render errors)."""
    urls = [("agent.model.endpoint", agent.spec.agent.model.endpoint)]
    urls += [(f"agent.tools[{t.name}].endpoint", t.endpoint) for t in agent.spec.agent.tools or () if t.endpoint]
    urls += [(f"agent.tools[{t.name}].mcp.endpoint", t.mcp.endpoint) for t in agent.spec.agent.tools or () if t.mcp]
    out = []
    for where, url in urls:
        try:
            out.append(Endpoint(where, addresses.parse_endpoint(url)))
        except ValueError:
            continue
    return out


def _host_matches(pattern: str, host: str) -> bool:
    return host == pattern or (pattern.startswith("*.") and host.endswith(pattern[1:]))


def rule_matches(rule: EndpointRule, endpoint: Endpoint) -> bool:
    if rule.ports and endpoint.port not in rule.ports:
        return False
    ip = endpoint.target.address
    if ip is not None:
        return rule.host is None and rule.cidr is not None and ip in network(rule.cidr)
    return rule.host is not None and _host_matches(rule.host, endpoint.host)


def _forbidden_host(host: str) -> bool:
    return host in FORBIDDEN_HOSTS or host.endswith(".localhost")


def effective(agent: AgentDeployment, covering: Sequence[AgentPolicy], platform: Platform) -> list[AgentPolicy]:
    """The policies that judge the agent: the default policy where none covers it; else the
    covering ones, plus the default policy's values for what none of them sets."""
    default = platform.default_policy
    if not covering:
        name = f"{DEFAULT_POLICY_NAME} (no AgentPolicy covers namespace {agent.metadata.namespace})"
        return [AgentPolicy(metadata=ObjectMeta(name=name), spec=default)]
    unset = tuple(
        f
        for f in DEFAULTED_FIELDS
        if getattr(default, f) is not None and all(getattr(p.spec, f) is None for p in covering)
    )
    return [*covering, platform.residual(unset)] if unset else list(covering)


def platform_violations(
    agent: AgentDeployment,
    policies: Sequence[AgentPolicy],
    platform: Platform,
    allowances: NetworkAllowances | None = None,
) -> list[Violation]:
    """The platform's own rules, over the effective ``policies``."""
    found: list[Violation] = []
    if platform.delegation_ceiling is not None:
        beyond = [
            r
            for r in agent.spec.permissions.kubernetes or ()
            if not any(rule_covered(r, c) for c in platform.delegation_ceiling)
        ]
        if beyond:
            found.append(
                Violation(
                    PLATFORM,
                    "delegationCeiling",
                    "permissions.kubernetes beyond what the operator may delegate (the chart's "
                    "agentPermissionsCeiling): " + "; ".join(map(describe_rule, beyond)),
                )
            )
    found += ledger_secret_violations(agent, platform)
    forbidden = platform.forbidden
    allowances = allowances or network_allowances(agent, policies, platform)
    for index, rule in enumerate(agent.spec.permissions.egress or ()):
        net = network(rule.cidr)
        inside = [str(x) for x in map(network, allowances.excluded) if x.version == net.version and net.subnet_of(x)]  # type: ignore[arg-type]
        if inside:
            found.append(
                Violation(
                    PLATFORM,
                    "egress",
                    f"permissions.egress[{index}] {rule.cidr} lies in {inside[0]} (loopback, link-local, metadata or "
                    "cluster-internal); an AgentPolicy must name that range in allowedEgress",
                )
            )
    for endpoint in endpoints_of(agent):
        for policy in policies:
            rules = policy.spec.allowed_endpoints
            if rules is not None and not any(rule_matches(r, endpoint) for r in rules):
                found.append(
                    Violation(
                        policy.metadata.name,
                        "allowedEndpoints",
                        f"AgentPolicy {policy.metadata.name}: {endpoint.where} {endpoint.host}:{endpoint.port} "
                        "is not in allowedEndpoints",
                    )
                )
        address = endpoint.target.address
        risky = (
            any(address in net for net in forbidden if net.version == address.version)
            if address is not None
            else _forbidden_host(endpoint.host)
        )
        explicit = any(
            rule_matches(r, endpoint) and (address is None or r.cidr is not None)
            for p in policies
            for r in p.spec.allowed_endpoints or ()
        )
        if risky and not explicit:
            found.append(
                Violation(
                    PLATFORM,
                    "endpoints",
                    f"{endpoint.where} {endpoint.host} is a loopback, link-local, metadata or cluster-internal "
                    "address; an AgentPolicy covering this namespace must name it in allowedEndpoints",
                )
            )
    return found


def ledger_secret_violations(agent: AgentDeployment, platform: Platform) -> list[Violation]:
    """No agent may name the ledger's password Secret, whatever ``allowedSecrets`` says.

    The operator mounts that Secret into every guard itself, without checking it against
    ``allowedSecrets``: the platform chose it (the chart's ``ledger.passwordSecret``), not the
    tenant, and it never reaches the agent container. The same Secret named by a tenant is the
    opposite case: as an env var or ``permissions.secrets`` it would hand the agent the password
    of the ledger that holds every team's budgets (so it could erase its own spend), and as the
    model's ``apiKeySecretRef`` the guard would send it to the agent's model endpoint. A policy
    allowing "*" must not open that, so this is a platform rule, not a policy one."""
    ledger = platform.ledger
    if ledger is None or ledger.password_secret is None:
        return []
    if ledger.password_secret not in secrets_of(agent):
        return []
    return [
        Violation(
            PLATFORM,
            "ledgerSecret",
            f"Secret {ledger.password_secret} holds the shared budget ledger's password; agents may not reference it",
        )
    ]


@dataclass(frozen=True)
class Judgement:
    """What the effective policies and the platform say of one agent."""

    violations: list[Violation]
    allowances: NetworkAllowances
    """What its NetworkPolicy may open, if it runs."""


def judge(
    agent: AgentDeployment, policies: Iterable[AgentPolicy], namespace_labels: Mapping[str, str], platform: Platform
) -> Judgement:
    """Every rule of every effective policy (the covering ones, or the default), then the
    platform's own rules: what the operator checks before it creates anything."""
    judges = effective(agent, covering(agent, policies, namespace_labels), platform)
    allowances = network_allowances(agent, judges, platform)
    violations = [v for p in judges for v in check(agent, p)]
    return Judgement(violations + platform_violations(agent, judges, platform, allowances), allowances)


def all_violations(
    agent: AgentDeployment, policies: Iterable[AgentPolicy], namespace_labels: Mapping[str, str], platform: Platform
) -> list[Violation]:
    """``judge(...).violations``."""
    return judge(agent, policies, namespace_labels, platform).violations


def network_allowances(
    agent: AgentDeployment, policies: Iterable[AgentPolicy], platform: Platform
) -> NetworkAllowances:
    """Where hostname endpoints may connect, and which ranges every egress block excludes."""
    policies = list(policies)
    hostname_cidrs: dict[str, tuple[str, ...]] = {}
    for endpoint in endpoints_of(agent):
        if endpoint.target.address is not None:
            continue
        for policy in policies:
            for rule in policy.spec.allowed_endpoints or ():
                if rule.cidr and rule_matches(rule, endpoint):
                    hostname_cidrs[endpoint.host] = (*hostname_cidrs.get(endpoint.host, ()), rule.cidr)
    explicit = [network(r.cidr) for p in policies for r in p.spec.allowed_endpoints or () if r.cidr is not None] + [
        network(c) for p in policies for c in p.spec.allowed_egress or () if _is_narrow(c)
    ]
    excluded = [
        str(net)
        for net in platform.forbidden
        if not any(net.version == e.version and net.subnet_of(e) for e in explicit)  # type: ignore[arg-type]
    ]
    return NetworkAllowances(hostname_cidrs, tuple(excluded))


def _is_narrow(cidr: str) -> bool:
    """An allowedEgress entry names a range explicitly unless it is a catch-all like 0.0.0.0/0."""
    return network(cidr).prefixlen > 0


def load_platform(data: Mapping[str, object]) -> Platform:
    """A Platform from the operator's ``--platform`` file (YAML written by the chart)::

        defaultPolicy: {...}          # an AgentPolicy spec; unset: the built-in deny-by-default
        delegationCeiling: [rules]    # the chart's agentPermissionsCeiling.rules
        clusterCIDRs: [10.244.0.0/16, 10.96.0.0/12]
        ledger: {url, passwordSecret, pods: {namespace, labels} | cidrs}   # api.ledger.PlatformLedger

    Raises ValueError naming the field when the file is malformed (the operator refuses to start
    rather than run with a platform it misread)."""
    unknown = set(data) - {"defaultPolicy", "delegationCeiling", "clusterCIDRs", "ledger"}
    if unknown:
        raise ValueError(f"unknown platform field(s): {', '.join(sorted(unknown))}")
    try:
        default = AgentPolicySpec.model_validate(data.get("defaultPolicy") or {}) if "defaultPolicy" in data else None
        ceiling = data.get("delegationCeiling")
        if ceiling is not None and not isinstance(ceiling, list):
            raise ValueError("delegationCeiling must be a list of RBAC rules")
        rules = tuple(KubernetesRule.model_validate(r) for r in ceiling) if ceiling is not None else None
        ledger = PlatformLedger.model_validate(data["ledger"]) if data.get("ledger") else None
    except (TypeError, ValueError) as exc:
        raise ValueError(f"platform file: {exc}") from None
    cidrs = data.get("clusterCIDRs") or []
    if not isinstance(cidrs, list):
        raise ValueError("platform file: clusterCIDRs must be a list of CIDRs")
    for cidr in cidrs:
        try:
            network(str(cidr))
        except ValueError:
            raise ValueError(f"platform file: clusterCIDRs: {cidr!r} is not a CIDR") from None
    return Platform(
        default_policy=default if default is not None else BUILTIN_DEFAULT,
        delegation_ceiling=rules,
        cluster_cidrs=tuple(str(c) for c in cidrs),
        ledger=ledger,
    )
