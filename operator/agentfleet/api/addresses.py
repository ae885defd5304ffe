"""Endpoint URLs and CIDRs of the API, read one way by every reader.

The policy checks (what an agent may reach) and the NetworkPolicy render (what the pod can
reach) must agree on what an endpoint is: which host, which port, and which address when the
host is an IP literal -- including an IPv4-mapped IPv6 literal (``[::ffff:169.254.169.254]``),
which is the IPv4 address it maps to. Both read it here.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_PORTS = {"http": 80, "https": 443}
LEDGER_PORTS = {"redis": 6379, "rediss": 6379}
"""The shared budget ledger's URL schemes (``api.ledger``), read like any other endpoint."""


def network(cidr: str) -> Network:
    """``cidr`` with host bits cleared; IPv4-mapped IPv6 as the IPv4 network it really is (the
    API server also rejects mapped addresses in an ipBlock). ValueError if it is not a CIDR."""
    net = ipaddress.ip_network(cidr, strict=False)
    if isinstance(net, ipaddress.IPv6Network) and net.network_address.ipv4_mapped is not None:
        return ipaddress.IPv4Network((net.network_address.ipv4_mapped, net.prefixlen - 96))
    return net


def address(host: str) -> Address | None:
    """The IP of an IP-literal host (IPv4-mapped IPv6 as its IPv4); None for a name."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@dataclass(frozen=True)
class Endpoint:
    """Where an endpoint URL connects."""

    host: str
    """Lower-case, without a trailing dot."""
    port: int
    address: Address | None
    """The address of an IP-literal host; None for a hostname."""


def parse_ledger_url(url: str) -> Endpoint:
    """``parse_endpoint`` for the ledger's ``redis://`` or ``rediss://`` URL."""
    return parse_endpoint(url, LEDGER_PORTS)


def parse_endpoint(url: str, schemes: dict[str, int] = DEFAULT_PORTS) -> Endpoint:
    """ValueError (with what is wrong) for a URL without one of ``schemes`` (http(s) by default,
    each with its default port) and a host, a port out of range, or an IPv6 zone (which a
    NetworkPolicy cannot express)."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError as err:
        raise ValueError(f"{url!r} is not a valid URL ({err})") from None
    if not host or parts.scheme not in schemes:
        raise ValueError(f"{url!r} needs a {'/'.join(schemes)} scheme and a host")
    port = schemes[parts.scheme] if port is None else port
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} of {url!r} is out of range")
    if "%" in host:
        raise ValueError(f"{url!r} has an IPv6 zone, which a NetworkPolicy cannot express")
    host = host.rstrip(".").lower()
    return Endpoint(host, port, address(host))
