"""The real-node tier's fixtures; they live with their helpers in support.py, which the tests
import directly (a test never imports this file)."""

from tests.e2e.support import (  # noqa: F401 - pytest finds fixtures by name in this module
    agents_namespace,
    fake_llm,
    greeter,
    operator_installed,
    prometheus,
    real_node,
)
