"""The shared budget ledger from the platform file to the pod: ``api.ledger`` (the platform's
setting), ``policy.rules.ledger_terms`` (the strictest outage behaviour and the spend quotas of
the covering policies), the guard config, the password Secret in the guard container only, the
NetworkPolicy's egress to the ledger, and the platform rule that keeps tenants off its Secret."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import pytest
import yaml

from agentfleet.api.guardconfig import GuardConfig, PolicyQuota
from agentfleet.api.ledger import LEDGER_PASSWORD_DIR, PlatformLedger
from agentfleet.api.names import AGENT_CONTAINER, GUARD_CONTAINER
from agentfleet.api.types import AgentDeployment, AgentPolicy, LedgerPolicy, OnLedgerUnavailable
from agentfleet.controller import plan as plans
from agentfleet.policy import ledger_terms
from agentfleet.policy.platform import Platform, all_violations, load_platform
from agentfleet.render import Rendered, RenderSettings, render
from agentfleet.render.ledger import with_ledger_mount

pytestmark = pytest.mark.unit

NS = "team-a"
LABELS = {"kubernetes.io/metadata.name": NS, "team": "a"}
IN_CLUSTER: dict[str, Any] = {
    "url": "redis://af-ledger.agentfleet-system.svc:6379/0",
    "passwordSecret": "agentfleet-ledger",
    "pods": {"namespace": "agentfleet-system", "labels": {"app.kubernetes.io/name": "agentfleet-ledger"}},
}
LEDGER = PlatformLedger.model_validate(IN_CLUSTER)


def agent(**spec: Any) -> AgentDeployment:
    body: dict[str, Any] = {
        "metadata": {"name": "support", "namespace": NS, "uid": "u-1"},
        "spec": {"agent": {"image": "x", "model": {"name": "m", "endpoint": "https://api.openai.com/v1"}}},
    }
    for key, value in spec.items():
        if key == "env":
            body["spec"]["agent"]["env"] = value
        elif key == "apiKey":
            body["spec"]["agent"]["model"]["apiKeySecretRef"] = {"name": value, "key": "password"}
        else:
            body["spec"][key] = value
    return AgentDeployment.model_validate(body)


def policy(name: str, **spec: Any) -> AgentPolicy:
    return AgentPolicy.model_validate({"metadata": {"name": name}, "spec": spec})


def allowance(tokens: int | None = None, dollars: str | None = None) -> dict[str, Any]:
    local = {k: v for k, v in {"tokens": tokens, "dollars": dollars}.items() if v is not None}
    return {"onUnavailable": "LocalAllowance", "localAllowance": local}


def rendered_with(ledger: PlatformLedger | None, policies: Sequence[AgentPolicy] = (), **kw: Any) -> Rendered:
    a = agent()
    behaviour, quotas = ledger_terms(a, policies, LABELS)
    return render(a, ledger=ledger, ledger_policy=behaviour, quotas=quotas, **kw)


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind]
    return found


def container(pod_spec: dict[str, Any], name: str) -> dict[str, Any]:
    matches: list[dict[str, Any]] = [
        c for c in [*pod_spec["initContainers"], *pod_spec["containers"]] if c["name"] == name
    ]
    (found,) = matches
    return found


# --------------------------------------------------------------------------- the platform setting


def test_the_platform_file_carries_the_ledger_and_refuses_what_a_network_policy_cannot_express() -> None:
    loaded = load_platform(yaml.safe_load(yaml.safe_dump({"ledger": IN_CLUSTER})))
    assert loaded.ledger == LEDGER
    assert LEDGER.endpoint().host == "af-ledger.agentfleet-system.svc" and LEDGER.endpoint().port == 6379
    assert LEDGER.password_file == f"{LEDGER_PASSWORD_DIR}/password"
    assert load_platform({}).ledger is None and load_platform({"ledger": None}).ledger is None
    for bad, fragment in [
        ({"url": "http://redis:6379"}, "String should match pattern"),
        ({"url": "redis://redis:99999"}, "Port out of range"),
        ({"url": "redis://[fe80::1%eth0]:6379"}, "IPv6 zone"),
        ({**IN_CLUSTER, "cidrs": ["10.0.0.0/8"]}, "not both"),
        ({"url": "redis://10.0.0.5", "cidrs": ["nope"]}, "does not appear to be an IPv4 or IPv6 network"),
        ({"url": "redis://r", "passwordSecret": "Not_A_Name"}, "String should match pattern"),
        ({"url": "redis://r", "password": "hunter2"}, "Extra inputs are not permitted"),
        ({"url": "redis://:hunter2@r:6379"}, "must not hold a password"),
        ({"url": "redis://guard:hunter2@r:6379"}, "must not hold a password"),
    ]:
        with pytest.raises(ValueError, match=re.escape(fragment)):
            load_platform({"ledger": bad})


def test_the_ledger_url_defaults_to_the_redis_port_and_keeps_an_explicit_one() -> None:
    assert PlatformLedger(url="redis://ledger.example").endpoint().port == 6379
    assert PlatformLedger(url="rediss://ledger.example:6380/2").endpoint().port == 6380
    assert PlatformLedger(url="redis://[::ffff:10.1.2.3]:7000").endpoint().address is not None
    assert PlatformLedger(url="redis://guard@ledger:6379").endpoint().host == "ledger"  # an ACL user, no password


# --------------------------------------------------------------------------- the covering policies' terms


def test_the_strictest_outage_behaviour_of_the_covering_policies_wins() -> None:
    a = agent()
    assert ledger_terms(a, [], LABELS) == (LedgerPolicy(), [])  # none says anything: FailClosed
    lax = policy("lax", ledger=allowance(tokens=5000, dollars="2.00"))
    tighter = policy("tighter", ledger=allowance(tokens=1000))
    behaviour, _ = ledger_terms(a, [lax, tighter], LABELS)
    assert behaviour.on_unavailable is OnLedgerUnavailable.LOCAL_ALLOWANCE
    assert behaviour.local_allowance is not None
    assert (behaviour.local_allowance.tokens, behaviour.local_allowance.dollars) == (1000, "2.00")
    closed = policy("closed", ledger={"onUnavailable": "FailClosed"})
    assert ledger_terms(a, [lax, closed, tighter], LABELS)[0] == LedgerPolicy()
    elsewhere = policy("elsewhere", namespaces=["team-b"], ledger={"onUnavailable": "FailClosed"})
    assert ledger_terms(a, [lax, elsewhere], LABELS)[0].on_unavailable is OnLedgerUnavailable.LOCAL_ALLOWANCE


def test_one_quota_per_covering_policy_with_a_spend_quota_in_name_order() -> None:
    a = agent()
    team = policy("team", namespaceSelector={"matchLabels": {"team": "a"}}, spendQuota={"dollars": "100"})
    org = policy("org", spendQuota={"dollars": "1000", "period": "Month", "timeZone": "Europe/Paris"})
    other = policy("other-team", namespaces=["team-b"], spendQuota={"dollars": "5"})
    plain = policy("plain", suspendAll=False)
    _, quotas = ledger_terms(a, [team, other, plain, org], LABELS)
    assert quotas == [
        PolicyQuota(policy="org", dollars="1000", period="Month", time_zone="Europe/Paris"),
        PolicyQuota(policy="team", dollars="100"),
    ]
    assert ledger_terms(a, [org, team], LABELS) == ledger_terms(a, [team, org], LABELS)  # order-free


# --------------------------------------------------------------------------- the guard config


def test_the_guard_config_gets_the_ledger_its_password_file_the_behaviour_and_the_quotas() -> None:
    policies = [
        policy("team", spendQuota={"dollars": "100"}, ledger=allowance(dollars="0.50")),
        policy("org", ledger=allowance(dollars="0.20", tokens=900)),
    ]
    config = rendered_with(LEDGER, policies).guard_config
    assert config.ledger is not None
    assert config.ledger.url == IN_CLUSTER["url"]
    assert config.ledger.password_file == f"{LEDGER_PASSWORD_DIR}/password"
    assert config.ledger.on_unavailable is OnLedgerUnavailable.LOCAL_ALLOWANCE
    assert config.ledger.local_allowance is not None and config.ledger.local_allowance.dollars == "0.20"
    assert [q.policy for q in config.quotas] == ["team"]
    # What the guard reads back from the ConfigMap is the same config.
    objects = rendered_with(LEDGER, policies).objects
    data = yaml.safe_load(by_kind(objects, "ConfigMap")["data"]["guard.yaml"])
    assert GuardConfig.model_validate(data) == config
    assert data["ledger"]["passwordFile"] == "/var/run/agentfleet/ledger/password"
    assert data["ledger"]["onUnavailable"] == "LocalAllowance"
    assert data["quotas"] == [{"policy": "team", "dollars": "100", "period": "Day", "timeZone": "UTC"}]


def test_without_a_policy_saying_otherwise_the_guard_fails_closed() -> None:
    config = rendered_with(LEDGER).guard_config
    assert config.ledger is not None and config.ledger.on_unavailable is OnLedgerUnavailable.FAIL_CLOSED
    assert config.ledger.local_allowance is None


def test_without_a_platform_ledger_nothing_changes_but_quotas_are_still_passed_on() -> None:
    plain = render(agent())
    quota = [policy("team", spendQuota={"dollars": "100"})]
    out = rendered_with(None, quota)
    assert out.guard_config.ledger is None and [q.policy for q in out.guard_config.quotas] == ["team"]
    assert out.pod_template["spec"]["volumes"] == plain.pod_template["spec"]["volumes"]
    assert by_kind(out.objects, "NetworkPolicy") == by_kind(plain.objects, "NetworkPolicy")


def test_a_ledger_without_a_password_secret_mounts_nothing() -> None:
    open_ledger = PlatformLedger(url="redis://10.0.0.5:6379")
    out = rendered_with(open_ledger)
    assert out.guard_config.ledger is not None and out.guard_config.ledger.password_file is None
    assert "ledger-password" not in str(out.pod_template)


# --------------------------------------------------------------------------- the password Secret


def test_the_ledger_secret_is_mounted_into_the_guard_container_only() -> None:
    out = rendered_with(LEDGER)
    spec = out.pod_template["spec"]
    (volume,) = [v for v in spec["volumes"] if v.get("secret", {}).get("secretName") == "agentfleet-ledger"]
    assert volume["secret"]["items"] == [{"key": "password", "path": "password"}]
    assert volume["secret"]["defaultMode"] == 0o440
    guard_mounts = [m for m in container(spec, GUARD_CONTAINER)["volumeMounts"] if m["name"] == volume["name"]]
    assert guard_mounts == [{"name": volume["name"], "mountPath": LEDGER_PASSWORD_DIR, "readOnly": True}]
    agent_container = container(spec, AGENT_CONTAINER)
    assert all(m["name"] != volume["name"] for m in agent_container.get("volumeMounts", []))
    assert "agentfleet-ledger" not in str(agent_container)  # not as env either
    # The Deployment's template is the same pod.
    assert by_kind(out.objects, "Deployment")["spec"]["template"] == out.pod_template


def test_the_ledger_secret_is_mounted_whatever_the_policies_allowed_secrets_say() -> None:
    """The operator chose it, not the tenant: allowedSecrets: [] does not keep the guard from it."""
    strict = [policy("strict", allowedSecrets=[])]
    assert all_violations(agent(), strict, LABELS, Platform(ledger=LEDGER)) == []
    assert "agentfleet-ledger" in str(rendered_with(LEDGER, strict).pod_template["spec"]["volumes"])


def test_a_tenant_may_never_reference_the_ledger_secret_even_where_every_secret_is_allowed() -> None:
    anything = [policy("anything", allowedSecrets=["*"])]
    platform = Platform(ledger=LEDGER)
    as_env = agent(env=[{"name": "X", "secretKeyRef": {"name": "agentfleet-ledger", "key": "password"}}])
    as_key = agent(apiKey="agentfleet-ledger")
    as_permission = agent(permissions={"secrets": ["agentfleet-ledger"]})
    for a in (as_env, as_key, as_permission):
        found = all_violations(a, anything, LABELS, platform)
        assert [(v.policy, v.rule) for v in found] == [("platform", "ledgerSecret")], found
        assert "shared budget ledger's password" in found[0].message
    # Without a ledger (or with another Secret name) it is an ordinary Secret.
    assert all_violations(as_env, anything, LABELS, Platform()) == []
    # The reconcile refuses such an agent before anything is rendered.
    body = {**as_env.wire(), "metadata": {"name": "support", "namespace": NS, "uid": "u-1", "generation": 1}}
    problem = plans.judge(body, anything, LABELS, "2026-01-01T00:00:00Z", platform)
    assert isinstance(problem, plans.Problem) and "ledger" in problem.message


# --------------------------------------------------------------------------- egress to the ledger


def egress_to_ledger(out: Rendered, port: int = 6379) -> list[dict[str, Any]]:
    rules = by_kind(out.objects, "NetworkPolicy")["spec"]["egress"]
    return [r for r in rules if r.get("ports") == [{"protocol": "TCP", "port": port}]]


def test_an_in_cluster_ledger_is_reached_at_its_pods_on_its_port_only() -> None:
    (rule,) = egress_to_ledger(rendered_with(LEDGER))
    assert rule["to"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "agentfleet-system"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "agentfleet-ledger"}},
        }
    ]


def test_an_external_ledger_is_reached_at_its_cidrs_or_its_address_even_in_a_cluster_range() -> None:
    cluster = ("10.0.0.0/8",)
    named = PlatformLedger(url="rediss://ledger.corp.example:6380", cidrs=["10.20.0.7/32", "10.20.0.8/32"])
    (rule,) = egress_to_ledger(rendered_with(named, excluded_cidrs=cluster), 6380)
    assert rule["to"] == [{"ipBlock": {"cidr": "10.20.0.7/32"}}, {"ipBlock": {"cidr": "10.20.0.8/32"}}]
    literal = PlatformLedger(url="redis://[::ffff:10.1.2.3]:7000")
    (rule,) = egress_to_ledger(rendered_with(literal, excluded_cidrs=cluster), 7000)
    assert rule["to"] == [{"ipBlock": {"cidr": "10.1.2.3/32"}}]


def test_a_hostname_ledger_without_peers_goes_where_hostname_endpoints_go_minus_the_forbidden_ranges() -> None:
    named = PlatformLedger(url="redis://ledger.corp.example")
    settings = RenderSettings(upstream_cidrs=("0.0.0.0/0",))
    (rule,) = egress_to_ledger(rendered_with(named, settings=settings, excluded_cidrs=("10.96.0.0/12",)))
    assert rule["to"] == [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.96.0.0/12"]}}]


# --------------------------------------------------------------------------- a pinned revision's template


def test_a_rollback_to_a_revision_from_before_the_ledger_mounts_todays_password() -> None:
    recorded = render(agent()).pod_template  # recorded before the platform named a ledger
    today = rendered_with(LEDGER).pod_template
    pinned = with_ledger_mount(recorded, today)
    assert [v for v in pinned["spec"]["volumes"] if v not in recorded["spec"]["volumes"]] == [
        v for v in today["spec"]["volumes"] if v.get("name") == "ledger-password"
    ]
    guard = container(pinned["spec"], GUARD_CONTAINER)
    assert [m for m in guard["volumeMounts"] if m["name"] == "ledger-password"] == [
        {"name": "ledger-password", "mountPath": LEDGER_PASSWORD_DIR, "readOnly": True}
    ]
    assert container(pinned["spec"], AGENT_CONTAINER) == container(recorded["spec"], AGENT_CONTAINER)
    # Nothing else of the recorded template changes, and the recorded one is left alone.
    assert with_ledger_mount(pinned, recorded) == recorded
    assert "ledger-password" not in str(recorded)
    # Another Secret name today replaces the recorded one.
    other = PlatformLedger.model_validate({**IN_CLUSTER, "passwordSecret": "ledger-v2"})
    moved = with_ledger_mount(pinned, rendered_with(other).pod_template)
    assert "ledger-v2" in str(moved["spec"]["volumes"]) and "agentfleet-ledger" not in str(moved)
    assert sum(m["name"] == "ledger-password" for m in container(moved["spec"], GUARD_CONTAINER)["volumeMounts"]) == 1


def test_renaming_a_policy_with_a_quota_re_reconciles_its_agents() -> None:
    """The quota's ledger key is the policy's name, so the covering fingerprint must see names."""
    from agentfleet.controller.handlers import covering_hash

    before = [policy("team", spendQuota={"dollars": "100"})]
    after = [policy("team-a-quota", spendQuota={"dollars": "100"})]
    assert covering_hash(before, NS, LABELS) != covering_hash(after, NS, LABELS)
    assert covering_hash(before, NS, LABELS) == covering_hash(list(before), NS, LABELS)
    elsewhere = [*before, policy("other", namespaces=["team-b"], spendQuota={"dollars": "1"})]
    assert covering_hash(elsewhere, NS, LABELS) == covering_hash(before, NS, LABELS)
