"""Generated CRDs, admission policy and API docs: committed files match the types, and the schema is
one the API server accepts as structural (the integration suite then applies it for real)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentfleet.api.types import AgentDeploymentSpec, AgentPolicySpec
from agentfleet.cli import main as cli
from agentfleet.gen import admission, generate
from agentfleet.gen import crds as crdgen
from agentfleet.gen import docs as docgen

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
REGENERATE = "regenerate with: agentfleet generate (make generate)"


def test_committed_generated_files_match_the_types() -> None:
    """CRDs, admission policy, docs/api.md and the chart's copies: nothing drifted."""
    assert generate.drifted(ROOT) == [], REGENERATE


def test_generate_check_names_a_drifted_file(tmp_path: Path) -> None:
    assert generate.main(["--root", str(tmp_path)]) == 0
    assert generate.main(["--check", "--root", str(tmp_path)]) == 0
    (tmp_path / "charts/agentfleet/crds/agentfleet.dev_agentpolicies.yaml").write_text("edited by hand\n")
    assert generate.drifted(tmp_path) == [Path("charts/agentfleet/crds/agentfleet.dev_agentpolicies.yaml")]
    assert generate.main(["--check", "--root", str(tmp_path)]) == 1


def _schemas() -> dict[str, dict[str, Any]]:
    return {c["spec"]["names"]["kind"]: c["spec"]["versions"][0]["schema"]["openAPIV3Schema"] for c in crdgen.crds()}


def _nodes(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from _nodes(sub, f"{path}.{name}")
    if "items" in schema:
        yield from _nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _nodes(schema["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize("kind", ["AgentDeployment", "AgentPolicy"])
def test_schema_is_structural(kind: str) -> None:
    for path, node in _nodes(_schemas()[kind]):
        assert not {"$ref", "$defs", "anyOf", "oneOf", "allOf", "title", "nullable"} & node.keys(), path
        assert node.get("type") in {"object", "array", "string", "integer", "boolean"}, path
        assert node.get("additionalProperties") is not False, path
        if "properties" in node:
            assert "additionalProperties" not in node, path


@pytest.mark.parametrize("kind", ["AgentDeployment", "AgentPolicy"])
def test_every_property_is_documented(kind: str) -> None:
    for path, node in _nodes(_schemas()[kind]):
        if path and not path.startswith(".metadata") and not path.endswith(("[]", "}")):
            assert node.get("description"), f"{kind}{path} has no description (kubectl explain would be empty)"


@pytest.mark.parametrize("kind", ["AgentDeployment", "AgentPolicy"])
def test_spec_lists_and_their_strings_are_bounded(kind: str) -> None:
    """CEL cost estimates need bounds: the API server rejects a rule over an unbounded list."""
    spec = _schemas()[kind]["properties"]["spec"]
    for path, node in _nodes(spec):
        if node["type"] == "array":
            assert "maxItems" in node, path
            item = node["items"]
            if item["type"] == "string":
                assert "maxLength" in item or "enum" in item, f"{path}[]"


def test_list_map_keys_are_required() -> None:
    for kind, schema in _schemas().items():
        for path, node in _nodes(schema):
            if node.get("x-kubernetes-list-type") == "map":
                item = node["items"]
                for key in node["x-kubernetes-list-map-keys"]:
                    assert key in item.get("required", ()) or "default" in item["properties"][key], (
                        kind,
                        path,
                    )


def _default(schema: dict[str, Any], value: Any) -> Any:
    """The API server's structural defaulting, for the test's own cross-check."""
    if isinstance(value, dict) and "properties" in schema:
        out = dict(value)
        for name, sub in schema["properties"].items():
            if name not in out and "default" in sub:
                out[name] = sub["default"]
            if name in out:
                out[name] = _default(sub, out[name])
        return out
    if isinstance(value, list) and "items" in schema:
        return [_default(schema["items"], v) for v in value]
    return value


MINIMAL_AGENT = {
    "agent": {
        "image": "example/agent:1",
        "model": {"name": "m", "endpoint": "https://api.example.com/v1"},
        "tools": [{"name": "search"}],
    },
    "budgets": {"latency": {}},
    "guardrails": [{"name": "loops", "metric": "loopDetections", "threshold": "0", "action": "Suspend"}],
}


@pytest.mark.parametrize(
    ("kind", "model", "obj"),
    [
        ("AgentDeployment", AgentDeploymentSpec, MINIMAL_AGENT),
        ("AgentPolicy", AgentPolicySpec, {}),
        ("AgentPolicy", AgentPolicySpec, {"ceilings": {"maxReplicas": 2}, "suspendAll": True}),
    ],
)
def test_api_server_defaults_equal_pydantic_defaults(kind: str, model: Any, obj: dict[str, Any]) -> None:
    """The operator reads what the API server stored; both must fill in the same values."""
    spec_schema = _schemas()[kind]["properties"]["spec"]
    assert _default(spec_schema, obj) == model.model_validate(obj).wire()


def test_printer_columns_and_scale_paths_exist_in_the_schema() -> None:
    for crd in crdgen.crds():
        version = crd["spec"]["versions"][0]
        schema = version["schema"]["openAPIV3Schema"]
        paths = [c["jsonPath"] for c in version["additionalPrinterColumns"]]
        paths += list(version["subresources"].get("scale", {}).values())
        for path in paths:
            if path.startswith(".metadata"):
                continue
            node = schema
            for part in path.strip(".").split("."):
                node = node["properties"][part]


def test_agent_deployment_names() -> None:
    agd, agp = crdgen.crds()
    assert agd["spec"]["scope"] == "Namespaced" and agd["spec"]["names"]["shortNames"] == ["agd"]
    assert agp["spec"]["scope"] == "Cluster" and agp["spec"]["names"]["shortNames"] == ["agp"]
    columns = [c["name"] for c in agd["spec"]["versions"][0]["additionalPrinterColumns"] if "priority" not in c]
    assert columns == ["Ready", "Phase", "Revision", "Spend", "Age"]


def test_main_prints_and_writes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert crdgen.main([]) == 0
    printed = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [d["metadata"]["name"] for d in printed] == [
        "agentdeployments.agentfleet.dev",
        "agentpolicies.agentfleet.dev",
    ]
    assert crdgen.main(["--write", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(crdgen.files())
    assert generate.main(["--root", str(tmp_path / "repo")]) == 0
    docs = yaml.safe_load_all((tmp_path / "repo/crds/admission" / admission.FILE).read_text())
    assert [d["kind"] for d in docs] == ["ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"] * 2
    assert (tmp_path / "repo" / docgen.PATH).read_text().startswith("<!-- Generated")


def test_cli_dispatches_crds(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["crds"]) == 0
    assert "kind: CustomResourceDefinition" in capsys.readouterr().out


def test_admission_checks_every_ceiling() -> None:
    policy = admission.documents()[0]
    text = yaml.safe_dump(policy)
    for field in AgentPolicySpec.model_fields["ceilings"].annotation.model_fields.values():  # type: ignore[union-attr]
        assert f"ceilings.{field.alias}" in text
