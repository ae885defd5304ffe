"""Posting Kubernetes Events about an AgentDeployment from outside a kopf handler.

kopf's ``kopf.event`` posts for handlers; the evaluator and other writers that act on their own
schedule use this, so an Event names the component that decided.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from agentfleet.api import names
from agentfleet.kube.client import Kube

REASON_LIMIT = 128
MESSAGE_LIMIT = 1024


async def post_event(
    kube: Kube, body: dict[str, Any], type_: str, reason: str, message: str, component: str = "evaluator"
) -> None:
    """One Event on ``body`` (an AgentDeployment), truncated to the API's limits."""
    meta = body["metadata"]
    now = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    await kube.create(
        {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": body.get("apiVersion", names.API_VERSION),
                "kind": names.AGENT_KIND,
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
            },
            "type": type_,
            "reason": reason[:REASON_LIMIT],
            "message": message[:MESSAGE_LIMIT],
            "source": {"component": f"agentfleet-{component}"},
            "reportingComponent": f"{names.GROUP}/{component}",
            "reportingInstance": "agentfleet-operator",
            "action": "Evaluate",
            "firstTimestamp": now[:19] + "Z",
            "lastTimestamp": now[:19] + "Z",
            "eventTime": now,
            "count": 1,
        }
    )
