"""``agentfleet guard``: run the sidecar from the rendered config file and/or flags.

In a pod the operator passes ``--config /etc/agentfleet/guard.yaml`` and nothing else. For local
runs every field that matters has a flag, so ``agentfleet guard --upstream URL --port 4000``
works without a file; flags override the file. ``--port 0`` picks free ports (for the API and,
unless ``--metrics-port`` is given, the metrics listener) and reports them in the ``listening``
log line (stderr, JSON: ``port``/``url`` for the API, ``metrics_port``/``metrics_url``), which is
how tests and benchmarks find the guard.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Coroutine
from dataclasses import replace
from typing import Any

from agentfleet.guard.config import (
    ConfigError,
    Tuning,
    build_config,
    listeners,
    parse_duration,
    read_api_key,
    read_config_file,
    read_secret_file,
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="agentfleet guard",
        description="OpenAI-compatible enforcing proxy for one agent: budgets, tool permissions, loop limits, "
        "retries and circuit breaking, injection heuristics, hash-chained audit, Prometheus metrics.",
    )
    p.add_argument("--config", metavar="FILE", help="GuardConfig as YAML or JSON (rendered by the operator)")
    p.add_argument("--check", action="store_true", help="validate the configuration, print it and exit")
    g = p.add_argument_group("identity and upstream (override the file)")
    g.add_argument("--namespace", help="metric label (default: local)")
    g.add_argument("--agent", help="metric label (default: local)")
    g.add_argument("--revision", help="metric label (default: dev)")
    g.add_argument("--upstream", metavar="URL", help="OpenAI-compatible base URL, e.g. https://api.openai.com/v1")
    g.add_argument("--model", help="model name sent upstream (default: gpt-4o-mini)")
    g.add_argument("--provider", choices=["openai", "azure-openai", "anthropic", "vllm", "openai-compatible"])
    g.add_argument("--api-key-file", metavar="FILE", help="file holding the upstream API key")
    g.add_argument("--host", help="address of the LLM API and /tools: loopback only (default 127.0.0.1)")
    g.add_argument("--port", type=int, help="port of the LLM API and /tools (0: pick free ports for both listeners)")
    g.add_argument("--metrics-host", help="address of /metrics, /healthz, /readyz, /audit/head (default 0.0.0.0)")
    g.add_argument("--metrics-port", type=int, help="port of the metrics listener (default 9090; 0: pick a free one)")
    g.add_argument("--price-input", metavar="USD", help="dollars per million input tokens")
    g.add_argument("--price-output", metavar="USD", help="dollars per million output tokens")
    b = p.add_argument_group("budgets")
    b.add_argument("--tokens-per-hour", type=int)
    b.add_argument("--cost-per-day", metavar="USD")
    b.add_argument("--max-tool-calls", type=int, help="tool calls per task")
    b.add_argument("--max-iterations", type=int, help="LLM calls per task")
    b.add_argument("--max-task-duration", metavar="DURATION")
    b.add_argument("--deadline", metavar="DURATION", help="per-call deadline, retries included")
    b.add_argument("--max-concurrent-tasks", type=int)
    t = p.add_argument_group("tools and guard behaviour")
    t.add_argument(
        "--tool",
        action="append",
        default=[],
        metavar="NAME[=URL]",
        help="declare a tool (with an endpoint: reachable via /tools/NAME); repeatable",
    )
    t.add_argument("--allow-tool", action="append", metavar="NAME", help="restrict the allowlist; repeatable")
    t.add_argument("--loop-threshold", type=int)
    t.add_argument("--injection", choices=["Off", "Flag", "Block"])
    t.add_argument("--capture-content", action="store_true", default=None)
    t.add_argument("--audit-file", metavar="FILE")
    t.add_argument("--no-audit-stdout", action="store_true")
    k = p.add_argument_group("tuning (not part of the API)")
    k.add_argument("--max-attempts", type=int)
    k.add_argument("--breaker-threshold", type=int)
    k.add_argument("--breaker-open", metavar="DURATION")
    k.add_argument("--drain-timeout", metavar="DURATION")
    k.add_argument(
        "--ledger-hold-margin",
        metavar="DURATION",
        help="how long a shared-ledger reservation outlives the call's deadline before it is charged in full",
    )
    k.add_argument("--max-inflight", type=int, dest="max_inflight_requests")
    k.add_argument("--max-tasks", type=int, help="named tasks remembered at once")
    k.add_argument("--upstream-connections", type=int)
    k.add_argument("--default-completion-tokens", type=int)
    k.add_argument("--scan-user-content", action="store_true", default=None)
    return p


def _overrides(a: argparse.Namespace, has_file: bool) -> dict[str, Any]:
    o: dict[str, Any] = {}
    if not has_file:
        o.update(
            namespace="local",
            agent="local",
            revision="dev",
            model={"name": "gpt-4o-mini", "endpoint": a.upstream or ""},
        )
    for key in ("namespace", "agent", "revision", "api_key_file"):
        if getattr(a, key) is not None:
            o[key] = getattr(a, key)
    model = o.setdefault("model", {})
    for flag, key in (("upstream", "endpoint"), ("model", "name"), ("provider", "provider")):
        if getattr(a, flag) is not None:
            model[key] = getattr(a, flag)
    if not model:
        del o["model"]
    if a.host is not None:
        o["listen_host"] = a.host
    if a.metrics_host is not None:
        o["metrics_host"] = a.metrics_host
    if a.metrics_port:
        o["metrics_port"] = a.metrics_port
    if a.port:
        o["listen_port"] = a.port
    pricing = {
        k: v for k, v in (("input_per_million", a.price_input), ("output_per_million", a.price_output)) if v is not None
    }
    if pricing:
        o["pricing"] = pricing
    budgets = {
        k: v
        for k, v in (
            ("tokens_per_hour", a.tokens_per_hour),
            ("cost_per_day", a.cost_per_day),
            ("max_tool_calls_per_task", a.max_tool_calls),
            ("max_iterations_per_task", a.max_iterations),
            ("max_task_duration", a.max_task_duration),
            ("max_concurrent_tasks", a.max_concurrent_tasks),
        )
        if v is not None
    }
    if a.deadline is not None:
        budgets["latency"] = {"per_call_deadline": a.deadline}
    if budgets:
        o["budgets"] = budgets
    if a.tool:
        o["tools"] = [{"name": n, **({"endpoint": u} if u else {})} for n, _, u in (s.partition("=") for s in a.tool)]
    if a.allow_tool is not None:
        o["allowed_tools"] = a.allow_tool
    guard = {
        k: v
        for k, v in (
            ("loop_threshold", a.loop_threshold),
            ("injection", a.injection),
            ("capture_content", a.capture_content),
        )
        if v is not None
    }
    if guard:
        o["guard"] = guard
    audit: dict[str, Any] = {}
    if a.audit_file is not None:
        audit["file"] = a.audit_file
    if a.no_audit_stdout:
        audit["stdout"] = False
    if audit:
        o["audit"] = audit
    return o


def _tuning(a: argparse.Namespace) -> Tuning:
    values: dict[str, Any] = {}
    for key in (
        "max_attempts",
        "breaker_threshold",
        "max_inflight_requests",
        "max_tasks",
        "upstream_connections",
        "default_completion_tokens",
        "scan_user_content",
    ):
        if getattr(a, key) is not None:
            values[key] = getattr(a, key)
    if a.breaker_open is not None:
        values["breaker_open_seconds"] = parse_duration(a.breaker_open)
    if a.drain_timeout is not None:
        values["drain_timeout"] = parse_duration(a.drain_timeout)
    if a.ledger_hold_margin is not None:
        values["ledger_hold_margin"] = parse_duration(a.ledger_hold_margin)
    return replace(Tuning(), **values)


def _run(main: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop when it is installed (it is a dependency on Linux)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(main)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


def main(argv: list[str]) -> int:
    """Entry point of ``agentfleet guard``."""
    args = _parser().parse_args(argv)
    try:
        file_data = read_config_file(args.config) if args.config else None
        if file_data is None and not args.upstream:
            raise ConfigError("either --config FILE or --upstream URL is required")
        cfg = build_config(file_data, _overrides(args, file_data is not None))
        tuning = _tuning(args)
        # --port 0 is a local run: both listeners on free ports unless --metrics-port says otherwise.
        metrics_port = args.metrics_port if args.metrics_port is not None else 0 if args.port == 0 else None
        where = listeners(cfg, api_port=args.port, metrics_port=metrics_port)
        api_key = read_api_key(cfg.api_key_file)
        if cfg.ledger is not None:  # the guard reads it again at start; a bad file is a config error
            read_secret_file(cfg.ledger.password_file, "ledger password")
    except ConfigError as exc:
        print(f"agentfleet guard: {exc}", file=sys.stderr)
        return 2
    if args.check:
        print(json.dumps(cfg.wire(), indent=2))
        return 0

    from agentfleet.guard.app import serve
    from agentfleet.guard.state import Guard

    try:
        _run(serve(Guard(cfg, tuning, api_key=api_key), where))
    except OSError as exc:
        print(
            f"agentfleet guard: cannot listen on {where.api_host}:{where.api_port} and "
            f"{where.metrics_host}:{where.metrics_port}: {exc.strerror or exc}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
