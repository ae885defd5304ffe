"""Stable error codes, and the refusal every check raises.

Agents (and their SDKs) must be able to tell "you are out of budget, stop" from "the upstream
blinked, retry". So every refusal carries a stable ``code``, an HTTP status that means the same
thing OpenAI's would, a retry hint when waiting helps, and whether retrying can help at all.
This module is protocol-neutral: ``httpio`` renders a ``GuardError`` as an OpenAI-style JSON body
(with ``Retry-After`` and ``x-should-retry``, which the official OpenAI SDKs obey: ``false`` stops
their automatic retries for limits that will not clear soon, so no retry storm hits an exhausted
budget); another protocol's adapter renders the same fields its own way.
"""

from __future__ import annotations

from enum import StrEnum


class Code(StrEnum):
    """Stable machine-readable error codes (``error.code`` in the response body)."""

    BUDGET_EXHAUSTED = "budget_exhausted"
    BUDGET_UNAVAILABLE = "budget_unavailable"
    """The shared budget ledger cannot be reached and the policy says fail closed (or this
    replica's local allowance is spent): retry shortly."""
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
    SUB_AGENT_NOT_PERMITTED = "sub_agent_not_permitted"
    """The agent called an agent that is not in its ``permissions.subAgents``."""
    SUB_AGENT_DEPTH = "sub_agent_depth"
    """A call between agents would make the chain deeper than ``maxDepth``."""
    SUB_AGENT_FAN_OUT = "sub_agent_fan_out"
    """The task made all the sub-agent calls it may."""
    PEER_UNAUTHENTICATED = "peer_unauthenticated"
    """A call on the peer port without a valid ServiceAccount token for this agent."""
    PEER_FORBIDDEN = "peer_forbidden"
    """A call on the peer port from an identity that may not call this agent."""
    APPROVAL_DENIED = "approval_denied"
    """A person denied the held tool call (the message names the AgentApproval and the reason)."""
    APPROVAL_TIMEOUT = "approval_timeout"
    """Nobody decided before the approval's deadline: the call was refused."""
    APPROVAL_PENDING = "approval_pending"
    """Non-blocking mode: the call waits for the named AgentApproval; send it again once decided."""
    APPROVAL_UNAVAILABLE = "approval_unavailable"
    """The guard could not ask for or follow a decision (API server unreachable): not run."""
    INTERNAL_ERROR = "internal_error"


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
    def is_rejection(self) -> bool:
        """Policy refusals (outcome ``rejected``) as opposed to upstream failures (``error``)."""
        return self.code not in {
            Code.UPSTREAM_UNAVAILABLE,
            Code.TOOL_UNAVAILABLE,
            Code.INTERNAL_ERROR,
            Code.BUDGET_UNAVAILABLE,
        }


def invalid(message: str) -> GuardError:
    """400 for a request the guard cannot interpret."""
    return GuardError(Code.INVALID_REQUEST, message, 400)
