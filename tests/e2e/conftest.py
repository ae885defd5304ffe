"""The real-node tier's fixtures; they live with their helpers in support.py, which the tests
import directly (a test never imports this file)."""

import pytest

from tests.e2e.support import (  # noqa: F401 - pytest finds fixtures by name in this module
    EXISTING,
    agents_namespace,
    fake_llm,
    greeter,
    operator_installed,
    prometheus,
    real_node,
)

NODE_ONLY = ("test_chaos_audit.py", "test_zz_down.py")
"""Tests that need this project's own node: a container killed with ``hack/node ctr``, and the
machine checked after the node is gone. Not run against an existing cluster."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On an existing cluster (AGENTFLEET_E2E_KUBECONFIG, kind) the node-only tests are deselected,
    and said so: they cannot pass or fail there."""
    if not EXISTING:
        return
    dropped = [item for item in items if item.path.name in NODE_ONLY]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if item.path.name not in NODE_ONLY]
        names = ", ".join(NODE_ONLY)
        print(f"\nAGENTFLEET_E2E_KUBECONFIG: deselected {len(dropped)} tests that need hack/node ({names})")
