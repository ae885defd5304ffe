"""The shared budget ledger as the platform configures it (the chart's ``ledger`` values, carried
to the operator in its ``--platform`` file), and where its password lands in an agent pod.

The platform, not a tenant, chooses the ledger: one Redis for the whole fleet, named once. The
operator renders it into every agent's guard config (``GuardConfig.ledger``), mounts its password
into the guard container only and opens the pod's egress to it.

Why the password Secret lives in each agent namespace (same name everywhere) rather than once in
the operator's namespace: a pod can mount only Secrets of its own namespace, so a Secret in the
operator's namespace would have to be copied into every agent namespace by the operator, which
would then need read and write on Secrets cluster-wide -- and it deliberately has no permission
on Secrets at all (charts/agentfleet/templates/rbac.yaml). The chart writes the copies at install
time with the installer's credentials (``ledger.agentNamespaces``), or the platform team does
(its own tooling, e.g. an external-secrets controller).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import Field, model_validator

from agentfleet.api.addresses import Endpoint, network, parse_ledger_url
from agentfleet.api.guardconfig import LedgerConfig
from agentfleet.api.types import Cidr, DnsName, Duration, LedgerPolicy, Model

LEDGER_PASSWORD_DIR = "/var/run/agentfleet/ledger"
"""Where the guard container (and only it) mounts the ledger password."""
LEDGER_VOLUME = "ledger-password"
"""Name of the pod volume holding it."""


class LedgerPods(Model):
    """The ledger's pods, for an in-cluster ledger: the agents' NetworkPolicy lets pods reach
    exactly these (a NetworkPolicy sees the pod behind a Service, never the Service's address)."""

    namespace: DnsName
    """Namespace of the ledger's pods."""
    labels: dict[str, str] = Field(min_length=1, max_length=16)
    """Labels that select the ledger's pods."""


class PlatformLedger(Model):
    """The shared ledger every guard in the fleet uses (the chart's ``ledger``)."""

    url: str = Field(pattern=r"^rediss?://[^\s]+$", max_length=512)
    """``redis://HOST:PORT/DB`` (``rediss://`` for TLS), without a password."""
    password_secret: DnsName | None = None
    """Secret holding the password, in every agent namespace (the same name everywhere). Unset:
    the server needs no password (only for development)."""
    password_key: str = Field(default="password", pattern=r"^[-._a-zA-Z0-9]{1,253}$")
    """Key of the password in that Secret."""
    timeout: Duration = "1s"
    """Longest wait for one ledger operation (``GuardConfig.ledger.timeout``)."""
    max_connections: int = Field(default=32, ge=1, le=1024)
    """Connections per guard."""
    key_prefix: str = Field(default="agentfleet", pattern=r"^[a-zA-Z0-9_.:-]{1,64}$")
    """Prefix of every key (several fleets may share one server)."""
    pods: LedgerPods | None = None
    """In-cluster ledger: the pods agents' egress may reach."""
    cidrs: list[Cidr] | None = Field(default=None, max_length=16)
    """Ledger outside the cluster: the ranges agents' egress may reach. With neither ``pods`` nor
    ``cidrs``, an IP-literal host is reached at that address and a hostname like a model endpoint
    (the operator's ``--upstream-cidr`` ranges minus the forbidden ones, so an in-cluster name
    would be unreachable: set ``pods``)."""

    @model_validator(mode="after")
    def _readable(self) -> PlatformLedger:
        self.endpoint()  # raises ValueError for a URL a NetworkPolicy cannot express
        if urlsplit(self.url).password is not None:
            # The URL lands in every guard's ConfigMap, which agents may be allowed to read.
            raise ValueError("ledger.url must not hold a password: name a Secret in passwordSecret")
        for cidr in self.cidrs or ():
            network(cidr)  # the CRD-style Cidr type is checked by the API server only
        if self.pods is not None and self.cidrs is not None:
            raise ValueError("ledger: set pods (in-cluster) or cidrs (outside), not both")
        return self

    def endpoint(self) -> Endpoint:
        """Host and port of the server (``api.addresses``, like every other endpoint)."""
        return parse_ledger_url(self.url)

    @property
    def password_file(self) -> str | None:
        """Where the guard reads the password (None without a password Secret)."""
        return f"{LEDGER_PASSWORD_DIR}/{self.password_key}" if self.password_secret else None

    def guard_config(self, behaviour: LedgerPolicy) -> LedgerConfig:
        """The guard's ``ledger`` section: this server, and ``behaviour`` while it is unreachable
        (the strictest of the covering AgentPolicies' ``ledger``)."""
        return LedgerConfig(
            url=self.url,
            password_file=self.password_file,
            timeout=self.timeout,
            max_connections=self.max_connections,
            key_prefix=self.key_prefix,
            on_unavailable=behaviour.on_unavailable,
            local_allowance=behaviour.local_allowance,
        )
