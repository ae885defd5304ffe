"""The exposition passes ``promtool check metrics`` and carries the evaluator's contract."""

from __future__ import annotations

import contextlib
import re
from typing import Any

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hack.harness.fake_llm import FakeLLM
from tests.guard.support import USER, Harness, MakeGuard, promtool_check

BASE_LABELS = {"namespace", "agent", "revision", "model"}
CONTRACT = {
    "agentfleet_requests": ("counter", {"outcome"}),
    "agentfleet_tokens": ("counter", {"kind"}),
    "agentfleet_cost_dollars": ("counter", set()),
    "agentfleet_tasks": ("counter", set()),
    "agentfleet_tool_calls": ("counter", {"tool", "outcome"}),
    "agentfleet_loop_detections": ("counter", set()),
    "agentfleet_budget_rejections": ("counter", {"budget"}),
    "agentfleet_injection_suspicions": ("counter", set()),
    "agentfleet_request_duration_seconds": ("histogram", set()),
    "agentfleet_upstream_errors": ("counter", {"reason"}),
    "agentfleet_breaker_state": ("gauge", set()),
}


async def traffic(h: Harness, fake: FakeLLM, tools: list[dict[str, Any]]) -> None:
    client = h.client()
    await client.chat.completions.create(model="x", messages=USER)
    fake.set_default("loop")
    for _ in range(3):
        with contextlib.suppress(openai.APIError):
            await client.chat.completions.create(
                model="x", messages=USER, tools=tools, extra_headers={"X-Agentfleet-Task": "m"}
            )
    fake.set_default("unavailable")
    with pytest.raises(openai.InternalServerError):
        await client.chat.completions.create(model="x", messages=USER)


async def test_metrics_pass_promtool_and_match_the_contract(
    make_guard: MakeGuard, fake: FakeLLM, tools: list[dict[str, Any]]
) -> None:
    h = await make_guard()
    await traffic(h, fake, tools)
    status, headers, text = await h.post("/metrics", None, method="GET")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    code, output = await promtool_check(text)
    assert code == 0 and not output.strip(), output
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name, (kind, extra) in CONTRACT.items():
        family = families[name]
        assert family.type == kind, name
        labels = {k for s in family.samples for k in s.labels if k != "le"}
        assert labels == BASE_LABELS | extra, (name, labels)
    values = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    base = (("agent", "support"), ("model", "gpt-test"), ("namespace", "team-a"), ("revision", "rev1"))

    def v(name: str, **extra: str) -> float:
        return values[(name, tuple(sorted(base + tuple(extra.items()))))]

    assert v("agentfleet_requests_total", outcome="ok") == 3
    assert v("agentfleet_requests_total", outcome="rejected") == 1
    assert v("agentfleet_requests_total", outcome="error") == 1
    assert v("agentfleet_loop_detections_total") == 1
    assert v("agentfleet_upstream_errors_total", reason="http_5xx") == 4
    assert v("agentfleet_tool_calls_total", tool="search", outcome="allowed") == 2
    assert v("agentfleet_budget_rejections_total", budget="cost_per_day") == 0  # pre-created series


async def test_promtool_really_rejects_bad_exposition() -> None:
    """The check above can fail: promtool flags a counter without the _total suffix."""
    code, output = await promtool_check("# HELP bad_counter x\n# TYPE bad_counter counter\nbad_counter 1\n")
    assert code != 0 or re.search(r"counter metrics should have \"_total\" suffix", output), output
    assert re.search(r"_total", output)
