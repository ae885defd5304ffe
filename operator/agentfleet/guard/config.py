"""Loading the guard's configuration and deriving the numbers the hot path needs.

The operator renders a ``GuardConfig`` (the API types' schema) into a ConfigMap; local runs
build the same object from flags. Either way the request handlers never touch strings like
"15m" or "12.50": ``Limits`` converts them once, at start, into seconds and ``Decimal``.

Knobs that are not part of the API contract (retry counts, breaker timing, table sizes) live in
``Tuning``: they are implementation details of this process, settable by flags only, so the
CRD does not grow fields that nobody should need to change.
"""

from __future__ import annotations

import ipaddress
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from agentfleet.api.guardconfig import GuardConfig
from agentfleet.api.units import duration_seconds

TASK_HEADER = "X-Agentfleet-Task"
"""Request header naming the task a call belongs to."""
TOOL_CALL_ID_HEADER = "X-Agentfleet-Tool-Call-Id"
"""Optional header on ``/tools/NAME``: the id of the model tool call being executed."""

MILLION = Decimal(1_000_000)


class ConfigError(ValueError):
    """The configuration cannot be used; the message says which field and why."""


def parse_duration(text: str) -> float:
    """Seconds in a Go-style duration ("500ms", "30s", "1h30m"), as the policy code reads it."""
    try:
        return duration_seconds(text)
    except ValueError:
        raise ConfigError(f"invalid duration {text!r}: expected e.g. 500ms, 30s, 5m, 1h30m") from None


@dataclass(frozen=True, slots=True)
class Tuning:
    """Process-level knobs with safe defaults (flags only; not part of the API)."""

    max_attempts: int = 4
    """Upstream attempts per call (first try plus retries), all within the call's deadline."""
    backoff_base: float = 0.1
    """Seconds; the retry delay is uniform in [0, min(backoff_cap, base * 2**retry)]."""
    backoff_cap: float = 2.0
    """Upper bound of one retry delay, seconds."""
    connect_timeout: float = 5.0
    """Connect timeout per attempt (also bounded by the call deadline)."""
    breaker_threshold: int = 5
    """Consecutive failed upstream attempts that open the breaker."""
    breaker_open_seconds: float = 5.0
    """First open period; doubles on each failed half-open probe."""
    breaker_max_open_seconds: float = 60.0
    """Cap on the open period."""
    max_tasks: int = 10_000
    """Named tasks remembered at once (least recently used are forgotten first)."""
    max_inflight_requests: int = 4096
    """Requests handled at once; more get 503 overloaded (bounds memory)."""
    upstream_connections: int = 512
    """Connection pool size towards the upstream and tools."""
    max_request_bytes: int = 32 * 1024 * 1024
    """Largest request body accepted from the agent."""
    max_response_bytes: int = 64 * 1024 * 1024
    """Largest non-streaming upstream or tool response read."""
    max_sse_line_bytes: int = 8 * 1024 * 1024
    """Largest server-sent event (and line) accepted from the upstream."""
    max_messages: int = 10_000
    """Messages one chat request may carry."""
    max_tools: int = 128
    """Tools one chat request may offer (OpenAI's own bound)."""
    default_completion_tokens: int = 4096
    """Completion tokens reserved when a request sets neither max_tokens nor max_completion_tokens."""
    drain_timeout: float = 30.0
    """Seconds to let in-flight requests finish after SIGTERM."""
    scan_user_content: bool = False
    """Also run the injection heuristics on user messages (tool results are always scanned)."""
    injection_scan_bytes: int = 512 * 1024
    """Longest text scanned for injection (all of it, in windows, at about 2-4 s of CPU per MiB
    in the worst case); a longer tool result is refused (413) unless injection checks are off."""
    ledger_hold_margin: float = 30.0
    """Seconds a reservation in the shared ledger outlives the call's deadline before the ledger
    charges it in full (its guard died or lost the ledger before settling it)."""
    audit_queue: int = 100_000
    """Audit records buffered before the writer; beyond it records are dropped and a gap record
    says how many (the chain stays valid)."""


@dataclass(frozen=True, slots=True)
class ToolInfo:
    """A declared tool as the hot path sees it."""

    name: str
    endpoint: str | None
    max_calls_per_task: int | None


@dataclass(frozen=True, slots=True)
class Limits:
    """``GuardConfig`` converted once into the units the handlers compare against."""

    tokens_per_hour: int | None
    cost_per_day: Decimal | None
    price_in: Decimal
    price_out: Decimal
    price_cached: Decimal
    price_reasoning: Decimal
    max_tool_calls: int
    max_iterations: int
    max_task_duration: float
    call_deadline: float
    max_concurrent_tasks: int
    loop_threshold: int
    tools: Mapping[str, ToolInfo] = field(default_factory=dict)
    allowed: frozenset[str] = frozenset()
    task_tokens: int | None = None
    """Tokens one task may use (budgets.perTask.tokens)."""
    task_nanos: int | None = None
    """Nano-dollars one task may use (budgets.perTask.dollars)."""

    @classmethod
    def from_config(cls, cfg: GuardConfig) -> Limits:
        """Derive limits. The allowlist is the declared tools, narrowed by ``allowed_tools`` if set:
        a tool that is not declared is never allowed."""
        tools = {t.name: ToolInfo(t.name, t.endpoint, t.max_calls_per_task) for t in cfg.tools}
        allowed = frozenset(tools)
        if cfg.allowed_tools is not None:
            allowed &= frozenset(cfg.allowed_tools)
        b = cfg.budgets
        return cls(
            tokens_per_hour=b.tokens_per_hour,
            cost_per_day=Decimal(b.cost_per_day) if b.cost_per_day is not None else None,
            price_in=Decimal(cfg.pricing.input_per_million) / MILLION,
            price_out=Decimal(cfg.pricing.output_per_million) / MILLION,
            price_cached=Decimal(cfg.pricing.cached_input_per_million or cfg.pricing.input_per_million) / MILLION,
            price_reasoning=Decimal(cfg.pricing.reasoning_per_million or cfg.pricing.output_per_million) / MILLION,
            max_tool_calls=b.max_tool_calls_per_task,
            max_iterations=b.max_iterations_per_task,
            max_task_duration=parse_duration(b.max_task_duration),
            call_deadline=parse_duration(b.latency.per_call_deadline),
            max_concurrent_tasks=b.max_concurrent_tasks,
            loop_threshold=cfg.guard.loop_threshold,
            tools=tools,
            allowed=allowed,
            task_tokens=b.per_task.tokens if b.per_task is not None else None,
            task_nanos=math.ceil(Decimal(b.per_task.dollars) * 10**9)
            if b.per_task is not None and b.per_task.dollars is not None
            else None,
        )

    def cost(self, tokens_in: int, tokens_out: int, cached_in: int = 0, reasoning_out: int = 0) -> Decimal:
        """Dollars for what a call used at the effective prices: ``cached_in`` of the input tokens
        at the cached-input price, ``reasoning_out`` of the output tokens at the reasoning price."""
        return (
            self.price_in * (tokens_in - cached_in)
            + self.price_cached * cached_in
            + self.price_out * (tokens_out - reasoning_out)
            + self.price_reasoning * reasoning_out
        )

    def worst_cost(self, tokens_in: int, tokens_out: int) -> Decimal:
        """The most ``tokens_in`` and ``tokens_out`` can cost, whatever the upstream reports as
        cached or reasoning (what a reservation holds)."""
        return (
            max(self.price_in, self.price_cached) * tokens_in + max(self.price_out, self.price_reasoning) * tokens_out
        )


@dataclass(frozen=True, slots=True)
class Listeners:
    """Where the guard listens: the API (loopback only) and the metrics/health port."""

    api_host: str
    api_port: int
    metrics_host: str
    metrics_port: int


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (127.0.0.0/8, ::1) or ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def listeners(cfg: GuardConfig, *, api_port: int | None = None, metrics_port: int | None = None) -> Listeners:
    """The two listeners, checked: the LLM API and /tools are for the agent in the same pod
    only, so their address must be loopback (there is no way to serve them on another one by
    accident); the metrics port is separate and serves no API. Ports 0 pick free ports."""
    out = Listeners(
        cfg.listen_host,
        cfg.listen_port if api_port is None else api_port,
        cfg.metrics_host,
        cfg.metrics_port if metrics_port is None else metrics_port,
    )
    if not is_loopback(out.api_host):
        raise ConfigError(
            f"listenHost {out.api_host!r} is not a loopback address: the LLM API and /tools are served to the "
            "agent in the same pod only (127.0.0.1); Prometheus and probes use metricsHost:metricsPort"
        )
    if out.api_port and out.api_port == out.metrics_port:
        raise ConfigError(f"metricsPort {out.metrics_port} must differ from listenPort {out.api_port}")
    return out


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Parse a YAML or JSON config file into a mapping (validation happens later)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc.strerror or exc}") from exc
    try:
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"config file {p} is not valid {'JSON' if p.suffix == '.json' else 'YAML'}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must contain a mapping, got {type(data).__name__}")
    return data


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def build_config(file_data: Mapping[str, Any] | None, overrides: Mapping[str, Any]) -> GuardConfig:
    """Validate the file (camelCase or snake_case), then apply snake_case overrides from flags.

    The file is validated first and dumped back to Python names so that a flag never ends up
    beside the same field spelled in camelCase.
    """
    try:
        base = GuardConfig.model_validate(file_data).model_dump(exclude_none=True) if file_data else {}
        return GuardConfig.model_validate(_merge(base, overrides))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(root)'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid guard configuration: {problems}") from exc


def read_secret_file(path: str | None, what: str) -> str | None:
    """A secret from a mounted file (None when no file is configured)."""
    if path is None:
        return None
    try:
        value = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"cannot read {what} file {path}: {exc.strerror or exc}") from exc
    if not value:
        raise ConfigError(f"{what} file {path} is empty")
    return value


def read_api_key(path: str | None) -> str | None:
    """The upstream API key from the mounted Secret file (None when no file is configured)."""
    return read_secret_file(path, "API key")
