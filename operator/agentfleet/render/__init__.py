"""Pure rendering of an AgentDeployment into the Kubernetes objects that run it."""

from agentfleet.render.base import Rendered, RenderError, RenderSettings
from agentfleet.render.core import render, render_controller_revision
from agentfleet.render.names import (
    AGENT_LABEL,
    CHILD_KINDS,
    MANAGED_BY_LABEL,
    REVISION_LABEL,
    ChildNames,
    child_names,
    label_selector,
    labels,
    object_key,
    selector,
)
from agentfleet.render.revision import pod_relevant_spec, revision_hash
from agentfleet.render.wire import apply_patch_body

__all__ = [
    "AGENT_LABEL",
    "CHILD_KINDS",
    "MANAGED_BY_LABEL",
    "REVISION_LABEL",
    "ChildNames",
    "RenderError",
    "RenderSettings",
    "Rendered",
    "apply_patch_body",
    "child_names",
    "label_selector",
    "labels",
    "object_key",
    "pod_relevant_spec",
    "render",
    "render_controller_revision",
    "revision_hash",
    "selector",
]
