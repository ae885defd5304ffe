"""The NetworkPolicy: deny everything except DNS, the guard's upstreams and the allowlist.

A NetworkPolicy applies to the whole pod, so the agent container can open the same
connections as its guard; it never holds the upstream key, though, and tools it is not
allowed are not opened at all.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from agentfleet.api import addresses
from agentfleet.api.addresses import Endpoint, network
from agentfleet.api.ledger import PlatformLedger
from agentfleet.api.types import AgentDeploymentSpec
from agentfleet.render import peers
from agentfleet.render.base import RenderError, RenderSettings
from agentfleet.render.children import ChildNames, Owner, selector

DNS_PORT = 53
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


def normalize_cidr(cidr: str, where: str) -> str:
    """Canonical form (``api.addresses.network``), as a RenderError naming ``where``."""
    try:
        return str(network(cidr))
    except ValueError as err:
        raise RenderError(f"{where}: {cidr!r} is not a CIDR") from err


def parse_endpoint(url: str, where: str) -> Endpoint:
    return parse_endpoint_with(addresses.parse_endpoint, url, where)


def parse_endpoint_with(parse: Callable[[str], Endpoint], url: str, where: str) -> Endpoint:
    try:
        return parse(url)
    except ValueError as err:
        raise RenderError(f"{where}: {err}") from None


def _tcp(ports: list[int]) -> list[dict[str, Any]]:
    return [{"protocol": "TCP", "port": port} for port in sorted(set(ports))]


def ip_block(cidr: str, excluded: tuple[str, ...], where: str) -> dict[str, Any]:
    """An ipBlock for ``cidr`` with every excluded range inside it cut out; a ``cidr`` that lies
    inside an excluded range is an error (the policy check refuses such agents before render)."""
    net = network(normalize_cidr(cidr, where))
    cut = []
    for text in excluded:
        other = network(normalize_cidr(text, "excluded ranges"))
        if other.version != net.version:
            continue
        if net.subnet_of(other):  # type: ignore[arg-type]
            raise RenderError(f"{where}: {cidr} lies in {other}, a range agents may not reach")
        if other.subnet_of(net):  # type: ignore[arg-type]
            cut.append(str(other))
    block: dict[str, Any] = {"cidr": str(net)}
    if cut:
        block["except"] = sorted(set(cut))
    return {"ipBlock": block}


def upstream_rules(
    spec: AgentDeploymentSpec,
    settings: RenderSettings,
    hostname_cidrs: Mapping[str, tuple[str, ...]] | None = None,
    excluded: tuple[str, ...] = (),
) -> list[dict[str, Any]]:
    """The model endpoint and allowed HTTP tools, grouped by destination for a compact policy.
    A hostname goes to where a policy rule says it lives, else to ``settings.upstream_cidrs``;
    ``excluded`` ranges are cut out of every block, so a name that resolves to the metadata
    service or a cluster address is still not reachable."""
    allowed = set(spec.permissions.tools) if spec.permissions.tools is not None else None
    urls = [(spec.agent.model.endpoint, "agent.model.endpoint")]
    urls += [
        (tool.endpoint, f"agent.tools[{tool.name}].endpoint")
        for tool in spec.agent.tools or []
        if tool.endpoint and (allowed is None or tool.name in allowed)
    ]
    urls += [
        (tool.mcp.endpoint, f"agent.tools[{tool.name}].mcp.endpoint")
        for tool in spec.agent.tools or []
        if tool.mcp and (allowed is None or tool.name in allowed)
    ]
    default_peers = tuple(normalize_cidr(c, "settings.upstream_cidrs") for c in settings.upstream_cidrs)
    ports_by_peer: dict[tuple[tuple[str, ...], bool], list[int]] = {}
    for url, where in urls:
        endpoint = parse_endpoint(url, where)
        if endpoint.address is not None:
            peers: tuple[str, ...] = (str(network(str(endpoint.address))),)
        else:
            peers = tuple((hostname_cidrs or {}).get(endpoint.host, default_peers))
        ports_by_peer.setdefault((peers, endpoint.address is not None), []).append(endpoint.port)
    rules = []
    for (peers, literal), ports in sorted(ports_by_peer.items()):
        # An IP-literal endpoint the policy check admitted is reachable even in an excluded range
        # (a policy named it); hostname blocks always have the excluded ranges cut out.
        blocks = [{"ipBlock": {"cidr": c}} if literal else ip_block(c, excluded, "upstream endpoints") for c in peers]
        rules.append({"to": blocks, "ports": _tcp(ports)})
    return rules


def ledger_rule(ledger: PlatformLedger, settings: RenderSettings, excluded: tuple[str, ...] = ()) -> dict[str, Any]:
    """Egress to the shared budget ledger, on its port only: to its pods when it runs in the
    cluster (a NetworkPolicy matches the pods behind a Service, not the Service's address, so the
    port is the pods' and must equal the URL's), else to its ``cidrs``, else to its IP literal,
    else -- a hostname with neither -- like a hostname model endpoint. The platform chose these
    peers, so the forbidden ranges are not cut out of them (only out of the hostname fallback)."""
    endpoint = parse_endpoint_with(addresses.parse_ledger_url, ledger.url, "platform ledger.url")
    peers: list[dict[str, Any]]
    if ledger.pods is not None:
        peers = [
            {
                "namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: ledger.pods.namespace}},
                "podSelector": {"matchLabels": dict(sorted(ledger.pods.labels.items()))},
            }
        ]
    elif ledger.cidrs:
        peers = [{"ipBlock": {"cidr": normalize_cidr(c, "platform ledger.cidrs")}} for c in ledger.cidrs]
    elif endpoint.address is not None:
        peers = [{"ipBlock": {"cidr": str(network(str(endpoint.address)))}}]
    else:
        peers = [ip_block(c, excluded, "settings.upstream_cidrs") for c in settings.upstream_cidrs]
    return {"to": peers, "ports": _tcp([endpoint.port])}


def metrics_ingress(settings: RenderSettings) -> list[dict[str, Any]]:
    """Only the metrics port, only from the Prometheus namespaces: the LLM API listens on the
    pod's loopback and has no ingress at all, so no other pod can spend this agent's budget."""
    if not settings.metrics_from_namespaces:
        return []
    peers = {
        "namespaceSelector": {
            "matchExpressions": [
                {"key": NAMESPACE_NAME_LABEL, "operator": "In", "values": sorted(settings.metrics_from_namespaces)}
            ]
        }
    }
    return [{"from": [peers], "ports": _tcp([settings.metrics_port])}]


def network_policy(
    owner: Owner,
    names: ChildNames,
    spec: AgentDeploymentSpec,
    settings: RenderSettings,
    hostname_cidrs: Mapping[str, tuple[str, ...]] | None = None,
    excluded: tuple[str, ...] = (),
    ledger: PlatformLedger | None = None,
) -> dict[str, Any]:
    """Egress: DNS, the model and tool endpoints (as the policies allow them),
    ``permissions.egress``, every block with the forbidden ranges cut out, and the platform's
    shared budget ledger (``ledger_rule``). Ingress: the metrics port from Prometheus only
    (``metrics_ingress``)."""
    dns = {
        "to": [{"namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: settings.dns_namespace}}}],
        "ports": [{"protocol": "UDP", "port": DNS_PORT}, {"protocol": "TCP", "port": DNS_PORT}],
    }
    egress = [dns, *upstream_rules(spec, settings, hostname_cidrs, excluded)]
    if ledger is not None:
        egress.append(ledger_rule(ledger, settings, excluded))
    egress += peers.egress(spec, settings)
    for index, rule in enumerate(spec.permissions.egress or []):
        allowed: dict[str, Any] = {"to": [ip_block(rule.cidr, excluded, f"permissions.egress[{index}].cidr")]}
        if rule.ports:
            allowed["ports"] = _tcp(rule.ports)
        egress.append(allowed)
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": owner.metadata(names.network_policy),
        "spec": {
            "podSelector": {"matchLabels": selector(owner.name)},
            "policyTypes": ["Egress", "Ingress"],
            "egress": egress,
            "ingress": metrics_ingress(settings) + peers.ingress(settings),
        },
    }
