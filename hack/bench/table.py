"""One table for every measure: value, the baseline measured in the same run, the ratio, the goal."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from hack.bench.breach import BreachResult
from hack.bench.common import pct
from hack.bench.guard import GuardResult
from hack.bench.reconcile import ReconcileResult


@dataclass
class Row:
    measure: str
    value: str
    baseline: str
    ratio: str
    goal: str
    verdict: str  # "yes", "no", or "" (no goal)


def _s(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.1f} s" if x >= 10 else f"{x:.2f} s"


def _ms(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x * 1000:.2f} ms"


def _ratio(x: float) -> str:
    return "n/a" if math.isnan(x) or math.isinf(x) else f"{x:.2f}x"


def _ok(cond: bool | None) -> str:
    return "" if cond is None else ("yes" if cond else "**no**")


def reconcile_rows(results: list[ReconcileResult]) -> list[Row]:
    rows = []
    for r in results:
        if r.operator is None:
            continue
        floor = r.floor.seconds if r.floor else float("nan")
        ratio = r.operator.seconds / floor if r.floor else float("nan")
        rows.append(
            Row(
                f"reconcile {r.n:,} created at once: time to all reconciled",
                f"{_s(r.operator.seconds)} ({r.n / r.operator.seconds:.0f}/s)",
                f"raw floor {_s(floor)} (c={r.floor_concurrency})" if r.floor else "not measured",
                _ratio(ratio),
                "<= 1.5x",
                _ok(ratio <= 1.5 if r.floor else None),
            )
        )
    base = next((r for r in results if not math.isnan(r.queries_per_cycle)), None)
    for r in results:
        if math.isnan(r.queries_per_cycle) or base is None:
            continue
        q_ratio = r.queries_per_cycle / base.queries_per_cycle
        rows.append(
            Row(
                f"evaluator at N={r.n:,}: PromQL queries per cycle",
                f"{r.queries_per_cycle:.1f}",
                f"N={base.n:,}: {base.queries_per_cycle:.1f}",
                _ratio(q_ratio),
                "flat in N",
                _ok(abs(q_ratio - 1) < 0.01),
            )
        )
        rows.append(
            Row(
                f"evaluator at N={r.n:,}: seconds per cycle",
                _ms(r.cycle_seconds),
                f"N={base.n:,}: {_ms(base.cycle_seconds)}",
                _ratio(r.cycle_seconds / base.cycle_seconds),
                "< interval (5 s)",
                _ok(r.cycle_seconds < 5),
            )
        )
    zero = next((r for r in results if not math.isnan(r.rss_start_mb)), None)
    largest = max((r.n for r in results), default=0)
    if zero is not None:
        rows.append(Row("operator RSS at N=0", f"{zero.rss_start_mb:.0f} MB", "-", "-", "", ""))
    for r in results:
        if math.isnan(r.rss_mb) or zero is None:
            continue
        rows.append(
            Row(
                f"operator RSS at N={r.n:,} (steady)",
                f"{r.rss_mb:.0f} MB",
                f"N=0: {zero.rss_start_mb:.0f} MB",
                _ratio(r.rss_mb / zero.rss_start_mb),
                "<= 250 MB at 5,000" if r.n >= 5000 else "",
                _ok(r.rss_mb <= 250) if r.n >= 5000 else "",
            )
        )
    for r in results:
        if math.isnan(r.idle_cpu):
            continue
        goal = r.n == largest
        rows.append(
            Row(
                f"operator idle CPU, {r.n:,} steady agents",
                f"{r.idle_cpu * 100:.1f}% of a core",
                f"N=0: {r.idle_cpu_start * 100:.1f}%" if not math.isnan(r.idle_cpu_start) else "-",
                "-",
                "<= 10% at 5,000" if goal and r.n >= 5000 else "",
                _ok(r.idle_cpu <= 0.10) if goal and r.n >= 5000 else "",
            )
        )
    return rows


def breach_rows(b: BreachResult) -> list[Row]:
    goal = b.interval + 2
    return [
        Row(
            f"breach-to-action p50 ({b.fleet:,} agents, {b.misbehaving} looping, {len(b.latencies)} samples)",
            _s(b.p50),
            f"evaluation interval {b.interval:.0f} s",
            _ratio(b.p50 / b.interval),
            "",
            "",
        ),
        Row(
            f"breach-to-action p99 ({b.fleet:,} agents, {b.misbehaving} looping)",
            _s(b.p99),
            f"evaluation interval {b.interval:.0f} s",
            _ratio(b.p99 / b.interval),
            f"<= {goal:.0f} s",
            _ok(b.p99 <= goal),
        ),
    ]


def guard_rows(g: GuardResult) -> list[Row]:
    rows = []
    for sc in g.scenarios:
        d = sc.runs["direct"]
        gr = sc.runs.get("guard")
        lite = sc.runs.get("litellm")
        what = "chat" if sc.kind == "chat" else "streaming TTFT"
        for q, label in ((0.5, "p50"), (0.99, "p99")):
            base = pct(d.latencies, q)
            if gr is not None:
                added = pct(gr.latencies, q) - base
                is_goal = sc.kind == "chat" and sc.concurrency == 64 and label == "p99"
                rows.append(
                    Row(
                        f"guard added latency, {what} {label}, c={sc.concurrency}",
                        _ms(added),
                        f"direct {_ms(base)}",
                        _ratio(pct(gr.latencies, q) / base),
                        "<= 2 ms" if is_goal else "",
                        _ok(added <= 0.002) if is_goal else "",
                    )
                )
            if lite is not None:
                added = pct(lite.latencies, q) - base
                rows.append(
                    Row(
                        f"LiteLLM added latency, {what} {label}, c={sc.concurrency}",
                        _ms(added),
                        f"direct {_ms(base)}",
                        _ratio(pct(lite.latencies, q) / base),
                        "",
                        "",
                    )
                )
        if sc.kind == "chat" and gr is not None:
            if lite is not None:
                ratio = gr.per_core / lite.per_core
                rows.append(
                    Row(
                        f"guard throughput per core, c={sc.concurrency}",
                        f"{gr.per_core:,.0f} req/s/core",
                        f"LiteLLM {lite.per_core:,.0f} req/s/core",
                        _ratio(ratio),
                        ">= 5x",
                        _ok(ratio >= 5),
                    )
                )
            else:
                rows.append(
                    Row(
                        f"guard throughput per core, c={sc.concurrency}",
                        f"{gr.per_core:,.0f} req/s/core",
                        f"fake upstream {d.per_core:,.0f} req/s/core",
                        _ratio(gr.per_core / d.per_core),
                        "",
                        "",
                    )
                )
    return rows


def markdown(rows: list[Row]) -> str:
    head = (
        "| measure | agentfleet | baseline (same run) | ratio | goal | met |\n| --- | --- | --- | --- | --- | --- |\n"
    )
    return (
        head
        + "\n".join(f"| {r.measure} | {r.value} | {r.baseline} | {r.ratio} | {r.goal} | {r.verdict} |" for r in rows)
        + "\n"
    )


def text(rows: list[Row]) -> str:
    cols = [("measure", 62), ("agentfleet", 22), ("baseline (same run)", 30), ("ratio", 8), ("goal", 18), ("met", 5)]
    out = ["  ".join(f"{name:<{w}}" for name, w in cols), "  ".join("-" * w for _, w in cols)]
    for r in rows:
        vals = [r.measure, r.value, r.baseline, r.ratio, r.goal, r.verdict.replace("*", "")]
        out.append("  ".join(f"{v:<{w}}" for v, (_, w) in zip(vals, cols, strict=True)))
    return "\n".join(out)


def failover_rows(f: Any) -> list[Row]:
    """Leader SIGKILL to the new leader's first reconcile (floor: the Lease duration) and to its
    first evaluator action (baseline: the same breach with no kill, in the same run)."""
    rows = []
    n = len(f.seconds)
    for label, q in (("p50", 0.5), ("p99", 0.99)):
        value = f.quantile(q)
        rows.append(
            Row(
                f"failover, leader SIGKILL to first reconcile by the new leader ({label}, {n} trials)",
                _s(value),
                f"lease {f.lease_duration:.0f} s",
                _ratio(value / f.lease_duration),
                "<= 15 s",
                _ok(value <= 15),
            )
        )
    for label, q in (("p50", 0.5), ("p99", 0.99)):
        value, base = f.quantile(q, f.action), f.quantile(q, f.baseline)
        rows.append(
            Row(
                f"failover, leader SIGKILL to first action (Suspend) by the new leader "
                f"({label}, {len(f.action)} trials)",
                _s(value),
                f"no kill, same switch: {_s(base)} ({len(f.baseline)} trials)",
                _ratio(value / base),
                "<= 15 s",
                _ok(value <= 15),
            )
        )
    for label, q in (("p50", 0.5), ("p99", 0.99)):
        added = f.quantile(q, f.action) - f.quantile(q, f.baseline)
        rows.append(
            Row(
                f"failover, time a leader SIGKILL adds to breach-to-action ({label} minus {label})",
                _s(added),
                f"lease {f.lease_duration:.0f} s",
                _ratio(added / f.lease_duration),
                "",
                "",
            )
        )
    return rows
