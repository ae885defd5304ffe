"""kubectl plugin, pure parts: census counting, tables, ages, revision resolution, history
summaries, audit-log parsing, argument errors. No cluster: the integration suite has that."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agentfleet.api.guardconfig import AuditSink
from agentfleet.api.types import AgentDeployment
from agentfleet.audit import AuditLog
from agentfleet.cli.kubectl import main as kubectl_plugin
from agentfleet.cli.kubectl.audit import (
    GUARD_CONTAINER,
    audit_lines,
    guard_container_of,
    guard_restarts,
    parse_anchors,
    verify_files,
    verify_log,
    verify_runs,
)
from agentfleet.cli.kubectl.fleet import (
    AgentStatus,
    Census,
    Revision,
    RevisionNotFound,
    breach_text,
    find_revision,
    history_rows,
    history_table,
    model_key,
    prompt_key,
    prompt_summary,
    revisions_of,
    rollback_target,
    spec_revision,
    status_table,
    tool_set,
)
from agentfleet.cli.kubectl.format import age, dump, human_duration, parse_duration, shorten, table
from agentfleet.cli.kubectl.kube import (
    GROUP,
    NotFound,
    PluginError,
    api_error,
    kubeconfig_path,
    network_reason,
)
from agentfleet.render import render

pytestmark = pytest.mark.unit

NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)


def ago(**delta: float) -> str:
    return (NOW - timedelta(**delta)).isoformat().replace("+00:00", "Z")


def spec(
    model: str = "gpt-4o-mini",
    prompt: str | None = "You are helpful.",
    tools: list[str] | None = None,
    allowed: list[str] | None = None,
    provider: str | None = None,
    prompt_ref: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    agent: dict[str, Any] = {
        "image": "registry.invalid/agent:1",
        "model": {"name": model, "endpoint": "http://10.0.0.1:8000/v1"},
    }
    if provider:
        agent["model"]["provider"] = provider
    if prompt is not None:
        agent["systemPrompt"] = {"inline": prompt}
    if prompt_ref is not None:
        agent["systemPrompt"] = {"configMapKeyRef": {"name": prompt_ref, "key": "prompt"}}
    if tools:
        agent["tools"] = [{"name": t} for t in tools]
    out: dict[str, Any] = {"replicas": 2, "agent": agent, **extra}
    if allowed is not None:
        out["permissions"] = {"tools": allowed}
    return out


def agd(name: str, namespace: str = "team-a", status: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    return {
        "apiVersion": "agentfleet.dev/v1alpha1",
        "kind": "AgentDeployment",
        "metadata": {"name": name, "namespace": namespace, "creationTimestamp": ago(hours=3)},
        "spec": spec(**kw),
        "status": status or {},
    }


def revision(number: int, hash_: str, **kw: Any) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "ControllerRevision",
        "revision": number,
        "metadata": {
            "name": f"support-{hash_}",
            "namespace": "team-a",
            "creationTimestamp": ago(minutes=number),
            "labels": {"agentfleet.dev/agent": "support", "agentfleet.dev/revision": hash_},
        },
        "data": {"spec": {k: v for k, v in spec(**kw).items() if k in ("agent", "permissions")}, "template": {}},
    }


# ----------------------------------------------------------------------------------- format


def test_table_aligns_columns_like_kubectl_and_never_ends_lines_in_spaces() -> None:
    text = table(["name", "ready", "phase"], [["alpha", "2/2", "Running"], ["b", "10/10", ""]])
    assert text.splitlines() == [
        "NAME    READY   PHASE",
        "alpha   2/2     Running",
        "b       10/10",
    ]
    with pytest.raises(ValueError, match="2 cells"):
        table(["a", "b", "c"], [["1", "2"]])


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (-5, "0s"),
        (45, "45s"),
        (119, "119s"),
        (150, "2m30s"),
        (600, "10m"),
        (3 * 3600 - 1, "179m"),
        (3 * 3600 + 25 * 60, "3h25m"),
        (8 * 3600, "8h"),
        (47 * 3600, "47h"),
        (3 * 86400 + 4 * 3600, "3d4h"),
        (12 * 86400, "12d"),
        (800 * 86400, "2y70d"),
        (9 * 365 * 86400, "9y"),
    ],
)
def test_human_duration_matches_kubectl(seconds: float, text: str) -> None:
    assert human_duration(seconds) == text


def test_age_parses_rfc3339_and_tolerates_garbage() -> None:
    assert age(ago(minutes=5), NOW) == "5m"
    assert age("2025-06-01T11:59:30.123456+00:00", NOW) == "29s"
    assert age(None, NOW) == age("yesterday", NOW) == "-"


@pytest.mark.parametrize(
    ("text", "seconds"), [("30", 30), ("30s", 30), ("2m", 120), ("1h30m", 5400), ("500ms", 0.5), ("1.5s", 1.5)]
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "2 minutes", "5x", "1h-3m", "s"])
def test_parse_duration_rejects_nonsense(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(text)


def test_dump_and_shorten() -> None:
    assert json.loads(dump({"b": 1, "a": [1]}, "json")) == {"b": 1, "a": [1]}
    assert dump({"b": 1, "a": [1]}, "yaml") == "b: 1\na:\n- 1"
    with pytest.raises(ValueError, match="unknown output format"):
        dump({}, "xml")
    assert shorten("one\n two   three", 9) == "one two…"
    assert shorten("short", 9) == "short"


# ----------------------------------------------------------------------------------- spec keys


def test_spec_keys() -> None:
    assert model_key(spec()) == "openai/gpt-4o-mini"
    assert model_key(spec(model="llama", provider="vllm")) == "vllm/llama"
    assert prompt_key(spec(prompt="a"), "x") == prompt_key(spec(prompt="a"), "y") != prompt_key(spec(prompt="b"), "x")
    assert prompt_key(spec(prompt=None, prompt_ref="p"), "x") == "configmap:x/p#prompt"
    assert prompt_key(spec(prompt=None, prompt_ref="p"), "x") != prompt_key(spec(prompt=None, prompt_ref="p"), "y")
    assert prompt_key(spec(prompt=None), "x") == "(none)"
    assert prompt_summary(spec(prompt="You are a very helpful support agent for ACME."), limit=12).endswith(
        '"You are a v…"'
    )
    assert prompt_summary(spec(prompt=None, prompt_ref="p")) == "configmap/p[prompt]"
    assert tool_set(spec(tools=["search", "calc", "mail"])) == ("calc", "mail", "search")
    assert tool_set(spec(tools=["search", "calc"], allowed=["search"])) == ("search",)
    assert tool_set(spec()) == ()


def test_spec_revision_is_the_operators_hash() -> None:
    body = {"metadata": {"name": "support", "namespace": "team-a", "uid": "u1"}, "spec": spec(tools=["search"])}
    assert spec_revision(body["spec"]) == render(AgentDeployment.model_validate(body)).revision
    assert spec_revision({"agent": {"image": ""}}) is None


# ----------------------------------------------------------------------------------- census


def test_census_counts_distinct_configurations_not_rows() -> None:
    fleet = [
        agd(
            "a1",
            model="gpt-4o-mini",
            prompt="P1",
            tools=["search"],
            status={"readyReplicas": 2, "phase": "Running", "currentRevision": "r1"},
        ),
        agd(
            "a2",
            model="gpt-4o-mini",
            prompt="P1",
            tools=["search"],
            status={"readyReplicas": 2, "phase": "Running", "currentRevision": "r1"},
        ),
        agd(
            "a3",
            model="gpt-4o-mini",
            prompt="P2",
            tools=["search", "calc"],
            status={"readyReplicas": 1, "phase": "Progressing", "currentRevision": "r2"},
        ),
        agd(
            "b1",
            namespace="team-b",
            model="gpt-4o",
            prompt="P3",
            suspended=True,
            status={"readyReplicas": 0, "phase": "Suspended", "currentRevision": "r3"},
        ),
        agd("b2", namespace="team-b", model="gpt-4o", prompt=None, prompt_ref="prompts"),
    ]
    census = Census().add_all(fleet)
    got = census.json()
    assert {
        k: got[k]
        for k in (
            "agentDeployments",
            "namespaces",
            "declaredReplicas",
            "readyReplicas",
            "suspended",
            "notReconciled",
            "distinctModels",
            "distinctPrompts",
            "distinctToolSets",
            "distinctRevisions",
        )
    } == {
        "agentDeployments": 5,
        "namespaces": 2,
        "declaredReplicas": 10,
        "readyReplicas": 5,
        "suspended": 1,
        "notReconciled": 1,
        "distinctModels": 2,
        "distinctPrompts": 4,
        "distinctToolSets": 3,
        "distinctRevisions": 3,
    }
    assert got["models"] == {"openai/gpt-4o-mini": 3, "openai/gpt-4o": 2}
    assert got["toolSets"] == {"search": 2, "(none)": 2, "calc,search": 1}
    assert got["phases"] == {"Progressing": 1, "Running": 2, "Suspended": 1, "Unknown": 1}
    text = census.table()
    assert "Distinct models      2" in text
    assert "5 AgentDeployments in 2 namespaces run 3 distinct configurations on 2 models with 5 ready" in text


def test_census_counts_what_runs_after_a_rollback() -> None:
    rolled = agd("a", model="gpt-4o", status={"currentRevision": "old"})
    census = Census()
    census.add(rolled, running=spec(model="gpt-4o-mini"))
    census.add(agd("b", model="gpt-4o-mini", status={"currentRevision": "old"}))
    assert census.json()["models"] == {"openai/gpt-4o-mini": 2}


def test_census_table_lists_the_top_three_unless_wide() -> None:
    census = Census().add_all(agd(f"a{i}", model=f"m{i}") for i in range(5))
    assert "(2 more; -o wide lists all)" in census.table()
    assert "openai/m4 x1" in census.table(wide=True) and "more" not in census.table(wide=True)
    empty = Census().table()
    assert "0 AgentDeployments in 0 namespaces run 0 distinct configurations" in empty


# ----------------------------------------------------------------------------------- revisions


REVS = revisions_of([revision(2, "bbbb2222cc"), revision(1, "aaaa1111bb"), revision(3, "aaaa3333dd")])


def test_revisions_sort_by_number() -> None:
    assert [(r.number, r.hash) for r in REVS] == [(1, "aaaa1111bb"), (2, "bbbb2222cc"), (3, "aaaa3333dd")]


def test_find_revision_by_number_hash_or_unique_prefix() -> None:
    assert find_revision(REVS, "2").hash == "bbbb2222cc"
    assert find_revision(REVS, "aaaa3333dd").number == 3
    assert find_revision(REVS, "bbbb").number == 2
    with pytest.raises(RevisionNotFound, match="matches several revisions"):
        find_revision(REVS, "aaaa")
    with pytest.raises(RevisionNotFound, match=r"no revision '7'; revisions: 1 \(aaaa1111bb\), 2"):
        find_revision(REVS, "7")
    with pytest.raises(RevisionNotFound, match="no revision 'aa'"):
        find_revision(REVS, "aa")  # too short to be a prefix
    with pytest.raises(RevisionNotFound, match="no recorded revisions"):
        find_revision([], "1")


def test_rollback_goes_to_requested_then_stable_then_previous() -> None:
    assert rollback_target(REVS, "aaaa3333dd", "aaaa1111bb", requested="2").revision.number == 2
    stable = rollback_target(REVS, "aaaa3333dd", "aaaa1111bb")
    assert (stable.revision.number, stable.why) == (1, "the stable revision (1)")
    previous = rollback_target(REVS, "aaaa3333dd", None)
    assert previous.revision.number == 2 and "no stable revision yet" in previous.why
    same = rollback_target(REVS, "aaaa3333dd", "aaaa3333dd")
    assert same.revision.number == 2 and "is the stable one" in same.why


def test_rollback_explains_when_there_is_nowhere_to_go() -> None:
    with pytest.raises(RevisionNotFound, match="nothing to roll back to: revision 1"):
        rollback_target(REVS, "aaaa1111bb", None)
    with pytest.raises(RevisionNotFound, match="current revision zzz is not recorded"):
        rollback_target(REVS, "zzz", None)
    with pytest.raises(RevisionNotFound, match="stable revision gone is no longer recorded"):
        rollback_target(REVS, "aaaa3333dd", "gone")


def test_revision_of_falls_back_to_the_name_for_the_hash() -> None:
    obj = revision(4, "abcdef0123")
    del obj["metadata"]["labels"]["agentfleet.dev/revision"]
    assert Revision.of(obj).hash == "abcdef0123"


def test_history_rows_and_table() -> None:
    revs = revisions_of(
        [
            revision(1, "aaaa1111bb", model="gpt-4o-mini", tools=["search"]),
            revision(2, "bbbb2222cc", model="gpt-4o", prompt="Be terse.", tools=["search", "calc"], allowed=["search"]),
        ]
    )
    rows = history_rows(revs, current="bbbb2222cc", stable="aaaa1111bb")
    assert [r.marks for r in rows] == ["stable", "current"]
    assert rows[1].json()["tools"] == ["search"]
    assert rows[1].json()["model"] == "openai/gpt-4o"
    lines = history_table(rows, NOW).splitlines()
    assert lines[0].split() == ["REVISION", "HASH", "AGE", "STATUS", "MODEL", "PROMPT", "TOOLS"]
    assert lines[2].split()[:5] == ["2", "bbbb2222cc", "2m", "current", "openai/gpt-4o"]
    assert '"Be terse."' in lines[2]
    assert "IMAGE" in history_table(rows, NOW, wide=True)
    both = history_rows(revs[:1], current="aaaa1111bb", stable="aaaa1111bb")
    assert both[0].marks == "current,stable"


# ----------------------------------------------------------------------------------- status


BREACH = {
    "rule": "loop-guard",
    "metric": "loopDetections",
    "observedValue": "5",
    "threshold": "> 3",
    "action": "Suspend",
    "time": ago(minutes=2),
    "revision": "aaaa3333dd",
}


def test_status_row_reads_usage_breach_and_revision_numbers() -> None:
    obj = agd(
        "support",
        model="gpt-4o",
        status={
            "phase": "Suspended",
            "ready": "0/2",
            "currentRevision": "aaaa3333dd",
            "stableRevision": "aaaa1111bb",
            "usage": {"spendToday": "1.25", "tokensLastHour": 4321},
            "lastBreach": BREACH,
            "conditions": [
                {"type": "Suspended", "status": "True", "reason": "LoopDetected"},
                {"type": "Ready", "status": "False", "reason": "Suspended"},
            ],
        },
    )
    st = AgentStatus.of(obj, REVS)
    assert (st.current_number, st.stable_number) == (3, 1)
    assert [c["type"] for c in st.conditions] == ["Ready", "Suspended"]
    assert st.json()["spendToday"] == "1.25" and st.json()["lastBreach"] == BREACH
    # The model shown is the one the pods run: the current revision's, not the spec's.
    assert st.model == "openai/gpt-4o-mini"
    lines = status_table([st], NOW).splitlines()
    assert lines[0].split() == [
        "NAME",
        "READY",
        "PHASE",
        "REVISION",
        "STABLE",
        "SPEND-TODAY",
        "TOKENS/H",
        "LAST-BREACH",
        "AGE",
    ]
    assert lines[1].split() == [
        "support",
        "0/2",
        "Suspended",
        "aaaa3333dd",
        "aaaa1111bb",
        "$1.25",
        "4321",
        "loop-guard:",
        "Suspend",
        "2m",
        "ago",
        "3h",
    ]
    wide = status_table([st], NOW, wide=True, namespaces=True)
    assert wide.splitlines()[1].split()[:2] == ["team-a", "support"]
    assert "loopDetections=5 (> 3) -> Suspend 2m ago" in wide
    assert "Ready=False,Suspended=True" in wide


def test_status_row_of_a_fresh_agent() -> None:
    st = AgentStatus.of(agd("new"))
    assert (st.ready, st.phase, st.spend_today, st.current_number) == ("0/2", None, None, None)
    assert status_table([st], NOW).splitlines()[1].split() == ["new", "0/2", "-", "-", "-", "-", "-", "-", "3h"]


def test_breach_text() -> None:
    assert breach_text(None, NOW) == "-"
    assert breach_text(BREACH, NOW) == "loop-guard: Suspend 2m ago"
    assert breach_text({**BREACH, "time": None}, NOW) == "loop-guard: Suspend"


# ----------------------------------------------------------------------------------- audit


def audit_file(path: Path, n: int, agent: str = "support") -> list[str]:
    log = AuditLog(AuditSink(stdout=False, file=str(path)), {"namespace": "team-a", "agent": agent, "revision": "r"})
    log.start()
    for i in range(n):
        log.record("llm_call", task=f"t{i}", decision="allow", tokens_in=i)
    log.close()
    return path.read_text().splitlines()


def test_the_guard_container_name_matches_the_renderer() -> None:
    body = {"metadata": {"name": "support", "namespace": "team-a", "uid": "u1"}, "spec": spec()}
    pod = {"spec": render(AgentDeployment.model_validate(body)).pod_template["spec"]}
    assert guard_container_of(pod) == GUARD_CONTAINER
    renamed = {"spec": {"containers": [{"name": "agent"}], "initContainers": [{"name": "g", "args": ["guard"]}]}}
    assert guard_container_of(renamed) == "g"


def test_audit_lines_are_picked_out_of_a_mixed_log(tmp_path: Path) -> None:
    records = audit_file(tmp_path / "a.jsonl", 4)
    log = "\n".join(
        ['{"message": "listening", "port": 8080}', records[0], records[1], "plain text", records[2], records[3]]
    )
    assert [n for n, _ in audit_lines(log)] == [2, 3, 5, 6]
    report = verify_log("pod/p", log)
    assert (report.ok, report.records, report.agents) == (True, 4, ("team-a/support",))
    assert report.first is not None and report.last is not None and report.first <= report.last


def test_a_tampered_log_names_the_original_line(tmp_path: Path) -> None:
    records = audit_file(tmp_path / "a.jsonl", 4)
    edited = json.loads(records[2])
    edited["tokens_in"] = 99
    log = "\n".join(['{"message": "listening"}', records[0], records[1], json.dumps(edited), records[3]])
    report = verify_log("pod/p", log)
    assert not report.ok
    assert report.message.startswith("pod/p line 4 (seq 2)")
    assert "edited" in report.message
    # A record mangled beyond JSON still counts as (broken) audit, not as a log line.
    broken = log.replace(records[1], records[1][:-5])
    assert not verify_log("pod/p", broken).ok
    assert not verify_log("pod/p", '{"message": "no audit here"}').ok


def test_verify_files_uses_the_guard_verifier(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    audit_file(path, 3)
    report = verify_files([path])
    assert (report.ok, report.records) == (True, 3)
    assert "chain intact" in report.message
    rows = path.read_text().splitlines()
    path.write_text("\n".join([rows[0], rows[2]]) + "\n")
    report = verify_files([path])
    assert not report.ok and "records deleted" in report.message


def restarted_guard(path: Path) -> tuple[str, str]:
    """Two runs of one guard on one audit file: the logs each run wrote to stdout."""
    identity = {"namespace": "team-a", "agent": "support", "revision": "r"}
    logs = []
    for run in range(2):
        stream = io.StringIO()
        log = AuditLog(AuditSink(stdout=True, file=str(path)), identity, stream=stream)
        log.start()
        for i in range(3):
            log.record("llm_call", task=f"run{run}-{i}", decision="allow")
        log.close()
        logs.append('{"message": "guard listening"}\n' + stream.getvalue())
    return logs[0], logs[1]


def test_a_restarted_guards_runs_verify_as_one_chain(tmp_path: Path) -> None:
    """The second run's log starts mid-chain (seq 3): alone it is broken unless an anchor in it
    vouches for it; after the first run's log it is one intact chain."""
    before, after = restarted_guard(tmp_path / "audit.jsonl")
    alone = verify_log("pod/p", after)
    assert not alone.ok and "starts at seq 3" in alone.message
    joined = verify_runs("pod/p", [("pod/p (previous run)", before), ("pod/p", after)])
    assert (joined.ok, joined.records) == (True, 6), joined.message
    head = json.loads(after.splitlines()[-1])
    (anchor,) = parse_anchors([f"{head['seq']}:{head['hash']}"])
    anchored = verify_log("pod/p", after, [anchor])
    assert anchored.ok and "vouched for by the anchor" in anchored.message
    # A record of the first run edited: named by its run and its line in that run's log.
    edited = before.replace('"run0-1"', '"run0-X"')
    broken = verify_runs("pod/p", [("pod/p (previous run)", edited), ("pod/p", after)])
    assert not broken.ok and broken.message.startswith("pod/p (previous run) line 3 (seq 1)"), broken.message
    # The first run's log lost (only the second is there) and a forged anchor: both refused.
    assert not verify_runs("pod/p", [("pod/p (previous run)", ""), ("pod/p", after)]).ok
    (forged,) = parse_anchors([f"{head['seq']}:{'0' * 64}"])
    assert not verify_log("pod/p", after, [forged]).ok
    with pytest.raises(ValueError, match="SEQ:HASH"):
        parse_anchors(["12:abc"])


def test_guard_restarts_reads_the_guard_containers_status() -> None:
    pod = {
        "status": {
            "initContainerStatuses": [{"name": "guard", "restartCount": 2}],
            "containerStatuses": [{"name": "agent", "restartCount": 5}],
        }
    }
    assert guard_restarts(pod, "guard") == 2
    assert guard_restarts(pod, "agent") == 5
    assert guard_restarts({"status": {}}, "guard") == 0


# ----------------------------------------------------------------------------------- CLI parsing


def test_bad_output_format_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert kubectl_plugin.main(["status", "-o", "xml"]) == 2
    assert "argument -o/--output: invalid choice: 'xml'" in capsys.readouterr().err


def test_audit_anchor_on_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--anchor reaches the verifier (files need no cluster); a malformed one is a usage error."""
    path = tmp_path / "audit.jsonl"
    _, after = restarted_guard(path)
    second = tmp_path / "second-run.jsonl"
    second.write_text("".join(line + "\n" for _, line in audit_lines(after)))
    assert kubectl_plugin.main(["audit", "support", "--file", str(second)]) == 1
    assert "starts at seq 3" in capsys.readouterr().err
    head = json.loads(after.splitlines()[-1])
    assert kubectl_plugin.main(["audit", "support", "--file", str(second), "--anchor", f"4:{head['prev']}"]) == 0
    assert kubectl_plugin.main(["audit", "support", "--file", str(second), "--anchor", "4:nothex"]) == 2
    assert "--anchor: anchor '4:nothex' is not SEQ:HASH" in capsys.readouterr().err


def test_unknown_command_and_missing_name_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    assert kubectl_plugin.main(["frobnicate"]) == 2
    assert "invalid choice: 'frobnicate'" in capsys.readouterr().err
    assert kubectl_plugin.main(["suspend"]) == 2
    assert "the following arguments are required: NAME" in capsys.readouterr().err
    assert kubectl_plugin.main(["rollback", "x", "--timeout", "soon"]) == 2
    assert "invalid duration" in capsys.readouterr().err


def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert kubectl_plugin.main(["--help"]) == 0
    assert "kubectl agentfleet" in capsys.readouterr().out


def test_status_by_name_across_all_namespaces_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert kubectl_plugin.main(["status", "x", "-A", "--kubeconfig", "/nonexistent"]) == 2
    assert "across all namespaces" in capsys.readouterr().err


def test_a_missing_kubeconfig_is_named(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    assert kubectl_plugin.main(["census", "--kubeconfig", str(missing)]) == 1
    err = capsys.readouterr().err
    assert f"kubeconfig not found: {missing}" in err and "--kubeconfig" in err


def test_flags_work_before_and_after_the_command() -> None:
    parser = kubectl_plugin.build_parser()
    before = parser.parse_args(["-n", "team", "--kubeconfig", "k", "status"])
    after = parser.parse_args(["status", "-n", "team", "--kubeconfig", "k"])
    assert (before.namespace, before.kubeconfig) == (after.namespace, after.kubeconfig) == ("team", "k")
    assert not hasattr(parser.parse_args(["status"]), "namespace")


def test_kubeconfig_path_precedence() -> None:
    assert kubeconfig_path("flag", {"KUBECONFIG": "env"}) == "flag"
    assert kubeconfig_path(None, {"KUBECONFIG": "env"}) == "env"
    assert kubeconfig_path(None, {}) == "~/.kube/config"


class FakeApiException:
    """The attributes of kubernetes.client.ApiException that api_error reads."""

    def __init__(self, status: int, reason: str, body: Any) -> None:
        self.status, self.reason = status, reason
        self.body = json.dumps(body) if isinstance(body, dict) else body


def test_api_errors_say_what_failed_and_what_to_do() -> None:
    missing = api_error(
        FakeApiException(404, "Not Found", {"kind": "Status", "message": "x not found", "details": {"name": "x"}}),
        "get agentdeployment ns/x",
    )
    assert isinstance(missing, NotFound) and missing.code == 1
    no_crd = api_error(FakeApiException(404, "Not Found", "404 page not found"), "list agentdeployments in ns a")
    assert isinstance(no_crd, NotFound) and "are the agentfleet CRDs installed?" in no_crd.message
    forbidden = api_error(FakeApiException(403, "Forbidden", {"message": 'user "bob" cannot patch'}), "patch x")
    assert type(forbidden) is PluginError
    assert (
        forbidden.message == 'patch x: forbidden: user "bob" cannot patch; ask a cluster administrator for the '
        "RBAC permission"
    )
    assert "unauthorized" in api_error(FakeApiException(401, "Unauthorized", None), "get x").message
    assert (
        api_error(FakeApiException(500, "Internal Server Error", {"message": "boom"}), "get x").message
        == "get x: the API server answered 500 Internal Server Error: boom"
    )


def test_a_broken_kubeconfig_is_named(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("clusters: [\n")
    assert kubectl_plugin.main(["status", "--kubeconfig", str(bad)]) == 1
    assert f"error: cannot read kubeconfig {bad}:" in capsys.readouterr().err
    empty = tmp_path / "empty.yaml"
    empty.write_text("apiVersion: v1\nkind: Config\n")
    assert kubectl_plugin.main(["status", "--kubeconfig", str(empty)]) == 1
    assert f"error: invalid kubeconfig {empty}" in capsys.readouterr().err


def test_plugin_reads_names_without_loading_the_api_models() -> None:
    """The plugin takes the API's names from ``api.names`` and never pays for pydantic."""
    code = "import sys, agentfleet.cli.kubectl.main as m; print('pydantic' in sys.modules, m.RESOURCE)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", f"agentdeployments.{GROUP}"]


def test_network_reason_drops_the_pool_preamble() -> None:
    class Pool(Exception):
        reason = OSError(
            "HTTPSConnection(host='127.0.0.1', port=1): Failed to establish a new connection: "
            "[Errno 111] Connection refused"
        )

    assert network_reason(Pool()) == "Failed to establish a new connection: [Errno 111] Connection refused"
    assert network_reason(TimeoutError("timed out")) == "timed out"
