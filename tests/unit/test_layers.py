"""The package's import graph follows the layer rule in docs/architecture.md, and has no cycle.

The rule table is read from the document, so the picture a newcomer reads and the rule the
code obeys cannot drift apart."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "operator" / "agentfleet"
DOC = ROOT / "docs" / "architecture.md"


def layer_rules() -> dict[str, set[str]]:
    text = DOC.read_text()
    table = text[text.index("<!-- layer-rules") :].split("\n\n", 1)[0]
    rules: dict[str, set[str]] = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        allowed = set(re.findall(r"`([a-z_]+)`", cells[2]))
        rules[cells[0].strip("`")] = allowed
    return rules


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Absolute agentfleet modules imported by ``path`` (relative imports resolved). ``from pkg
    import module`` depends on the module; on the package only for names that are not modules
    (every submodule import initialises its parents, which is no dependency of the importer's)."""
    tree = ast.parse(path.read_text())
    here = module_name(path).split(".")
    if path.name != "__init__.py":
        here = here[:-1]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("agentfleet")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(here[: len(here) - node.level + 1] + ([base] if base else []))
            if base.startswith("agentfleet"):
                submodules = {f"{base}.{a.name}" for a in node.names} & known
                out |= submodules
                if len(submodules) < len(node.names):
                    out.add(base)
    return out


def modules() -> dict[str, set[str]]:
    found = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    known = set(found)
    return {name: {m for m in imports_of(path, known) if m in found and m != name} for name, path in found.items()}


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "agentfleet"


def test_the_rule_table_names_every_folder_and_module() -> None:
    rules = layer_rules()
    present = {layer(m) for m in modules()} - {"agentfleet"}
    assert present <= rules.keys(), f"add a row to docs/architecture.md for {sorted(present - rules.keys())}"


def test_every_import_follows_the_layer_rule() -> None:
    rules = layer_rules()
    wrong = sorted(
        f"{src} imports {dst}"
        for src, targets in modules().items()
        for dst in targets
        if layer(src) != layer(dst) and layer(dst) not in rules.get(layer(src), set()) and layer(dst) != "agentfleet"
    )
    assert wrong == [], "imports against docs/architecture.md's layer rule:\n" + "\n".join(wrong)


def test_no_import_cycles() -> None:
    graph = modules()
    # Tarjan's strongly connected components: any component larger than one module is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert cycles == [], f"import cycles: {cycles}"


def test_the_checker_sees_a_violation() -> None:
    """The rules are not vacuous: the evaluator may not import the controller."""
    rules = layer_rules()
    assert "controller" not in rules["evaluator"] and "evaluator" not in rules["controller"]
    assert rules["api"] == set()
