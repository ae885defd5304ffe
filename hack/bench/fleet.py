"""The benchmark fleet: agent manifests, and a synthetic exporter of their guards' metrics.

Every benchmark agent is the integration tests' manifest (``hack.harness.agents.agent``, one
replica) with five guardrail rules of five metric kinds and fleet budgets, so the evaluator sends
5 + 3 queries per cycle whatever N is.

The exporter (``python -m hack.bench.fleet --agents FILE --port P``) serves, for every agent, the
series a healthy, quiet guard would have (requests, tokens, cost, tasks, loop detections, latency
buckets; constant counters), labelled with namespace/agent/revision like the real guards. Prometheus
scrapes it through file-SD, so at N = 5,000 every evaluator query returns thousands of series, as it
would for a real fleet, without running 5,000 guard processes on a 2-core machine.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import sys
from pathlib import Path
from typing import Any

from agentfleet.api.types import AgentDeployment
from agentfleet.render import revision_hash
from hack.harness.agents import BIG_BUDGETS
from hack.harness.agents import agent as base_agent

GUARDRAILS = [
    {
        "name": "stop-loops",
        "metric": "loopDetections",
        "threshold": "0",
        "for": "0s",
        "action": "Suspend",
        "cooldown": "10m",
    },
    {"name": "errors", "metric": "errorRate", "threshold": "0.5", "for": "30s", "action": "Rollback"},
    {"name": "tokens", "metric": "tokenRate", "threshold": "100000", "for": "1m", "action": "Suspend"},
    {"name": "cost", "metric": "costPerTask", "threshold": "5", "action": "Alert"},
    {"name": "latency", "metric": "p99Latency", "threshold": "60", "for": "1m", "action": "Alert"},
]


def manifest(
    name: str, namespace: str, prompt: str = "You are helpful.", endpoint: str | None = None, replicas: int = 1
) -> dict[str, Any]:
    return base_agent(
        name,
        namespace,
        endpoint=endpoint or None,
        prompt=prompt,
        replicas=replicas,
        guardrails=copy.deepcopy(GUARDRAILS),
        budgets=dict(BIG_BUDGETS),
        # a one-off promotion of 5,000 revisions is not "idle"; keep it out of the window
        analysis={"stabilizationWindow": "1h"},
    )


def revision_of(body: dict[str, Any]) -> str:
    return revision_hash(AgentDeployment.model_validate({**body, "metadata": {**body["metadata"], "uid": "x"}}).spec)


# ----------------------------------------------------------------------------- synthetic exporter

BUCKETS = ("0.1", "0.5", "1", "5", "+Inf")


def exposition(agents: list[tuple[str, str, str]]) -> bytes:
    """Prometheus text format for quiet, healthy guards (counters stay constant)."""
    fams: dict[str, list[str]] = {
        k: []
        for k in (
            "agentfleet_requests_total",
            "agentfleet_tool_calls_total",
            "agentfleet_loop_detections_total",
            "agentfleet_tokens_total",
            "agentfleet_cost_dollars_total",
            "agentfleet_tasks_total",
            "agentfleet_request_duration_seconds_bucket",
        )
    }
    for ns, name, rev in agents:
        lb = f'namespace="{ns}",agent="{name}",revision="{rev}",pod="{name}-0"'
        fams["agentfleet_requests_total"].append(f'agentfleet_requests_total{{{lb},outcome="ok"}} 120')
        fams["agentfleet_requests_total"].append(f'agentfleet_requests_total{{{lb},outcome="error"}} 0')
        fams["agentfleet_tool_calls_total"].append(f'agentfleet_tool_calls_total{{{lb},outcome="ok"}} 40')
        fams["agentfleet_loop_detections_total"].append(f"agentfleet_loop_detections_total{{{lb}}} 0")
        fams["agentfleet_tokens_total"].append(f'agentfleet_tokens_total{{{lb},kind="input"}} 30000')
        fams["agentfleet_cost_dollars_total"].append(f"agentfleet_cost_dollars_total{{{lb}}} 0.02")
        fams["agentfleet_tasks_total"].append(f'agentfleet_tasks_total{{{lb},outcome="completed"}} 40')
        for le, count in zip(BUCKETS, (80, 118, 120, 120, 120), strict=True):
            fams["agentfleet_request_duration_seconds_bucket"].append(
                f'agentfleet_request_duration_seconds_bucket{{{lb},le="{le}"}} {count}'
            )
    lines = []
    for fam, samples in fams.items():
        base = fam.removesuffix("_bucket")
        lines.append(f"# TYPE {base} {'histogram' if fam.endswith('_bucket') else 'counter'}")
        lines.extend(samples)
    return ("\n".join(lines) + "\n").encode()


def main(argv: list[str]) -> int:
    from aiohttp import web

    p = argparse.ArgumentParser()
    p.add_argument("--agents", type=Path, required=True, help="JSON list of [namespace, name, revision]")
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args(argv)
    body = exposition([tuple(a) for a in json.loads(args.agents.read_text())])

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=body, content_type="text/plain", charset="utf-8")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    print(f"exporter serving {len(body)} bytes", flush=True)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)
    return 0


if __name__ == "__main__":
    asyncio.set_event_loop_policy(None)
    sys.exit(main(sys.argv[1:]))
