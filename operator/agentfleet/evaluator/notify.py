"""Guardrail actions sent to where the on-call is: Alertmanager's API or a webhook, as the
covering AgentPolicies' ``spec.alerting`` declares, besides the Kubernetes Event and the audit
record the actor writes anyway.

Delivery never holds up the evaluation cycle: the actor hands a notification to a bounded
queue and goes on; one worker task sends it, each request with a timeout and at most
``ATTEMPTS`` tries. A full queue or a destination that keeps failing drops the notification
(counted in ``agentfleet_operator_notifications_total``, logged): the action itself is already
on the agent's status, in an Event and in the audit trail.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from agentfleet import policy
from agentfleet.api.addresses import parse_endpoint
from agentfleet.api.types import Action, AgentPolicy, AlertingPolicy
from agentfleet.evaluator import metrics

log = logging.getLogger("agentfleet.evaluator.notify")

ALERT_NAME = "AgentfleetGuardrailAction"
ALERTMANAGER_PATH = "/api/v2/alerts"
QUEUE_SIZE = 256
"""Notifications waiting at most; more are dropped (a fleet-wide storm must not grow memory)."""
MAX_DESTINATIONS = 8
"""Destinations one notification goes to at most (covering policies may name several)."""
ATTEMPTS = 3
TIMEOUT = 5.0
"""Seconds for one request, connect included."""
BACKOFF = 0.5
"""Seconds before the second attempt; doubled before each next one."""
SEVERITY = {Action.SUSPEND: "critical", Action.ROLLBACK: "critical"}
"""An alert's severity label by action (else warning)."""


@dataclass(frozen=True)
class Notification:
    """One guardrail action, as the actor recorded it."""

    namespace: str
    agent: str
    action: Action
    rule: str
    reason: str
    message: str
    value: str
    threshold: str
    revision: str
    time: str
    """When it was decided (RFC 3339)."""


@dataclass(frozen=True)
class Destination:
    sink: str
    """``alertmanager`` or ``webhook``."""
    url: str
    """Where to POST (for Alertmanager: its alerts endpoint)."""


def destinations(policies: Iterable[AlertingPolicy]) -> list[Destination]:
    """Where a notification goes: every policy's Alertmanager and webhook, each URL once, at
    most ``MAX_DESTINATIONS``. A URL that is not a valid http(s) endpoint is skipped (counted)."""
    out: list[Destination] = []
    for alerting in policies:
        for sink, url in (("alertmanager", alerting.alertmanager_url), ("webhook", alerting.webhook_url)):
            if url is None:
                continue
            try:
                parse_endpoint(url)
            except ValueError as err:
                metrics.NOTIFICATIONS.labels(sink, "dropped").inc()
                log.warning("alerting %s URL refused: %s", sink, err)
                continue
            dest = Destination(sink, alertmanager_endpoint(url) if sink == "alertmanager" else url)
            if dest not in out:
                out.append(dest)
    return out[:MAX_DESTINATIONS]


def alerting_of(
    namespace: str, policies: Iterable[AgentPolicy], namespace_labels: Mapping[str, str]
) -> list[AlertingPolicy]:
    """The ``alerting`` of every policy covering ``namespace``, by policy name (a stable order)."""
    covering = [p for p in policies if policy.covers(p, namespace, namespace_labels)]
    return [p.spec.alerting for p in sorted(covering, key=lambda p: p.metadata.name) if p.spec.alerting is not None]


def alertmanager_endpoint(base: str) -> str:
    """Alertmanager's v2 alerts endpoint under ``base`` (a base URL, maybe with a route prefix)."""
    base = base.rstrip("/")
    return base if base.endswith(ALERTMANAGER_PATH) else base + ALERTMANAGER_PATH


def alertmanager_alerts(n: Notification) -> list[dict[str, Any]]:
    """The body of ``POST /api/v2/alerts``: one alert, active from the decision on; Alertmanager
    resolves it after its ``resolve_timeout`` (the action is one event, not a state)."""
    return [
        {
            "labels": {
                "alertname": ALERT_NAME,
                "severity": SEVERITY.get(n.action, "warning"),
                "namespace": n.namespace,
                "agent": n.agent,
                "rule": n.rule,
                "action": str(n.action),
                "revision": n.revision,
            },
            "annotations": {
                "summary": f"{n.action} of {n.namespace}/{n.agent} by guardrail {n.rule}",
                "description": n.message,
                "value": n.value,
                "threshold": n.threshold,
                "reason": n.reason,
            },
            "startsAt": n.time,
        }
    ]


def webhook_body(n: Notification) -> dict[str, Any]:
    """The JSON object a webhook receives."""
    return {
        "kind": ALERT_NAME,
        "namespace": n.namespace,
        "agent": n.agent,
        "action": str(n.action),
        "rule": n.rule,
        "reason": n.reason,
        "message": n.message,
        "value": n.value,
        "threshold": n.threshold,
        "revision": n.revision,
        "time": n.time,
    }


class Notifier:
    """The bounded queue and its worker. ``routes(namespace)`` names the destinations (read
    when the notification is sent, from the operator's in-memory policy index)."""

    def __init__(
        self,
        routes: Callable[[str], list[Destination]],
        *,
        timeout: float = TIMEOUT,
        attempts: int = ATTEMPTS,
        backoff: float = BACKOFF,
    ) -> None:
        self.routes = routes
        self.timeout = timeout
        self.attempts = attempts
        self.backoff = backoff
        self._queue: asyncio.Queue[tuple[Notification, list[Destination]]] = asyncio.Queue(QUEUE_SIZE)
        self._worker: asyncio.Task[None] | None = None

    def submit(self, n: Notification) -> None:
        """Queue ``n`` for its destinations; never waits. Called from the event loop."""
        try:
            routes = self.routes(n.namespace)
        except Exception as exc:  # the policy index's trouble must not fail the action
            log.warning("alerting destinations of %s unknown: %s", n.namespace, exc)
            return
        if not routes:
            return
        try:
            self._queue.put_nowait((n, routes))
        except asyncio.QueueFull:
            for dest in routes:
                metrics.NOTIFICATIONS.labels(dest.sink, "dropped").inc()
            log.warning("alerting queue full; %s of %s/%s not sent", n.action, n.namespace, n.agent)
            return
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._run(), name="alerting")

    async def drain(self) -> None:
        """Wait until everything queued so far was sent or given up (tests, shutdown)."""
        await self._queue.join()

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                n, routes = await self._queue.get()
                try:
                    await asyncio.gather(*(self._send(session, n, dest) for dest in routes))
                finally:
                    self._queue.task_done()

    async def _send(self, session: aiohttp.ClientSession, n: Notification, dest: Destination) -> None:
        body: Any = alertmanager_alerts(n) if dest.sink == "alertmanager" else webhook_body(n)
        delay = self.backoff
        problem = ""
        for attempt in range(1, self.attempts + 1):
            try:
                async with session.post(dest.url, json=body, allow_redirects=False) as resp:
                    await resp.read()
                    if resp.status < 300:
                        metrics.NOTIFICATIONS.labels(dest.sink, "sent").inc()
                        return
                    problem = f"HTTP {resp.status}"
                    if 400 <= resp.status < 500 and resp.status != 429:
                        break  # the receiver refuses this body: another try gets the same answer
            except (aiohttp.ClientError, TimeoutError) as exc:
                problem = f"{type(exc).__name__}: {exc}"
            if attempt < self.attempts:
                await asyncio.sleep(delay)
                delay *= 2
        metrics.NOTIFICATIONS.labels(dest.sink, "failed").inc()
        log.warning(
            "%s of %s/%s not delivered to %s %s: %s", n.action, n.namespace, n.agent, dest.sink, dest.url, problem
        )
