"""``kubectl agentfleet budget NAME``: the budgets one agent's guards enforce, level by level,
when each window resets, and what each guard last saw of the shared ledger.

Where each number comes from, and why there:

- **The hierarchy and its limits** come from the guard config the operator rendered for the
  running revision (ConfigMap ``NAME-guard-REVISION``): exactly what the guards enforce,
  including the covering AgentPolicies' spend quotas and their outage behaviour, without the
  user needing to read AgentPolicies (cluster-scoped) or work out which of them cover the
  namespace.
- **The levels** come from each running guard's ``/readyz`` (on its metrics port, through the
  API server's pod proxy, so ``pods/proxy`` get in the namespace is needed): whether the ledger
  answers, the settles it has queued, what it spent on its local allowance, and each budget's
  level (used + held) *as of that guard's last reservation*. A fresh number would need the
  ledger itself, and the plugin never talks to Redis: its user does not hold the ledger's
  password and must not (it guards every team's budgets).
- **Reset times** are computed here from the windows: calendar windows reset at the start of
  the next hour, day or month in their time zone; the sliding hour never resets as a whole.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import yaml
from pydantic import ValidationError

from agentfleet.api.guardconfig import GuardConfig

GUARD_YAML = "guard.yaml"
PER_TASK = "per task"
SLIDING = "sliding hour"


@dataclass(frozen=True)
class BudgetRow:
    """One budget of the hierarchy."""

    level: str
    """``task``, ``agent`` or ``policy/NAME``."""
    name: str
    """The guard's name for it (its ``budget`` metric label, the key in /readyz levels)."""
    limit: str
    window: str
    resets: datetime | None = None

    def json(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "budget": self.name,
            "limit": self.limit,
            "window": self.window,
            "resets": self.resets.isoformat() if self.resets else None,
        }


@dataclass(frozen=True)
class GuardView:
    """One pod's guard, as its /readyz describes it (None fields: it did not say)."""

    pod: str
    ledger: str | None = None
    """``redis`` (shared) or ``memory`` (this replica alone)."""
    available: bool | None = None
    pending_settles: int | None = None
    local_tokens: int | None = None
    local_dollars: str | None = None
    levels: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    def json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


def guard_config_of(config_map: Mapping[str, Any]) -> GuardConfig:
    """The guard config a revision's ConfigMap carries; ValueError if it does not carry one."""
    text = (config_map.get("data") or {}).get(GUARD_YAML)
    if not isinstance(text, str):
        raise ValueError(f"the ConfigMap has no {GUARD_YAML}")
    try:
        return GuardConfig.model_validate(yaml.safe_load(text))
    except (yaml.YAMLError, ValidationError) as exc:
        raise ValueError(f"its {GUARD_YAML} is not a guard config this plugin can read ({exc})") from None


def next_reset(period: str, tz: str, now: datetime) -> datetime:
    """Start of the next calendar ``period`` (Hour, Day, Month) in ``tz`` after ``now`` (aware),
    as an aware datetime in that zone. Local midnight is computed on the wall clock, so a DST
    day is 23 or 25 hours long, like the guard's windows."""
    zone = ZoneInfo(tz)
    local = now.astimezone(zone)
    if period == "Hour":
        start = local.replace(minute=0, second=0, microsecond=0)
        return (start.astimezone(ZoneInfo("UTC")) + timedelta(hours=1)).astimezone(zone)
    if period == "Day":
        day = local.date() + timedelta(days=1)
    elif period == "Month":
        day = (local.replace(day=28).date() + timedelta(days=4)).replace(day=1)
    else:
        raise ValueError(f"unknown period {period!r}")
    return datetime(day.year, day.month, day.day, tzinfo=zone)


def hierarchy(cfg: GuardConfig, now: datetime) -> list[BudgetRow]:
    """Every budget the guard enforces, task level first, then the agent's, then the policies'."""
    b = cfg.budgets
    tz = b.time_zone
    rows = [
        BudgetRow("task", "iterations", str(b.max_iterations_per_task), PER_TASK),
        BudgetRow("task", "tool_calls", str(b.max_tool_calls_per_task), PER_TASK),
        BudgetRow("task", "duration", b.max_task_duration, PER_TASK),
    ]
    if b.tokens_per_hour is not None:
        rows.append(BudgetRow("agent", "tokens_per_hour", f"{b.tokens_per_hour} tokens", SLIDING))
    if b.cost_per_day is not None:
        rows.append(BudgetRow("agent", "cost_per_day", f"${b.cost_per_day}", f"Day ({tz})", next_reset("Day", tz, now)))
    for w in b.windows or ():
        period = w.period.value
        resets = next_reset(period, tz, now)
        if w.tokens is not None:
            rows.append(
                BudgetRow(
                    "agent", f"tokens_per_{period.lower()}_window", f"{w.tokens} tokens", f"{period} ({tz})", resets
                )
            )
        if w.dollars is not None:
            rows.append(
                BudgetRow("agent", f"cost_per_{period.lower()}_window", f"${w.dollars}", f"{period} ({tz})", resets)
            )
    for q in cfg.quotas:
        period = q.period.value
        rows.append(
            BudgetRow(
                f"policy/{q.policy}",
                "spend_quota",
                f"${q.dollars}",
                f"{period} ({q.time_zone})",
                next_reset(period, q.time_zone, now),
            )
        )
    return rows


def ledger_summary(cfg: GuardConfig) -> str:
    """Where the budgets are counted, and what happens while that is unreachable."""
    if cfg.ledger is None:
        note = "; AgentPolicy spend quotas are NOT enforced without it" if cfg.quotas else ""
        return f"in each guard's memory (no shared ledger): budgets hold per replica and restart from zero{note}"
    ledger = cfg.ledger
    where = ledger.url.split("://", 1)[-1].split("/", 1)[0]
    behaviour = ledger.on_unavailable.value
    if ledger.local_allowance is not None:
        a = ledger.local_allowance
        parts = [f"{a.tokens} tokens" if a.tokens is not None else "", f"${a.dollars}" if a.dollars is not None else ""]
        behaviour += f" ({' and '.join(p for p in parts if p)} per replica)"
    return f"shared ledger at {where}; while it is unreachable: {behaviour}"


def guard_view(pod: str, body: str) -> GuardView:
    """A guard's /readyz answer, read defensively (an older guard may say less)."""
    try:
        data = json.loads(body)
    except ValueError:
        return GuardView(pod, error="/readyz did not answer JSON")
    if not isinstance(data, dict):
        return GuardView(pod, error="/readyz did not answer an object")
    if data.get("status") != "ready":
        return GuardView(pod, error=f"guard is {data.get('status', 'not ready')}")
    budgets = data.get("budgets")
    if not isinstance(budgets, dict):
        return GuardView(pod, error="/readyz has no budgets")
    levels = budgets.get("levels")

    def integer(key: str) -> int | None:
        value = budgets.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    available = budgets.get("available")
    return GuardView(
        pod,
        ledger=str(budgets["ledger"]) if "ledger" in budgets else None,
        available=available if isinstance(available, bool) else None,
        pending_settles=integer("pending_settles"),
        local_tokens=integer("local_tokens"),
        local_dollars=str(budgets["local_dollars"]) if "local_dollars" in budgets else None,
        levels=dict(levels) if isinstance(levels, Mapping) else {},
    )


def level_cells(rows: Sequence[BudgetRow], views: Sequence[GuardView]) -> list[str]:
    """Per budget, the highest level any guard last saw (levels only grow within a window, so the
    highest is the freshest), or "-" when none reported it. Quotas share one name in a guard's
    levels, so a level is shown for a quota only when the agent has a single one."""
    quotas = sum(1 for r in rows if r.name == "spend_quota")
    cells = []
    for row in rows:
        seen = [v.levels[row.name] for v in views if row.name in v.levels]
        if not seen or row.level == "task" or (row.name == "spend_quota" and quotas > 1):
            cells.append("-")
            continue
        top = str(max(seen, key=_number))
        cells.append(f"${top}" if row.limit.startswith("$") else f"{top} tokens")
    return cells


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0
