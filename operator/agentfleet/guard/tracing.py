"""OpenTelemetry traces of the guard's calls, in the OpenTelemetry GenAI semantic conventions.

Why here, and why this way: the guard is where an agent's model and tool calls are decided, so a
span per call that carries the guard's decisions (allowed or refused and why, the budget reserved
and settled, loop and injection verdicts) shows the chain behind each action in the tracing
backend the platform team already runs. ``core.CallLog`` and ``core.ToolLog`` open and close the
spans, so every protocol adapter gets them without code of its own; the checks add their verdicts
as events on the current call's span (``event``), without a span argument threaded through them.

- Off by default: without ``telemetry`` in the config, ``Tracing`` is inert, the OpenTelemetry
  SDK is not even imported, and every hook is one attribute test.
- The agent's own span is the parent when it sends W3C ``traceparent`` (``incoming``); a tool
  call it sends without one is the child of the LLM span that issued the call (by call id), and
  one it sends with one is linked to that LLM span.
- Never blocking the event loop: spans are queued by a ``BatchSpanProcessor`` (bounded queue,
  dropped when full) and exported by its thread with the official OTLP/HTTP exporter, with a
  timeout; shutdown (which flushes) runs in a thread.
- No content unless the policy opts in (``telemetry.captureContent``); even then a value is
  bounded (``MAX_CONTENT``).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, Status, StatusCode

from agentfleet.api.types import Provider, TelemetryPolicy

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider

PROVIDER_NAMES = {
    Provider.OPENAI: "openai",
    Provider.AZURE_OPENAI: "azure.ai.openai",
    Provider.ANTHROPIC: "anthropic",
}
"""``gen_ai.provider.name`` (and the older ``gen_ai.system``) of each model provider."""
MAX_CONTENT = 16 * 1024
"""Longest content value recorded on a span (characters), when content capture is on."""
MAX_ISSUED = 4096
"""Tool call ids remembered with the LLM span that issued them (oldest forgotten first)."""
QUEUE_SIZE = 2048
"""Spans waiting for export; more are dropped (the SDK counts and logs them), never awaited."""
EXPORT_TIMEOUT = 10.0
"""Seconds one OTLP export may take (in the processor's thread)."""

_INCOMING: ContextVar[Context | None] = ContextVar("agentfleet_trace_incoming", default=None)
_CURRENT: ContextVar[Span | None] = ContextVar("agentfleet_trace_current", default=None)


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL of a collector endpoint: ``/v1/traces`` appended to a bare one."""
    path = urlsplit(endpoint).path
    return endpoint.rstrip("/") + "/v1/traces" if path in ("", "/") else endpoint


def bounded(value: Any) -> str:
    """Content as a span attribute: text as is, anything else as JSON, cut at ``MAX_CONTENT``."""
    if isinstance(value, bytes):
        text = value.decode("utf-8", "replace")
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= MAX_CONTENT else text[:MAX_CONTENT] + "...(truncated)"


def current() -> Span | None:
    """The span of the call this request is handling (None: tracing off, or no call yet)."""
    return _CURRENT.get()


def event(name: str, **attributes: Any) -> None:
    """Add a decision to the current call's span (a no-op without one). None values are left out."""
    span = _CURRENT.get()
    if span is not None:
        span.add_event(name, {k: v for k, v in attributes.items() if v is not None})


class Tracing:
    """The spans of one guard process (inert when ``cfg`` is None)."""

    def __init__(
        self,
        cfg: TelemetryPolicy | None,
        resource: Mapping[str, str],
        provider: Provider,
        *,
        queue_size: int = QUEUE_SIZE,
        schedule_delay_ms: int = 1000,
    ) -> None:
        self.enabled = cfg is not None
        self.capture = cfg is not None and cfg.capture_content
        self.provider_name = PROVIDER_NAMES.get(provider, str(provider))
        self._issued: OrderedDict[str, SpanContext] = OrderedDict()
        self._provider: TracerProvider | None = None
        self._tracer: trace.Tracer | None = None
        if cfg is None:
            return
        # Only guards that trace load the SDK and the exporter.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

        self._provider = TracerProvider(
            resource=Resource.create(dict(resource)),
            sampler=ParentBased(TraceIdRatioBased(cfg.sample_percent / 100)),
        )
        self._provider.add_span_processor(
            BatchSpanProcessor(
                OTLPSpanExporter(endpoint=traces_url(cfg.otlp_endpoint), timeout=EXPORT_TIMEOUT),
                max_queue_size=queue_size,
                max_export_batch_size=min(512, queue_size),
                schedule_delay_millis=schedule_delay_ms,
                export_timeout_millis=int(EXPORT_TIMEOUT * 1000),
            )
        )
        self._tracer = self._provider.get_tracer("agentfleet.guard")

    # ------------------------------------------------------------------ propagation

    @contextmanager
    def incoming(self, headers: Mapping[str, str]) -> Iterator[None]:
        """Make the agent's ``traceparent`` (W3C trace context) the parent of the spans this
        request opens."""
        if self._tracer is None or "traceparent" not in headers:
            yield
            return
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        token = _INCOMING.set(TraceContextTextMapPropagator().extract(headers))
        try:
            yield
        finally:
            _INCOMING.reset(token)

    # ------------------------------------------------------------------ spans

    def start_llm(self, operation: str, model: str) -> Span | None:
        """The span of one LLM call (``chat`` or ``embeddings``), current until the request ends."""
        if self._tracer is None:
            return None
        span = self._tracer.start_span(
            f"{operation} {model}",
            context=_INCOMING.get(),
            kind=SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": operation,
                "gen_ai.provider.name": self.provider_name,
                "gen_ai.system": self.provider_name,
                "gen_ai.request.model": model,
            },
        )
        _CURRENT.set(span)
        return span

    def start_tool(self, name: str, call_id: str | None) -> Span | None:
        """The span of one tool call the agent makes through the guard (``execute_tool``)."""
        if self._tracer is None:
            return None
        issuer = self._issued.get(call_id) if call_id else None
        parent = _INCOMING.get()
        links = [Link(issuer)] if issuer is not None and parent is not None else None
        if parent is None and issuer is not None:  # the issuing LLM span is the parent, not a link
            parent = trace.set_span_in_context(trace.NonRecordingSpan(issuer))
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": name,
            "gen_ai.tool.type": "extension" if name.startswith("mcp:") else "function",
        }
        if call_id:
            attributes["gen_ai.tool.call.id"] = call_id
        span = self._tracer.start_span(
            f"execute_tool {name}",
            context=parent,
            kind=SpanKind.INTERNAL,
            attributes=attributes,
            links=links,
        )
        _CURRENT.set(span)
        return span

    def issued(self, span: Span | None, call_id: str | None) -> None:
        """Remember which LLM span issued a tool call, for the tool call's span."""
        if span is None or not call_id:
            return
        self._issued[call_id] = span.get_span_context()
        self._issued.move_to_end(call_id)
        while len(self._issued) > MAX_ISSUED:
            self._issued.popitem(last=False)

    def content(self, span: Span | None, key: str, value: Any) -> None:
        """Record content on a span, only when the policy opted in."""
        if span is not None and self.capture and value is not None:
            span.set_attribute(key, bounded(value))

    def shutdown(self) -> None:
        """Flush and stop the exporter (blocking: run it in a thread)."""
        if self._provider is not None:
            self._provider.shutdown()


def end(
    span: Span,
    *,
    decision: str,
    reason: str | None,
    detail: str | None,
    task: str | None,
    attributes: Mapping[str, Any],
) -> None:
    """Close a call's span with the guard's decision (``allow``, ``reject``/``refuse``, ``error``)."""
    span.set_attribute("agentfleet.decision", decision)
    if reason is not None:
        span.set_attribute("agentfleet.reason", reason)
    if task is not None:
        span.set_attribute("agentfleet.task.id", task)
        span.set_attribute("gen_ai.conversation.id", task)
    for key, value in attributes.items():
        if value is not None:
            span.set_attribute(key, value)
    if decision == "allow":
        span.set_status(Status(StatusCode.OK))
    else:
        span.set_attribute("error.type", reason or "error")
        span.set_status(Status(StatusCode.ERROR, (detail or reason or "error")[:512]))
    span.end()


def response_facts(data: Any) -> tuple[str | None, list[str]]:
    """The model that answered and why it stopped, from a response of any protocol the guard
    speaks: OpenAI chat (``choices[].finish_reason``), Responses (``status``, or the reason it is
    incomplete), Anthropic Messages (``stop_reason``)."""
    if not isinstance(data, dict):
        return None, []
    model = data.get("model")
    reasons: list[str] = []
    choices = data.get("choices")
    if isinstance(choices, list):
        reasons = [
            c["finish_reason"] for c in choices if isinstance(c, dict) and isinstance(c.get("finish_reason"), str)
        ]
    elif isinstance(data.get("stop_reason"), str):
        reasons = [data["stop_reason"]]
    elif isinstance(data.get("status"), str):
        details = data.get("incomplete_details")
        why = details.get("reason") if isinstance(details, dict) else None
        reasons = [why if isinstance(why, str) else data["status"]]
    return (model[:128] if isinstance(model, str) else None), [r[:64] for r in reasons[:16]]


def calls_attributes(calls: Sequence[tuple[str, str | None]]) -> dict[str, Any]:
    """The tool calls a response carried, as span attributes (names and ids in order)."""
    return {
        "agentfleet.tool_calls.names": [name for name, _ in calls],
        "agentfleet.tool_calls.ids": [cid or "" for _, cid in calls],
    }
