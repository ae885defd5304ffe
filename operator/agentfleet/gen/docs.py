"""``docs/api.md``: the field reference, generated from the same schema as the CRDs.

One section per named type (pydantic's ``$defs``), so the reference reads like the Kubernetes API
docs; constraints come from the structural schema the API server enforces, so what the page
promises is what admission checks. ``agentfleet generate`` regenerates it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

from agentfleet.api.names import API_VERSION
from agentfleet.api.types import AgentDeployment, AgentPolicy, Model
from agentfleet.gen.crds import AGENT_NAME, prose, structural

PATH = "docs/api.md"

INTRO = f"""\
<!-- Generated from operator/agentfleet/api/types.py by `agentfleet generate`. \
Do not edit. -->
# API reference: `{API_VERSION}`

Two kinds: **AgentDeployment** (namespaced, short name `agd`) declares one agent with its model,
tools, budgets, permissions and rollback rules; **AgentPolicy** (cluster-scoped, short name `agp`)
sets the fleet-wide ceilings those agents must stay within. Both are in the `agentfleet` category
(`kubectl get agentfleet`). `kubectl explain agd.spec` shows the same descriptions.

Units are explicit: durations are Go-style strings (`"500ms"`, `"30s"`, `"5m"`, `"1h30m"`); money
is a decimal string in US dollars (`"12.50"`), never a float. Fields marked *required* must be set;
every other field may be omitted and then takes its default (or means "unset" where there is none).
Rules marked CEL are checked by the API server on every write.
"""

KINDS: tuple[tuple[type[Model], str], ...] = (
    (
        AgentDeployment,
        "Namespaced. `kubectl get agd` shows READY, PHASE, REVISION, SPEND and AGE; "
        "`kubectl scale agd NAME --replicas=N` and HorizontalPodAutoscalers work through the scale "
        "subresource. "
        f"The name must be a DNS label of at most {AGENT_NAME['maxLength']} characters.",
    ),
    (
        AgentPolicy,
        "Cluster-scoped. Enforced at admission (a ValidatingAdmissionPolicy in `crds/admission/`) "
        "and again at every reconcile.",
    ),
)


def _ref(node: Mapping[str, Any]) -> str | None:
    if "$ref" in node:
        return str(node["$ref"]).rsplit("/", 1)[-1]
    for option in node.get("anyOf", ()):
        found = _ref(option)
        if found:
            return found
    return None


def _items(raw: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The item schema of a (possibly Optional) list."""
    for option in (raw, *raw.get("anyOf", ())):
        if "items" in option:
            items: Mapping[str, Any] = option["items"]
            return items
    return None


def _named(raw: Mapping[str, Any], defs: Mapping[str, Any]) -> bool:
    """Whether a property is (a list of) a documented object type."""
    items = _items(raw)
    name = _ref(items if items is not None else raw)
    return name is not None and "properties" in defs[name]


def _type(raw: Mapping[str, Any], resolved: Mapping[str, Any], defs: Mapping[str, Any]) -> str:
    """Type column: a link for object types, ``[]T`` for lists, enum values inline."""
    kind = resolved.get("type", "any")
    if kind == "array":
        return "[]" + _type(_items(raw) or {}, resolved["items"], defs)
    if kind == "object" and "additionalProperties" in resolved:
        return "map[string]" + str(resolved["additionalProperties"].get("type", "any"))
    name = _ref(raw)
    if name and "properties" in defs[name]:
        return f"[{name}](#{name.lower()})"
    if "enum" in resolved:
        return "enum: " + ", ".join(f"`{v}`" for v in resolved["enum"])
    return str(kind)


def _constraints(s: Mapping[str, Any]) -> list[str]:
    out = []
    if "minimum" in s or "maximum" in s:
        out.append(f"range {s.get('minimum', '')}..{s.get('maximum', '')}")
    if "minLength" in s:
        out.append(f"min length {s['minLength']}")
    if "maxLength" in s:
        out.append(f"max length {s['maxLength']}")
    if "pattern" in s:
        out.append(f"pattern `{s['pattern']}`")
    if "minItems" in s:
        out.append(f"min items {s['minItems']}")
    if "maxItems" in s:
        out.append(f"max items {s['maxItems']}")
    if s.get("x-kubernetes-list-type") == "map":
        out.append("unique by " + ", ".join(f"`{k}`" for k in s["x-kubernetes-list-map-keys"]))
    if "items" in s:
        out += [f"each: {c}" for c in _constraints(s["items"]) if not c.startswith("each")]
    out += [f"CEL: {r['message']}" for r in s.get("x-kubernetes-validations", ())]
    return out


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n\n", "<br>").replace("\n", " ")


def _table(def_: Mapping[str, Any], defs: Mapping[str, Any]) -> Iterator[str]:
    required = set(def_.get("required", ()))
    yield "| Field | Type | Default | Description |"
    yield "| --- | --- | --- | --- |"
    for name, raw in def_["properties"].items():
        resolved = structural(raw, defs)
        default = resolved.get("default")
        shown = "" if default is None else f"`{json.dumps(default)}`"
        text = prose(resolved.get("description", ""))
        if name in required:
            text = "*Required.* " + text
        notes = _constraints(resolved)
        if _named(raw, defs):  # its own rules are listed in its own section
            notes = [n for n in notes if "CEL:" not in n]
        if notes:
            text += " <br>_" + "; ".join(notes) + "_"
        yield f"| `{name}` | {_type(raw, resolved, defs)} | {shown} | {_cell(text)} |"


def _reachable(start: str, defs: Mapping[str, Any]) -> list[str]:
    """Object types in depth-first order of first use, the way a reader meets them."""
    order: list[str] = []

    def visit(name: str) -> None:
        if name in order or "properties" not in defs[name]:
            return
        order.append(name)
        for raw in defs[name]["properties"].values():
            for ref in _refs(raw):
                visit(ref)

    visit(start)
    return order


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if "$ref" in node:
            yield str(node["$ref"]).rsplit("/", 1)[-1]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def render() -> str:
    """The whole page."""
    lines = [INTRO]
    seen: set[str] = set()
    for model, scope in KINDS:
        raw = model.model_json_schema(by_alias=True)
        defs = raw["$defs"]
        kind = model.model_fields["kind"].default
        lines += [f"## {kind}", "", prose(model.__doc__ or ""), "", scope, ""]
        names = [n for n in (_ref(raw["properties"][p]) for p in ("spec", "status")) if n]
        for start in names:
            for name in _reachable(start, defs):
                if name in seen:
                    continue
                seen.add(name)
                def_ = defs[name]
                lines += [f"### {name}", "", prose(def_.get("description", "")), ""]
                lines += list(_table(def_, defs))
                rules = def_.get("x-kubernetes-validations", ())
                if rules:
                    lines += ["", "Rules (CEL):", ""] + [f"- {r['message']}: `{r['rule']}`" for r in rules]
                lines.append("")
    return "\n".join(lines).rstrip() + "\n"
