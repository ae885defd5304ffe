"""The agentfleet.dev/v1alpha1 API: the single source of truth.

The CRDs in ``crds/``, the chart's CRDs, ``docs/api.md`` and the guard's configuration are all
generated from or validated by these models. Attribute docstrings become the OpenAPI
descriptions that ``kubectl explain`` shows, so every field has one. Cross-field rules that
the API server can check live here too, as CEL (``x-kubernetes-validations``).

Units are explicit: durations are Go/Kubernetes-style strings ("500ms", "30s", "5m", "1h30m"),
money is a decimal string in US dollars ("12.50"), never a float.
"""

from __future__ import annotations

import decimal
import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AliasGenerator, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from agentfleet.api.units import MAX_DURATION, parse_duration

DURATION_PATTERN = r"^([0-9]{1,6}(\.[0-9]{1,6})?(ms|s|m|h)){1,4}$"
"""At most four parts of at most six digits: no duration can overflow a parser (CEL, timedelta)."""
_CEL_DURATION_PATTERN = DURATION_PATTERN.replace("\\.", "[.]")  # a CEL string literal has no "\." escape
MONEY_PATTERN = r"^[0-9]{1,12}(\.[0-9]{1,6})?$"
DECIMAL_PATTERN = r"^-?[0-9]{1,15}(\.[0-9]{1,9})?$"
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
TOOL_NAME_PATTERN = r"^(mcp:)?[a-zA-Z0-9_-]{1,64}$"
"""A function's name as the model calls it, a hosted tool's kind (``web_search``), or a remote MCP
server as ``mcp:<server label>`` (the colon keeps it apart from every function name)."""


def _bounded_duration(value: str) -> str:
    parse_duration(value)  # raises ValueError past MAX_DURATION
    return value


Duration = Annotated[
    str,
    Field(
        pattern=DURATION_PATTERN,
        max_length=32,
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    # The pattern first: CEL's && is false (not an error) for a value that does not
                    # match, so a stored overflowing value still evaluates instead of failing every write.
                    "rule": f"self.matches('{_CEL_DURATION_PATTERN}') && duration(self) <= duration('{MAX_DURATION}')",
                    "message": f"must be a duration such as 30s, 5m or 1h30m, at most {MAX_DURATION}",
                }
            ]
        },
    ),
    AfterValidator(_bounded_duration),
]
"""A Go-style duration such as "500ms", "30s", "5m" or "1h30m", at most one year."""
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
Quantity = Annotated[
    str,
    Field(
        pattern=QUANTITY_PATTERN,
        max_length=64,
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "isQuantity(self)", "message": "must be a resource quantity such as 500m, 2 or 256Mi"}
            ]
        },
    ),
]
"""A Kubernetes resource quantity ("500m", "2", "256Mi"), checked as the API server does."""
RESOURCE_NAME_PATTERN = r"^(cpu|memory|ephemeral-storage|hugepages-[0-9]+[KMG]i|[a-z0-9.-]+/[a-zA-Z0-9._-]+)$"
NamePattern = Annotated[str, Field(pattern=r"^(\*|[a-z0-9][-.a-z0-9]*\*?)$", max_length=253)]
"""An object name, or a prefix ending in "*" ("llm-*"), or "*" for any."""
Money = Annotated[str, Field(pattern=MONEY_PATTERN, max_length=20)]
"""A non-negative amount of US dollars as a decimal string, e.g. "12.50"."""
Decimal = Annotated[str, Field(pattern=DECIMAL_PATTERN, max_length=26)]
"""A decimal number as a string, e.g. "0.05"; exact, unlike a float."""
DnsName = Annotated[str, Field(pattern=NAME_PATTERN, max_length=63)]
ToolName = Annotated[str, Field(pattern=TOOL_NAME_PATTERN, max_length=64)]
Cidr = Annotated[
    str,
    Field(
        max_length=64,
        json_schema_extra={
            "x-kubernetes-validations": [{"rule": "isCIDR(self)", "message": "must be a CIDR such as 203.0.113.0/24"}]
        },
    ),
]
"""An IPv4 or IPv6 network in CIDR notation (checked by the API server with isCIDR)."""
ApiName = Annotated[str, Field(max_length=253)]
"""An API group, resource or object name in an RBAC rule."""


def _cel(*rules: tuple[str, str]) -> dict[str, Any]:
    """JSON-schema extra carrying CEL rules (``x-kubernetes-validations``) for the CRD."""
    return {"x-kubernetes-validations": [{"rule": r, "message": m} for r, m in rules]}


def _map_list(*keys: str) -> dict[str, Any]:
    """A list the API server treats as a map keyed by ``keys``: duplicates are rejected."""
    return {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": list(keys)}


class Model(BaseModel):
    """Base for every API object: camelCase on the wire, docstrings as descriptions."""

    model_config = ConfigDict(
        alias_generator=AliasGenerator(alias=to_camel),
        populate_by_name=True,
        use_attribute_docstrings=True,
        extra="forbid",
        frozen=True,
    )

    def wire(self) -> dict[str, Any]:
        """The object as the API server stores it (camelCase, unset fields omitted)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


# --------------------------------------------------------------------------- agent


class SecretKeyRef(Model):
    """A key in a Secret in the AgentDeployment's namespace."""

    name: DnsName
    """Name of the Secret."""
    key: str = Field(default="api-key", min_length=1, max_length=253)
    """Key within the Secret."""


class ConfigMapKeyRef(Model):
    """A key in a ConfigMap in the AgentDeployment's namespace."""

    name: DnsName
    """Name of the ConfigMap."""
    key: str = Field(min_length=1, max_length=253)
    """Key within the ConfigMap."""


class Provider(StrEnum):
    """Which kind of LLM API the model is served by. The guard serves the agent the OpenAI API
    (chat completions, embeddings, Responses) and the Anthropic Messages API: ``anthropic``
    answers Messages natively (the key in ``x-api-key``) and the OpenAI calls through Anthropic's
    OpenAI-compatible endpoint; ``openai`` and ``azure-openai`` do not serve Messages."""

    OPENAI = "openai"
    AZURE_OPENAI = "azure-openai"
    ANTHROPIC = "anthropic"
    VLLM = "vllm"
    OPENAI_COMPATIBLE = "openai-compatible"


class Pricing(Model):
    """Price of the model in US dollars per million tokens; used to compute cost budgets."""

    input_per_million: Money = "0"
    """Dollars per million prompt (input) tokens."""
    output_per_million: Money = "0"
    """Dollars per million completion (output) tokens."""
    cached_input_per_million: Money | None = None
    """Dollars per million prompt tokens the upstream reports as served from its cache
    (``prompt_tokens_details.cached_tokens``); unset: the input price."""
    reasoning_per_million: Money | None = None
    """Dollars per million reasoning tokens (``completion_tokens_details.reasoning_tokens``, which
    the upstream counts within the completion tokens); unset: the output price."""


class ModelSpec(Model):
    """The LLM the agent calls. The agent never sees the endpoint's key: only the guard does."""

    provider: Provider = Provider.OPENAI
    """Kind of API serving the model."""
    name: str = Field(min_length=1, max_length=128)
    """Model name sent upstream, e.g. "gpt-4o-mini"."""
    endpoint: str = Field(pattern=r"^https?://[^\s]+$", max_length=512)
    """Base URL of the OpenAI-compatible API, e.g. "https://api.openai.com/v1"."""
    api_key_secret_ref: SecretKeyRef | None = None
    """Secret holding the upstream API key; mounted into the guard sidecar only."""
    pricing: Pricing = Pricing()
    """Declared price. An AgentPolicy's price table, when it lists this model, takes precedence."""


class SystemPrompt(Model):
    """The agent's system prompt, inline or from a ConfigMap (exactly one)."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "has(self.inline) != has(self.configMapKeyRef)",
                "systemPrompt needs exactly one of inline or configMapKeyRef",
            )
        )
    )
    inline: str | None = Field(default=None, max_length=65536)
    """The prompt text."""
    config_map_key_ref: ConfigMapKeyRef | None = None
    """A ConfigMap key holding the prompt text."""


MCP_TOOL_PATTERN = r"^[a-zA-Z0-9_.-]{1,128}$"
HOST_RULE_PATTERN = r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
"""A hostname, or "*.suffix" for any host under it."""
"""A tool's name on an MCP server (the 2025-11-25 revision's recommended characters)."""
MCP_RESERVED_HEADERS = (
    "host",
    "content-type",
    "content-length",
    "accept",
    "connection",
    "transfer-encoding",
    "mcp-session-id",
    "mcp-protocol-version",
    "mcp-method",
    "mcp-name",
    "last-event-id",
)
"""Headers the guard sets or relays itself; credentials may not be sent in one of them."""


class McpTransport(StrEnum):
    """How the guard talks to an MCP server (the agent talks to the guard the same way)."""

    STREAMABLE_HTTP = "StreamableHTTP"
    """Streamable HTTP (2025-03-26 and later): one endpoint, POST answered with JSON or SSE."""
    SSE = "SSE"
    """The older HTTP+SSE transport (2024-11-05): a GET event stream that names a POST endpoint."""


class McpArgumentRule(Model):
    """A rule on one string argument of one tool of an MCP server: a file path under one of
    ``pathPrefixes``, or a URL whose host is one of ``hosts``. A call whose argument is missing,
    not a string, or outside the rule is refused before it reaches the server."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            ("has(self.pathPrefixes) != has(self.hosts)", "an argument rule needs exactly one of pathPrefixes or hosts")
        )
    )
    tool: str = Field(pattern=MCP_TOOL_PATTERN, max_length=128)
    """The server's tool (its MCP name)."""
    argument: str = Field(pattern=r"^[a-zA-Z0-9_.-]{1,64}$", max_length=64)
    """A top-level argument of the call."""
    path_prefixes: list[Annotated[str, Field(pattern=r"^/[^\s]*$", max_length=256)]] | None = Field(
        default=None, min_length=1, max_length=16
    )
    """Absolute paths: the argument, normalized (``..`` resolved), must be one of them or under one."""
    hosts: list[Annotated[str, Field(pattern=HOST_RULE_PATTERN, max_length=253)]] | None = Field(
        default=None, min_length=1, max_length=32
    )
    """Hosts (exact, or "*.example.com"): the argument must be an http(s) URL to one of them."""

    @model_validator(mode="after")
    def _one_kind(self) -> McpArgumentRule:
        if (self.path_prefixes is None) == (self.hosts is None):
            raise ValueError("an argument rule needs exactly one of pathPrefixes or hosts")
        return self


class McpServer(Model):
    """An MCP server (streamable HTTP) the agent reaches through its guard, at
    ``$AGENTFLEET_MCP_URL/<server>``: the guard filters ``tools/list`` by the allowlist, checks
    every ``tools/call`` like any tool call, scans the results, and adds the credentials."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            ("!has(self.scheme) || has(self.credentialsSecretRef)", "mcp.scheme needs mcp.credentialsSecretRef"),
            (
                "!(self.header.lowerAscii() in " + repr(list(MCP_RESERVED_HEADERS)).replace("'", '"') + ")",
                "mcp.header may not be a header the guard sets itself",
            ),
        )
    )
    endpoint: str = Field(pattern=r"^https?://[^\s]+$", max_length=512)
    """URL of the server's MCP endpoint (e.g. ``https://mcp.example.com/mcp``; with the SSE
    transport, its event stream, e.g. ``https://mcp.example.com/sse``)."""
    transport: McpTransport = McpTransport.STREAMABLE_HTTP
    """Streamable HTTP, or the older HTTP+SSE transport."""
    credentials_secret_ref: SecretKeyRef | None = None
    """A Secret key holding the server's credential: mounted into the guard container only and
    sent on every request to the server; the agent never sees it."""
    header: str = Field(default="Authorization", pattern=r"^[A-Za-z0-9-]{1,64}$", max_length=64)
    """Request header carrying the credential."""
    scheme: str | None = Field(default=None, pattern=r"^[A-Za-z][A-Za-z0-9._-]{0,31}$", max_length=32)
    """Prefix of the header value (``Bearer`` sends ``Bearer <credential>``); unset: the value as stored."""
    tools: list[Annotated[str, Field(pattern=MCP_TOOL_PATTERN, max_length=128)]] | None = Field(
        default=None, max_length=256
    )
    """Only these tools of the server are visible and callable; unset: all of them."""
    argument_rules: list[McpArgumentRule] = Field(default=[], max_length=64)
    """Rules on the arguments of the server's tools (every rule naming a tool must hold)."""

    @model_validator(mode="after")
    def _header(self) -> McpServer:
        if self.header.lower() in MCP_RESERVED_HEADERS:
            raise ValueError("mcp.header may not be a header the guard sets itself")
        if self.scheme is not None and self.credentials_secret_ref is None:
            raise ValueError("mcp.scheme needs mcp.credentialsSecretRef")
        return self


class ApprovalCondition(Model):
    """A condition on one argument of a tool call (no CEL: the guard evaluates it). An argument
    that is missing, or not a number where a comparison needs one, makes the condition true, so
    an unreadable call is held rather than let through."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "[has(self.equals), has(self.greaterThan), has(self.lessThan)].filter(x, x).size() == 1",
                "an approval condition needs exactly one of equals, greaterThan, lessThan",
            )
        )
    )
    argument: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}(\.[A-Za-z0-9_-]{1,64}){0,7}$", max_length=256)
    """The argument, as a dotted path into the call's JSON arguments (``order.amount``)."""
    equals: str | None = Field(default=None, max_length=256)
    """True when the argument, as text, equals this."""
    greater_than: Decimal | None = None
    """True when the argument is a number greater than this."""
    less_than: Decimal | None = None
    """True when the argument is a number less than this."""

    @model_validator(mode="after")
    def _one(self) -> ApprovalCondition:
        if sum(x is not None for x in (self.equals, self.greater_than, self.less_than)) != 1:
            raise ValueError("an approval condition needs exactly one of equals, greaterThan, lessThan")
        return self


class ApprovalMode(StrEnum):
    """What the agent sees while a call waits for a decision."""

    HOLD = "Hold"
    """The request stays open until the decision (or the timeout)."""
    REFUSE = "Refuse"
    """The request is refused at once (409, ``approval_pending``) naming the AgentApproval; the
    same call (same tool and arguments) sent again after the approval runs once."""


APPROVAL_TIMEOUT_MAX = "1h"


def _approval_timeout(value: str) -> str:
    if parse_duration(value) > 3600:
        raise ValueError(f"an approval timeout is at most {APPROVAL_TIMEOUT_MAX}")
    return value


class ApprovalSpec(Model):
    """Calls of this tool wait for a person's decision (an AgentApproval) at the guard."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            ("!has(self.timeout) || duration(self.timeout) <= duration('1h')", "an approval timeout is at most 1h")
        )
    )
    required: bool = True
    """Hold calls of this tool for approval."""
    when: list[ApprovalCondition] | None = Field(default=None, max_length=16)
    """Only calls matching any of these conditions are held; unset: every call."""
    timeout: Annotated[Duration, AfterValidator(_approval_timeout)] = "15m"
    """Longest wait for a decision (at most 1h); past it the call is refused (onTimeout Deny)."""
    mode: ApprovalMode = ApprovalMode.HOLD
    """Hold the request open, or refuse it at once naming the approval."""
    redact_arguments: bool = False
    """Do not copy the call's arguments into the AgentApproval (only their SHA-256)."""


class RequiredApproval(Model):
    """A tool whose calls need approval in every covered agent, whatever the agent declares."""

    tool: str = Field(pattern=r"^(mcp:[a-zA-Z0-9_-]{1,64}/)?[a-zA-Z0-9_.-]{1,128}$", max_length=200)
    """Tool name, or ``mcp:<server>/<tool>`` for one tool of an MCP server."""
    when: list[ApprovalCondition] | None = Field(default=None, max_length=16)
    """Only calls matching any of these conditions; unset: every call."""
    timeout: Annotated[Duration, AfterValidator(_approval_timeout)] | None = Field(
        default=None, json_schema_extra=_cel(("duration(self) <= duration('1h')", "an approval timeout is at most 1h"))
    )
    """Longest wait (at most 1h); unset: the agent's, else 15m."""
    redact_arguments: bool = False
    """Keep the arguments out of the AgentApproval."""


class ToolSpec(Model):
    """A tool the agent may be offered. HTTP tools with an endpoint are called through the
    guard's tool proxy, which applies the same checks as for model-initiated calls; an MCP
    server (``mcp:<server>`` with an ``mcp`` block) is reached through the guard's ``/mcp/<server>``."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            ("!has(self.mcp) || self.name.startsWith('mcp:')", "a tool with mcp must be named mcp:<server>"),
            ("!has(self.mcp) || !has(self.endpoint)", "a tool has an endpoint or mcp, not both"),
        )
    )
    name: ToolName
    """Tool (function) name as it appears in the model's tool calls."""
    description: str | None = Field(default=None, max_length=1024)
    """What the tool does (documentation only)."""
    endpoint: str | None = Field(default=None, pattern=r"^https?://[^\s]+$", max_length=512)
    """URL of an HTTP tool, reached through the guard's /tools/NAME route."""
    max_calls_per_task: int | None = Field(default=None, ge=1, le=100000)
    """Cap on calls of this tool within one task (of an MCP server: of all its tools together)."""
    mcp: McpServer | None = None
    """This tool is an MCP server reached through the guard (the name must be ``mcp:<server>``)."""
    approval: ApprovalSpec | None = None
    """Calls through the guard wait for a person's decision (see docs/approvals.md)."""

    @model_validator(mode="after")
    def _mcp(self) -> ToolSpec:
        if self.mcp is not None and not self.name.startswith("mcp:"):
            raise ValueError("a tool with mcp must be named mcp:<server>")
        if self.mcp is not None and self.endpoint is not None:
            raise ValueError("a tool has an endpoint or mcp, not both")
        return self


class EnvVar(Model):
    """An environment variable for the agent container: a literal value or a Secret key that
    ``permissions.secrets`` allows."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            ("has(self.value) != has(self.secretKeyRef)", "env needs exactly one of value or secretKeyRef")
        )
    )
    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=128)
    """Variable name."""
    value: str | None = Field(default=None, max_length=32768)
    """Literal value."""
    secret_key_ref: SecretKeyRef | None = None
    """Value from a Secret key; the Secret must be listed in permissions.secrets."""


class Resources(Model):
    """Compute resources of the agent container, as in a Pod (e.g. cpu: "500m", memory: "256Mi")."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            *(
                (
                    f"!has(self.{field}) || self.{field}.all(k, k.matches('{RESOURCE_NAME_PATTERN}'))",
                    f"{field} may name cpu, memory, ephemeral-storage, hugepages-SIZE or a DOMAIN/NAME resource",
                )
                for field in ("requests", "limits")
            )
        )
    )
    requests: dict[str, Quantity] | None = Field(default=None, max_length=16)
    """Minimum resources."""
    limits: dict[str, Quantity] | None = Field(default=None, max_length=16)
    """Maximum resources."""

    @field_validator("requests", "limits")
    @classmethod
    def _resource_names(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        bad = [k for k in value or {} if not re.fullmatch(RESOURCE_NAME_PATTERN, k)]
        if bad:
            raise ValueError(f"unknown resource name(s) {', '.join(map(repr, bad))}")
        return value


class AgentSpec(Model):
    """The agent itself: its container, the model it calls, its prompt and its tools."""

    image: str = Field(min_length=1, max_length=512)
    """Container image of the agent."""
    command: list[Annotated[str, Field(max_length=4096)]] | None = Field(default=None, max_length=64)
    """Entrypoint override."""
    args: list[Annotated[str, Field(max_length=4096)]] | None = Field(default=None, max_length=256)
    """Arguments."""
    env: list[EnvVar] | None = Field(default=None, max_length=128, json_schema_extra=_map_list("name"))
    """Environment variables. OPENAI_BASE_URL and AGENTFLEET_* are set by the operator."""
    resources: Resources | None = None
    """Compute resources of the agent container."""
    model: ModelSpec
    """The LLM the agent calls (through the guard)."""
    system_prompt: SystemPrompt | None = None
    """System prompt; part of the revision, so a prompt change is a rollout."""
    tools: list[ToolSpec] | None = Field(default=None, max_length=256, json_schema_extra=_map_list("name"))
    """Tools the agent may be offered; permissions.tools narrows which are allowed."""


# --------------------------------------------------------------------------- budgets


class LatencyBudget(Model):
    """Latency budget for upstream LLM calls."""

    per_call_deadline: Duration = "60s"
    """Deadline for one LLM call, retries included; the guard gives up after it."""
    p99_target: Duration | None = None
    """Target p99 latency; a p99Latency guardrail can act on it."""


class CalendarPeriod(StrEnum):
    """A calendar window, aligned in the budgets' time zone."""

    HOUR = "Hour"
    DAY = "Day"
    MONTH = "Month"


TIME_ZONE_PATTERN = r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+){0,2}$"


def _time_zone(value: str) -> str:
    """An IANA time zone the guard can load (``zoneinfo``)."""
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {value!r} (an IANA name such as Europe/Berlin)") from None
    return value


TimeZone = Annotated[str, Field(pattern=TIME_ZONE_PATTERN, max_length=64), AfterValidator(_time_zone)]
"""An IANA time zone name, e.g. "UTC", "Europe/Berlin", "America/New_York"."""


class BudgetWindow(Model):
    """Tokens and/or dollars per calendar hour, day or month, shared by every replica and revision
    when the guard has a shared ledger. It resets at the start of the next window in timeZone."""

    model_config = ConfigDict(
        json_schema_extra=_cel(("has(self.tokens) || has(self.dollars)", "a budget window needs tokens or dollars"))
    )
    period: CalendarPeriod
    """Hour, Day or Month."""
    tokens: int | None = Field(default=None, ge=1, le=10**12)
    """Tokens (input + output) per window."""
    dollars: Money | None = None
    """Dollars per window."""

    @model_validator(mode="after")
    def _some_limit(self) -> BudgetWindow:
        if self.tokens is None and self.dollars is None:
            raise ValueError("a budget window needs tokens or dollars")
        return self


class TaskBudget(Model):
    """Tokens and/or dollars one task may use (the X-Agentfleet-Task header names a task; without
    it, one request's conversation). Every LLM call of the task reserves its worst case against
    it like the agent's budgets, so concurrent calls of one task cannot pass it together."""

    model_config = ConfigDict(
        json_schema_extra=_cel(("has(self.tokens) || has(self.dollars)", "budgets.perTask needs tokens or dollars"))
    )
    tokens: int | None = Field(default=None, ge=1, le=10**12)
    """Tokens (input + output) per task."""
    dollars: Money | None = None
    """Dollars per task."""

    @model_validator(mode="after")
    def _some_limit(self) -> TaskBudget:
        if self.tokens is None and self.dollars is None:
            raise ValueError("budgets.perTask needs tokens or dollars")
        return self


class Budgets(Model):
    """Limits the guard enforces at run time. Unset means unlimited (within AgentPolicy ceilings)."""

    tokens_per_hour: int | None = Field(default=None, ge=1, le=10**12)
    """Tokens (input + output) per sliding hour: for all replicas together when the guard has a
    shared ledger, else per replica's guard."""
    cost_per_day: Money | None = None
    """Dollars per day in timeZone (UTC by default): for all replicas together when the guard has
    a shared ledger, else per replica's guard; the fleet-wide total is also evaluated."""
    windows: list[BudgetWindow] | None = Field(default=None, max_length=3, json_schema_extra=_map_list("period"))
    """Further budgets per calendar hour, day and/or month (at most one per period)."""
    time_zone: TimeZone = "UTC"
    """Time zone the calendar windows (and costPerDay) are aligned in."""
    soft_limit_percent: int | None = Field(default=None, ge=1, le=99)
    """When a call takes any budget past this share of its limit the guard signals it
    (agentfleet_budget_soft_limit_reached, an audit record) before the hard stop."""
    per_task: TaskBudget | None = None
    """Tokens and/or dollars one task may use (counted by the replica's guard serving it)."""
    max_tool_calls_per_task: int = Field(default=100, ge=1, le=100000)
    """Tool calls allowed in one task."""
    max_iterations_per_task: int = Field(default=50, ge=1, le=100000)
    """LLM calls allowed in one task."""
    max_task_duration: Duration = "15m"
    """Wall-clock limit of one task, from its first call."""
    latency: LatencyBudget = LatencyBudget()
    """Per-call deadline and p99 target."""
    max_concurrent_tasks: int = Field(default=16, ge=1, le=100000)
    """Tasks in flight at once per replica; more are rejected with 429."""
    max_sub_agent_depth: int = Field(default=3, ge=1, le=8)
    """Longest chain of calls between agents this agent takes part in: it makes no call deeper
    than this and serves none (a call from an agent no one called is at depth 1)."""
    max_sub_agent_calls_per_task: int = Field(default=16, ge=1, le=1000)
    """Calls to other agents (permissions.subAgents) one task may make."""


# --------------------------------------------------------------------------- permissions


class EgressRule(Model):
    """Network destinations the agent pod may reach besides DNS and its guard's upstreams."""

    cidr: Cidr
    """Destination network, e.g. "203.0.113.0/24"."""
    ports: list[Annotated[int, Field(ge=1, le=65535)]] | None = Field(default=None, max_length=32)
    """TCP ports; empty means all ports."""


class KubernetesRule(Model):
    """A Kubernetes RBAC rule for the agent's own ServiceAccount (namespaced Role)."""

    api_groups: list[ApiName] = Field(min_length=1, max_length=32)
    """API groups ("" is the core group)."""
    resources: list[ApiName] = Field(min_length=1, max_length=64)
    """Resources, e.g. "pods", "pods/log"."""
    verbs: list[Annotated[str, Field(max_length=63)]] = Field(min_length=1, max_length=16)
    """Verbs, e.g. "get", "list", "watch"."""
    resource_names: list[ApiName] | None = Field(default=None, max_length=64)
    """Restrict to these object names."""


class Permissions(Model):
    """What the agent may do. Nothing is allowed unless listed here and allowed by every
    AgentPolicy covering the namespace."""

    tools: list[ToolName] | None = Field(default=None, max_length=256)
    """Allowed tool names (a subset of agent.tools); unset allows all declared tools."""
    egress: list[EgressRule] | None = Field(default=None, max_length=64)
    """Extra network egress beyond DNS and the guard's upstreams."""
    kubernetes: list[KubernetesRule] | None = Field(default=None, max_length=64)
    """RBAC rules for the agent's ServiceAccount; without them no token is mounted."""
    secrets: list[DnsName] | None = Field(default=None, max_length=64)
    """Secrets the agent container may read through env secretKeyRef."""
    sub_agents: list[DnsName] | None = Field(default=None, max_length=64)
    """AgentDeployments in the same namespace this agent may call."""


# --------------------------------------------------------------------------- guardrails


class Metric(StrEnum):
    """Built-in guardrail metrics (mapped to PromQL over the guard's metrics) or custom PromQL."""

    ERROR_RATE = "errorRate"
    TOOL_ERROR_RATE = "toolErrorRate"
    LOOP_DETECTIONS = "loopDetections"
    COST_PER_TASK = "costPerTask"
    TOKEN_RATE = "tokenRate"
    P99_LATENCY = "p99Latency"
    INJECTION_SUSPICIONS = "injectionSuspicions"
    BUDGET_REJECTIONS = "budgetRejections"
    CUSTOM = "custom"


class Action(StrEnum):
    """What to do when a guardrail rule is breached."""

    SUSPEND = "Suspend"
    ROLLBACK = "Rollback"
    SCALE_TO = "ScaleTo"
    ALERT = "Alert"


class Comparison(StrEnum):
    """How the observed value is compared with the threshold; true means breached."""

    GT = ">"
    GE = ">="
    LT = "<"
    LE = "<="


class GuardrailRule(Model):
    """When ``metric`` compared with ``threshold`` holds for ``for``, take ``action``."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "self.action != 'ScaleTo' || has(self.scaleTo)",
                "action ScaleTo needs scaleTo (a replica count)",
            ),
            ("self.action == 'ScaleTo' || !has(self.scaleTo)", "scaleTo is only valid with action ScaleTo"),
            (
                "self.metric != 'custom' || has(self.query) != has(self.queryRef)",
                "metric custom needs exactly one of query (PromQL) or queryRef (a query an AgentPolicy defines)",
            ),
            (
                "self.metric == 'custom' || (!has(self.query) && !has(self.queryRef))",
                "query and queryRef are only valid with metric custom",
            ),
        )
    )
    name: DnsName
    """Rule name, unique within the AgentDeployment; it appears in reasons and Events."""
    metric: Metric
    """Built-in metric name, or custom with query."""
    query: str | None = Field(default=None, max_length=4096)
    """Custom PromQL; {{namespace}}, {{agent}} and {{revision}} are substituted. It may read only
    this agent's own series: every selector must match namespace="{{namespace}}" and
    agent="{{agent}}" (the evaluator refuses any other query). The result must be grouped by
    (namespace, agent, revision) or be a single value."""
    query_ref: DnsName | None = None
    """Name of a query in a covering AgentPolicy's customQueries (platform-defined PromQL)."""
    comparison: Comparison = Comparison.GT
    """Comparison of observed value against threshold."""
    threshold: Decimal
    """Threshold as a decimal string, e.g. "0.05" for a 5% error rate."""
    for_: Duration = Field(default="0s", alias="for")
    """How long the breach must persist before acting."""
    action: Action
    """What to do on breach."""
    scale_to: int | None = Field(default=None, ge=0, le=10000)
    """Replica count for action ScaleTo."""
    cooldown: Duration = "5m"
    """Minimum time between two actions of this rule."""


class OnMetricsUnavailable(StrEnum):
    """What to do when Prometheus cannot be queried."""

    HOLD = "Hold"
    SUSPEND = "Suspend"


class Analysis(Model):
    """How the evaluator judges this agent."""

    interval: Duration = "15s"
    """Minimum time between two evaluations (the fleet evaluator runs on its own interval)."""
    stabilization_window: Duration = "5m"
    """Time without a breach after which the current revision becomes the stable one."""
    on_metrics_unavailable: OnMetricsUnavailable = OnMetricsUnavailable.HOLD
    """Hold: do nothing and set MetricsAvailable=False. Suspend: fail closed."""


class InjectionMode(StrEnum):
    """What the guard does with a suspected prompt injection in a tool result."""

    OFF = "Off"
    FLAG = "Flag"
    BLOCK = "Block"


class GuardSettings(Model):
    """Run-time behaviour of the guard sidecar."""

    loop_threshold: int = Field(default=3, ge=2, le=1000)
    """Same tool with the same arguments (or the same tool error) this many times in a task ends it."""
    injection: InjectionMode = InjectionMode.FLAG
    """Prompt-injection heuristics on tool results: count only (Flag), reject (Block), or Off."""
    capture_content: bool = False
    """Write full prompts and completions to the audit trail (default: hash and length only)."""


# --------------------------------------------------------------------------- AgentDeployment


class AgentDeploymentSpec(Model):
    """Desired state of an agent deployment."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "!has(self.permissions) || !has(self.permissions.tools) || "
                "self.permissions.tools.all(t, has(self.agent.tools) && "
                "self.agent.tools.exists(x, x.name == t))",
                "permissions.tools may only name tools declared in agent.tools",
            ),
            (
                "!has(self.agent.env) || self.agent.env.all(e, !has(e.secretKeyRef) || "
                "(has(self.permissions) && has(self.permissions.secrets) && "
                "e.secretKeyRef.name in self.permissions.secrets))",
                "agent.env may only reference Secrets listed in permissions.secrets",
            ),
        )
    )
    replicas: int = Field(default=1, ge=0, le=10000)
    """Number of agent pods (scale subresource: kubectl scale and HPAs set this)."""
    suspended: bool = False
    """Manual kill switch: scales to zero and keeps the spec, like CronJob.spec.suspend."""
    agent: AgentSpec
    """The agent's container, model, prompt and tools."""
    budgets: Budgets = Budgets()
    """Run-time limits enforced by the guard."""
    permissions: Permissions = Permissions()
    """What the agent may reach and do."""
    guard: GuardSettings = GuardSettings()
    """Guard sidecar behaviour."""
    guardrails: list[GuardrailRule] | None = Field(default=None, max_length=64, json_schema_extra=_map_list("name"))
    """Rules that suspend, roll back, scale or alert on metric breaches."""
    analysis: Analysis = Analysis()
    """Evaluation settings."""
    revision_history_limit: int = Field(default=10, ge=0, le=1000)
    """Old revisions (ControllerRevisions) to keep for rollback."""


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(Model):
    """A Kubernetes-convention condition."""

    type: str = Field(max_length=64)
    """Ready, Progressing, Suspended, RolledBack, BudgetExceeded, MetricsAvailable or PolicyViolation."""
    status: ConditionStatus
    """True, False or Unknown."""
    observed_generation: int | None = None
    """Spec generation the condition was computed from."""
    reason: str = Field(max_length=128)
    """CamelCase machine-readable reason."""
    message: str = Field(default="", max_length=32768)
    """Human-readable explanation."""
    last_transition_time: str
    """When status last changed (RFC 3339)."""


class Phase(StrEnum):
    PENDING = "Pending"
    PROGRESSING = "Progressing"
    RUNNING = "Running"
    SUSPENDED = "Suspended"
    ROLLED_BACK = "RolledBack"
    DEGRADED = "Degraded"
    POLICY_VIOLATION = "PolicyViolation"


class Breach(Model):
    """The last guardrail breach acted upon."""

    rule: str
    """Rule name."""
    metric: str
    """Metric of the rule."""
    observed_value: str
    """Value seen in Prometheus."""
    threshold: str
    """Threshold of the rule (with its comparison)."""
    revision: str | None = None
    """Revision that breached."""
    time: str
    """When the action was taken (RFC 3339)."""
    action: str
    """Action taken."""


class PendingBreach(Model):
    """A guardrail breaching now but not yet for its ``for`` duration."""

    rule: str
    """Rule name."""
    revision: str
    """Revision breaching."""
    since: str
    """When the breach was first seen (RFC 3339)."""


class AuditAnchor(Model):
    """A guard's audit chain head, copied off its pod by the operator."""

    pod: str
    """The pod whose guard wrote the chain."""
    revision: str | None = None
    """The revision the pod ran."""
    seq: int = Field(ge=0)
    """Sequence number of the newest record the guard had written."""
    hash: str = Field(pattern=r"^[0-9a-f]{24,64}$")
    """Its hash (the first 24 hex digits at least)."""
    time: str
    """When the operator read it (RFC 3339)."""


class Usage(Model):
    """Observed usage, summed over replicas, from Prometheus."""

    spend_today: Money | None = None
    """Dollars spent since 00:00 UTC."""
    tokens_last_hour: int | None = None
    """Tokens in the last hour."""
    updated_at: str | None = None
    """When these numbers were read."""


class AgentDeploymentStatus(Model):
    """Observed state, written by the operator."""

    model_config = ConfigDict(frozen=False)
    observed_generation: int | None = None
    """The spec generation this status describes."""
    replicas: int | None = None
    """Pods that exist (scale subresource)."""
    ready_replicas: int | None = None
    """Pods that are ready."""
    ready: str | None = None
    """Ready pods out of desired, e.g. "2/3" (the READY column of kubectl get)."""
    selector: str | None = None
    """Label selector of the pods (scale subresource; used by HPAs)."""
    phase: Phase | None = None
    """Summary of the state."""
    conditions: list[Condition] | None = Field(default=None, json_schema_extra=_map_list("type"))
    """Standard conditions."""
    current_revision: str | None = None
    """Hash of the revision the Deployment runs."""
    stable_revision: str | None = None
    """Hash of the last revision that passed the stabilization window."""
    revision_started_at: str | None = None
    """When the current revision started (for the stabilization window)."""
    suspended_replicas: int | None = None
    """Replica count to restore on resume after an automatic suspension."""
    last_breach: Breach | None = None
    """The last guardrail breach acted upon."""
    breach_announced: bool | None = None
    """False from the moment lastBreach is recorded until its Event and audit record are out; a
    restarted operator finishes announcing what a crash interrupted. (Apart from lastBreach, which
    never changes once recorded.)"""
    pending_breaches: list[PendingBreach] | None = Field(
        default=None, max_length=64, json_schema_extra=_map_list("rule")
    )
    """Rules breaching now, waiting out their ``for``: recorded so that an operator restart or a
    new leader continues the wait instead of starting it again."""
    audit_anchors: list[AuditAnchor] | None = Field(default=None, max_length=16, json_schema_extra=_map_list("pod"))
    """Each guard's audit chain head as last scraped, newest pods first (at most 16): what
    ``kubectl agentfleet audit`` checks the pods' trails against, out of the agent's reach."""
    usage: Usage | None = None
    """Observed usage."""


class ObjectMeta(Model):
    """The parts of metadata the operator reads; everything else passes through."""

    model_config = ConfigDict(extra="allow")
    name: str = ""
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None


class AgentDeployment(Model):
    """An AI agent deployment: its model, tools, budgets, permissions and rollback rules."""

    model_config = ConfigDict(extra="ignore")
    api_version: Literal["agentfleet.dev/v1alpha1"] = "agentfleet.dev/v1alpha1"
    kind: Literal["AgentDeployment"] = "AgentDeployment"
    metadata: ObjectMeta = ObjectMeta()
    spec: AgentDeploymentSpec
    status: AgentDeploymentStatus | None = None


# --------------------------------------------------------------------------- AgentPolicy


class NamespaceSelector(Model):
    """Label selector over Namespaces (matchLabels only, so admission can evaluate it in CEL)."""

    match_labels: dict[str, Annotated[str, Field(max_length=63)]] | None = Field(default=None, max_length=64)
    """Namespaces whose labels include all of these."""


class BudgetCeilings(Model):
    """Upper bounds for AgentDeployment budgets. An agent must declare a value within each set
    ceiling (an unset budget counts as unlimited and is rejected where a ceiling exists)."""

    tokens_per_hour: int | None = Field(default=None, ge=1, le=10**12)
    """Ceiling on budgets.tokensPerHour."""
    cost_per_day: Money | None = None
    """Ceiling on budgets.costPerDay."""
    max_tool_calls_per_task: int | None = Field(default=None, ge=1, le=100000)
    """Ceiling on budgets.maxToolCallsPerTask."""
    max_iterations_per_task: int | None = Field(default=None, ge=1, le=100000)
    """Ceiling on budgets.maxIterationsPerTask."""
    max_task_duration: Duration | None = None
    """Ceiling on budgets.maxTaskDuration."""
    max_concurrent_tasks: int | None = Field(default=None, ge=1, le=100000)
    """Ceiling on budgets.maxConcurrentTasks."""
    max_replicas: int | None = Field(default=None, ge=0, le=10000)
    """Ceiling on spec.replicas."""
    max_sub_agent_depth: int | None = Field(default=None, ge=1, le=8)
    """Ceiling on budgets.maxSubAgentDepth."""
    max_sub_agent_calls_per_task: int | None = Field(default=None, ge=1, le=1000)
    """Ceiling on budgets.maxSubAgentCallsPerTask."""


class RequiredGuardrail(Model):
    """A guardrail every covered agent must declare."""

    metric: Metric
    """The metric a rule must watch."""
    actions: list[Action] | None = Field(default=None, min_length=1, max_length=4)
    """Acceptable actions (unset: any)."""


class ModelPrice(Model):
    """A price-table entry: overrides what an agent declares for this model."""

    model: str = Field(min_length=1, max_length=128)
    """Model name as in agent.model.name."""
    input_per_million: Money
    """Dollars per million input tokens."""
    output_per_million: Money
    """Dollars per million output tokens."""
    cached_input_per_million: Money | None = None
    """Dollars per million cached input tokens (unset: the input price)."""
    reasoning_per_million: Money | None = None
    """Dollars per million reasoning tokens (unset: the output price)."""


class EndpointRule(Model):
    """Model and tool endpoints an agent may use: a host (exact, or "*.example.com"), or an IP
    range; optionally only some ports. A hostname rule with a CIDR also tells the NetworkPolicy
    where that host lives (a NetworkPolicy cannot match names)."""

    model_config = ConfigDict(
        json_schema_extra=_cel(("has(self.host) || has(self.cidr)", "an endpoint rule needs host or cidr"))
    )
    host: str | None = Field(
        default=None,
        max_length=253,
        pattern=r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$",
    )
    """Hostname, or "*.suffix" for any host under it."""
    cidr: Cidr | None = None
    """IP range the endpoint's address (or the named host) lies in."""
    ports: list[Annotated[int, Field(ge=1, le=65535)]] | None = Field(default=None, max_length=32)
    """Allowed ports (unset: any)."""


class CustomQuery(Model):
    """A platform-defined PromQL query that agents' guardrails may use by name (queryRef)."""

    name: DnsName
    """Name agents refer to."""
    query: str = Field(min_length=1, max_length=4096)
    """PromQL; {{namespace}}, {{agent}} and {{revision}} are substituted per agent."""


class OnLedgerUnavailable(StrEnum):
    """What a guard does while the shared budget ledger cannot be reached."""

    FAIL_CLOSED = "FailClosed"
    LOCAL_ALLOWANCE = "LocalAllowance"


class LocalAllowance(Model):
    """What one replica's guard may spend on its own while the ledger is unreachable. The spend
    is charged to the ledger when it returns; only then is the allowance available again. So
    the budgets can be overshot by at most replicas x allowance during an outage."""

    model_config = ConfigDict(
        json_schema_extra=_cel(("has(self.tokens) || has(self.dollars)", "localAllowance needs tokens or dollars"))
    )
    tokens: int | None = Field(default=None, ge=1, le=10**9)
    """Tokens (input + output, reserved or used) per replica until the ledger returns."""
    dollars: Money | None = None
    """Dollars (reserved or spent) per replica until the ledger returns."""

    @model_validator(mode="after")
    def _some_bound(self) -> LocalAllowance:
        if self.tokens is None and self.dollars is None:
            raise ValueError("localAllowance needs tokens or dollars")
        return self


class LedgerPolicy(Model):
    """How the guards of covered agents behave when the shared budget ledger is unreachable."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            (
                "self.onUnavailable != 'LocalAllowance' || has(self.localAllowance)",
                "onUnavailable LocalAllowance needs localAllowance",
            )
        )
    )
    on_unavailable: OnLedgerUnavailable = OnLedgerUnavailable.FAIL_CLOSED
    """FailClosed: refuse every LLM call (503, retryable) until the ledger answers again.
    LocalAllowance: admit calls against localAllowance per replica, reconciled when it returns."""
    local_allowance: LocalAllowance | None = None
    """The per-replica allowance for LocalAllowance."""

    @model_validator(mode="after")
    def _allowance_given(self) -> LedgerPolicy:
        if self.on_unavailable is OnLedgerUnavailable.LOCAL_ALLOWANCE and self.local_allowance is None:
            raise ValueError("onUnavailable LocalAllowance needs localAllowance")
        return self

    @classmethod
    def strictest(cls, policies: list[LedgerPolicy]) -> LedgerPolicy:
        """What several covering policies allow together: FailClosed if any asks for it (or none
        says anything), else the smallest allowance on each axis."""
        if not policies or any(p.on_unavailable is OnLedgerUnavailable.FAIL_CLOSED for p in policies):
            return cls()
        allowances = [p.local_allowance for p in policies if p.local_allowance is not None]
        tokens = [a.tokens for a in allowances if a.tokens is not None]
        dollars = [a.dollars for a in allowances if a.dollars is not None]
        return cls(
            on_unavailable=OnLedgerUnavailable.LOCAL_ALLOWANCE,
            local_allowance=LocalAllowance(
                tokens=min(tokens) if tokens else None,
                dollars=min(dollars, key=decimal.Decimal) if dollars else None,
            ),
        )


class AlertingPolicy(Model):
    """Where the operator sends the guardrail actions it takes on covered agents (Alert, and
    Suspend, Rollback, ScaleTo), besides the Kubernetes Event and the audit record
    (docs/observability.md). Sent from the operator off the evaluation cycle, each with a 5 s
    timeout and at most 3 attempts; every covering policy's destinations get them."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            ("has(self.alertmanagerUrl) || has(self.webhookUrl)", "alerting needs alertmanagerUrl or webhookUrl")
        )
    )
    alertmanager_url: str | None = Field(default=None, pattern=r"^https?://[^\s]+$", max_length=512)
    """Alertmanager's base URL, e.g. ``http://alertmanager.monitoring:9093``: each action is POSTed
    to its ``/api/v2/alerts`` as an alert named ``AgentfleetGuardrailAction``."""
    webhook_url: str | None = Field(default=None, pattern=r"^https?://[^\s]+$", max_length=512)
    """A URL each action is POSTed to as one JSON object (docs/observability.md has its fields)."""

    @model_validator(mode="after")
    def _some_destination(self) -> AlertingPolicy:
        if self.alertmanager_url is None and self.webhook_url is None:
            raise ValueError("alerting needs alertmanagerUrl or webhookUrl")
        return self


class TelemetryPolicy(Model):
    """OpenTelemetry traces from the guards of covered agents (docs/observability.md): a span per
    LLM call and per tool call, with the OpenTelemetry GenAI ``gen_ai.*`` attributes and the
    guard's decisions, exported over OTLP/HTTP (http/protobuf). Unset in every covering policy:
    no traces."""

    otlp_endpoint: str = Field(pattern=r"^https?://[^\s]+$", max_length=512)
    """The collector's OTLP/HTTP endpoint, e.g. ``http://otel-collector.observability:4318``
    (``/v1/traces`` is appended unless the URL already has a path). The pod's egress must allow it."""
    sample_percent: int = Field(default=100, ge=0, le=100)
    """Percent of traces recorded when the agent sends no ``traceparent`` (one it sends decides)."""
    capture_content: bool = False
    """Record prompts and completions (and tool arguments and results) on the spans, each cut
    at 16 KiB; default: never (only sizes, counts and the guard's decisions)."""


class SpendQuota(Model):
    """Dollars all agents a policy covers may spend together per calendar period, enforced call
    by call by the shared ledger (keyed by the policy's name), like an agent's own budget."""

    dollars: Money
    """Dollars per period for all covered agents together."""
    period: CalendarPeriod = CalendarPeriod.DAY
    """Day or Month (or Hour)."""
    time_zone: TimeZone = "UTC"
    """Time zone the period is aligned in."""


class AgentPolicySpec(Model):
    """Fleet-wide ceilings and allowances, owned by the platform team. Agents in covered
    namespaces must stay within every field that is set; unset fields do not restrict."""

    namespaces: list[DnsName] | None = Field(default=None, max_length=1024)
    """Namespaces covered by name. With namespaceSelector unset too, the policy covers all."""
    namespace_selector: NamespaceSelector | None = None
    """Namespaces covered by labels (in addition to namespaces)."""
    ceilings: BudgetCeilings = BudgetCeilings()
    """Budget ceilings."""
    allowed_models: list[Annotated[str, Field(max_length=128)]] | None = Field(default=None, max_length=256)
    """Model names agents may use."""
    allowed_tools: list[ToolName] | None = Field(default=None, max_length=1024)
    """Tool names agents may declare."""
    allowed_egress: list[Cidr] | None = Field(default=None, max_length=256)
    """CIDRs agents' egress rules must fall within. Unset in every covering policy: the default
    policy decides (built in: no extra egress)."""
    allowed_kubernetes_rules: list[KubernetesRule] | None = Field(default=None, max_length=256)
    """Every rule an agent asks for must be covered by one of these (groups, resources and verbs
    each a subset). Unset: agents may not have Kubernetes permissions at all."""
    required_guardrails: list[RequiredGuardrail] | None = Field(default=None, max_length=64)
    """Guardrails every covered agent must declare."""
    model_prices: list[ModelPrice] | None = Field(default=None, max_length=1024, json_schema_extra=_map_list("model"))
    """Authoritative model prices."""
    suspend_all: bool = False
    """Fleet kill switch: suspends every covered agent within one evaluation interval."""
    allowed_secrets: list[NamePattern] | None = Field(default=None, max_length=256)
    """Secrets agents may reference (model API key, env, permissions.secrets): names, or prefixes
    ending in "*". Unset in every covering policy: the platform's default policy decides (the
    chart's defaultPolicy; built in: none)."""
    allowed_config_maps: list[NamePattern] | None = Field(default=None, max_length=256)
    """ConfigMaps agents may reference (systemPrompt.configMapKeyRef). Unset in every covering
    policy: the platform's default policy decides (built in: none)."""
    allowed_endpoints: list[EndpointRule] | None = Field(default=None, max_length=256)
    """Model and tool endpoints agents may use. Unset in every covering policy: the default
    policy's rules, or any public hostname or address. Loopback, link-local, metadata and the
    cluster's pod and service ranges are reachable only where a rule names them."""
    custom_queries: list[CustomQuery] | None = Field(default=None, max_length=256, json_schema_extra=_map_list("name"))
    """PromQL queries covered agents' guardrails may use by name (queryRef)."""
    spend_quota: SpendQuota | None = None
    """A spend quota shared by every agent this policy covers (needs the shared ledger)."""
    ledger: LedgerPolicy | None = None
    """What covered agents' guards do when the shared budget ledger is unreachable. Unset in every
    covering policy: FailClosed."""
    telemetry: TelemetryPolicy | None = None
    """OpenTelemetry traces from covered agents' guards; the first covering policy by name that
    sets it decides. Unset in every covering policy: no traces."""
    alerting: AlertingPolicy | None = None
    """Alertmanager or a webhook that receives the guardrail actions taken on covered agents."""
    required_approvals: list[RequiredApproval] | None = Field(default=None, max_length=256)
    """Tool calls that wait for a person's decision in every covered agent (docs/approvals.md)."""


class AgentPolicyStatus(Model):
    """Observed state of the policy."""

    model_config = ConfigDict(frozen=False)
    observed_generation: int | None = None
    """Spec generation last processed."""
    covered_agents: int | None = None
    """AgentDeployments this policy covers."""
    violations: int | None = None
    """Covered AgentDeployments currently violating it."""


class AgentPolicy(Model):
    """Fleet-wide ceilings for agents: budgets, tools, egress, Kubernetes permissions, prices."""

    model_config = ConfigDict(extra="ignore")
    api_version: Literal["agentfleet.dev/v1alpha1"] = "agentfleet.dev/v1alpha1"
    kind: Literal["AgentPolicy"] = "AgentPolicy"
    metadata: ObjectMeta = ObjectMeta()
    spec: AgentPolicySpec = AgentPolicySpec()
    status: AgentPolicyStatus | None = None


# --------------------------------------------------------------------------- approvals


class ApprovalState(StrEnum):
    """A person's decision on a held tool call."""

    APPROVED = "Approved"
    DENIED = "Denied"


class ApprovalPhase(StrEnum):
    """Where an AgentApproval stands (``status.phase``, written by the guard that holds the call)."""

    PENDING = "Pending"
    APPROVED = "Approved"
    DENIED = "Denied"
    EXPIRED = "Expired"
    """No decision before the deadline: the call was refused."""
    ABANDONED = "Abandoned"
    """The guard holding the call stopped before a decision: the call failed and never ran."""


class ApprovalRequest(Model):
    """The held call, as the guard recorded it. Immutable: what a person approves is what runs."""

    agent: DnsName
    """The AgentDeployment whose guard holds the call."""
    revision: str = Field(max_length=64)
    """Revision of the agent."""
    pod: str = Field(max_length=253)
    """The pod whose guard holds the call (a restarted guard abandons its pod's pending approvals)."""
    task: str | None = Field(default=None, max_length=256)
    """Task id the agent gave (X-Agentfleet-Task)."""
    tool: str = Field(max_length=200)
    """The tool (``mcp:<server>/<tool>`` for an MCP tool)."""
    arguments: str | None = Field(default=None, max_length=16384)
    """The call's arguments (JSON text, cut at 16 KiB); absent when redacted."""
    arguments_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    """SHA-256 of the full arguments, redacted or not."""
    reason: str | None = Field(default=None, max_length=2048)
    """Why the agent says it makes the call (X-Agentfleet-Reason), if it said."""
    deadline: str = Field(max_length=64)
    """When the call is refused without a decision (RFC 3339)."""


class ApprovalDecision(Model):
    """A person's decision. The admission policy requires ``decidedBy`` to be the identity that
    writes it, and the decision cannot change once recorded."""

    state: ApprovalState
    """Approved or Denied."""
    decided_by: str = Field(min_length=1, max_length=512)
    """The deciding user, exactly as the API server authenticates them."""
    reason: str | None = Field(default=None, max_length=1024)
    """Why (shown to the agent on a denial)."""


class AgentApprovalSpec(Model):
    """A held call and, once a person decides, the decision."""

    model_config = ConfigDict(
        json_schema_extra=_cel(
            ("self.request == oldSelf.request", "spec.request is immutable"),
            (
                "!has(oldSelf.decision) || (has(self.decision) && self.decision == oldSelf.decision)",
                "spec.decision is final once recorded",
            ),
        )
    )
    request: ApprovalRequest
    """The call (written by the guard at creation)."""
    decision: ApprovalDecision | None = None
    """The decision (written once, by an approver)."""


class AgentApprovalStatus(Model):
    """What happened to the held call."""

    model_config = ConfigDict(frozen=False)
    phase: ApprovalPhase | None = None
    """Pending, Approved, Denied, Expired or Abandoned."""
    outcome: str | None = Field(default=None, max_length=64)
    """After the decision: ran, refused, failed."""
    message: str | None = Field(default=None, max_length=1024)
    """Details (the tool's status, why the call failed)."""


class AgentApproval(Model):
    """A tool call held at an agent's guard until a person approves or denies it."""

    model_config = ConfigDict(extra="ignore")
    api_version: Literal["agentfleet.dev/v1alpha1"] = "agentfleet.dev/v1alpha1"
    kind: Literal["AgentApproval"] = "AgentApproval"
    metadata: ObjectMeta = ObjectMeta()
    spec: AgentApprovalSpec
    status: AgentApprovalStatus | None = None
