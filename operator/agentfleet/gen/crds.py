"""CustomResourceDefinitions generated from the pydantic API types (``agentfleet crds``).

Pydantic's JSON schema is close to what the API server wants; :func:`structural` closes the
gap: ``$ref`` inlined, ``Optional`` as "not required" rather than a null type, no titles, no
``additionalProperties: false`` (pruning and strict field validation do that job), and object
defaults reduced to ``{}`` so that each nested default is declared exactly once. Everything
else (descriptions, defaults, enums, patterns, bounds, CEL rules, list-map markers) passes
through unchanged, so ``types.py`` stays the single source of truth.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from agentfleet.api.names import API_VERSION, GROUP, VERSION
from agentfleet.api.types import AgentDeployment, AgentPolicy, Model

Schema = dict[str, Any]

HEADER = "# Generated from operator/agentfleet/api/types.py by `agentfleet generate`. Do not edit.\n"
CATEGORIES = ["agentfleet"]

# Children are named after the agent (plus short suffixes) and the name is a label value:
# a DNS-1035 label short enough for both, as for CronJob.
AGENT_NAME = {
    "type": "string",
    "description": "Name of the agent: a DNS label of at most 52 characters, as children are named after it.",
    "maxLength": 52,
    "pattern": r"^[a-z]([-a-z0-9]*[a-z0-9])?$",
}


def structural(node: Mapping[str, Any], defs: Mapping[str, Any]) -> Schema:
    """Rewrite one pydantic JSON-schema node (and its children) as a structural CRD schema."""
    node = dict(node)
    if "$ref" in node:
        target = structural(defs[node.pop("$ref").rsplit("/", 1)[-1]], defs)
        node = {**target, **node}
    if "anyOf" in node:
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"only Optional[X] unions are structural, got {options}")
        node = {**structural(options[0], defs), **node}
    out: Schema = {}
    for key, value in node.items():
        if key == "title" or (key == "additionalProperties" and value is False):
            continue
        if key == "description":
            out[key] = prose(value)
            continue
        if key == "properties":
            out[key] = {name: structural(sub, defs) for name, sub in value.items()}
        elif key == "items" or (key == "additionalProperties" and isinstance(value, dict)):
            out[key] = structural(value, defs)
        else:
            out[key] = value
    if "default" in out:
        default = _drop_none(out.pop("default"))
        if default is not None:
            out["default"] = {} if isinstance(default, dict) and default == implied(out) else default
    return out


def prose(text: str) -> str:
    """A docstring as API text: paragraphs unwrapped (kubectl explain wraps), RST literals as `x`."""
    return re.sub(r"(?<!\n)\n(?!\n)", " ", text.strip()).replace("``", "`")


def _drop_none(value: Any) -> Any:
    """A default as the API server would store it: null fields are simply absent."""
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    return value


def implied(schema: Mapping[str, Any]) -> dict[str, Any]:
    """What the API server's defaulting makes of ``{}`` for an object schema."""
    out: dict[str, Any] = {}
    for name, sub in schema.get("properties", {}).items():
        if "default" in sub:
            default = sub["default"]
            out[name] = implied(sub) if default == {} and "properties" in sub else default
    return out


def explained(schema: Schema) -> Schema:
    """Scalar defaults spelled out in descriptions too: ``kubectl explain`` shows no defaults."""
    out = dict(schema)
    if "default" in out and out["default"] != {} and "description" in out:
        out["description"] += f" Default: {json.dumps(out['default'])}."
    if "properties" in out:
        out["properties"] = {k: explained(v) for k, v in out["properties"].items()}
    if "items" in out:
        out["items"] = explained(out["items"])
    return out


def object_schema(model: type[Model]) -> tuple[Schema, Schema]:
    """The structural schemas of ``spec`` and ``status`` of a top-level kind."""
    raw = model.model_json_schema(by_alias=True)
    defs, props = raw.get("$defs", {}), raw["properties"]
    return explained(structural(props["spec"], defs)), explained(structural(props["status"], defs))


def _root(model: type[Model], spec: Schema, status: Schema, name: Schema | None) -> Schema:
    metadata: Schema = {"type": "object"}  # the API server allows nothing else here
    if name is not None:
        metadata["properties"] = {"name": name}
    root: Schema = {
        "type": "object",
        "description": prose(model.__doc__ or ""),
        "properties": {
            "apiVersion": {
                "type": "string",
                "description": f"Versioned schema of this representation of an object ({API_VERSION}).",
            },
            "kind": {"type": "string", "description": "The REST resource this object represents."},
            "metadata": metadata,
            "spec": spec,
            "status": status,
        },
    }
    if "default" not in spec:
        root["required"] = ["spec"]
    return root


def _column(name: str, path: str, kind: str = "string", description: str = "", priority: int = 0) -> Schema:
    col: Schema = {"name": name, "type": kind, "jsonPath": path}
    if description:
        col["description"] = description
    if priority:
        col["priority"] = priority
    return col


AGE = _column("Age", ".metadata.creationTimestamp", "date")


def _crd(
    model: type[Model], plural: str, short: str, scope: str, version: Schema, *, name: Schema | None = None
) -> Schema:
    kind = model.model_fields["kind"].default
    spec, status = object_schema(model)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}", "labels": {"app.kubernetes.io/part-of": "agentfleet"}},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": [short],
                "categories": CATEGORIES,
            },
            "scope": scope,
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": _root(model, spec, status, name)},
                    **version,
                }
            ],
        },
    }


def agent_deployment_crd() -> Schema:
    """AgentDeployment: namespaced, with status and scale subresources (kubectl scale, HPA)."""
    return _crd(
        AgentDeployment,
        "agentdeployments",
        "agd",
        "Namespaced",
        {
            "subresources": {
                "status": {},
                "scale": {
                    "specReplicasPath": ".spec.replicas",
                    "statusReplicasPath": ".status.replicas",
                    "labelSelectorPath": ".status.selector",
                },
            },
            "additionalPrinterColumns": [
                _column("Ready", ".status.ready", description="Ready pods out of desired."),
                _column("Phase", ".status.phase"),
                _column("Revision", ".status.currentRevision", description="Revision the pods run."),
                _column("Spend", ".status.usage.spendToday", description="Dollars spent today (UTC)."),
                AGE,
                _column("Model", ".spec.agent.model.name", priority=1),
                _column("Suspended", ".spec.suspended", "boolean", priority=1),
                _column("Stable", ".status.stableRevision", description="Last stable revision.", priority=1),
            ],
        },
        name=AGENT_NAME,
    )


def agent_policy_crd() -> Schema:
    """AgentPolicy: cluster-scoped, owned by the platform team."""
    return _crd(
        AgentPolicy,
        "agentpolicies",
        "agp",
        "Cluster",
        {
            "subresources": {"status": {}},
            "additionalPrinterColumns": [
                _column("SuspendAll", ".spec.suspendAll", "boolean", "Fleet kill switch."),
                _column("Agents", ".status.coveredAgents", "integer", "Covered AgentDeployments."),
                _column("Violations", ".status.violations", "integer", "Covered agents violating it."),
                AGE,
            ],
        },
    )


def crds() -> list[Schema]:
    """Both CRDs, AgentDeployment first."""
    return [agent_deployment_crd(), agent_policy_crd()]


class _Dumper(yaml.SafeDumper):
    """Plain YAML: no anchors or aliases where the schema shares a list; multi-line text (CEL,
    paragraphs) as literal blocks."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str)


def dump(docs: list[Schema], header: str = HEADER) -> str:
    """Multi-document YAML with the do-not-edit header; stable across runs (sorted keys)."""
    body = "---\n".join(yaml.dump(d, Dumper=_Dumper, sort_keys=True, width=100) for d in docs)
    return header + body


def files() -> dict[str, str]:
    """File name -> content, as committed under ``crds/``."""
    return {f"{GROUP}_{crd['spec']['names']['plural']}.yaml": dump([crd]) for crd in crds()}


def write(directory: Path, contents: Mapping[str, str]) -> None:
    """Write generated files, creating ``directory`` if needed."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in contents.items():
        (directory / name).write_text(text)


def main(argv: list[str] | None = None) -> int:
    """``agentfleet crds [--write [DIR]]``: print the CRDs, or write them into DIR (default crds)."""
    parser = argparse.ArgumentParser(prog="agentfleet crds", description=__doc__.splitlines()[0])
    parser.add_argument("--write", nargs="?", const="crds", metavar="DIR", help="write files into DIR")
    args = parser.parse_args(argv)
    if args.write:
        write(Path(args.write), files())
    else:
        sys.stdout.write(dump(crds()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
