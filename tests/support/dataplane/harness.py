"""Handles for tests and benchmarks: the simulator and the fake LLM as processes.

Synchronous on purpose (pytest tests and benchmark scripts poll with deadlines)::

    llm = FakeLLMProcess.start(tmp_path / "fake-llm.log")            # llm.url ends with /v1
    dp = DataplaneProcess.start(kube.kubeconfig, prometheus.targets_dir, tmp_path / "dp", [namespace])
    poll(lambda: dp.running("my-agent", 2), timeout=60, what="2 guards")
    ...
    dp.stop()          # SIGTERM; raises if it fails or leaves a process or a target file behind
    llm.stop()
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[3]


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    st = _stat(pid)
    return st is not None and st[0] != "Z"


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (children, grandchildren, ...)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            st = _stat(int(entry.name))
            if st is not None and st[0] != "Z":
                parents.setdefault(int(st[1]), []).append(int(entry.name))
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _wait_for_line(path: Path, prefix: str, proc: subprocess.Popen[bytes], what: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{path.read_text(errors='replace')[-3000:]}")
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith(prefix):
                return line[len(prefix) :].strip()
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready after {timeout:.0f}s:\n{path.read_text(errors='replace')[-3000:]}")
        time.sleep(0.1)


def _terminate(proc: subprocess.Popen[bytes], grace: float) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
            raise RuntimeError(f"pid {proc.pid} ignored SIGTERM for {grace:.0f}s") from None
    return proc.returncode


@dataclass
class FakeLLMProcess:
    """``tests/support/fake_llm.py --port 0`` as a process."""

    proc: subprocess.Popen[bytes]
    url: str
    """OpenAI base URL (``http://127.0.0.1:PORT/v1``)."""

    @classmethod
    def start(cls, log: Path, *args: str, timeout: float = 60) -> FakeLLMProcess:
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, str(ROOT / "tests" / "support" / "fake_llm.py"), "--port", "0", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
            )
        try:
            base = _wait_for_line(log, "fake-llm listening on ", proc, "the fake LLM", timeout)
        except BaseException:
            _terminate(proc, 10)
            raise
        return cls(proc, base + "/v1")

    def stop(self) -> int:
        return _terminate(self.proc, 15)


@dataclass
class DataplaneProcess:
    """``python -m tests.support.dataplane`` as a process, with readers for its ``state.json``."""

    proc: subprocess.Popen[bytes]
    work_dir: Path
    targets_dir: Path
    namespaces: list[str]
    log: Path
    seen_pids: set[int] = field(default_factory=set)

    @classmethod
    def start(
        cls, kubeconfig: str, targets_dir: Path, work_dir: Path, namespaces: list[str], *extra: str, timeout: float = 60
    ) -> DataplaneProcess:
        """Start it and wait until its first list of pods is done (``extra``: more flags, e.g.
        ``--start-llm``, ``--tasks-per-second 2``, ``--launcher exec``)."""
        work_dir.mkdir(parents=True, exist_ok=True)
        log = work_dir / "dataplane.log"
        ns_flags = [f for ns in namespaces for f in ("--namespace", ns)]
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.support.dataplane",
                    "--kubeconfig",
                    kubeconfig,
                    "--targets-dir",
                    str(targets_dir),
                    "--work-dir",
                    str(work_dir),
                    *ns_flags,
                    *extra,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        dp = cls(proc, work_dir, targets_dir, namespaces, log)
        try:
            _wait_for_line(log, "dataplane ready", proc, "the data plane simulator", timeout)
        except BaseException:
            _terminate(proc, 30)
            raise
        return dp

    def state(self) -> dict[str, Any]:
        """The simulator's ``state.json`` (rewritten on every change, and every 2 s)."""
        try:
            state = dict(json.loads((self.work_dir / "state.json").read_text()))
        except (OSError, ValueError):
            return {}
        self.seen_pids.update(p["guard_pid"] for p in state.get("pods", {}).values() if p.get("guard_pid"))
        return state

    def pods(self, agent: str | None = None, namespace: str | None = None) -> dict[str, dict[str, Any]]:
        """Simulated pods by ``namespace/pod``: agent, revision, phase, guard_pid, guard_url, target,
        behaviour, restarts, error, stats (the scripted agent's counters)."""
        pods: dict[str, dict[str, Any]] = self.state().get("pods", {})
        return {
            k: v
            for k, v in pods.items()
            if (agent is None or v["agent"] == agent) and (namespace is None or k.startswith(namespace + "/"))
        }

    def running(
        self, agent: str, count: int, revision: str | None = None, namespace: str | None = None
    ) -> dict[str, dict[str, Any]] | None:
        """The pods of ``agent`` if exactly ``count`` have a ready guard (at ``revision``), else None."""
        pods = self.pods(agent, namespace)
        ok = len(pods) == count and all(
            p["phase"] == "running" and p["guard_pid"] and (revision is None or p["revision"] == revision)
            for p in pods.values()
        )
        return pods if ok else None

    def targets(self) -> list[Path]:
        """File-SD target files of the watched namespaces."""
        return sorted(p for ns in self.namespaces for p in self.targets_dir.glob(f"{ns}__*.json"))

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, grace: float = 60) -> None:
        """SIGTERM; raises unless it exits 0 leaving no process and no target file behind."""
        procs = set(descendants(self.proc.pid)) | self.seen_pids
        self.state()
        procs |= self.seen_pids
        code = _terminate(self.proc, grace)
        if code != 0:
            raise RuntimeError(f"the simulator exited with {code}:\n{self.tail()}")
        left = [p for p in procs if alive(p)]
        if left:
            raise RuntimeError(f"processes outlived the simulator: {left}")
        if self.targets():
            raise RuntimeError(f"target files left behind: {self.targets()}")
