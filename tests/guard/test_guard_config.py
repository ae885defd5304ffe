"""Configuration: the operator's rendered file, flags, derived limits, error responses (pure)."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from agentfleet.api.guardconfig import GuardConfig
from agentfleet.api.types import Budgets, GuardSettings, ModelSpec, Pricing, ToolSpec
from agentfleet.guard import cli
from agentfleet.guard.config import ConfigError, Limits, build_config, parse_duration, read_config_file
from agentfleet.guard.errors import Code, GuardError
from agentfleet.guard.httpio import error_body, error_headers, error_response, error_type
from agentfleet.guard.openai_stream import error_event

pytestmark = pytest.mark.unit


def rendered() -> GuardConfig:
    """What the operator writes into the ConfigMap."""
    return GuardConfig(
        namespace="team-a",
        agent="support",
        revision="abc123",
        model=ModelSpec(name="gpt-4o-mini", endpoint="https://api.openai.com/v1"),
        pricing=Pricing(input_per_million="0.15", output_per_million="0.60"),
        api_key_file="/var/run/secrets/agentfleet/api-key",
        tools=[
            ToolSpec(name="search", endpoint="http://search.tools:8080/q", max_calls_per_task=5),
            ToolSpec(name="shell"),
        ],
        allowed_tools=["search"],
        budgets=Budgets(tokens_per_hour=100000, cost_per_day="12.50", max_task_duration="1h30m"),
        guard=GuardSettings(loop_threshold=4),
        listen_host="0.0.0.0",
    )


def test_loads_the_rendered_file_in_camel_case(tmp_path: Path) -> None:
    path = tmp_path / "guard.yaml"
    path.write_text(yaml.safe_dump(rendered().wire()))
    assert "tokensPerHour" in path.read_text()
    cfg = build_config(read_config_file(path), {})
    assert cfg == rendered()
    limits = Limits.from_config(cfg)
    assert limits.allowed == frozenset({"search"}) and limits.tools["search"].max_calls_per_task == 5
    assert limits.max_task_duration == 5400 and limits.call_deadline == 60
    assert limits.cost(1_000_000, 1_000_000) == Decimal("0.75")
    assert limits.cost_per_day == Decimal("12.50")


def test_flags_override_the_file(tmp_path: Path) -> None:
    path = tmp_path / "guard.json"
    path.write_text(json.dumps(rendered().wire()))
    cfg = build_config(
        read_config_file(path),
        {"listen_port": 4100, "budgets": {"tokens_per_hour": 5}, "model": {"endpoint": "http://127.0.0.1:9/v1"}},
    )
    assert (cfg.listen_port, cfg.budgets.tokens_per_hour, cfg.budgets.cost_per_day) == (4100, 5, "12.50")
    assert (cfg.model.endpoint, cfg.model.name) == ("http://127.0.0.1:9/v1", "gpt-4o-mini")


def test_every_declared_tool_is_allowed_without_an_allowlist() -> None:
    cfg = rendered().model_copy(update={"allowed_tools": None})
    assert Limits.from_config(cfg).allowed == frozenset({"search", "shell"})
    undeclared = rendered().model_copy(update={"allowed_tools": ["search", "rm_rf"]})
    assert Limits.from_config(undeclared).allowed == frozenset({"search"})


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("namespace: a\n", "model: Field required"),
        ("- just\n- a list\n", "must contain a mapping"),
        ("namespace: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_files_give_clear_errors(tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "guard.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=expected):
        build_config(read_config_file(path), {})


def test_durations() -> None:
    assert parse_duration("1h30m") == 5400 and parse_duration("250ms") == 0.25
    with pytest.raises(ConfigError, match="invalid duration"):
        parse_duration("ten seconds")


def test_cli_check_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = tmp_path / "key"
    key.write_text("sk-test\n")
    args = [
        "--upstream",
        "http://127.0.0.1:9/v1",
        "--api-key-file",
        str(key),
        "--tokens-per-hour",
        "500",
        "--tool",
        "search=http://127.0.0.1:9/search",
        "--tool",
        "shell",
        "--allow-tool",
        "search",
        "--deadline",
        "2s",
        "--injection",
        "Block",
        "--check",
    ]
    assert cli.main(args) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["budgets"]["tokensPerHour"] == 500 and shown["allowedTools"] == ["search"]
    assert shown["tools"][0] == {"name": "search", "endpoint": "http://127.0.0.1:9/search"}
    assert shown["guard"]["injection"] == "Block" and shown["budgets"]["latency"]["perCallDeadline"] == "2s"
    assert cli.main(["--port", "4000"]) == 2
    assert "--config FILE or --upstream URL" in capsys.readouterr().err
    assert cli.main(["--upstream", "http://x/v1", "--api-key-file", str(tmp_path / "nope"), "--check"]) == 2
    assert "cannot read API key file" in capsys.readouterr().err
    assert cli.main(["--upstream", "ftp://x", "--check"]) == 2
    assert "model.endpoint" in capsys.readouterr().err


def test_error_responses_are_openai_shaped() -> None:
    err = GuardError(Code.BUDGET_EXHAUSTED, "out of tokens", 429, retry_after=12.2, budget="tokens_per_hour")
    assert error_body(err) == {
        "error": {"message": "out of tokens", "type": "rate_limit_error", "code": "budget_exhausted"}
    }
    assert error_headers(err) == {"x-should-retry": "false", "Retry-After": "13"}
    resp = error_response(err)
    assert resp.status == 429 and resp.content_type == "application/json"
    transient = GuardError(Code.UPSTREAM_UNAVAILABLE, "down", 503, retry_after=0.2, should_retry=True)
    assert error_headers(transient) == {"x-should-retry": "true", "Retry-After": "1"}
    assert error_type(transient) == "server_error"
    assert not transient.is_rejection and err.is_rejection
    assert json.loads(error_event(err).removeprefix(b"data: "))["error"]["code"] == "budget_exhausted"
