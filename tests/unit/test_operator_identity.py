"""The operator's kopf identity: never from the passwd database (the image runs as a uid without
an entry, which crash-looped the operator in a real container)."""

from __future__ import annotations

import socket

import pytest

from agentfleet.manager import identity

pytestmark = pytest.mark.unit


def test_identity_is_the_pod_name_from_the_downward_api() -> None:
    assert identity({"POD_NAME": "af-agentfleet-7d9c-x2x"}) == "af-agentfleet-7d9c-x2x"


def test_identity_falls_back_to_the_hostname() -> None:
    assert identity({}) == socket.gethostname()
    assert identity({"POD_NAME": ""}) == socket.gethostname()
