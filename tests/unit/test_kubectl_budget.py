"""``kubectl agentfleet budget``'s pure parts: the hierarchy from a guard config, calendar reset
times (DST, odd offsets, month ends), the ledger line, a guard's /readyz, the LAST SEEN column."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml

from agentfleet.api.guardconfig import GuardConfig
from agentfleet.cli.kubectl import budget
from agentfleet.cli.kubectl.budget import BudgetRow, GuardView

pytestmark = pytest.mark.unit

NOW = datetime(2026, 3, 28, 23, 30, tzinfo=UTC)  # Berlin: 00:30 on the 29th, the day clocks go forward


def config(**extra: Any) -> GuardConfig:
    return GuardConfig.model_validate(
        {
            "namespace": "team-a",
            "agent": "support",
            "revision": "abc",
            "model": {"name": "m", "endpoint": "https://api.openai.com/v1"},
            **extra,
        }
    )


def test_calendar_windows_reset_at_the_next_local_boundary() -> None:
    berlin = budget.next_reset("Day", "Europe/Berlin", NOW)
    assert berlin == datetime(2026, 3, 30, 0, 0, tzinfo=ZoneInfo("Europe/Berlin"))
    assert (berlin - NOW).total_seconds() == 22.5 * 3600  # 23 h local day, 30 min already gone
    assert budget.next_reset("Day", "UTC", NOW) == datetime(2026, 3, 29, tzinfo=UTC)
    kolkata = budget.next_reset("Hour", "Asia/Kolkata", NOW)  # +05:30: local hours start at :30 UTC
    assert kolkata.astimezone(UTC) == datetime(2026, 3, 29, 0, 30, tzinfo=UTC)
    assert budget.next_reset("Month", "UTC", datetime(2026, 12, 31, 23, 59, tzinfo=UTC)) == datetime(
        2027, 1, 1, tzinfo=UTC
    )
    assert budget.next_reset("Month", "UTC", datetime(2026, 1, 31, tzinfo=UTC)) == datetime(2026, 2, 1, tzinfo=UTC)
    with pytest.raises(ValueError):
        budget.next_reset("Week", "UTC", NOW)


def test_the_hierarchy_lists_task_agent_and_policy_budgets_with_their_resets() -> None:
    cfg = config(
        budgets={
            "tokensPerHour": 5000,
            "costPerDay": "2.50",
            "timeZone": "Europe/Berlin",
            "windows": [{"period": "Month", "dollars": "40", "tokens": 900000}],
        },
        quotas=[{"policy": "team", "dollars": "100", "period": "Day", "timeZone": "America/New_York"}],
    )
    rows = budget.hierarchy(cfg, NOW)
    assert [(r.level, r.name, r.limit, r.window) for r in rows] == [
        ("task", "iterations", "50", "per task"),
        ("task", "tool_calls", "100", "per task"),
        ("task", "duration", "15m", "per task"),
        ("agent", "tokens_per_hour", "5000 tokens", "sliding hour"),
        ("agent", "cost_per_day", "$2.50", "Day (Europe/Berlin)"),
        ("agent", "tokens_per_month_window", "900000 tokens", "Month (Europe/Berlin)"),
        ("agent", "cost_per_month_window", "$40", "Month (Europe/Berlin)"),
        ("policy/team", "spend_quota", "$100", "Day (America/New_York)"),
    ]
    resets = {r.name: r.resets for r in rows}
    assert resets["tokens_per_hour"] is None and resets["iterations"] is None
    assert resets["cost_per_month_window"] == datetime(2026, 4, 1, tzinfo=ZoneInfo("Europe/Berlin"))
    assert resets["spend_quota"] == datetime(2026, 3, 29, tzinfo=ZoneInfo("America/New_York"))
    assert rows[-1].json()["resets"] == "2026-03-29T00:00:00-04:00"


def test_the_ledger_line_says_where_budgets_are_counted_and_what_an_outage_does() -> None:
    assert "each guard's memory" in budget.ledger_summary(config())
    unenforced = budget.ledger_summary(config(quotas=[{"policy": "team", "dollars": "1"}]))
    assert "NOT enforced" in unenforced
    shared = config(
        ledger={
            "url": "redis://af-ledger.agentfleet-system.svc:6379/0",
            "passwordFile": "/var/run/agentfleet/ledger/password",
            "onUnavailable": "LocalAllowance",
            "localAllowance": {"dollars": "0.10", "tokens": 2000},
        }
    )
    assert budget.ledger_summary(shared) == (
        "shared ledger at af-ledger.agentfleet-system.svc:6379; while it is unreachable: "
        "LocalAllowance (2000 tokens and $0.10 per replica)"
    )
    closed = config(ledger={"url": "redis://10.0.0.5:6379"})
    assert budget.ledger_summary(closed).endswith("while it is unreachable: FailClosed")
    assert "password" not in budget.ledger_summary(shared)


def test_a_guards_readyz_is_read_defensively() -> None:
    ready = {
        "status": "ready",
        "budgets": {
            "ledger": "redis",
            "available": False,
            "pending_settles": 3,
            "local_tokens": 120,
            "local_dollars": "0.0042",
            "levels": {"cost_per_day": "1.25", "tokens_per_hour": 4000},
        },
    }
    view = budget.guard_view("p-1", json.dumps(ready))
    assert (view.ledger, view.available, view.pending_settles, view.local_dollars) == ("redis", False, 3, "0.0042")
    assert view.levels == {"cost_per_day": "1.25", "tokens_per_hour": 4000}
    assert budget.guard_view("p-2", "<html>").error == "/readyz did not answer JSON"
    assert budget.guard_view("p-3", json.dumps({"status": "draining"})).error == "guard is draining"
    assert budget.guard_view("p-4", "[]").error == "/readyz did not answer an object"
    odd = budget.guard_view("p-5", json.dumps({"status": "ready", "budgets": {"available": "yes", "levels": 7}}))
    assert odd.available is None and odd.levels == {} and odd.error is None


def test_last_seen_is_the_highest_level_any_guard_reported() -> None:
    rows = [
        BudgetRow("task", "iterations", "50", "per task"),
        BudgetRow("agent", "cost_per_day", "$2.50", "Day (UTC)"),
        BudgetRow("agent", "tokens_per_hour", "5000 tokens", "sliding hour"),
        BudgetRow("policy/team", "spend_quota", "$100", "Day (UTC)"),
    ]
    views = [
        GuardView("a", levels={"cost_per_day": "1.25", "tokens_per_hour": 4000, "spend_quota": "7"}),
        GuardView("b", levels={"cost_per_day": "1.5", "tokens_per_hour": 300}),
        GuardView("c", error="forbidden"),
    ]
    assert budget.level_cells(rows, views) == ["-", "$1.5", "4000 tokens", "$7"]
    # Two quotas share one name in a guard's levels: neither is shown rather than a wrong one.
    two = [*rows, BudgetRow("policy/org", "spend_quota", "$1000", "Month (UTC)")]
    assert budget.level_cells(two, views)[3:] == ["-", "-"]
    assert budget.level_cells(rows, []) == ["-", "-", "-", "-"]


def test_the_guard_config_comes_from_the_revisions_config_map() -> None:
    cfg = config(budgets={"costPerDay": "1"})
    cm = {"data": {"guard.yaml": yaml.safe_dump(cfg.wire())}}
    assert budget.guard_config_of(cm) == cfg
    for bad in ({}, {"data": {"guard.yaml": "namespace: x"}}, {"data": {"guard.yaml": "{"}}):
        with pytest.raises(ValueError):
            budget.guard_config_of(bad)
