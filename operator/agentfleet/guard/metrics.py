"""Prometheus metrics of one guard, on a private registry.

The names are a contract with the fleet evaluator (which queries them with
``sum by (namespace, agent, revision)``), so they are defined in one place. Every series
carries namespace, agent, revision and model; the model label is the configured model (the
guard rewrites the request's ``model``), so an agent cannot blow up cardinality, and tool labels
are limited to declared tool names plus ``_other``. Children for the fixed label sets are bound
once, so the hot path does a dict lookup and an add, not a label resolution.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from agentfleet.audit import hash_parts
from agentfleet.guard.breaker import BreakerState

BASE = ("namespace", "agent", "revision", "model")
OTHER_TOOL = "_other"
BUDGETS = (
    "tokens_per_hour",
    "cost_per_day",
    "tool_calls",
    "iterations",
    "task_duration",
    "concurrency",
    "tool_calls_per_tool",
    "ledger_unavailable",
    "task_tokens",
    "task_cost",
)
UPSTREAM_REASONS = (
    "connect",
    "timeout",
    "reset",
    "truncated",
    "http_429",
    "http_5xx",
    "http_4xx",
    "invalid_response",
    "breaker_open",
)
GENAI_OPERATIONS = ("chat", "embeddings")
"""``gen_ai.operation.name`` of the LLM calls the guard makes (bounded label values)."""
GENAI_LABELS = ("gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model")
"""The OpenTelemetry GenAI metrics' attributes, in Prometheus naming (beside ``BASE``)."""
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
"""Buckets the GenAI semantic conventions advise for ``gen_ai.client.token.usage``."""
OPERATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
"""... for ``gen_ai.client.operation.duration``."""
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
"""... for ``gen_ai.server.time_to_first_token``."""
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


AUDIT_HEAD_SEQ = "agentfleet_audit_head_seq"
AUDIT_HEAD_HASH_HIGH = "agentfleet_audit_head_hash_high"
AUDIT_HEAD_HASH_LOW = "agentfleet_audit_head_hash_low"
AUDIT_HEAD_LABELS = ("namespace", "agent", "revision")


class AuditHeadCollector(Collector):
    """The audit chain's head (the newest record written) as three gauges read from one snapshot,
    so a scrape never pairs one record's seq with another's hash. The operator publishes what
    Prometheus scrapes here on the agent's status, where neither the agent nor the guard can
    rewrite it: an anchor for ``kubectl agentfleet audit``."""

    def __init__(self, labels: Sequence[str], head: Callable[[], tuple[int, str] | None]) -> None:
        self._labels = list(labels)
        self._head = head

    def collect(self) -> Iterator[GaugeMetricFamily]:
        head = self._head()
        if head is None:
            return
        seq, digest_hex = head
        high, low = hash_parts(digest_hex)
        for name, value, what in (
            (AUDIT_HEAD_SEQ, seq, "Sequence number of the newest audit record written."),
            (AUDIT_HEAD_HASH_HIGH, high, "Bits 0-47 of the newest audit record's hash."),
            (AUDIT_HEAD_HASH_LOW, low, "Bits 48-95 of the newest audit record's hash."),
        ):
            family = GaugeMetricFamily(name, what, labels=AUDIT_HEAD_LABELS)
            family.add_metric(self._labels, float(value))
            yield family


class GuardMetrics:
    """All guard metrics with pre-bound children."""

    def __init__(
        self, namespace: str, agent: str, revision: str, model: str, tools: list[str], budgets: Sequence[str] = ()
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        base = (namespace, agent, revision, model)
        self._base = base
        self._tools = frozenset(tools)
        self.requests = Counter(
            "agentfleet_requests", "LLM API requests by outcome (ok, error, rejected).", [*BASE, "outcome"], registry=r
        )
        self.tokens = Counter("agentfleet_tokens", "Tokens used, by kind (input, output).", [*BASE, "kind"], registry=r)
        self.cost = Counter("agentfleet_cost_dollars", "Cost in US dollars at the configured price.", BASE, registry=r)
        self.tasks = Counter("agentfleet_tasks", "Tasks started.", BASE, registry=r)
        self.tool_calls = Counter(
            "agentfleet_tool_calls",
            "Tool calls by tool and outcome (allowed, refused, error).",
            [*BASE, "tool", "outcome"],
            registry=r,
        )
        self.loops = Counter("agentfleet_loop_detections", "Tasks ended because a loop was detected.", BASE, registry=r)
        self.budget_rejections = Counter(
            "agentfleet_budget_rejections", "Requests rejected by a budget or cap.", [*BASE, "budget"], registry=r
        )
        self.injections = Counter(
            "agentfleet_injection_suspicions",
            "Tool results (or user messages) that look like prompt injection.",
            BASE,
            registry=r,
        )
        self.duration = Histogram(
            "agentfleet_request_duration_seconds",
            "Duration of LLM API requests through the guard, seconds.",
            BASE,
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.upstream_errors = Counter(
            "agentfleet_upstream_errors", "Failed upstream attempts by reason.", [*BASE, "reason"], registry=r
        )
        self.breaker = Gauge(
            "agentfleet_breaker_state", "Upstream circuit breaker: 0 closed, 1 half-open, 2 open.", BASE, registry=r
        )
        self.inflight = Gauge("agentfleet_inflight_requests", "Requests being handled now.", BASE, registry=r)
        self.audit_dropped = Counter(
            "agentfleet_audit_dropped_records",
            "Audit records dropped because the writer fell behind.",
            BASE,
            registry=r,
        )
        self.soft_limit_reached = Gauge(
            "agentfleet_budget_soft_limit_reached",
            "1 while a budget's current window is past its soft limit (budgets.softLimitPercent), else 0.",
            [*BASE, "budget"],
            registry=r,
        )
        self.ledger_available = Gauge(
            "agentfleet_ledger_available",
            "1 while the shared budget ledger answers, 0 while it does not (absent: no shared ledger configured).",
            BASE,
            registry=r,
        )
        self.ledger_errors = Counter(
            "agentfleet_ledger_errors", "Failed or timed-out operations on the shared budget ledger.", BASE, registry=r
        )
        self.ledger_local = Counter(
            "agentfleet_ledger_local_calls",
            "Calls admitted on this replica's local allowance while the shared ledger was unreachable.",
            BASE,
            registry=r,
        )

        # The OpenTelemetry GenAI semantic-convention metrics, under their Prometheus names
        # (dots to underscores, the unit "s" as _seconds); errors are not a label (their
        # reasons are in agentfleet_requests and the audit trail), so the series stay bounded.
        self.genai_tokens = Histogram(
            "gen_ai_client_token_usage",
            "gen_ai.client.token.usage: tokens used per LLM call, by gen_ai_token_type (input, output).",
            [*BASE, *GENAI_LABELS, "gen_ai_token_type"],
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.genai_duration = Histogram(
            "gen_ai_client_operation_duration_seconds",
            "gen_ai.client.operation.duration: LLM calls through the guard that reached the upstream, seconds.",
            [*BASE, *GENAI_LABELS],
            buckets=OPERATION_BUCKETS,
            registry=r,
        )
        self.genai_ttft = Histogram(
            "gen_ai_server_time_to_first_token_seconds",
            "gen_ai.server.time_to_first_token: from the request to the stream's first event, seconds.",
            [*BASE, *GENAI_LABELS],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.req = {o: self.requests.labels(*base, o) for o in ("ok", "error", "rejected")}
        self.tok_in = self.tokens.labels(*base, "input")
        self.tok_out = self.tokens.labels(*base, "output")
        self.cost_c = self.cost.labels(*base)
        self.tasks_c = self.tasks.labels(*base)
        self.loops_c = self.loops.labels(*base)
        self.budget = {b: self.budget_rejections.labels(*base, b) for b in (*BUDGETS, *budgets)}
        self.soft_limit = {b: self.soft_limit_reached.labels(*base, b) for b in budgets}
        self.injections_c = self.injections.labels(*base)
        self.duration_h = self.duration.labels(*base)
        self.upstream = {u: self.upstream_errors.labels(*base, u) for u in UPSTREAM_REASONS}
        self.breaker_g = self.breaker.labels(*base)
        self.inflight_g = self.inflight.labels(*base)
        self.audit_dropped_c = self.audit_dropped.labels(*base)
        self.tool = {
            (t, o): self.tool_calls.labels(*base, t, o)
            for t in (*self._tools, OTHER_TOOL)
            for o in ("allowed", "refused", "error")
        }
        self.breaker_g.set(BreakerState.CLOSED)
        self._base = base

    def bind_genai(self, provider: str, embeddings_model: str | None = None) -> None:
        """Bind the GenAI series' children: the provider is the guard's one upstream, the request
        model the pinned one (the embeddings model for embeddings)."""
        models = {"chat": self._base[3], "embeddings": embeddings_model or self._base[3]}
        self.genai_tokens_h = {
            (op, kind): self.genai_tokens.labels(*self._base, op, provider, models[op], kind)
            for op in GENAI_OPERATIONS
            for kind in ("input", "output")
        }
        self.genai_duration_h = {
            op: self.genai_duration.labels(*self._base, op, provider, models[op]) for op in GENAI_OPERATIONS
        }
        self.genai_ttft_h = {
            op: self.genai_ttft.labels(*self._base, op, provider, models[op]) for op in GENAI_OPERATIONS
        }

    def bind_ledger(self) -> None:
        """Create the shared ledger's series (only guards that have one export them)."""
        self.ledger_available_g = self.ledger_available.labels(*self._base)
        self.ledger_errors_c = self.ledger_errors.labels(*self._base)
        self.ledger_local_c = self.ledger_local.labels(*self._base)

    def tool_call(self, tool: str, outcome: str) -> None:
        """Count a tool call decision; undeclared tool names are folded into ``_other``."""
        self.tool[(tool if tool in self._tools else OTHER_TOOL, outcome)].inc()

    def publish_audit_head(self, head: Callable[[], tuple[int, str] | None]) -> None:
        self.registry.register(AuditHeadCollector(self._base[:3], head))

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
