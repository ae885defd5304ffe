"""The operator, the fake LLM and the data plane simulator as processes, for tests, benchmarks
and the demo.

Synchronous on purpose (tests, benchmark scripts and the demo poll with deadlines)::

    op = OperatorProcess(kubeconfig, tmp_path / "operator.log", ["--prometheus-url=..."])
    op.start()                                                        # returns once /healthz is 200
    llm = FakeLLMProcess.start(tmp_path / "fake-llm.log")            # llm.url ends with /v1
    dp = DataplaneProcess.start(kube.kubeconfig, prometheus.targets_dir, tmp_path / "dp", [namespace])
    poll(lambda: dp.running("my-agent", 2), timeout=60, what="2 guards")
    ...
    dp.stop()          # SIGTERM; raises if it fails or leaves a process or a target file behind
    llm.stop()
    op.stop()

``detach=True`` starts a process in a session of its own, so that it outlives its starter (the
demo leaves its fleet running; ``hack/demo down`` stops it by process group).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hack.harness.kube import PYTHON, ROOT, VENV, free_port, http_ok, poll

FAKE_LLM = Path(__file__).resolve().parent / "fake_llm.py"
DEV_PLATFORM = Path(__file__).resolve().parent / "dev-platform.yaml"
"""The --platform file of the tests' and the demo's operator (a development cluster's defaults)."""
TEST_GUARD_IMAGE = "ghcr.io/agentfleet/agentfleet:test"
"""The guard image the operator writes into pods (KWOK runs none of them)."""


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


class OperatorProcess:
    """``agentfleet operator`` as a real process, started the way its pod starts it (minus the pod).

    ``command`` replaces ``.venv/bin/agentfleet`` (a benchmark's A/B against other code);
    ``guard_image=None`` leaves the operator's default; ports 0 are chosen free at each start."""

    def __init__(
        self,
        kubeconfig: str,
        log_path: Path,
        extra: list[str] | None = None,
        *,
        guard_image: str | None = TEST_GUARD_IMAGE,
        command: list[str] | None = None,
        metrics_port: int = 0,
        health_port: int = 0,
        detach: bool = False,
        env: dict[str, str] | None = None,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.env = env or {}
        self.log_path = log_path
        self.extra = extra or []
        self.guard_image = guard_image
        self.command = command or [str(VENV / "agentfleet")]
        self.fixed_ports = (metrics_port, health_port)
        self.detach = detach
        self.proc: subprocess.Popen[bytes] | None = None
        self.metrics_port = 0

    def start(self, timeout: float = 60) -> None:
        """Start it (appending to its log) and wait for its liveness endpoint."""
        self.metrics_port = self.fixed_ports[0] or free_port()
        health = self.fixed_ports[1] or free_port()
        image = [f"--guard-image={self.guard_image}"] if self.guard_image else []
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    *self.command,
                    "operator",
                    f"--metrics-port={self.metrics_port}",
                    "--metrics-address=127.0.0.1",
                    f"--liveness=http://127.0.0.1:{health}/healthz",
                    *image,
                    *self.extra,
                ],
                env={**os.environ, "KUBECONFIG": self.kubeconfig, **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
                start_new_session=self.detach,
            )
        poll(lambda: self._healthy(health), timeout=timeout, what="the operator's liveness endpoint")

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def _healthy(self, port: int) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"operator exited with {self.proc.returncode}:\n{self.tail()}")
        return http_ok(f"http://127.0.0.1:{port}/healthz")

    def stop(self, kill: bool = False) -> None:
        """SIGTERM (SIGKILL with ``kill``: no graceful shutdown); SIGKILL after 20 s."""
        if self.proc and self.proc.poll() is None:
            (self.proc.kill if kill else self.proc.terminate)()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def metrics(self) -> dict[str, float]:
        """The operator's /metrics as {'name{labels}': value}."""
        out: dict[str, float] = {}
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as resp:
            for line in resp.read().decode().splitlines():
                if line and not line.startswith("#"):
                    key, _, value = line.rpartition(" ")
                    with contextlib.suppress(ValueError):
                        out[key] = float(value)
        return out

    def metric(self, name: str) -> float:
        """The first sample of ``name`` (whatever its labels), 0 if there is none."""
        return next((v for k, v in self.metrics().items() if k == name or k.startswith(name + "{")), 0.0)


@dataclass
class FakeLLMProcess:
    """``hack/harness/fake_llm.py --port 0`` as a process."""

    proc: subprocess.Popen[bytes]
    url: str
    """OpenAI base URL (``http://127.0.0.1:PORT/v1``)."""

    @property
    def base(self) -> str:
        """The URL it printed (``http://127.0.0.1:PORT``), without ``/v1``."""
        return self.url.removesuffix("/v1")

    @property
    def pid(self) -> int:
        return self.proc.pid

    @classmethod
    def start(cls, log: Path, *args: str, timeout: float = 60, detach: bool = False) -> FakeLLMProcess:
        """Start it (a fresh log) and wait for its ``fake-llm listening on URL`` line."""
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [PYTHON, str(FAKE_LLM), "--port", "0", *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
                start_new_session=detach,
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
    """``python -m hack.harness.dataplane`` as a process, with readers for its ``state.json``."""

    proc: subprocess.Popen[bytes]
    work_dir: Path
    targets_dir: Path
    namespaces: list[str]
    log: Path
    seen_pids: set[int] = field(default_factory=set)

    @classmethod
    def start(
        cls,
        kubeconfig: str,
        targets_dir: Path,
        work_dir: Path,
        namespaces: list[str],
        *extra: str,
        timeout: float = 60,
        detach: bool = False,
    ) -> DataplaneProcess:
        """Start it and wait until its first list of pods is done (``extra``: more flags, e.g.
        ``--start-llm``, ``--tasks-per-second 2``, ``--launcher exec``)."""
        work_dir.mkdir(parents=True, exist_ok=True)
        log = work_dir / "dataplane.log"
        ns_flags = [f for ns in namespaces for f in ("--namespace", ns)]
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [
                    PYTHON,
                    "-m",
                    "hack.harness.dataplane",
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
                stdin=subprocess.DEVNULL,
                cwd=ROOT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                start_new_session=detach,
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
