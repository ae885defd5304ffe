"""The generated CRD schema at work in the real API server: malformed or hostile AgentDeployments
are rejected with a message that says what is wrong, before anything reaches the operator."""

from __future__ import annotations

import copy
import json
from typing import Any

import pydantic
import pytest

from agentfleet.api.types import AgentDeployment, AgentPolicy
from hack.harness.kube import Kube

pytestmark = pytest.mark.integration

VALID: dict[str, Any] = {
    "apiVersion": "agentfleet.dev/v1alpha1",
    "kind": "AgentDeployment",
    "metadata": {"name": "probe"},
    "spec": {
        "agent": {
            "image": "example/agent:1",
            "model": {"name": "gpt-4o-mini", "endpoint": "https://api.openai.com/v1"},
            "tools": [{"name": "search"}],
        },
    },
}


def with_spec(**patch: Any) -> dict[str, Any]:
    obj = copy.deepcopy(VALID)
    obj["spec"].update(patch)
    return obj


def with_agent(**patch: Any) -> dict[str, Any]:
    obj = copy.deepcopy(VALID)
    obj["spec"]["agent"].update(patch)
    return obj


def rule(name: str = "r", **extra: Any) -> dict[str, Any]:
    return {"name": name, "metric": "errorRate", "threshold": "0.1", "action": "Alert", **extra}


# (id, manifest, text the API server's message must contain, whether pydantic alone rejects it too)
BAD: list[tuple[str, dict[str, Any], str, bool]] = [
    ("wrong type", with_spec(replicas="three"), "spec.replicas in body must be of type integer", True),
    (
        "money as float",
        with_spec(budgets={"costPerDay": 12.5}),
        "spec.budgets.costPerDay in body must be of type string",
        True,
    ),
    (
        "negative budget",
        with_spec(budgets={"tokensPerHour": -5}),
        "spec.budgets.tokensPerHour in body should be greater than or equal to 1",
        True,
    ),
    (
        "zero per-task cap",
        with_spec(budgets={"maxToolCallsPerTask": 0}),
        "spec.budgets.maxToolCallsPerTask in body should be greater than or equal to 1",
        True,
    ),
    (
        "bad duration",
        with_spec(budgets={"maxTaskDuration": "forever"}),
        "spec.budgets.maxTaskDuration in body should match",
        True,
    ),
    (
        "unknown action",
        with_spec(guardrails=[rule(action="Explode")]),
        'spec.guardrails[0].action: Unsupported value: "Explode"',
        True,
    ),
    (
        "unknown metric",
        with_spec(guardrails=[rule(metric="vibes")]),
        'spec.guardrails[0].metric: Unsupported value: "vibes"',
        True,
    ),
    (
        "duplicate rule names",
        with_spec(guardrails=[rule("a"), rule("a", threshold="0.2")]),
        'spec.guardrails[1]: Duplicate value: {"name":"a"}',
        False,
    ),
    (
        "ScaleTo without scaleTo",
        with_spec(guardrails=[rule(action="ScaleTo")]),
        "action ScaleTo needs scaleTo (a replica count)",
        False,
    ),
    (
        "scaleTo without ScaleTo",
        with_spec(guardrails=[rule(scaleTo=1)]),
        "scaleTo is only valid with action ScaleTo",
        False,
    ),
    (
        "custom without query",
        with_spec(guardrails=[rule(metric="custom")]),
        "metric custom needs exactly one of query (PromQL) or queryRef",
        False,
    ),
    (
        "env secret not permitted",
        with_agent(env=[{"name": "DB", "secretKeyRef": {"name": "db", "key": "password"}}]),
        "agent.env may only reference Secrets listed in permissions.secrets",
        False,
    ),
    ("env without value", with_agent(env=[{"name": "DB"}]), "env needs exactly one of value or secretKeyRef", False),
    (
        "tool allowed but not declared",
        with_spec(permissions={"tools": ["search", "shell"]}),
        "permissions.tools may only name tools declared in agent.tools",
        False,
    ),
    (
        "egress not a CIDR",
        with_spec(permissions={"egress": [{"cidr": "example.com"}]}),
        'spec.permissions.egress[0].cidr: Invalid value: "example.com": must be a CIDR',
        False,
    ),
    (
        "two prompt sources",
        with_agent(systemPrompt={"inline": "hi", "configMapKeyRef": {"name": "p", "key": "prompt"}}),
        "systemPrompt needs exactly one of inline or configMapKeyRef",
        False,
    ),
    ("missing model", with_agent(model=None), "spec.agent.model: Required value", True),
    ("unknown field", with_spec(replicaz=3), 'unknown field "spec.replicaz"', True),
    (
        "too many replicas",
        with_spec(replicas=100000),
        "spec.replicas in body should be less than or equal to 10000",
        True,
    ),
    (
        "loop threshold of one",
        with_spec(guard={"loopThreshold": 1}),
        "spec.guard.loopThreshold in body should be greater than or equal to 2",
        True,
    ),
    (
        "endpoint without scheme",
        with_agent(model={"name": "m", "endpoint": "api.openai.com"}),
        "spec.agent.model.endpoint in body should match",
        True,
    ),
]


def create(kube: Kube, namespace: str, obj: dict[str, Any]) -> tuple[int, str]:
    obj = copy.deepcopy(obj)
    obj["metadata"]["namespace"] = namespace
    obj["spec"]["agent"] = {k: v for k, v in obj["spec"]["agent"].items() if v is not None}
    res = kube.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(obj), check=False)
    return res.returncode, res.stderr


def test_valid_agent_is_accepted(crds_installed: Kube, namespace: str) -> None:
    code, err = create(crds_installed, namespace, VALID)
    assert code == 0, err


@pytest.mark.parametrize(("manifest", "message", "pydantic_rejects"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_malformed_agent_is_rejected_with_a_readable_message(
    crds_installed: Kube, namespace: str, manifest: dict[str, Any], message: str, pydantic_rejects: bool
) -> None:
    code, err = create(crds_installed, namespace, manifest)
    assert code != 0, "the API server accepted a malformed AgentDeployment"
    assert message in err
    if pydantic_rejects:  # the operator's own model agrees with the schema it generated
        cleaned = copy.deepcopy(manifest)
        cleaned["spec"]["agent"] = {k: v for k, v in cleaned["spec"]["agent"].items() if v is not None}
        with pytest.raises(pydantic.ValidationError):
            AgentDeployment.model_validate(cleaned)


@pytest.mark.parametrize("name", ["Bad_Name", "a" * 53, "9lives"], ids=["uppercase", "too-long", "leading-digit"])
def test_agent_names_must_be_short_dns_labels(crds_installed: Kube, namespace: str, name: str) -> None:
    obj = copy.deepcopy(VALID)
    obj["metadata"]["name"] = name
    code, err = create(crds_installed, namespace, obj)
    assert code != 0
    assert "metadata.name" in err


POLICY_BAD: list[tuple[str, dict[str, Any], str, bool]] = [
    (
        "egress not a CIDR",
        {"allowedEgress": ["everywhere"]},
        'spec.allowedEgress[0]: Invalid value: "everywhere": must be a CIDR',
        False,
    ),
    (
        "zero ceiling",
        {"ceilings": {"tokensPerHour": 0}},
        "spec.ceilings.tokensPerHour in body should be greater than or equal to 1",
        True,
    ),
    (
        "no acceptable action",
        {"requiredGuardrails": [{"metric": "errorRate", "actions": []}]},
        "spec.requiredGuardrails[0].actions",
        True,
    ),
    (
        "half a price",
        {"modelPrices": [{"model": "m", "inputPerMillion": "1.5"}]},
        "spec.modelPrices[0].outputPerMillion: Required value",
        True,
    ),
]


@pytest.mark.parametrize("case", POLICY_BAD, ids=[c[0] for c in POLICY_BAD])
def test_malformed_policy_is_rejected(crds_installed: Kube, case: tuple[str, dict[str, Any], str, bool]) -> None:
    _, spec, message, pydantic_rejects = case
    obj = {"apiVersion": "agentfleet.dev/v1alpha1", "kind": "AgentPolicy", "metadata": {"name": "probe"}, "spec": spec}
    res = crds_installed.kubectl("create", "--dry-run=server", "-f", "-", input=json.dumps(obj), check=False)
    assert res.returncode != 0
    assert message in res.stderr
    if pydantic_rejects:
        with pytest.raises(pydantic.ValidationError):
            AgentPolicy.model_validate(obj)


def test_stored_defaults_are_pydantic_defaults(crds_installed: Kube, namespace: str) -> None:
    obj = copy.deepcopy(VALID)
    obj["metadata"]["namespace"] = namespace
    res = crds_installed.kubectl("create", "--dry-run=server", "-o", "json", "-f", "-", input=json.dumps(obj))
    stored = json.loads(res.stdout)
    assert stored["spec"] == AgentDeployment.model_validate(obj).spec.wire()


def test_kubectl_explain_shows_field_docs(crds_installed: Kube) -> None:
    def explain(path: str) -> str:
        return " ".join(crds_installed.kubectl("explain", path).stdout.split())  # kubectl wraps lines

    budgets = explain("agd.spec.budgets")
    assert "Run-time limits enforced by the guard." in budgets
    assert 'maxTaskDuration <string> Wall-clock limit of one task, from its first call. Default: "15m".' in budgets
    assert "tokensPerHour <integer> Tokens (input + output) per sliding hour" in budgets
    action = explain("agd.spec.guardrails.action")
    assert "ScaleTo" in action and "What to do on breach." in action
    assert "agents may not have Kubernetes permissions at all" in explain("agp.spec.allowedKubernetesRules")


def test_printer_columns_short_names_and_category(crds_installed: Kube, namespace: str) -> None:
    obj = copy.deepcopy(VALID)
    obj["metadata"]["namespace"] = namespace
    crds_installed.kubectl("create", "-f", "-", input=json.dumps(obj))
    header = crds_installed.kubectl("get", "agd", "-n", namespace).stdout.splitlines()[0].split()
    assert header == ["NAME", "READY", "PHASE", "REVISION", "SPEND", "AGE"]
    assert "agentdeployment.agentfleet.dev/probe" in crds_installed.kubectl("get", "agentfleet", "-n", namespace).stdout
    assert crds_installed.kubectl("get", "agp").returncode == 0


def test_scale_subresource_sets_spec_replicas(crds_installed: Kube, namespace: str) -> None:
    obj = copy.deepcopy(VALID)
    obj["metadata"]["namespace"] = namespace
    crds_installed.kubectl("create", "-f", "-", input=json.dumps(obj))
    crds_installed.kubectl("scale", "agd/probe", "-n", namespace, "--replicas=3")
    assert crds_installed.get_json("agd", "probe", "-n", namespace)["spec"]["replicas"] == 3
