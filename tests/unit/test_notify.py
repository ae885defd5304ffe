"""Where guardrail actions are sent (evaluator/notify.py): destinations from the covering
policies, the Alertmanager and webhook bodies, and a queue that never makes the cycle wait."""

from __future__ import annotations

import asyncio
import time

import pytest

from agentfleet.api.types import Action, AgentPolicy, AlertingPolicy
from agentfleet.evaluator import metrics
from agentfleet.evaluator.notify import (
    QUEUE_SIZE,
    Destination,
    Notification,
    Notifier,
    alerting_of,
    alertmanager_alerts,
    destinations,
    webhook_body,
)
from hack.harness.kube import free_port

pytestmark = pytest.mark.unit

N = Notification(
    "team-a", "support", Action.ALERT, "warn-loops", "loop_detected", "Alert by guardrail warn-loops", "2", "> 0",
    "abc", "2026-12-04T19:00:00Z",
)  # fmt: skip


def policy(name: str, **spec: object) -> AgentPolicy:
    return AgentPolicy.model_validate({"metadata": {"name": name}, "spec": spec})


def test_every_covering_policys_destinations_once_and_only_valid_urls() -> None:
    policies = [
        policy("b", namespaces=["team-a"], alerting={"webhookUrl": "https://hooks.example.com/x"}),
        policy(
            "a", alerting={"alertmanagerUrl": "http://am.monitoring:9093/", "webhookUrl": "https://hooks.example.com/x"}
        ),
        policy("c", namespaces=["team-b"], alerting={"webhookUrl": "https://other.example.com/"}),
        policy("d", namespaces=["team-a"]),
    ]
    chosen = alerting_of("team-a", policies, {})
    assert destinations(chosen) == [
        Destination("alertmanager", "http://am.monitoring:9093/api/v2/alerts"),
        Destination("webhook", "https://hooks.example.com/x"),
    ]
    before = metrics.NOTIFICATIONS.labels("webhook", "dropped")._value.get()
    assert destinations([AlertingPolicy(webhook_url="http://bad.example.com:99999/")]) == []
    assert metrics.NOTIFICATIONS.labels("webhook", "dropped")._value.get() == before + 1
    with pytest.raises(ValueError, match="alertmanagerUrl or webhookUrl"):
        AlertingPolicy()


def test_alertmanager_and_webhook_bodies() -> None:
    (alert,) = alertmanager_alerts(N)
    assert alert["labels"] == {
        "alertname": "AgentfleetGuardrailAction", "severity": "warning", "namespace": "team-a",
        "agent": "support", "rule": "warn-loops", "action": "Alert", "revision": "abc",
    }  # fmt: skip
    assert alert["startsAt"] == N.time and "endsAt" not in alert
    assert alertmanager_alerts(Notification(**{**N.__dict__, "action": Action.SUSPEND}))[0]["labels"]["severity"] == (
        "critical"
    )
    assert webhook_body(N)["action"] == "Alert" and webhook_body(N)["value"] == "2"


async def test_submit_never_waits_and_a_dead_destination_is_given_up_after_its_attempts() -> None:
    dead = Destination("webhook", f"http://127.0.0.1:{free_port()}/")  # nothing listens
    notifier = Notifier(lambda ns: [dead], timeout=1.0, attempts=2, backoff=0.001)
    failed = metrics.NOTIFICATIONS.labels("webhook", "failed")._value.get()
    dropped = metrics.NOTIFICATIONS.labels("webhook", "dropped")._value.get()
    started = time.monotonic()
    for _ in range(QUEUE_SIZE + 10):
        notifier.submit(N)
    assert time.monotonic() - started < 0.5  # the cycle never waits for delivery
    assert metrics.NOTIFICATIONS.labels("webhook", "dropped")._value.get() >= dropped + 9
    await asyncio.wait_for(notifier.drain(), timeout=60)
    await notifier.close()
    assert metrics.NOTIFICATIONS.labels("webhook", "failed")._value.get() >= failed + QUEUE_SIZE
