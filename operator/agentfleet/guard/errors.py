"""Stable error codes and their OpenAI-style responses.

Agents (and their SDKs) must be able to tell "you are out of budget, stop" from "the upstream
blinked, retry". So every refusal carries a stable ``code``, an HTTP status that means the same
thing OpenAI's would, ``Retry-After`` when waiting helps, and ``x-should-retry`` which the
official OpenAI SDKs obey: ``false`` stops the SDK's automatic retries for limits that will not
clear soon (a retry storm against an exhausted budget is exactly the collapse we prevent).
"""

from __future__ import annotations

import json
import math
from enum import StrEnum

from aiohttp import web


class Code(StrEnum):
    """Stable machine-readable error codes (``error.code`` in the response body)."""

    BUDGET_EXHAUSTED = "budget_exhausted"
    TOOL_CALL_LIMIT = "tool_call_limit"
    ITERATION_LIMIT = "iteration_limit"
    TASK_DURATION_EXCEEDED = "task_duration_exceeded"
    CONCURRENCY_LIMIT = "concurrency_limit"
    LOOP_DETECTED = "loop_detected"
    TOOL_NOT_PERMITTED = "tool_not_permitted"
    TOOL_NOT_FOUND = "tool_not_found"
    TOOL_UNAVAILABLE = "tool_unavailable"
    INJECTION_DETECTED = "injection_detected"
    UPSTREAM_UNAVAILABLE = "upstream_unavailable"
    INVALID_REQUEST = "invalid_request"
    OVERLOADED = "overloaded"
    INTERNAL_ERROR = "internal_error"


_TYPES = {400: "invalid_request_error", 403: "permission_error", 404: "not_found_error", 429: "rate_limit_error"}


class GuardError(Exception):
    """A refusal by the guard; ``response()`` renders it for the agent."""

    def __init__(
        self,
        code: Code,
        message: str,
        status: int,
        *,
        retry_after: float | None = None,
        should_retry: bool = False,
        budget: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.retry_after = retry_after
        self.should_retry = should_retry
        self.budget = budget
        """Label for ``agentfleet_budget_rejections_total`` when a budget or cap refused it."""

    @property
    def type(self) -> str:
        """OpenAI-style error type derived from the status."""
        return _TYPES.get(self.status, "server_error" if self.status >= 500 else "invalid_request_error")

    @property
    def is_rejection(self) -> bool:
        """Policy refusals (outcome ``rejected``) as opposed to upstream failures (``error``)."""
        return self.code not in {Code.UPSTREAM_UNAVAILABLE, Code.TOOL_UNAVAILABLE, Code.INTERNAL_ERROR}

    def body(self) -> dict[str, dict[str, str]]:
        """The OpenAI error object."""
        return {"error": {"message": self.message, "type": self.type, "code": self.code.value}}

    def headers(self) -> dict[str, str]:
        """Retry-After (whole seconds, at least 1) when meaningful, and x-should-retry."""
        headers = {"x-should-retry": "true" if self.should_retry else "false"}
        if self.retry_after is not None:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after)))
        return headers

    def response(self) -> web.Response:
        """The HTTP response for the agent."""
        return web.Response(
            status=self.status,
            body=json.dumps(self.body()).encode(),
            content_type="application/json",
            headers=self.headers(),
        )

    def sse_event(self) -> bytes:
        """The error as a server-sent event, for failures after a stream has started; the
        OpenAI SDKs raise ``APIError`` on it."""
        return b"data: " + json.dumps(self.body()).encode() + b"\n\n"


def invalid(message: str) -> GuardError:
    """400 for a request the guard cannot interpret."""
    return GuardError(Code.INVALID_REQUEST, message, 400)
