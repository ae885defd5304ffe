"""Pure rendering of an AgentDeployment into the Kubernetes objects that run it."""

from agentfleet.render.base import Rendered, RenderError, RenderSettings
from agentfleet.render.children import (
    CHILD_KINDS,
    ChildNames,
    child_names,
    label_selector,
    labels,
    object_key,
    selector,
)
from agentfleet.render.core import render, render_controller_revision
from agentfleet.render.revision import pod_relevant_spec, revision_hash

__all__ = [
    "CHILD_KINDS",
    "ChildNames",
    "RenderError",
    "RenderSettings",
    "Rendered",
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
