"""``python -m hack.harness.dataplane``: run the simulator until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shlex
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from hack.harness.dataplane.simulator import Options, Simulator, install_signal_handlers


def _llm_url(url: str) -> str:
    """Accept the fake's printed base URL (no path) as well as an OpenAI base URL (``.../v1``)."""
    url = url.rstrip("/")
    return url + "/v1" if urlsplit(url).path in ("", "/") else url


def parse(argv: list[str] | None = None) -> Options:
    p = argparse.ArgumentParser(
        prog="python -m hack.harness.dataplane",
        description="Test/demo data plane for agentfleet (not part of the product): runs a real guard and a "
        "scripted agent for every Running agent pod, and registers the guards with Prometheus (file SD).",
    )
    p.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG"), help="default: $KUBECONFIG")
    p.add_argument(
        "--targets-dir",
        type=Path,
        default=os.environ.get("AGENTFLEET_PROMETHEUS_TARGETS"),
        help="Prometheus file-SD directory (default: $AGENTFLEET_PROMETHEUS_TARGETS)",
    )
    llm = p.add_mutually_exclusive_group()
    llm.add_argument("--llm-url", help="fake LLM base URL for every guard whose model endpoint is not on loopback")
    llm.add_argument("--start-llm", action="store_true", help="start hack/harness/fake_llm.py and use it as --llm-url")
    p.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=[],
        help="watch only this namespace; repeatable (default: all namespaces)",
    )
    p.add_argument("--work-dir", type=Path, help="configs, logs, audit trails and state.json (default: a new temp dir)")
    p.add_argument("--tasks-per-second", type=float, default=1.0, help="tasks started per pod per second (default 1)")
    p.add_argument(
        "--max-total-rate",
        type=float,
        default=40.0,
        help="cap on tasks per second over all pods; per-pod rates shrink to fit (default 40)",
    )
    p.add_argument("--max-pods", type=int, default=200, help="simulate at most this many pods (default 200)")
    p.add_argument(
        "--launcher",
        choices=["fork", "exec"],
        default="fork",
        help="fork (default): each guard is forked from a server that imported the guard's code once "
        "and runs `agentfleet guard` in-process (starts in milliseconds, shares memory); exec: a fresh "
        "`agentfleet guard` process per pod (about a second of CPU each)",
    )
    p.add_argument(
        "--agentfleet",
        help="command that runs agentfleet, for --launcher exec (default: the agentfleet script next to this Python)",
    )
    p.add_argument("--start-concurrency", type=int, default=8, help="guards starting at once (default 8)")
    p.add_argument("--stop-grace", type=float, default=10.0, help="seconds between SIGTERM and SIGKILL (default 10)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    a = p.parse_args(argv)
    if a.targets_dir is None:
        p.error("--targets-dir (or $AGENTFLEET_PROMETHEUS_TARGETS) is required")
    for name in ("tasks_per_second", "max_total_rate", "max_pods", "start_concurrency"):
        if getattr(a, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    logging.basicConfig(
        level=a.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    for noisy in ("httpx", "httpx2", "openai", "kubernetes_asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    work_dir = a.work_dir or Path(tempfile.mkdtemp(prefix="agentfleet-dataplane-"))
    return Options(
        kubeconfig=a.kubeconfig,
        targets_dir=a.targets_dir,
        work_dir=work_dir,
        namespaces=a.namespace,
        llm_url=_llm_url(a.llm_url) if a.llm_url else None,
        start_llm=a.start_llm,
        tasks_per_second=a.tasks_per_second,
        max_total_rate=a.max_total_rate,
        max_pods=a.max_pods,
        launcher=a.launcher,
        agentfleet_command=shlex.split(a.agentfleet) if a.agentfleet else [],
        start_concurrency=a.start_concurrency,
        stop_grace=a.stop_grace,
    )


async def _run(opts: Options) -> None:
    stop = asyncio.Event()
    remove = install_signal_handlers(stop)
    try:
        await Simulator(opts).run(stop)
    finally:
        remove()


def main(argv: list[str] | None = None) -> int:
    opts = parse(argv)
    log = logging.getLogger("dataplane")
    try:
        asyncio.run(_run(opts))
    except Exception as exc:
        log.error("simulator failed: %s", exc, exc_info=True)
        return 1
    log.info("exited cleanly")
    return 0


if __name__ == "__main__":
    code = main()
    # Every child is reaped and every file written by now; skip the interpreter's teardown of a
    # large heap (seconds of CPU on a busy 2-core machine) so that callers see a prompt exit.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
