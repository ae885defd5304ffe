"""Reconcile-time policy checks (pure): coverage, every rule with its exact message, pricing and
the kill switch. ``tests/integration/test_admission.py`` holds the CEL policy to the same answers
(the cases in ``tests/support/policy_cases.py``)."""

from __future__ import annotations

import ipaddress
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentfleet.api.types import AgentDeployment, AgentPolicy, KubernetesRule
from agentfleet.api.units import parse_duration
from agentfleet.policy import covers, effective_pricing, suspend_all, violations
from agentfleet.policy.rules import describe_rule, rule_covered
from tests.support.policy_cases import AGENT_SPEC, CASES, POLICY_SPEC, PolicyCase, merged

pytestmark = pytest.mark.unit

NS = "team-a"
LABELS = {"team": "a", "kubernetes.io/metadata.name": NS}

BASE_AGENT: dict[str, Any] = {"metadata": {"name": "support", "namespace": NS}, "spec": AGENT_SPEC}
BASE_POLICY: dict[str, Any] = {"metadata": {"name": "fleet"}, "spec": POLICY_SPEC}


def agent(patch: dict[str, Any] | None = None) -> AgentDeployment:
    return AgentDeployment.model_validate(merged(BASE_AGENT, {"spec": patch or {}}))


def policy(patch: dict[str, Any] | None = None, name: str = "fleet") -> AgentPolicy:
    return AgentPolicy.model_validate(merged(BASE_POLICY, {"metadata": {"name": name}, "spec": patch or {}}))


def messages(a: AgentDeployment, *ps: AgentPolicy) -> list[str]:
    return [v.message for v in violations(a, ps, LABELS)]


# --------------------------------------------------------------------------- coverage


@pytest.mark.parametrize(
    ("spec", "covered"),
    [
        ({}, True),
        ({"namespaces": [NS]}, True),
        ({"namespaces": ["other"]}, False),
        ({"namespaces": []}, False),
        ({"namespaceSelector": {}}, True),
        ({"namespaceSelector": {"matchLabels": {}}}, True),
        ({"namespaceSelector": {"matchLabels": {"team": "a"}}}, True),
        ({"namespaceSelector": {"matchLabels": {"team": "b"}}}, False),
        ({"namespaceSelector": {"matchLabels": {"team": "a", "tier": "prod"}}}, False),
        ({"namespaces": ["other"], "namespaceSelector": {"matchLabels": {"team": "a"}}}, True),
        ({"namespaces": [NS], "namespaceSelector": {"matchLabels": {"team": "b"}}}, True),
    ],
)
def test_covers(spec: dict[str, Any], covered: bool) -> None:
    assert covers(AgentPolicy.model_validate({"spec": spec}), NS, LABELS) is covered


label = st.text(alphabet="abc", min_size=1, max_size=2)


@given(st.dictionaries(label, label, max_size=4), st.dictionaries(label, label, max_size=4))
def test_selector_covers_exactly_superset_labels(selector: dict[str, str], labels: dict[str, str]) -> None:
    p = AgentPolicy.model_validate({"spec": {"namespaceSelector": {"matchLabels": selector}}})
    assert covers(p, "x", labels) == (selector.items() <= labels.items())


def test_uncovered_agent_has_no_violations() -> None:
    strict = policy({"namespaces": ["other"], "allowedModels": []})
    assert messages(agent(), strict) == []


# --------------------------------------------------------------------------- rules


P = "AgentPolicy fleet: "


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_each_case_is_allowed_or_refused_naming_what_it_violates(case: PolicyCase) -> None:
    """The table ``tests/integration/test_admission.py`` holds the admission policy to."""
    expected = [] if case.refusal is None else [P + case.refusal]
    assert messages(agent(case.agent), policy(case.policy)) == expected


def test_violations_are_listed_per_policy_in_admission_order() -> None:
    bad = agent({"replicas": 9, "budgets": {"tokensPerHour": 10**6}, "agent": {"model": {"name": "x"}}})
    found = violations(bad, [policy(name="a"), policy({"namespaces": ["other"]}, name="b"), policy(name="c")], LABELS)
    assert [(v.policy, v.rule) for v in found] == [
        ("a", "ceilings.tokensPerHour"),
        ("a", "ceilings.maxReplicas"),
        ("a", "allowedModels"),
        ("c", "ceilings.tokensPerHour"),
        ("c", "ceilings.maxReplicas"),
        ("c", "allowedModels"),
    ]
    assert str(found[0]) == found[0].message


# --------------------------------------------------------------------------- properties


@given(st.integers(1, 10**6), st.integers(1, 10**6))
def test_integer_ceiling_holds_exactly_when_within(value: int, ceiling: int) -> None:
    found = messages(agent({"budgets": {"tokensPerHour": value}}), policy({"ceilings": {"tokensPerHour": ceiling}}))
    assert bool(found) == (value > ceiling)


money = st.decimals(min_value=0, max_value=10**6, places=6, allow_nan=False, allow_infinity=False)


@given(money, money)
def test_money_ceiling_compares_exactly(value: Decimal, ceiling: Decimal) -> None:
    found = messages(agent({"budgets": {"costPerDay": str(value)}}), policy({"ceilings": {"costPerDay": str(ceiling)}}))
    assert bool(found) == (value > ceiling)


@given(st.integers(0, 99), st.integers(0, 59), st.integers(0, 59), st.integers(0, 999))
def test_parse_duration(h: int, m: int, s: int, ms: int) -> None:
    assert parse_duration(f"{h}h{m}m{s}s{ms}ms") == Decimal(h * 3600 + m * 60 + s) + Decimal(ms) / 1000
    assert parse_duration(f"{h}.5h") == Decimal(h * 3600 + 1800)


@pytest.mark.parametrize("text", ["", "5", "m", "5x", "1h 2m", "-1s", "1h-"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


@given(st.integers(0, 2**32 - 1), st.integers(0, 32), st.integers(0, 32))
def test_egress_within_exactly_when_subnet(address: int, outer_bits: int, inner_bits: int) -> None:
    outer = ipaddress.ip_network((address, outer_bits), strict=False)
    inner = ipaddress.ip_network((address, inner_bits), strict=False)
    found = messages(
        agent({"permissions": {"egress": [{"cidr": str(inner)}]}}), policy({"allowedEgress": [str(outer)]})
    )
    assert bool(found) == (inner_bits < outer_bits)


verbs = st.lists(
    st.sampled_from(["get", "list", "watch", "create", "delete", "*"]), min_size=1, max_size=4, unique=True
)
resources = st.lists(st.sampled_from(["pods", "pods/log", "secrets", "*"]), min_size=1, max_size=3, unique=True)
groups = st.lists(st.sampled_from(["", "apps", "*"]), min_size=1, max_size=2, unique=True)
rules = st.builds(lambda g, r, v: KubernetesRule(api_groups=g, resources=r, verbs=v), groups, resources, verbs)


@given(rules)
def test_a_rule_covers_itself(rule: KubernetesRule) -> None:
    assert rule_covered(rule, rule)


@given(rules, rules)
def test_coverage_is_a_per_field_subset(rule: KubernetesRule, allowed: KubernetesRule) -> None:
    def sub(a: list[str], b: list[str]) -> bool:
        return "*" in b or set(a) <= set(b)

    expected = sub(rule.api_groups, allowed.api_groups) and sub(rule.resources, allowed.resources)
    assert rule_covered(rule, allowed) == (expected and sub(rule.verbs, allowed.verbs))


@given(rules)
def test_wildcard_verbs_need_a_wildcard_allowance(rule: KubernetesRule) -> None:
    wild = rule.model_copy(update={"verbs": ["*"]})
    narrow = rule.model_copy(update={"verbs": [v for v in rule.verbs if v != "*"] or ["get"]})
    assert not rule_covered(wild, narrow)


def test_describe_rule() -> None:
    rule = KubernetesRule(api_groups=["", "apps"], resources=["pods"], verbs=["get"], resource_names=[])
    assert describe_rule(rule) == '{apiGroups: ["", "apps"], resources: ["pods"], verbs: ["get"], resourceNames: []}'


# --------------------------------------------------------------------------- pricing, kill switch


def test_policy_price_table_wins() -> None:
    a = agent({"agent": {"model": {"pricing": {"inputPerMillion": "1", "outputPerMillion": "2"}}}})
    priced = policy({"modelPrices": [{"model": "gpt-4o-mini", "inputPerMillion": "0.15", "outputPerMillion": "0.6"}]})
    other = policy({"modelPrices": [{"model": "gpt-4o", "inputPerMillion": "5", "outputPerMillion": "15"}]}, "a")
    pricing = effective_pricing(a, [other, priced])
    assert (pricing.input_per_million, pricing.output_per_million) == ("0.15", "0.6")
    assert effective_pricing(a, [other]) == a.spec.agent.model.pricing
    elsewhere = policy({"namespaces": ["other"], "modelPrices": priced.spec.model_dump(by_alias=True)["modelPrices"]})
    assert effective_pricing(a, [elsewhere], LABELS) == a.spec.agent.model.pricing


def test_first_policy_by_name_sets_the_price() -> None:
    def priced(name: str, price: str) -> AgentPolicy:
        return policy(
            {"modelPrices": [{"model": "gpt-4o-mini", "inputPerMillion": price, "outputPerMillion": "0"}]},
            name,
        )

    assert effective_pricing(agent(), [priced("b", "2"), priced("a", "1")]).input_per_million == "1"


def test_suspend_all_only_for_covered_agents() -> None:
    kill = policy({"suspendAll": True, "namespaceSelector": {"matchLabels": {"team": "a"}}})
    assert suspend_all(agent(), [policy(), kill], LABELS)
    assert not suspend_all(agent(), [policy(), kill], {"team": "b"})
    assert not suspend_all(agent(), [policy()])
    assert suspend_all(agent(), [kill])


def test_a_price_table_entry_carries_every_price_it_names() -> None:
    a = AgentDeployment.model_validate(BASE_AGENT)
    table = {
        "modelPrices": [
            {
                "model": "gpt-4o-mini",
                "inputPerMillion": "1",
                "outputPerMillion": "2",
                "cachedInputPerMillion": "0.1",
                "reasoningPerMillion": "3",
            }
        ]
    }
    p = AgentPolicy.model_validate({"metadata": {"name": "prices"}, "spec": table})
    price = effective_pricing(a, [p], LABELS)
    assert (price.cached_input_per_million, price.reasoning_per_million) == ("0.1", "3")
