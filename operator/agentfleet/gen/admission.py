"""The ValidatingAdmissionPolicy that enforces AgentPolicies at the API server.

Every AgentPolicy is a parameter of one policy (``paramRef`` selects them all); the API server
evaluates each AgentDeployment create or spec update against each of them and rejects it with a
message naming the violated ceiling. A second, small policy keeps ``kubectl scale`` (the scale
subresource) within ``ceilings.maxReplicas``. The rules and messages mirror
:mod:`agentfleet.policy.rules` exactly; ``tests/integration/test_admission.py`` holds them to it.

``agentfleet generate`` regenerates ``crds/admission/`` and the chart's copy.
"""

from __future__ import annotations

from typing import Any

from agentfleet.api.names import GROUP, VERSION
from agentfleet.gen.crds import dump
from agentfleet.policy.rules import CEILINGS, Ceiling

NAME = "agentfleet-agentpolicy"
SCALE_NAME = "agentfleet-agentpolicy-scale"
FILE = "agentpolicy-admission.yaml"

Doc = dict[str, Any]

PREFIX = "'AgentPolicy ' + params.metadata.name + ': '"

COVERED = """\
(!has(params.spec.namespaces) && !has(params.spec.namespaceSelector)) ||
(has(params.spec.namespaces) && namespaceObject.metadata.name in params.spec.namespaces) ||
(has(params.spec.namespaceSelector) && (!has(params.spec.namespaceSelector.matchLabels) ||
  params.spec.namespaceSelector.matchLabels.all(k, has(namespaceObject.metadata.labels) &&
    k in namespaceObject.metadata.labels &&
    namespaceObject.metadata.labels[k] == params.spec.namespaceSelector.matchLabels[k])))"""
"""Mirror of :func:`agentfleet.policy.rules.covers`."""


def _ceiling(c: Ceiling) -> Doc:
    value, limit = f"object.spec.{c.path}", f"params.spec.ceilings.{c.name}"
    within = {
        "int": f"{value} <= {limit}",
        "money": f"!quantity({value}).isGreaterThan(quantity({limit}))",
        "duration": f"duration({value}) <= duration({limit})",
    }[c.kind]
    shown = (lambda x: f"string({x})") if c.kind == "int" else (lambda x: x)
    return {
        "expression": f"!variables.covered || !has({limit}) ||\n(has({value}) && {within})",
        "messageExpression": (
            f"{PREFIX} + (has({value})\n"
            f"  ? '{c.path}=' + {shown(value)} + ' exceeds ceilings.{c.name}='\n"
            f"  : '{c.path} is unset (unlimited) but ceilings.{c.name}=') + {shown(limit)}"
        ),
        "message": f"violates an AgentPolicy ceiling: ceilings.{c.name}",
        "reason": "Forbidden",
    }


def _list(xs: str) -> str:
    """CEL printing a list of strings as ``["a", "b"]`` (like ``describe_rule``)."""
    return f"'[' + {xs}.map(x, '\"' + x + '\"').join(', ') + ']'"


_RULE = (
    "'{apiGroups: ' + "
    + _list("r.apiGroups")
    + " + ', resources: ' + "
    + _list("r.resources")
    + " + ', verbs: ' + "
    + _list("r.verbs")
    + " + (has(r.resourceNames) ? ', resourceNames: ' + "
    + _list("r.resourceNames")
    + " : '') + '}'"
)

_SUBSET = "(('*' in a.{f}) || r.{f}.all(x, x in a.{f}))"
_COVERED_RULE = (
    " && ".join(_SUBSET.format(f=f) for f in ("apiGroups", "resources", "verbs"))
    + " && (!has(a.resourceNames) || size(a.resourceNames) == 0 || (has(r.resourceNames) && "
    "size(r.resourceNames) > 0 && ('*' in a.resourceNames || r.resourceNames.all(x, x in a.resourceNames))))"
)
_UNCOVERED = (
    "object.spec.permissions.kubernetes.filter(r,\n  !params.spec.allowedKubernetesRules.exists(a,\n    "
    + _COVERED_RULE.replace(" && ", " &&\n    ")
    + "))"
)

_HAS_GUARDRAIL = (
    "(has(object.spec.guardrails) && object.spec.guardrails.exists(g, g.metric == q.metric && "
    "(!has(q.actions) || g.action in q.actions)))"
)


_SECRETS = (
    "((has(object.spec.agent.model.apiKeySecretRef) ? [object.spec.agent.model.apiKeySecretRef.name] : []) +\n"
    " (has(object.spec.agent.env) ? object.spec.agent.env.filter(e, has(e.secretKeyRef))"
    ".map(e, e.secretKeyRef.name) : []) +\n"
    " (has(object.spec.permissions) && has(object.spec.permissions.secrets) ? object.spec.permissions.secrets : []))"
)
"""Mirror of :func:`agentfleet.policy.rules.secrets_of`, in the same order (repeats included)."""
_CONFIG_MAPS = (
    "(has(object.spec.agent.systemPrompt) && has(object.spec.agent.systemPrompt.configMapKeyRef) ?\n"
    " [object.spec.agent.systemPrompt.configMapKeyRef.name] : [])"
)


def _allowed(patterns: str) -> str:
    """CEL: whether ``s`` is listed in ``patterns`` (names, "prefix*", "*")."""
    prefix = "(a.endsWith('*') && s.startsWith(a.substring(0, size(a) - 1)))"
    return f"{patterns}.exists(a, a == s || {prefix})"


def _validation(expression: str, message_expression: str, message: str) -> Doc:
    return {
        "expression": f"!variables.covered ||\n{expression}",
        "messageExpression": f"{PREFIX} + (\n{message_expression})",
        "message": message,
        "reason": "Forbidden",
    }


def validations() -> list[Doc]:
    """The checks, in the order of :func:`agentfleet.policy.rules.violations`."""
    tools = "object.spec.agent.tools"
    egress = "object.spec.permissions.egress"
    kube = "object.spec.permissions.kubernetes"
    required = "params.spec.requiredGuardrails"
    return [
        *(_ceiling(c) for c in CEILINGS),
        _validation(
            "!has(params.spec.allowedModels) || object.spec.agent.model.name in params.spec.allowedModels",
            "'agent.model.name=' + object.spec.agent.model.name + ' is not in allowedModels'",
            "violates an AgentPolicy: model not in allowedModels",
        ),
        _validation(
            f"!has(params.spec.allowedTools) || !has({tools}) ||\n{tools}.all(t, t.name in params.spec.allowedTools)",
            f"'agent.tools not in allowedTools: ' +\n"
            f"{tools}.filter(t, !(t.name in params.spec.allowedTools)).map(t, t.name).join(', ')",
            "violates an AgentPolicy: tool not in allowedTools",
        ),
        _validation(
            f"!has(params.spec.allowedEgress) || !has({egress}) ||\n"
            f"{egress}.all(e, params.spec.allowedEgress.exists(a, cidr(a).containsCIDR(e.cidr)))",
            f"'permissions.egress not within allowedEgress: ' +\n{egress}.filter(e,\n"
            "  !params.spec.allowedEgress.exists(a, cidr(a).containsCIDR(e.cidr))).map(e, e.cidr).join(', ')",
            "violates an AgentPolicy: egress not within allowedEgress",
        ),
        _validation(
            f"!has({kube}) || size({kube}) == 0 ||\n"
            f"(has(params.spec.allowedKubernetesRules) && size({_UNCOVERED}) == 0)",
            "!has(params.spec.allowedKubernetesRules)\n"
            "? 'permissions.kubernetes is not allowed: the policy sets no allowedKubernetesRules'\n"
            f": 'permissions.kubernetes not covered by allowedKubernetesRules: ' +\n{_UNCOVERED}\n"
            f".map(r, {_RULE}).join('; ')",
            "violates an AgentPolicy: Kubernetes permissions beyond allowedKubernetesRules",
        ),
        _validation(
            f"!has(params.spec.requiredGuardrails) ||\n{required}.all(q, {_HAS_GUARDRAIL})",
            f"'guardrails missing requiredGuardrails: ' +\n{required}.filter(q, !{_HAS_GUARDRAIL})\n"
            ".map(q, q.metric + (has(q.actions) ? ' (action ' + q.actions.join(' or ') + ')' : ''))"
            ".join(', ')",
            "violates an AgentPolicy: a required guardrail is missing",
        ),
        _validation(
            f"!has(params.spec.allowedSecrets) ||\n"
            f"size({_SECRETS}.filter(s, !{_allowed('params.spec.allowedSecrets')})) == 0",
            "'Secrets not in allowedSecrets: ' +\n"
            f"{_SECRETS}.filter(s, !{_allowed('params.spec.allowedSecrets')}).join(', ')",
            "violates an AgentPolicy: Secret not in allowedSecrets",
        ),
        _validation(
            f"!has(params.spec.allowedConfigMaps) ||\n"
            f"size({_CONFIG_MAPS}.filter(s, !{_allowed('params.spec.allowedConfigMaps')})) == 0",
            "'ConfigMaps not in allowedConfigMaps: ' +\n"
            f"{_CONFIG_MAPS}.filter(s, !{_allowed('params.spec.allowedConfigMaps')}).join(', ')",
            "violates an AgentPolicy: ConfigMap not in allowedConfigMaps",
        ),
    ]


_VARIABLES = [{"name": "covered", "expression": COVERED}]
_LABELS = {"app.kubernetes.io/part-of": "agentfleet"}


def _binding(policy: str) -> Doc:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": policy, "labels": _LABELS},
        "spec": {
            "policyName": policy,
            "paramRef": {"selector": {}, "parameterNotFoundAction": "Allow"},
            "validationActions": ["Deny"],
        },
    }


def _policy(name: str, resource: str, operations: list[str], spec: Doc) -> Doc:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name, "labels": _LABELS},
        "spec": {
            "failurePolicy": "Fail",
            "paramKind": {"apiVersion": f"{GROUP}/{VERSION}", "kind": "AgentPolicy"},
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": [GROUP],
                        "apiVersions": [VERSION],
                        "operations": operations,
                        "resources": [resource],
                    }
                ]
            },
            "variables": _VARIABLES,
            **spec,
        },
    }


def documents() -> list[Doc]:
    """Policy and binding for AgentDeployments, then for their scale subresource."""
    main = _policy(
        NAME,
        "agentdeployments",
        ["CREATE", "UPDATE"],
        {
            # Only a new or changed spec is judged: metadata-only updates (finalizers, kopf's
            # annotations) of an agent admitted before a policy tightened must still pass, or
            # it could never be deleted. The operator reports such agents as PolicyViolation.
            "matchConditions": [
                {
                    "name": "spec-changed",
                    "expression": "request.operation == 'CREATE' ||\n"
                    "(!has(object.metadata.deletionTimestamp) && object.spec != oldObject.spec)",
                }
            ],
            "validations": validations(),
        },
    )
    replicas = "(has(object.spec.replicas) ? object.spec.replicas : 0)"
    scale = _policy(
        SCALE_NAME,
        "agentdeployments/scale",
        ["UPDATE"],
        {
            "validations": [
                {
                    # Scaling down is always allowed, even while still above a new ceiling.
                    "expression": "!variables.covered || !has(params.spec.ceilings.maxReplicas) ||\n"
                    f"{replicas} <= params.spec.ceilings.maxReplicas ||\n"
                    f"{replicas} <= (has(oldObject.spec.replicas) ? oldObject.spec.replicas : 0)",
                    "messageExpression": f"{PREFIX} + 'replicas=' + string({replicas}) +\n"
                    "' exceeds ceilings.maxReplicas=' + string(params.spec.ceilings.maxReplicas)",
                    "message": "violates an AgentPolicy ceiling: ceilings.maxReplicas",
                    "reason": "Forbidden",
                }
            ]
        },
    )
    return [main, _binding(NAME), scale, _binding(SCALE_NAME)]


HEADER = "# Generated from operator/agentfleet/gen/admission.py by `agentfleet generate`. Do not edit.\n"


def files() -> dict[str, str]:
    """File name -> content, as committed under ``crds/admission/``."""
    return {FILE: dump(documents(), HEADER)}
