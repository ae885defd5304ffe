"""A fork server for guard processes (test/demo data plane; not part of the product).

Starting a guard means importing pydantic, aiohttp, prometheus_client and agentfleet: about a
second of CPU per process, which for a 200-agent benchmark on a 2-core machine is minutes. This
process imports all of that once and then forks one child per guard; each child runs exactly what
``agentfleet guard ARGS`` runs (``agentfleet.cli.main.main(["guard", *ARGS])``), with its
stdout and stderr appended to a log file. The children share the imported code's memory pages
copy-on-write.

Protocol (JSON lines; no other output on stdout):

- stdin  ``{"id": N, "argv": ["guard", ...], "log": PATH}``: fork a child;
- stdout ``{"id": N, "pid": PID}`` or ``{"id": N, "error": TEXT}``;
- stdout ``{"exited": PID, "code": CODE}`` when a child ends (negative code: killed by a signal).

End of stdin: SIGTERM to the remaining children, SIGKILL after 10 s, exit. Each child gets
SIGTERM if this process dies (``PR_SET_PDEATHSIG``), and this process gets it if its parent
dies, so a killed simulator leaves nothing running. Run as a script (``python zygote.py``),
not as part of the ``hack.harness`` package: it needs nothing but ``agentfleet``.
"""

from __future__ import annotations

import contextlib
import ctypes
import faulthandler
import json
import os
import random
import selectors
import signal
import sys
import time
import traceback
from typing import Any

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def emit(message: dict[str, Any]) -> None:
    """One protocol line, unbuffered (so a fork never duplicates pending output)."""
    data = (json.dumps(message) + "\n").encode()
    while data:
        data = data[os.write(1, data) :]


def preload() -> None:
    """Everything a guard imports, so the children start warm."""
    import agentfleet.api.guardconfig
    import agentfleet.cli.main
    import agentfleet.guard.app
    import agentfleet.guard.cli  # noqa: F401

    with contextlib.suppress(ImportError):
        import uvloop  # noqa: F401


class Zygote:
    def __init__(self) -> None:
        self.children: set[int] = set()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        os.set_blocking(self.wake_r, False)
        self.sel = selectors.DefaultSelector()

    def child(self, argv: list[str], log: str) -> None:  # pragma: no cover - runs in the fork
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, signal.SIG_DFL)
            die_with_parent()
            self.sel.close()
            os.close(self.wake_r)
            os.close(self.wake_w)
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.close(fd)
            os.close(null)
            random.seed()
            faulthandler.enable()  # SIGABRT from the simulator on a hung shutdown dumps the stacks
            sys.argv = ["agentfleet", *argv]
            from agentfleet.cli.main import main

            code = main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)

    def spawn(self, request: dict[str, Any]) -> None:
        try:
            argv = [str(a) for a in request["argv"]]
            log = str(request["log"])
            pid = os.fork()
        except (KeyError, TypeError, OSError) as exc:
            emit({"id": request.get("id"), "error": str(exc)})
            return
        if pid == 0:
            self.child(argv, log)
        self.children.add(pid)
        emit({"id": request.get("id"), "pid": pid})

    def reap(self) -> None:
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                self.children.clear()
                return
            if pid == 0:
                return
            self.children.discard(pid)
            emit({"exited": pid, "code": os.waitstatus_to_exitcode(status)})

    def shutdown(self) -> None:
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while self.children and time.monotonic() < deadline:
            self.reap()
            time.sleep(0.05)
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        while self.children:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            self.children.discard(pid)
            emit({"exited": pid, "code": os.waitstatus_to_exitcode(status)})

    def run(self) -> int:
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, lambda *_: None)  # handled as end of input, below
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the simulator, which stops us
        signal.set_wakeup_fd(self.wake_w)
        self.sel.register(0, selectors.EVENT_READ, "stdin")
        self.sel.register(self.wake_r, selectors.EVENT_READ, "signal")
        buf = b""
        eof = False
        while not eof:
            for key, _ in self.sel.select():
                if key.data == "signal":
                    with contextlib.suppress(BlockingIOError):
                        signals = os.read(self.wake_r, 4096)
                        if signal.SIGTERM in signals:
                            eof = True
                    continue
                data = os.read(0, 65536)
                if not data:
                    eof = True
                    continue
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        try:
                            request = json.loads(line)
                        except ValueError as exc:
                            emit({"id": None, "error": f"bad request: {exc}"})
                            continue
                        self.spawn(request)
            self.reap()
        self.shutdown()
        return 0


def main() -> int:
    die_with_parent()
    here = os.path.dirname(os.path.abspath(__file__))  # run as a script: keep agent.py & co. off the path
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    preload()
    emit({"ready": os.getpid()})
    return Zygote().run()


if __name__ == "__main__":
    sys.exit(main())
