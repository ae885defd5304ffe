"""Processes of the test/demo data plane (not part of the product): guards, started by exec or
forked from ``zygote.py``, and the fake LLM."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

import aiohttp

log = logging.getLogger("dataplane")

FAKE_LLM = Path(__file__).resolve().parent.parent / "fake_llm.py"
ZYGOTE = Path(__file__).resolve().parent / "zygote.py"


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Child:
    """A process the simulator started, directly (exec) or through the fork server."""

    pid: int

    @property
    def returncode(self) -> int | None:
        raise NotImplementedError

    async def wait(self) -> int:
        raise NotImplementedError

    def send(self, sig: int) -> None:
        raise NotImplementedError


class ExecChild(Child):
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.pid = proc.pid

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    async def wait(self) -> int:
        return await self.proc.wait()

    def send(self, sig: int) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)


class ForkedChild(Child):
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.code: int | None = None
        self.exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    @property
    def returncode(self) -> int | None:
        return self.code

    def finish(self, code: int) -> None:
        self.code = code
        if not self.exited.done():
            self.exited.set_result(code)

    async def wait(self) -> int:
        return await asyncio.shield(self.exited)

    def send(self, sig: int) -> None:
        if self.returncode is None:  # the fork server has not reaped it: the pid is still ours
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)


async def stop_child(child: Child | asyncio.subprocess.Process, grace: float, *, dump: bool = False) -> None:
    """SIGTERM, then SIGKILL if it is still there after ``grace`` seconds; waits for the end.

    ``dump``: before the SIGKILL, send SIGABRT so that Python's faulthandler (enabled in the
    guards) writes every thread's stack to the process's log: a hung shutdown leaves evidence.
    """
    c = ExecChild(child) if isinstance(child, asyncio.subprocess.Process) else child
    if c.returncode is not None:
        return
    c.send(signal.SIGTERM)
    try:
        await asyncio.wait_for(c.wait(), grace)
        return
    except TimeoutError:
        pass
    if dump:
        log.warning("pid %d ignored SIGTERM for %.0fs; dumping its stacks (SIGABRT) into its log", c.pid, grace)
        c.send(signal.SIGABRT)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(c.wait(), 2)
            return
    log.warning("pid %d ignored SIGTERM for %.0fs; killing it", c.pid, grace)
    c.send(signal.SIGKILL)
    await asyncio.wait_for(c.wait(), 10)


class Launcher:
    """Starts ``agentfleet ARGV...`` with stdout and stderr appended to a log file."""

    async def start(self) -> None:
        """Get ready (the fork server imports everything once)."""

    async def spawn(self, argv: list[str], log_path: Path) -> Child:
        raise NotImplementedError

    async def close(self) -> None:
        """Release resources (children are stopped by their owners first)."""

    async def failed(self) -> None:
        """Returns if the launcher can no longer start anything."""
        await asyncio.Event().wait()


class ExecLauncher(Launcher):
    """A fresh ``agentfleet`` process per guard: the most faithful, ~1 s of CPU per start."""

    def __init__(self, command: list[str]) -> None:
        self.command = command

    async def spawn(self, argv: list[str], log_path: Path) -> Child:
        with log_path.open("ab") as out:
            proc = await asyncio.create_subprocess_exec(
                *self.command,
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                preexec_fn=_die_with_parent,
                env={**os.environ, "PYTHONFAULTHANDLER": "1"},
            )
        return ExecChild(proc)


def _terminate_when_forked(fut: asyncio.Future[int]) -> None:
    if not fut.cancelled() and fut.exception() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(fut.result(), signal.SIGTERM)


class ForkLauncher(Launcher):
    """Guards forked from ``zygote.py``, which imported the guard's code once: a start costs
    milliseconds and the children share that code's memory. Same entry point as the
    ``agentfleet`` script."""

    def __init__(self) -> None:
        self.proc: asyncio.subprocess.Process | None = None
        self.children: dict[int, ForkedChild] = {}
        self.pending: dict[int, asyncio.Future[int]] = {}
        self.next_id = 0
        self.reader: asyncio.Task[None] | None = None
        self.lock = asyncio.Lock()
        self.closing = False

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(ZYGOTE),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            preexec_fn=_die_with_parent,
        )
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 60)
        if not line.startswith(b'{"ready"'):
            await stop_child(self.proc, 5)
            raise RuntimeError(f"the guard fork server did not start: {line!r}")
        self.reader = asyncio.create_task(self._read(self.proc.stdout))

    async def _read(self, stdout: asyncio.StreamReader) -> None:
        while line := await stdout.readline():
            msg = json.loads(line)
            if "exited" in msg:
                child = self.children.pop(int(msg["exited"]), None)
                if child is not None:
                    child.finish(int(msg["code"]))
            elif msg.get("id") in self.pending:
                fut = self.pending.pop(msg["id"])
                if not fut.done():
                    if "pid" in msg:
                        fut.set_result(int(msg["pid"]))
                    else:
                        fut.set_exception(RuntimeError(f"fork failed: {msg.get('error')}"))
        if not self.closing:
            log.error("the guard fork server exited")  # its children got SIGTERM (PR_SET_PDEATHSIG)
        for child in self.children.values():
            child.finish(-signal.SIGTERM)
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(RuntimeError("the guard fork server exited"))

    async def spawn(self, argv: list[str], log_path: Path) -> Child:
        if self.proc is None or self.proc.stdin is None or self.reader is None or self.reader.done():
            raise RuntimeError("the guard fork server is not running")
        async with self.lock:
            self.next_id += 1
            fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            self.pending[self.next_id] = fut
            self.proc.stdin.write(
                (json.dumps({"id": self.next_id, "argv": argv, "log": str(log_path)}) + "\n").encode()
            )
            await self.proc.stdin.drain()
            try:
                pid = await asyncio.wait_for(asyncio.shield(fut), 30)
            except asyncio.CancelledError:  # the pod went away meanwhile: stop the guard once it exists
                fut.add_done_callback(_terminate_when_forked)
                raise
            child = ForkedChild(pid)
            self.children[pid] = child
        return child

    async def failed(self) -> None:
        assert self.reader is not None
        await asyncio.shield(self.reader)

    async def close(self) -> None:
        if self.proc is None:
            return
        self.closing = True
        if self.proc.stdin is not None:
            self.proc.stdin.close()  # the fork server stops what is left, then exits
        try:
            await asyncio.wait_for(self.proc.wait(), 20)
        except TimeoutError:
            await stop_child(self.proc, 5)
        if self.reader is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self.reader, 5)


class GuardProcess:
    """One guard, started on a free port it picks itself (``--port 0``) and reports in its
    ``listening`` log line."""

    def __init__(self, launcher: Launcher, config: Path, log_path: Path) -> None:
        self.launcher = launcher
        self.argv = ["guard", "--config", str(config), "--port", "0", "--drain-timeout", "3s"]
        self.log_path = log_path
        self.child: Child | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.child.pid if self.child else None

    async def start(self, session: aiohttp.ClientSession, within: float) -> None:
        """Spawn, learn the port from the log, wait for ``/readyz`` (all ``within`` seconds)."""
        deadline = time.monotonic() + within
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.child = await self.launcher.spawn(self.argv, self.log_path)
        while not self.port:
            self.port = self._listening_port(offset)
            if self.port:
                break
            if self.child.returncode is not None:
                raise RuntimeError(f"guard exited with {self.child.returncode} before listening: {self.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"guard did not report its port within {within:.0f}s")
            await asyncio.sleep(0.05)
        while True:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(f"{self.url}/readyz", timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    if resp.status == 200:
                        return
            if self.child.returncode is not None:
                raise RuntimeError(f"guard exited with {self.child.returncode}: {self.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"guard not ready within {within:.0f}s")
            await asyncio.sleep(0.05)

    def _listening_port(self, offset: int) -> int:
        try:
            with self.log_path.open("rb") as f:
                f.seek(offset)
                lines = f.read(256 * 1024).splitlines()
        except OSError:
            return 0
        for line in lines:
            if b'"listening"' in line:
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    event = json.loads(line)
                    if event.get("event") == "listening":
                        return int(event["port"])
        return 0

    async def wait(self) -> int:
        assert self.child is not None
        return await self.child.wait()

    async def stop(self, grace: float = 10.0) -> None:
        if self.child is not None:
            await stop_child(self.child, grace, dump=True)

    def tail(self, lines: int = 8) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return " | ".join(text.strip().splitlines()[-lines:])


async def start_fake_llm(log_path: Path, within: float = 30.0) -> tuple[asyncio.subprocess.Process, str]:
    """``hack/harness/fake_llm.py --port 0`` as a child; returns it and its base URL (no /v1)."""
    errors = log_path.open("ab")
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(FAKE_LLM),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=errors,
            preexec_fn=_die_with_parent,
        )
    finally:
        errors.close()
    assert proc.stdout is not None
    prefix = b"fake-llm listening on "
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), within)
    except TimeoutError:
        await stop_child(proc, 5)
        raise RuntimeError(f"the fake LLM did not start within {within:.0f}s (log: {log_path})") from None
    if not line.startswith(prefix):
        await stop_child(proc, 5)
        raise RuntimeError(f"the fake LLM failed to start: {line!r} (log: {log_path})")
    return proc, line[len(prefix) :].decode().strip()
