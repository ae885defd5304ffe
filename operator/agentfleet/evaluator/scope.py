"""Tenant PromQL may read only the tenant agent's own series. Pure.

A guardrail's inline ``query`` is written by whoever may edit the AgentDeployment, and its value
ends up in that agent's status and Events. Run unchecked, it would let one tenant read any
series in Prometheus (another tenant's spend, the operator's own metrics) or make Prometheus do
a year's worth of work every cycle. So before it is ever sent, the query (placeholders already
substituted) is parsed with a real PromQL parser (``promql-parser``, the Rust parser behind
GreptimeDB, compatible with Prometheus 2.45) and refused unless

- every vector and range selector, wherever it appears (inside functions, aggregations,
  subqueries, both sides of binary operators), carries the equality matchers
  ``namespace="<the agent's namespace>"`` and ``agent="<the agent's name>"`` and no other
  matcher on those two labels (a regex or negative matcher could widen the match; ``or``
  alternatives are refused outright);
- it does not invent series (``absent``, ``absent_over_time``) nor rewrite the labels that say
  whose a series is (``label_replace``/``label_join``/``count_values`` writing ``namespace``,
  ``agent`` or ``revision``);
- every range, subquery and offset stays within ``MAX_LOOKBACK`` and a subquery asks for at most
  ``MAX_SUBQUERY_POINTS`` points per series, so one tenant cannot make Prometheus slow for all.

The text sent to Prometheus is the tenant's own (the parser's printer does not escape quotes, so
its output is not a safe canonical form); both parsers follow the same grammar and unescaping,
and the values compared are DNS names, which contain nothing to escape.
"""

from __future__ import annotations

from datetime import timedelta

import promql_parser as pp

MAX_LOOKBACK = timedelta(hours=24)
"""The longest range, subquery range or offset a tenant query may use."""
MAX_SUBQUERY_POINTS = 11_000
"""The most points a subquery may evaluate per series (Prometheus' own limit for range queries)."""
OWNER_LABELS = ("namespace", "agent")
"""Labels every selector must pin to the agent itself."""
WHOSE = frozenset({"namespace", "agent", "revision"})
"""Labels that say whose a series is: a tenant query may not write them."""
INVENTING = frozenset({"absent", "absent_over_time"})
RELABELLING = {"label_replace": 1, "label_join": 1}
"""Functions that write a label, and the index of the argument that names it."""

HOW = (
    'every selector must carry namespace="{{namespace}}" and agent="{{agent}}", e.g. '
    'sum by (namespace, agent, revision) (rate(agentfleet_requests_total{namespace="{{namespace}}", '
    'agent="{{agent}}", outcome="error"}[5m])); for fleet-wide queries ask the platform team for an '
    "AgentPolicy customQueries entry and use queryRef"
)


def check(promql: str, namespace: str, agent: str) -> str | None:
    """Why ``promql`` (placeholders substituted) may not run for this agent, or None when it reads
    only the agent's own series within the bounds."""
    try:
        expr = pp.parse(promql)
    except BaseException as exc:  # ValueError for syntax; a Rust panic surfaces as a BaseException
        if isinstance(exc, KeyboardInterrupt | SystemExit):
            raise
        return f"not valid PromQL: {str(exc).strip() or type(exc).__name__}"
    problems: list[str] = []
    own = {"namespace": namespace, "agent": agent}

    def visit(node: pp.Expr) -> None:
        if isinstance(node, pp.VectorSelector):
            problems.extend(_selector(node, own))
        elif isinstance(node, pp.MatrixSelector):
            if node.range > MAX_LOOKBACK:
                problems.append(f"range [{pp.display_duration(node.range)}] is longer than {_max()}")
        elif isinstance(node, pp.SubqueryExpr):
            problems.extend(_subquery(node))
        elif isinstance(node, pp.Call):
            problems.extend(_call(node))
        elif isinstance(node, pp.AggregateExpr):
            param = node.param
            if isinstance(param, pp.StringLiteral) and param.val in WHOSE:
                problems.append(f"count_values may not write the label {param.val!r}")

    pp.walk(expr, pre_visit=visit)
    if not problems:
        return None
    unique = list(dict.fromkeys(problems))
    shown = "; ".join(unique[:3]) + (f"; and {len(unique) - 3} more" if len(unique) > 3 else "")
    return f"the query may read only this agent's own series: {shown}. {HOW}"


def _max() -> str:
    return pp.display_duration(MAX_LOOKBACK)


def _selector(node: pp.VectorSelector, own: dict[str, str]) -> list[str]:
    text = _describe(node)
    out: list[str] = []
    matchers = node.matchers
    if matchers.or_matchers:
        out.append(f"{text} uses 'or' between matchers")
    for label, value in own.items():
        on_label = [m for m in matchers.matchers if m.name == label]
        if not on_label:
            out.append(f'{text} has no {label}="{value}" matcher')
        elif any(m.op != pp.MatchOp.Equal or m.value != value for m in on_label):
            out.append(f'{text} must match {label} only with {label}="{value}"')
    if node.offset is not None and abs(node.offset) > MAX_LOOKBACK:
        out.append(f"{text} has an offset beyond {_max()}")
    return out


def _subquery(node: pp.SubqueryExpr) -> list[str]:
    out: list[str] = []
    rng = node.range or timedelta(0)
    if rng > MAX_LOOKBACK:
        out.append(f"subquery range [{pp.display_duration(rng)}:] is longer than {_max()}")
    step = node.step
    if step is not None and (step <= timedelta(0) or rng / step > MAX_SUBQUERY_POINTS):
        out.append(f"subquery step {pp.display_duration(step)} asks for more than {MAX_SUBQUERY_POINTS} points")
    if node.offset is not None and abs(node.offset) > MAX_LOOKBACK:
        out.append(f"subquery offset is beyond {_max()}")
    return out


def _call(node: pp.Call) -> list[str]:
    name = node.func.name
    if name in INVENTING:
        return [f"{name}() invents series instead of reading the agent's (no data is never a breach here)"]
    index = RELABELLING.get(name)
    if index is not None and len(node.args) > index:
        target = node.args[index]
        if not isinstance(target, pp.StringLiteral) or target.val in WHOSE:
            label = target.val if isinstance(target, pp.StringLiteral) else "?"
            return [f"{name}() may not write the label {label!r}"]
    return []


def _describe(node: pp.VectorSelector) -> str:
    """A selector as the tenant wrote it, near enough to find it in the query."""
    parts = [str(m) for m in node.matchers.matchers]
    return f"selector {node.name or ''}{{{','.join(parts)}}}"
