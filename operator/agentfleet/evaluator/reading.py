"""Reading a stored spec for judging, as much of it as can be read. Pure.

The CRD schema bounds what can be stored now, but objects stored before a bound existed keep
their old values (``for: 99999999999h`` matched the old pattern), and the API types refuse them.
Refusing the whole agent would leave it running unjudged; failing on it would stop the fleet's
evaluation. So the evaluator drops exactly what it cannot read -- a guardrail rule with a bad
field, an analysis duration past the bound -- judges the rest, and tells the agent what was
dropped. Only a spec that stays invalid after that (a bad field the evaluator does not use but
cannot do without) is not judged at all, and the agent is told so too.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from agentfleet.api.types import AgentDeploymentSpec

PASSES = 4
"""Validation rounds: pydantic reports every error at once, so one round of drops is enough
for any spec; a few more cover errors that only show once others are gone."""
DROPPABLE_ANALYSIS = frozenset({"stabilizationWindow", "interval"})


@dataclass(frozen=True)
class Reading:
    spec: AgentDeploymentSpec
    problems: tuple[str, ...] = ()
    readable: bool = True
    hold_stable: bool = False


def read_spec(raw: Any) -> Reading:
    """The spec with unreadable rules and analysis durations dropped, and what was dropped."""
    if not isinstance(raw, dict):
        return unreadable(raw, ["spec is not an object"])
    try:  # the common case, without a copy
        return Reading(AgentDeploymentSpec.model_validate(raw))
    except ValidationError:
        pass
    data = copy.deepcopy(raw)
    problems: list[str] = []
    hold = False
    for _ in range(PASSES):
        try:
            return Reading(AgentDeploymentSpec.model_validate(data), tuple(problems), True, hold)
        except ValidationError as exc:
            errors = exc.errors()
        bad_rules: dict[int, str] = {}
        for err in errors:
            loc, msg = tuple(err["loc"]), _message(err)
            where = ".".join(map(str, loc[2:])) or "the rule"
            rules = data.get("guardrails")
            if len(loc) >= 2 and loc[0] == "guardrails" and isinstance(loc[1], int) and isinstance(rules, list):
                bad_rules.setdefault(loc[1], f"{where}: {msg}")
            elif (
                len(loc) >= 2
                and loc[0] == "analysis"
                and loc[1] in DROPPABLE_ANALYSIS
                and isinstance(data.get("analysis"), dict)
                and loc[1] in data["analysis"]
            ):
                del data["analysis"][loc[1]]
                if loc[1] == "stabilizationWindow":
                    hold = True
                    problems.append(
                        f"analysis.stabilizationWindow is ignored ({msg}): no revision is promoted to stable"
                    )
                else:
                    problems.append(f"analysis.{loc[1]} is ignored ({msg})")
            else:
                return unreadable(raw, [*problems, f"spec is invalid at {'.'.join(map(str, loc))}: {msg}"])
        if bad_rules:
            rules = data["guardrails"]
            for index, why in sorted(bad_rules.items()):
                rule = rules[index] if index < len(rules) else None
                name = rule.get("name") if isinstance(rule, dict) else None
                problems.append(f"guardrail {str(name or f'#{index}')!r} is not judged: {why}")
            data["guardrails"] = [r for i, r in enumerate(rules) if i not in bad_rules]
    return unreadable(raw, [*problems, "spec is still invalid after dropping what could not be read"])


def unreadable(raw: Any, problems: list[str]) -> Reading:
    """A placeholder spec that judges nothing: no rules, no budgets, no promotion."""
    spec = raw if isinstance(raw, dict) else {}
    replicas = spec.get("replicas")
    fields: dict[str, Any] = {  # no validation, and no agent: the evaluator never reads it
        "replicas": replicas if isinstance(replicas, int) and not isinstance(replicas, bool) else 1,
        "suspended": spec.get("suspended") is True,
        "guardrails": None,
    }
    placeholder = AgentDeploymentSpec.model_construct(**fields)
    what = "; ".join(problems)
    return Reading(placeholder, (f"no guardrail is judged: {what}",), False, True)


def _message(err: Any) -> str:
    msg = str(err.get("msg", "invalid"))
    return msg.removeprefix("Value error, ")
