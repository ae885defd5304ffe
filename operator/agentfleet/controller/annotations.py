"""Annotation and label keys: the operator's plain-kubectl interface.

    kubectl annotate agd NAME agentfleet.dev/rollback-to=3          # pin revision 3 (number or hash)
    kubectl annotate agd NAME agentfleet.dev/resume=now --overwrite  # clear an automatic suspension
"""

ROLLBACK_TO = "agentfleet.dev/rollback-to"
RESUME = "agentfleet.dev/resume"
POLICY_HASH = "agentfleet.dev/policy-hash"
REVISION = "agentfleet.dev/revision"
AGENT = "agentfleet.dev/agent"
MANAGED_BY = "app.kubernetes.io/managed-by"
