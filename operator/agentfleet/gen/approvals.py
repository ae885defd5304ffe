"""The AgentApproval CRD and the admission policy that makes its decisions trustworthy.

The guard holding a tool call creates an AgentApproval with the agent's ServiceAccount and waits
for ``spec.decision``. Whoever can write that field decides whether the call runs, so the API
server checks every write (docs/approvals.md, docs/security.md):

* the CRD's own rules: ``spec.request`` never changes, and ``spec.decision`` is final once set;
* this ValidatingAdmissionPolicy: nobody creates an approval already decided; a ServiceAccount
  creates approvals only for its own agent (``<agent>-agent``); whoever records a decision must
  record their own name (``decidedBy == request.userInfo.username``); and the agent's own
  ServiceAccount never decides, even if RBAC let it update approvals;
* RBAC decides who may update approvals in a namespace (the chart's ``agentfleet-approver``).

``agentfleet generate`` writes the CRD under ``crds/`` and the policy under ``crds/admission/``
(and the chart's copies).
"""

from __future__ import annotations

from typing import Any

from agentfleet.api.names import APPROVAL_PLURAL, APPROVAL_SHORT, GROUP
from agentfleet.api.types import AgentApproval
from agentfleet.gen.crds import AGE, _column, _crd, dump

NAME = "agentfleet-agentapproval"
FILE = "agentapproval-admission.yaml"
HEADER = "# Generated from operator/agentfleet/gen/approvals.py by `agentfleet generate`. Do not edit.\n"

Doc = dict[str, Any]


def approval_crd() -> Doc:
    """AgentApproval: namespaced, with a status subresource the holding guard writes."""
    return _crd(
        AgentApproval,
        APPROVAL_PLURAL,
        APPROVAL_SHORT,
        "Namespaced",
        {
            "subresources": {"status": {}},
            "additionalPrinterColumns": [
                _column("Agent", ".spec.request.agent"),
                _column("Tool", ".spec.request.tool"),
                _column("Phase", ".status.phase"),
                _column("Decision", ".spec.decision.state"),
                _column("DecidedBy", ".spec.decision.decidedBy"),
                _column("Deadline", ".spec.request.deadline", priority=1),
                _column("Task", ".spec.request.task", priority=1),
                AGE,
            ],
        },
    )


AGENT_SA = "'system:serviceaccount:' + request.namespace + ':' + object.spec.request.agent + '-agent'"
"""The username of the approval's own agent's ServiceAccount (``render.children``: ``<agent>-agent``)."""


def policy() -> Doc:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": NAME},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": [GROUP],
                        "apiVersions": ["*"],
                        "operations": ["CREATE", "UPDATE"],
                        "resources": [APPROVAL_PLURAL],
                    }
                ]
            },
            "variables": [
                {"name": "user", "expression": "request.userInfo.username"},
                {"name": "agentSA", "expression": AGENT_SA},
                {
                    "name": "newDecision",
                    "expression": "has(object.spec.decision) &&\n"
                    "(request.operation == 'CREATE' || !has(oldObject.spec.decision))",
                },
            ],
            "validations": [
                {
                    "expression": "request.operation != 'CREATE' || !has(object.spec.decision)",
                    "message": "an AgentApproval is created pending: spec.decision is set later, by an approver",
                    "reason": "Forbidden",
                },
                {
                    "expression": "request.operation != 'CREATE' ||\n"
                    "!variables.user.startsWith('system:serviceaccount:') || variables.user == variables.agentSA",
                    "messageExpression": "'a ServiceAccount creates approvals only for its own agent: '"
                    " + variables.user + ' is not ' + variables.agentSA",
                    "reason": "Forbidden",
                },
                {
                    "expression": "!variables.newDecision || object.spec.decision.decidedBy == variables.user",
                    "messageExpression": "'spec.decision.decidedBy must be ' + variables.user"
                    " + ', the identity recording the decision'",
                    "reason": "Forbidden",
                },
                {
                    "expression": "!variables.newDecision || variables.user != variables.agentSA",
                    "message": "an agent's ServiceAccount cannot decide its own approvals",
                    "reason": "Forbidden",
                },
            ],
        },
    }


def binding() -> Doc:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": NAME},
        "spec": {"policyName": NAME, "validationActions": ["Deny"]},
    }


def crd_files() -> dict[str, str]:
    """File name -> content, as committed under ``crds/``."""
    crd = approval_crd()
    return {f"{GROUP}_{crd['spec']['names']['plural']}.yaml": dump([crd])}


def admission_files() -> dict[str, str]:
    """File name -> content, as committed under ``crds/admission/``."""
    return {FILE: dump([policy(), binding()], HEADER)}
