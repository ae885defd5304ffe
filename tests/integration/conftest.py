"""Fixtures for tests that need the test data plane: a fake LLM and the simulator."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hack.harness.kube import Kube, Prometheus
from hack.harness.processes import DataplaneProcess, FakeLLMProcess


@pytest.fixture
def fake_llm(tmp_path: Path) -> Iterator[str]:
    """``hack/harness/fake_llm.py`` as a process; yields its OpenAI base URL (``.../v1``)."""
    llm = FakeLLMProcess.start(tmp_path / "fake-llm.log")
    try:
        yield llm.url
    finally:
        llm.stop()


@pytest.fixture
def dataplane(kube: Kube, prometheus: Prometheus, namespace: str, tmp_path: Path) -> Iterator[DataplaneProcess]:
    """The simulator for this test's namespace; on teardown it must exit cleanly on SIGTERM,
    leaving no process and no target file behind (``DataplaneProcess.stop`` checks)."""
    dp = DataplaneProcess.start(
        kube.kubeconfig, prometheus.targets_dir, tmp_path / "dataplane", [namespace], "--tasks-per-second", "2"
    )
    try:
        yield dp
    finally:
        print(f"data plane log: {dp.log}")
        dp.stop()
