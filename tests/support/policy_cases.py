"""One table of AgentPolicy cases for both places a policy is enforced.

``tests/unit/test_policy.py`` holds the reconcile-time check (``agentfleet.policy.violations``) to
every case; ``tests/integration/test_admission.py`` holds the API server's admission policy (CEL,
``crds/admission/``) to the same cases. Each case patches a compliant agent and a policy that
allows it, and says whether the result is allowed or, if refused, the exact message after
``AgentPolicy NAME: ``: the two enforcers must agree on the verdict and on the words.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

AGENT_SPEC: dict[str, Any] = {
    "replicas": 2,
    "agent": {
        "image": "example/agent:1",
        "model": {"name": "gpt-4o-mini", "endpoint": "https://api.openai.com/v1"},
        "tools": [{"name": "search"}],
    },
    "budgets": {"tokensPerHour": 50000, "costPerDay": "5", "maxTaskDuration": "10m"},
    "permissions": {
        "egress": [{"cidr": "203.0.113.0/28"}],
        "kubernetes": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}],
    },
    "guardrails": [{"name": "loops", "metric": "loopDetections", "threshold": "0", "action": "Suspend"}],
}
"""An agent the policy below allows."""

POLICY_SPEC: dict[str, Any] = {
    "ceilings": {
        "tokensPerHour": 100000,
        "costPerDay": "20",
        "maxToolCallsPerTask": 100,
        "maxIterationsPerTask": 50,
        "maxTaskDuration": "30m",
        "maxConcurrentTasks": 16,
        "maxReplicas": 3,
        "maxSubAgentDepth": 3,
        "maxSubAgentCallsPerTask": 16,
    },
    "allowedModels": ["gpt-4o-mini"],
    "allowedTools": ["search", "fetch"],
    "allowedEgress": ["203.0.113.0/24"],
    "allowedKubernetesRules": [
        {"apiGroups": [""], "resources": ["pods", "pods/log"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"], "resourceNames": ["agent-config"]},
    ],
    "requiredGuardrails": [{"metric": "loopDetections", "actions": ["Suspend", "Rollback"]}],
}
"""A policy with every kind of rule (its namespaces are set by whoever creates it)."""


def merged(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """JSON merge patch (RFC 7386): ``None`` deletes, dicts merge, everything else replaces."""
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@dataclass(frozen=True)
class PolicyCase:
    id: str
    agent: dict[str, Any]
    """Merge patch of ``AGENT_SPEC``."""
    policy: dict[str, Any]
    """Merge patch of ``POLICY_SPEC``."""
    refusal: str | None = None
    """The message after ``AgentPolicy NAME: ``; None: the agent is allowed."""

    @property
    def allowed(self) -> bool:
        return self.refusal is None


K = "permissions.kubernetes not covered by allowedKubernetesRules: "
LOOPS_REQUIRED = "guardrails missing requiredGuardrails: loopDetections (action Suspend or Rollback)"

REFUSED = [
    PolicyCase(
        "tokens above ceiling",
        {"budgets": {"tokensPerHour": 200000}},
        {},
        "budgets.tokensPerHour=200000 exceeds ceilings.tokensPerHour=100000",
    ),
    PolicyCase(
        "tokens unset under a ceiling",
        {"budgets": {"tokensPerHour": None}},
        {},
        "budgets.tokensPerHour is unset (unlimited) but ceilings.tokensPerHour=100000",
    ),
    PolicyCase(
        "cost above ceiling by a cent",
        {"budgets": {"costPerDay": "20.01"}},
        {},
        "budgets.costPerDay=20.01 exceeds ceilings.costPerDay=20",
    ),
    PolicyCase(
        "cost above ceiling by a millionth",
        {"budgets": {"costPerDay": "20.000001"}},
        {},
        "budgets.costPerDay=20.000001 exceeds ceilings.costPerDay=20",
    ),
    PolicyCase(
        "cost unset under a ceiling",
        {"budgets": {"costPerDay": None}},
        {},
        "budgets.costPerDay is unset (unlimited) but ceilings.costPerDay=20",
    ),
    PolicyCase(
        "tool calls above ceiling",
        {"budgets": {"maxToolCallsPerTask": 101}},
        {},
        "budgets.maxToolCallsPerTask=101 exceeds ceilings.maxToolCallsPerTask=100",
    ),
    PolicyCase(
        "iterations default above ceiling",
        {},
        {"ceilings": {"maxIterationsPerTask": 10}},
        "budgets.maxIterationsPerTask=50 exceeds ceilings.maxIterationsPerTask=10",
    ),
    PolicyCase(
        "sub-agent depth above ceiling",
        {"budgets": {"maxSubAgentDepth": 4}},
        {},
        "budgets.maxSubAgentDepth=4 exceeds ceilings.maxSubAgentDepth=3",
    ),
    PolicyCase(
        "sub-agent calls per task default above ceiling",
        {},
        {"ceilings": {"maxSubAgentCallsPerTask": 8}},
        "budgets.maxSubAgentCallsPerTask=16 exceeds ceilings.maxSubAgentCallsPerTask=8",
    ),
    PolicyCase(
        "duration above ceiling",
        {"budgets": {"maxTaskDuration": "1h"}},
        {},
        "budgets.maxTaskDuration=1h exceeds ceilings.maxTaskDuration=30m",
    ),
    PolicyCase(
        "duration above ceiling by a second",
        {"budgets": {"maxTaskDuration": "1h0m1s"}},
        {"ceilings": {"maxTaskDuration": "1h"}},
        "budgets.maxTaskDuration=1h0m1s exceeds ceilings.maxTaskDuration=1h",
    ),
    PolicyCase(
        "concurrency above ceiling by one",
        {"budgets": {"maxConcurrentTasks": 17}},
        {},
        "budgets.maxConcurrentTasks=17 exceeds ceilings.maxConcurrentTasks=16",
    ),
    PolicyCase(
        "concurrency far above ceiling",
        {"budgets": {"maxConcurrentTasks": 64}},
        {},
        "budgets.maxConcurrentTasks=64 exceeds ceilings.maxConcurrentTasks=16",
    ),
    PolicyCase("replicas above ceiling by one", {"replicas": 4}, {}, "replicas=4 exceeds ceilings.maxReplicas=3"),
    PolicyCase("replicas above ceiling", {"replicas": 5}, {}, "replicas=5 exceeds ceilings.maxReplicas=3"),
    PolicyCase(
        "model not allowed",
        {"agent": {"model": {"name": "gpt-4o"}}},
        {},
        "agent.model.name=gpt-4o is not in allowedModels",
    ),
    PolicyCase(
        "tool not allowed",
        {"agent": {"tools": [{"name": "search"}, {"name": "shell"}]}},
        {},
        "agent.tools not in allowedTools: shell",
    ),
    PolicyCase(
        "tools not allowed, in order",
        {"agent": {"tools": [{"name": "search"}, {"name": "shell"}, {"name": "exec"}]}},
        {},
        "agent.tools not in allowedTools: shell, exec",
    ),
    PolicyCase(
        "egress beyond policy",
        {"permissions": {"egress": [{"cidr": "0.0.0.0/0"}]}},
        {},
        "permissions.egress not within allowedEgress: 0.0.0.0/0",
    ),
    PolicyCase(
        "egress wider and elsewhere, in order",
        {"permissions": {"egress": [{"cidr": "203.0.113.0/23"}, {"cidr": "0.0.0.0/0"}]}},
        {},
        "permissions.egress not within allowedEgress: 203.0.113.0/23, 0.0.0.0/0",
    ),
    PolicyCase(
        "egress v6 against a v4 allowance",
        {"permissions": {"egress": [{"cidr": "2001:db8::/32"}]}},
        {},
        "permissions.egress not within allowedEgress: 2001:db8::/32",
    ),
    PolicyCase(
        "rbac all wildcards",
        {"permissions": {"kubernetes": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]}},
        {},
        K + '{apiGroups: ["*"], resources: ["*"], verbs: ["*"]}',
    ),
    PolicyCase(
        "rbac wildcard verb",
        {"permissions": {"kubernetes": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["*"]}]}},
        {},
        K + '{apiGroups: [""], resources: ["pods"], verbs: ["*"]}',
    ),
    PolicyCase(
        "rbac secrets",
        {"permissions": {"kubernetes": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]}},
        {},
        K + '{apiGroups: [""], resources: ["secrets"], verbs: ["get"]}',
    ),
    PolicyCase(
        "rbac other group",
        {"permissions": {"kubernetes": [{"apiGroups": ["apps"], "resources": ["pods"], "verbs": ["get"]}]}},
        {},
        K + '{apiGroups: ["apps"], resources: ["pods"], verbs: ["get"]}',
    ),
    PolicyCase(
        "rbac object names beyond policy",
        {"permissions": {"kubernetes": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]}},
        {},
        K + '{apiGroups: [""], resources: ["configmaps"], verbs: ["get"]}',
    ),
    PolicyCase(
        "rbac names beyond, in order",
        {
            "permissions": {
                "kubernetes": [
                    {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"], "resourceNames": ["x"]},
                    {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]},
                ]
            }
        },
        {},
        K + '{apiGroups: [""], resources: ["configmaps"], '
        'verbs: ["get"], resourceNames: ["x"]}; {apiGroups: [""], resources: ["configmaps"], verbs: ["get"]}',
    ),
    PolicyCase(
        "rbac without allowance",
        {},
        {"allowedKubernetesRules": None},
        "permissions.kubernetes is not allowed: the policy sets no allowedKubernetesRules",
    ),
    PolicyCase("required guardrail missing", {"guardrails": None}, {}, LOOPS_REQUIRED),
    PolicyCase(
        "required guardrails missing, in order",
        {"guardrails": None},
        {"requiredGuardrails": [{"metric": "loopDetections"}, {"metric": "errorRate", "actions": ["Rollback"]}]},
        "guardrails missing requiredGuardrails: loopDetections, errorRate (action Rollback)",
    ),
    PolicyCase(
        "required guardrail with a weak action",
        {"guardrails": [{"name": "loops", "metric": "loopDetections", "threshold": "0", "action": "Alert"}]},
        {},
        LOOPS_REQUIRED,
    ),
]

ALLOWED = [
    PolicyCase("compliant", {}, {}),
    PolicyCase(
        "budgets exactly at the ceilings, other spellings",
        {"budgets": {"tokensPerHour": 100000, "costPerDay": "20.0", "maxTaskDuration": "1800s"}},
        {},
    ),
    PolicyCase(
        "budgets unset without ceilings", {"budgets": {"tokensPerHour": None, "costPerDay": None}}, {"ceilings": None}
    ),
    PolicyCase("egress within", {"permissions": {"egress": [{"cidr": "203.0.113.7/32"}]}}, {}),
    PolicyCase(
        "egress v6 within",
        {"permissions": {"egress": [{"cidr": "2001:db8::/48"}]}},
        {"allowedEgress": ["2001:db8::/32"]},
    ),
    PolicyCase(
        "egress without allowance", {"permissions": {"egress": [{"cidr": "0.0.0.0/0"}]}}, {"allowedEgress": None}
    ),
    PolicyCase(
        "models and tools without allowance",
        {"agent": {"model": {"name": "any"}, "tools": [{"name": "x"}]}},
        {"allowedModels": None, "allowedTools": None},
    ),
    PolicyCase(
        "rbac under a wildcard allowance",
        {"permissions": {"kubernetes": [{"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["*"]}]}},
        {"allowedKubernetesRules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]},
    ),
    PolicyCase(
        "rbac named objects within",
        {
            "permissions": {
                "kubernetes": [
                    {
                        "apiGroups": [""],
                        "resources": ["configmaps"],
                        "verbs": ["get"],
                        "resourceNames": ["agent-config"],
                    }
                ]
            }
        },
        {},
    ),
    PolicyCase("no rbac, no allowance", {"permissions": {"kubernetes": None}}, {"allowedKubernetesRules": None}),
    PolicyCase("empty rbac, no allowance", {"permissions": {"kubernetes": []}}, {"allowedKubernetesRules": None}),
    PolicyCase(
        "required guardrail with any action",
        {"guardrails": [{"name": "l", "metric": "loopDetections", "threshold": "1", "action": "Alert"}]},
        {"requiredGuardrails": [{"metric": "loopDetections"}]},
    ),
]

CASES = REFUSED + ALLOWED
