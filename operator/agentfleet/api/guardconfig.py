"""The guard sidecar's configuration file: the contract between ``render`` and ``guard``.

The operator renders one of these per revision into a ConfigMap (``guard.yaml``); the guard
loads it at start. It reuses the API types, so a budget means the same thing everywhere.
"""

from __future__ import annotations

from pydantic import ConfigDict, Field

from agentfleet.api.types import (
    ApprovalMode,
    Budgets,
    DnsName,
    Duration,
    GuardSettings,
    LedgerPolicy,
    Model,
    ModelSpec,
    Pricing,
    RequiredApproval,
    SpendQuota,
    TelemetryPolicy,
    ToolSpec,
)


class AuditSink(Model):
    """Where the hash-chained audit trail goes."""

    stdout: bool = True
    """Write each record as a JSON line to standard output."""
    file: str | None = None
    """Also append to this file, rotated at max_bytes."""
    max_bytes: int = Field(default=50 * 1024 * 1024, ge=1024)
    """Rotate the file when it grows past this size."""
    backups: int = Field(default=3, ge=0, le=100)
    """Rotated files to keep."""


class InjectionClassifier(Model):
    """An HTTP prompt-injection classifier the guard asks about every tool result it scans, in
    addition to its own heuristics (a text is suspicious when either says so).

    The guard POSTs ``{"text", "source", "tool"}`` as JSON and expects ``{"injection": bool}``
    (an optional ``"score"`` number is recorded in the audit trail)."""

    url: str = Field(pattern=r"^https?://[^\s]+$", max_length=512)
    """Endpoint of the classifier (the pod's egress must allow it)."""
    timeout: Duration = "2s"
    """Longest wait for one answer."""
    fail_open: bool = False
    """When the classifier cannot answer (timeout, error, an answer without ``injection``):
    true lets the heuristics decide alone; false (the default) treats the text as suspicious,
    so ``Block`` refuses it and ``Flag`` flags it."""


class LedgerConfig(LedgerPolicy):
    """The shared budget ledger (a Redis server) every replica and revision of the agent uses,
    and what to do while it is unreachable (from the covering AgentPolicies' ``ledger``).

    Without it each guard counts alone, in memory: right for one replica, per replica otherwise,
    and reset by a restart."""

    url: str = Field(pattern=r"^rediss?://[^\s]+$", max_length=512)
    """``redis://HOST:PORT/DB`` (or ``rediss://`` for TLS); no password here (see passwordFile)."""
    password_file: str | None = Field(default=None, max_length=4096)
    """File holding the ledger's password (a mounted Secret)."""
    timeout: Duration = "1s"
    """Longest wait for one ledger operation (connect included); past it the ledger counts as
    unreachable for this call and ``onUnavailable`` decides."""
    max_connections: int = Field(default=32, ge=1, le=1024)
    """Connections to the ledger per guard; a call waits (within ``timeout``) for a free one."""
    key_prefix: str = Field(default="agentfleet", pattern=r"^[a-zA-Z0-9_.:-]{1,64}$")
    """Prefix of every key the guard writes (several fleets may share one server)."""


class PolicyQuota(SpendQuota):
    """A covering AgentPolicy's spend quota, as the guard enforces it."""

    policy: str = Field(min_length=1, max_length=253)
    """Name of the AgentPolicy: every guard it covers counts against the same ledger key."""


PEER_AUDIENCE_PREFIX = "agentfleet.dev/agent"
"""Audience of the ServiceAccount tokens agents present to each other's guards:
``agentfleet.dev/agent/<namespace>/<callee>`` (a token for one callee is useless at another)."""


def peer_audience(namespace: str, agent: str) -> str:
    """The token audience that names ``agent`` in ``namespace`` as the callee."""
    return f"{PEER_AUDIENCE_PREFIX}/{namespace}/{agent}"


class PeerAuth(Model):
    """How the guard's peer port verifies its callers: Kubernetes ServiceAccount tokens,
    checked offline against the cluster's service-account signing keys (see docs/sub-agents.md)."""

    issuer: str = Field(min_length=1, max_length=1024)
    """The cluster's service-account issuer (``iss`` of every token)."""
    jwks: str = Field(min_length=2, max_length=256 * 1024)
    """The issuer's JSON Web Key Set (JSON text, as ``/openid/v1/jwks`` serves it)."""
    audience: str = Field(min_length=1, max_length=512)
    """The only audience accepted: ``peer_audience(namespace, agent)`` of this agent."""
    leeway: int = Field(default=30, ge=0, le=300)
    """Seconds of clock skew tolerated on ``exp``/``nbf``/``iat``."""


class PeerListener(Model):
    """The guard's third listener: calls from other agents' guards, forwarded to this agent."""

    host: str = "0.0.0.0"
    """Address of the peer listener (the NetworkPolicy admits only agents of the namespace)."""
    port: int = Field(default=9443, ge=0, le=65535)
    """Port of the peer listener (0 picks a free port, for local runs)."""
    agent_url: str = Field(pattern=r"^http://(127\.0\.0\.1|\[::1\]|localhost):[0-9]{1,5}$", max_length=64)
    """Where this agent serves its own API, on the pod's loopback (``AGENTFLEET_SERVE_PORT``)."""
    auth: PeerAuth
    """How callers are authenticated."""
    max_inflight: int = Field(default=64, ge=1, le=4096)
    """Calls from other agents handled at once; more get 429."""


class SubAgentRoute(Model):
    """One agent this agent may call (from ``permissions.subAgents``, after the policy check)."""

    name: DnsName
    """Name of the callee AgentDeployment (same namespace)."""
    url: str = Field(pattern=r"^https?://[^\s/]+$", max_length=512)
    """Base URL of the callee guard's peer port (its Service)."""
    token_file: str = Field(min_length=1, max_length=4096)
    """The projected ServiceAccount token whose audience names the callee (guard container only)."""


class SubAgents(Model):
    """Calls to other agents, and the limits that keep a swarm from amplifying one task."""

    callees: list[SubAgentRoute] = Field(default=[], max_length=64)
    """The agents this agent may call; any other name is refused."""
    max_depth: int = Field(default=3, ge=1, le=8)
    """Longest chain of calls: a call this agent makes while it serves a call at depth d is at
    depth d+1; the peer port refuses inbound calls deeper than this too."""
    max_calls_per_task: int = Field(default=16, ge=1, le=1000)
    """Sub-agent calls one task of this agent may make (fan-out)."""
    max_concurrent_calls: int = Field(default=16, ge=1, le=1024)
    """Sub-agent calls of this agent in flight at once, whatever their tasks (so inventing task
    ids does not widen the fan-out at any moment)."""
    call_timeout: Duration = "5m"
    """Longest a sub-agent call may take, response included."""


class ApprovalRule(RequiredApproval):
    """One tool whose calls wait for a decision (from the tool's ``approval`` and the covering
    AgentPolicies' ``requiredApprovals``, merged by the operator)."""

    mode: ApprovalMode = ApprovalMode.HOLD
    """Hold the request, or refuse it at once naming the approval."""


class ApprovalsConfig(Model):
    """How the guard asks for decisions: AgentApprovals in the agent's namespace, created and
    watched with the agent's ServiceAccount token (mounted in the guard container only)."""

    api_url: str = Field(default="https://kubernetes.default.svc", pattern=r"^https?://[^\s]+$", max_length=512)
    """The Kubernetes API server."""
    ca_file: str | None = Field(default="/var/run/secrets/kubernetes.io/serviceaccount/ca.crt", max_length=4096)
    """CA bundle of the API server (unset: the system's)."""
    token_file: str = Field(default="/var/run/secrets/agentfleet.dev/approvals/token", max_length=4096)
    """The projected ServiceAccount token (re-read on every request: it rotates)."""
    owner_uid: str | None = Field(default=None, max_length=64)
    """UID of the AgentDeployment, so approvals are garbage-collected with it."""
    rules: list[ApprovalRule] = Field(default=[], max_length=256)
    """Policy-required approvals (the tools' own ``approval`` blocks apply too)."""
    max_held: int = Field(default=64, ge=1, le=1024)
    """Calls held at once; more are refused (503 overloaded)."""
    request_timeout: Duration = "10s"
    """Longest wait for one API request (a watch is re-opened within the deadline)."""


class GuardConfig(Model):
    """Everything one guard process needs to enforce one agent revision."""

    model_config = ConfigDict(frozen=True)
    namespace: str
    """Namespace of the AgentDeployment (metric label)."""
    agent: str
    """Name of the AgentDeployment (metric label)."""
    revision: str
    """Revision hash (metric label)."""
    model: ModelSpec
    """Upstream model. ``model.pricing`` is replaced by ``pricing`` below."""
    embeddings_model: str | None = Field(default=None, min_length=1, max_length=128)
    """Model every embeddings request is pinned to (priced at ``pricing``'s input price); unset:
    ``model.name``, like chat."""
    pricing: Pricing = Pricing()
    """Effective price: the AgentPolicy price table wins over the agent's declaration."""
    api_key_file: str | None = None
    """File holding the upstream API key (the mounted Secret); never exposed to the agent."""
    tools: list[ToolSpec] = []
    """Declared tools."""
    mcp_credential_files: dict[str, str] = Field(default={}, max_length=256)
    """Declared MCP server (``mcp:<server>``) -> the file holding its credential (a Secret mounted
    in the guard container only). A server whose ``mcp.credentialsSecretRef`` is set must have one."""
    allowed_tools: list[str] | None = None
    """Allowed tool names; None allows every declared tool."""
    budgets: Budgets = Budgets()
    """Limits to enforce."""
    guard: GuardSettings = GuardSettings()
    """Loop threshold, injection mode, content capture."""
    listen_host: str = "127.0.0.1"
    """Address of the OpenAI-compatible API and /tools. Only the agent in the same pod may use
    them, so the guard refuses anything but a loopback address."""
    listen_port: int = Field(default=4000, ge=1, le=65535)
    """Port of the OpenAI-compatible API and /tools (on loopback it also answers /healthz,
    /readyz and /metrics)."""
    metrics_host: str = "0.0.0.0"
    """Address of the second listener: /metrics, /healthz, /readyz and /audit/head only, for
    Prometheus, the kubelet's probes and the operator (never the LLM API or tools)."""
    metrics_port: int = Field(default=9090, ge=1, le=65535)
    """Port of the metrics/health listener (must differ from listen_port)."""
    audit: AuditSink = AuditSink()
    """Audit trail sinks."""
    quotas: list[PolicyQuota] = Field(default=[], max_length=64)
    """Spend quotas of the covering AgentPolicies (enforced only with a shared ledger: a quota
    over many agents cannot be counted by one guard)."""
    ledger: LedgerConfig | None = None
    """The shared budget ledger; unset: budgets are counted in this guard's memory only."""
    injection_classifier: InjectionClassifier | None = None
    """An HTTP classifier consulted besides the built-in heuristics (unset: heuristics only)."""
    sub_agents: SubAgents = SubAgents()
    """Agents this agent may call through ``/agents/NAME/...`` on the API listener, and limits."""
    peer: PeerListener | None = None
    """The peer listener for calls from other agents; unset: this agent cannot be called."""
    telemetry: TelemetryPolicy | None = None
    """OpenTelemetry traces (from the covering AgentPolicies' ``telemetry``); unset: none."""
    approvals: ApprovalsConfig | None = None
    """Where held calls ask for decisions; unset: a tool needing approval is refused (there is
    nobody to ask), never run."""
