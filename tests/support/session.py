"""How the session's shared processes are set up (``tests/conftest.py`` starts them), for tests
that report or depend on it."""

from __future__ import annotations

EVALUATION_INTERVAL = 2.0
"""How often the session's operator evaluates guardrails, in seconds."""
