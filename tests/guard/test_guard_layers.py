"""The guard package's own layers, read from its ``ast`` imports (``TYPE_CHECKING`` ones included).

checks (pure, protocol-neutral) < upstream (HTTP client) < state < core < adapters < app < cli:
a module imports only from its own layer or below, the checks and the core never import
aiohttp, and there is no import cycle. This is what lets a new protocol adapter reuse every
check: the checks cannot reach up into a wire format.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

GUARD = Path(__file__).resolve().parents[2] / "operator" / "agentfleet" / "guard"
LAYERS = {
    "checks": {
        "shapes",
        "errors",
        "config",
        "budgets",
        "ledger",
        "loops",
        "tasks",
        "toolgate",
        "injection",
        "breaker",
        "metrics",
        "peer_auth",
        "tracing",
    },
    "transport": {"sse", "upstream", "classifier", "redis_ledger", "approvals"},
    "state": {"state"},
    "core": {"core"},
    "adapters": {
        "httpio",
        "openai_wire",
        "openai_chat",
        "openai_stream",
        "toolproxy",
        "streaming",
        "responses_wire",
        "responses_stream",
        "openai_responses",
        "anthropic_wire",
        "anthropic_stream",
        "anthropic_messages",
        "peers",
        "mcp_wire",
        "mcp_proxy",
        "mcp_sse",
    },
    "server": {"app"},
    "cli": {"cli", "__init__"},
}
ORDER = list(LAYERS)
NO_AIOHTTP = (
    LAYERS["checks"]
    | LAYERS["core"]
    | LAYERS["state"]
    | {"openai_wire", "responses_wire", "anthropic_wire", "mcp_wire"}
)


def layer_of(module: str) -> str:
    for name, members in LAYERS.items():
        if module in members:
            return name
    raise AssertionError(f"guard module {module!r} is in no layer: add it to LAYERS in {__file__}")


def imports() -> dict[str, set[str]]:
    """Guard module -> every top-level package and guard module it imports."""
    graph: dict[str, set[str]] = {}
    for path in sorted(GUARD.glob("*.py")):
        out: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                out |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                if node.module == "agentfleet.guard":
                    out |= {f"agentfleet.guard.{a.name}" for a in node.names}
                else:
                    out.add(node.module)
        graph[path.stem] = out
    return graph


def guard_deps(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    prefix = "agentfleet.guard."
    return {m: {d[len(prefix) :].split(".")[0] for d in deps if d.startswith(prefix)} for m, deps in graph.items()}


def test_every_module_has_a_layer() -> None:
    for module in imports():
        layer_of(module)


def test_modules_import_only_their_layer_or_below() -> None:
    wrong = [
        f"{src} ({layer_of(src)}) imports {dst} ({layer_of(dst)})"
        for src, deps in guard_deps(imports()).items()
        for dst in deps
        if ORDER.index(layer_of(dst)) > ORDER.index(layer_of(src))
    ]
    assert wrong == []


def test_checks_and_core_know_no_http_server_or_wire_format() -> None:
    graph = imports()
    wrong = [f"{m} imports {d}" for m in NO_AIOHTTP for d in graph[m] if d.split(".")[0] == "aiohttp"]
    assert wrong == []


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (module -> modules), or None."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        for dep in sorted(graph.get(node, ())):
            cycle = visit(dep, [*path, node])
            if cycle is not None:
                return cycle
        done.add(node)
        return None

    for module in sorted(graph):
        cycle = visit(module, [])
        if cycle is not None:
            return cycle
    return None


def test_no_import_cycle() -> None:
    cycle = find_cycle(guard_deps(imports()))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_check_can_fail() -> None:
    """The checker really finds a cycle, e.g. the five-module one the guard had before."""
    before = {"app": {"proxy", "toolproxy"}, "proxy": {"checks", "stream"}, "checks": {"app"}, "stream": {"app"}}
    assert find_cycle(before) == ["app", "proxy", "checks", "app"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
