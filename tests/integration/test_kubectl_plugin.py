"""The kubectl plugin, as a process, against the real control plane with the operator (and its
evaluator) running: status, suspend/resume, rollback, history, census, audit, and its errors.

Most calls run ``.venv/bin/kubectl-agentfleet`` directly; some go through ``kubectl agentfleet``
(kubectl finds the plugin on PATH) to prove the plugin is discoverable as users call it.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from agentfleet.api.guardconfig import AuditSink
from agentfleet.audit import AuditLog
from hack.harness.agents import agent, condition, objects_of, phase_is, status, wait_reconciled
from hack.harness.kube import ROOT, Kube, poll
from hack.harness.processes import OperatorProcess

pytestmark = pytest.mark.integration

BIN = ROOT / ".venv" / "bin"
PLUGIN = BIN / "kubectl-agentfleet"

ALWAYS_BREACHED = {
    # A custom rule that is breached on every evaluation: Prometheus answers 1 (> 0), so the
    # evaluator suspends the agent by itself and records the breach, as a real one would.
    "name": "always-breached",
    "metric": "custom",
    "query": 'label_replace(vector(1), "ns", "{{namespace}}", "", "")',
    "threshold": "0",
    "action": "Suspend",
}


def plugin(kube: Kube, *args: str, stdin: str | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PLUGIN), "--kubeconfig", kube.kubeconfig, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def via_kubectl(kube: Kube, *args: str) -> subprocess.CompletedProcess[str]:
    """``kubectl agentfleet ARGS``: kubectl finds kubectl-agentfleet on PATH; the plugin reads
    $KUBECONFIG as kubectl does (kubectl passes no flags of its own to plugins)."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "KUBECONFIG": kube.kubeconfig}
    return subprocess.run(
        [kube.kubectl_bin, "agentfleet", *args], capture_output=True, text=True, timeout=180, env=env, check=False
    )


def ok(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 0, f"exit {res.returncode}\nstdout:\n{res.stdout}\nstderr:\n{res.stderr}"
    return res.stdout


def rows(text: str) -> dict[str, list[str]]:
    """A table's rows keyed by their first cell (NAME, or NAMESPACE with -A)."""
    return {line.split()[0]: line.split() for line in text.splitlines()[1:] if line.strip()}


def set_usage(kube: Kube, namespace: str, name: str, spend: str, tokens: int) -> None:
    """Write status.usage as the evaluator does from Prometheus (these agents have no guards
    exporting metrics, so the evaluator leaves the field alone)."""
    kube.kubectl(
        "patch",
        "agd",
        name,
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": {"usage": {"spendToday": spend, "tokensLastHour": tokens}}}),
    )


def wait_breach(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    st: dict[str, Any] = poll(
        lambda: (s := status(kube, namespace, name)).get("phase") == "Suspended" and s.get("lastBreach") and s,
        timeout=60,
        what=f"the evaluator to suspend {name} on its guardrail",
    )
    return st


def revision_hashes(kube: Kube, namespace: str, name: str) -> dict[int, str]:
    items = objects_of(kube, "controllerrevisions", namespace, name)
    return {r["revision"]: r["metadata"]["labels"]["agentfleet.dev/revision"] for r in items}


# ----------------------------------------------------------------------------------- status


def test_status_table_json_yaml_wide_and_all_namespaces(operator: OperatorProcess, kube: Kube, namespace: str) -> None:
    kube.apply([agent("calm", namespace), agent("tripped", namespace, guardrails=[ALWAYS_BREACHED])])
    calm = wait_reconciled(kube, namespace, "calm")
    tripped = wait_breach(kube, namespace, "tripped")
    set_usage(kube, namespace, "calm", "1.25", 4321)
    # Readiness is mirrored from the Deployment a moment after it scales to zero.
    poll(
        lambda: (kube.get_json("agd", "tripped", "-n", namespace).get("status") or {}).get("readyReplicas") == 0,
        timeout=30,
        what="the suspended agent's readiness to reach 0",
    )

    table = ok(plugin(kube, "status", "-n", namespace))
    assert table.splitlines()[0].split() == [
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
    got = rows(table)
    assert got["calm"][:7] == ["calm", "2/2", "Running", calm["currentRevision"], "-", "$1.25", "4321"]
    assert (got["tripped"][0], got["tripped"][1][:2], got["tripped"][2]) == ("tripped", "0/", "Suspended")
    assert "always-breached: Suspend" in table

    one = json.loads(ok(plugin(kube, "status", "tripped", "-n", namespace, "-o", "json")))
    assert one["phase"] == "Suspended" and one["currentRevision"] == tripped["currentRevision"]
    assert one["currentRevisionNumber"] == 1
    breach = one["lastBreach"]
    assert {k: breach[k] for k in ("rule", "metric", "observedValue", "threshold", "action")} == {
        "rule": "always-breached",
        "metric": "custom",
        "observedValue": "1",
        "threshold": "> 0",
        "action": "Suspend",
    }
    assert breach["time"] == tripped["lastBreach"]["time"]
    assert condition({"conditions": one["conditions"]}, "Suspended")["status"] == "True"

    listed = json.loads(ok(plugin(kube, "status", "-n", namespace, "-o", "json")))
    by_name = {i["name"]: i for i in listed["items"]}
    assert set(by_name) == {"calm", "tripped"}
    assert (by_name["calm"]["spendToday"], by_name["calm"]["tokensLastHour"]) == ("1.25", 4321)
    # The same document as YAML (the fields that do not move while the operator works).
    steady = ("namespace", "name", "model", "currentRevision", "spendToday", "tokensLastHour", "lastBreach")
    as_yaml = yaml.safe_load(ok(plugin(kube, "status", "-n", namespace, "-o", "yaml")))
    assert [{k: i[k] for k in steady} for i in as_yaml["items"]] == [{k: i[k] for k in steady} for i in listed["items"]]

    wide = ok(plugin(kube, "status", "tripped", "-n", namespace, "-o", "wide"))
    assert "always-breached: custom=1 (> 0) -> Suspend" in wide
    assert "openai/gpt-4o-mini" in wide and "Suspended=True" in wide
    assert "Conditions:" in wide and "Last breach:" in wide
    conditions = {line.split()[0]: line.split() for line in wide.split("Conditions:")[1].splitlines()[2:] if line}
    assert set(conditions) >= {"Ready", "Progressing", "Suspended"}
    assert conditions["Suspended"][1:3] == ["True", condition(tripped, "Suspended")["reason"]]

    everywhere = ok(plugin(kube, "status", "-A"))
    assert everywhere.splitlines()[0].split()[:2] == ["NAMESPACE", "NAME"]
    mine = [line.split() for line in everywhere.splitlines() if line.startswith(namespace + " ")]
    assert sorted(r[1] for r in mine) == ["calm", "tripped"]
    all_json = json.loads(ok(plugin(kube, "status", "-A", "-o", "json")))
    assert {i["name"] for i in all_json["items"] if i["namespace"] == namespace} == {"calm", "tripped"}

    # The same through kubectl's plugin discovery, with the kubeconfig from $KUBECONFIG.
    assert rows(ok(via_kubectl(kube, "status", "-n", namespace)))["calm"][:4] == rows(table)["calm"][:4]


# ----------------------------------------------------------------------------------- suspend / resume


def test_suspend_resume_round_trip_and_resume_clears_an_automatic_suspension(
    operator: OperatorProcess, kube: Kube, namespace: str
) -> None:
    kube.apply(agent("manual", namespace))
    wait_reconciled(kube, namespace, "manual")

    assert (
        ok(plugin(kube, "suspend", "manual", "-n", namespace)).strip()
        == "agentdeployment.agentfleet.dev/manual suspended"
    )
    assert kube.get_json("agd", "manual", "-n", namespace)["spec"]["suspended"] is True
    st = poll(
        lambda: phase_is(kube, namespace, "manual", "Suspended"),
        timeout=30,
        what="phase Suspended",
    )
    assert condition(st, "Suspended")["reason"] == "ManualSuspend"
    poll(
        lambda: kube.get_json("deployment", "manual", "-n", namespace)["spec"]["replicas"] == 0,
        timeout=30,
        what="the Deployment to scale to zero",
    )
    assert "suspended (it already was)" in ok(plugin(kube, "suspend", "manual", "-n", namespace))

    out = ok(via_kubectl(kube, "resume", "manual", "-n", namespace))
    assert out.strip() == "agentdeployment.agentfleet.dev/manual resumed (was suspended: ManualSuspend)"
    assert kube.get_json("agd", "manual", "-n", namespace)["spec"]["suspended"] is False
    st = wait_reconciled(kube, namespace, "manual")
    assert condition(st, "Suspended")["status"] == "False"
    assert st["phase"] == "Running"
    assert kube.get_json("deployment", "manual", "-n", namespace)["spec"]["replicas"] == 2

    # An automatic suspension (the evaluator acting on a guardrail) is lifted by resume too:
    # the resume annotation clears it, and the rule's cooldown keeps it from firing at once.
    kube.apply(agent("auto", namespace, guardrails=[ALWAYS_BREACHED]))
    st = wait_breach(kube, namespace, "auto")
    reason = condition(st, "Suspended")["reason"]
    assert reason not in {"ManualSuspend", "FleetKillSwitch"}
    assert (
        ok(plugin(kube, "resume", "auto", "-n", namespace)).strip()
        == f"agentdeployment.agentfleet.dev/auto resumed (was suspended: {reason})"
    )
    st = poll(
        lambda: phase_is(kube, namespace, "auto", "Running"),
        timeout=60,
        what="the automatic suspension to be lifted",
    )
    assert condition(st, "Suspended")["status"] == "False"
    poll(
        lambda: kube.get_json("deployment", "auto", "-n", namespace)["spec"]["replicas"] == 2,
        timeout=30,
        what="the Deployment to scale back",
    )
    meta = kube.get_json("agd", "auto", "-n", namespace)["metadata"]
    assert "agentfleet.dev/resume" not in (meta.get("annotations") or {})  # consumed by the operator


# ----------------------------------------------------------------------------------- rollback / history


def test_history_and_rollback(operator: OperatorProcess, kube: Kube, namespace: str) -> None:
    # Revision 1 becomes stable after a 1 s window; later revisions have an hour to go.
    kube.apply(agent("gamma", namespace, analysis={"stabilizationWindow": "1s"}))
    first = wait_reconciled(kube, namespace, "gamma")["currentRevision"]
    poll(
        lambda: status(kube, namespace, "gamma").get("stableRevision") == first,
        timeout=60,
        what="the evaluator to mark revision 1 stable",
    )
    changed = agent("gamma", namespace, analysis={"stabilizationWindow": "1h"})
    changed["spec"]["agent"]["model"]["name"] = "gpt-4o"
    changed["spec"]["agent"]["tools"].append({"name": "calc"})
    kube.apply(changed)
    second = poll(
        lambda: (r := wait_reconciled(kube, namespace, "gamma")["currentRevision"]) != first and r,
        timeout=60,
        what="revision 2",
    )
    assert revision_hashes(kube, namespace, "gamma") == {1: first, 2: second}

    history = ok(plugin(kube, "history", "gamma", "-n", namespace))
    lines = history.splitlines()
    assert lines[0].split() == ["REVISION", "HASH", "AGE", "STATUS", "MODEL", "PROMPT", "TOOLS"]
    got = rows(history)
    assert [got["1"][i] for i in (1, 3, 4)] == [first, "stable", "openai/gpt-4o-mini"]
    assert [got["2"][i] for i in (1, 3, 4)] == [second, "current", "openai/gpt-4o"]
    assert got["1"][-1] == "search" and got["2"][-1] == "search"  # permissions.tools narrows to search
    assert '"You are helpful."' in history
    data = json.loads(ok(plugin(kube, "history", "gamma", "-n", namespace, "-o", "json")))
    assert [(i["revision"], i["hash"], i["current"], i["stable"]) for i in data["items"]] == [
        (1, first, False, True),
        (2, second, True, False),
    ]
    assert data["items"][1]["tools"] == ["search"]

    res = plugin(kube, "rollback", "gamma", "-n", namespace, "--to-revision", "1", "--timeout", "90s")
    assert ok(res).strip() == f"agentdeployment.agentfleet.dev/gamma rolled back to revision 1 ({first})"
    st = status(kube, namespace, "gamma")
    assert st["currentRevision"] == first
    assert condition(st, "RolledBack")["reason"] == "ManualRollback"
    poll(
        lambda: (
            {
                p["metadata"]["labels"]["agentfleet.dev/revision"]
                for p in objects_of(kube, "pods", namespace, "gamma")
                if not p["metadata"].get("deletionTimestamp")
            }
            == {first}
        ),
        timeout=60,
        what="pods of revision 1",
    )
    assert rows(ok(plugin(kube, "history", "gamma", "-n", namespace)))["1"][3] == "current,stable"

    # A new spec is a fresh attempt (revision 3); a plain `rollback` goes to the stable revision.
    again = agent("gamma", namespace, analysis={"stabilizationWindow": "1h"})
    again["spec"]["agent"]["systemPrompt"] = {"inline": "Third try."}
    kube.apply(again)
    third = poll(
        lambda: (
            (s := status(kube, namespace, "gamma")).get("currentRevision") not in {first, second, None}
            and s["currentRevision"]
        ),
        timeout=60,
        what="revision 3",
    )
    res = plugin(kube, "rollback", "gamma", "-n", namespace)
    assert ok(res).strip() == f"agentdeployment.agentfleet.dev/gamma rolled back to revision 1 ({first})"
    assert "the stable revision (1)" in res.stderr
    assert revision_hashes(kube, namespace, "gamma") == {1: first, 2: second, 3: third}

    # --no-wait only asks; the operator then does it.
    res = plugin(kube, "rollback", "gamma", "-n", namespace, "--to-revision", second[:6], "--no-wait")
    assert (
        ok(res).strip().startswith(f"agentdeployment.agentfleet.dev/gamma rollback to revision 2 ({second}) requested")
    )
    poll(
        lambda: status(kube, namespace, "gamma").get("currentRevision") == second,
        timeout=60,
        what="the requested rollback to revision 2",
    )


# ----------------------------------------------------------------------------------- census


def test_census_counts_what_runs(operator: OperatorProcess, kube: Kube, namespace: str) -> None:
    """5 AgentDeployments, 2 models, 3 prompts, 2 tool sets; two agents are identical, so only
    4 distinct revisions run: a configuration count is not an agent count."""
    plan = [
        ("a1", "gpt-4o-mini", "P1", False),
        ("a2", "gpt-4o-mini", "P1", False),
        ("a3", "gpt-4o-mini", "P2", False),
        ("a4", "gpt-4o", "P2", False),
        ("a5", "gpt-4o", "P3", True),
    ]
    bodies = []
    for name, model, prompt, calc in plan:
        body = agent(name, namespace, replicas=1)
        body["spec"]["agent"]["model"]["name"] = model
        body["spec"]["agent"]["systemPrompt"] = {"inline": f"You are agent {prompt}."}
        if calc:
            body["spec"]["agent"]["tools"].append({"name": "calc"})
            body["spec"]["permissions"]["tools"].append("calc")
        bodies.append(body)
    kube.apply(bodies)
    revisions = {name: wait_reconciled(kube, namespace, name)["currentRevision"] for name, *_ in plan}
    assert revisions["a1"] == revisions["a2"] and len(set(revisions.values())) == 4

    census = json.loads(ok(plugin(kube, "census", "-n", namespace, "-o", "json")))
    assert census["scope"] == {"namespace": namespace}
    assert {
        k: census[k]
        for k in (
            "agentDeployments",
            "namespaces",
            "declaredReplicas",
            "readyReplicas",
            "suspended",
            "distinctModels",
            "distinctPrompts",
            "distinctToolSets",
            "distinctRevisions",
        )
    } == {
        "agentDeployments": 5,
        "namespaces": 1,
        "declaredReplicas": 5,
        "readyReplicas": 5,
        "suspended": 0,
        "distinctModels": 2,
        "distinctPrompts": 3,
        "distinctToolSets": 2,
        "distinctRevisions": 4,
    }
    assert census["models"] == {"openai/gpt-4o-mini": 3, "openai/gpt-4o": 2}
    assert census["toolSets"] == {"search": 4, "calc,search": 1}
    assert census["revisions"][revisions["a1"]] == 2

    table = ok(via_kubectl(kube, "census", "-n", namespace))
    for label, number in [
        ("AgentDeployments", 5),
        ("Replicas ready", 5),
        ("Distinct models", 2),
        ("Distinct prompts", 3),
        ("Distinct tool sets", 2),
        ("Distinct revisions", 4),
    ]:
        line = next(line for line in table.splitlines() if line.startswith(label))
        assert line[len(label) :].split()[0] == str(number), line
    assert "5 AgentDeployments in 1 namespace run 4 distinct configurations on 2 models with 5 ready replicas." in table
    assert yaml.safe_load(ok(plugin(kube, "census", "-n", namespace, "-o", "yaml"))) == census

    # Suspending one and rolling nothing back: fewer replicas run, the configurations stay.
    ok(plugin(kube, "suspend", "a5", "-n", namespace))
    poll(
        lambda: json.loads(ok(plugin(kube, "census", "-n", namespace, "-o", "json")))["readyReplicas"] == 4,
        timeout=60,
        what="the census to see the suspended agent's replica go",
    )
    after = json.loads(ok(plugin(kube, "census", "-n", namespace, "-o", "json")))
    assert (after["suspended"], after["distinctModels"]) == (1, 2)

    fleet = json.loads(ok(plugin(kube, "census", "-A", "-o", "json")))
    assert fleet["scope"] == {"allNamespaces": True}
    assert fleet["agentDeployments"] >= 5 and fleet["namespaces"] >= 1


# ----------------------------------------------------------------------------------- audit


def write_chain(path: Path, n: int, agent_name: str, namespace: str) -> list[str]:
    """A chain written by the guard's own writer."""
    log = AuditLog(
        AuditSink(stdout=False, file=str(path)), {"namespace": namespace, "agent": agent_name, "revision": "r1"}
    )
    log.start()
    for i in range(n):
        log.record(
            "llm_call",
            task=f"task-{i % 2}",
            decision="allow",
            tokens_in=10 + i,
            tokens_out=5,
            cost="0.0001",
            prompt=log.content(f"prompt {i}"),
        )
    log.record("tool_call", task="task-0", tool="search", decision="reject", reason="loop detected")
    log.close()
    return path.read_text().splitlines()


def test_audit_verifies_a_file_and_fails_on_a_tampered_copy(kube: Kube, tmp_path: Path) -> None:
    good = tmp_path / "audit.jsonl"
    lines = write_chain(good, 6, "support", "team-a")
    first, last = json.loads(lines[0])["ts"], json.loads(lines[-1])["ts"]

    out = ok(plugin(kube, "audit", "support", "--file", str(good)))
    assert out.splitlines()[0].split() == ["SOURCE", "RECORDS", "FIRST", "LAST", "CHAIN"]
    assert out.splitlines()[1].split() == [str(good), "7", first, last, "OK"]
    report = json.loads(ok(plugin(kube, "audit", "support", "--file", str(good), "-o", "json")))
    assert report["ok"] is True
    assert report["sources"][0]["records"] == 7 and "chain intact" in report["sources"][0]["message"]
    assert report["sources"][0]["agents"] == ["team-a/support"]

    tampered = tmp_path / "tampered.jsonl"
    record = json.loads(lines[3])
    record["tokens_in"] = 0
    tampered.write_text(
        "\n".join([*lines[:3], json.dumps(record, sort_keys=True, separators=(",", ":")), *lines[4:]]) + "\n"
    )
    res = plugin(kube, "audit", "support", "--file", str(tampered))
    assert res.returncode == 1, res
    assert res.stdout.splitlines()[1].split()[-1] == "BROKEN"
    assert f"BROKEN: {tampered}:4 (seq 3): content does not match its hash (the record was edited)" in res.stderr

    deleted = tmp_path / "deleted.jsonl"
    deleted.write_text("\n".join([*lines[:2], *lines[3:]]) + "\n")
    res = plugin(kube, "audit", "support", "--file", str(deleted), "-o", "yaml")
    assert res.returncode == 1
    assert "records deleted" in yaml.safe_load(res.stdout)["sources"][0]["message"]

    # A saved container log (guard log lines interleaved) read from stdin.
    mixed = "\n".join(['{"event": "listening", "port": 8080}', *lines[:4], "WARNING something", *lines[4:]])
    out = ok(plugin(kube, "audit", "support", "--file", "-", stdin=mixed))
    assert out.splitlines()[1].split()[:2] == ["stdin", "7"] and out.splitlines()[1].split()[-1] == "OK"
    res = plugin(kube, "audit", "support", "--file", "-", stdin=mixed.replace(lines[5], lines[5][:-3]))
    assert res.returncode == 1 and "BROKEN: stdin line 8: not valid JSON" in res.stderr

    # Records of another agent are pointed out.
    assert (
        "holds records of team-a/support, not of billing"
        in plugin(kube, "audit", "billing", "--file", str(good)).stderr
    )
    res = plugin(kube, "audit", "support", "--file", str(tmp_path / "missing.jsonl"))
    assert res.returncode == 1 and "no such file" in res.stderr


def test_audit_reads_the_guard_container_logs(operator: OperatorProcess, kube: Kube, namespace: str) -> None:
    """Without --file, audit reads each pod's guard container log through the API server. KWOK
    nodes run no containers and serve no kubelet API, so here the read fails, and the plugin
    must say so per pod, name the guard container it asked for, and exit non-zero."""
    kube.apply(agent("logged", namespace, replicas=1))
    wait_reconciled(kube, namespace, "logged")
    pod = objects_of(kube, "pods", namespace, "logged")[0]["metadata"]["name"]
    res = plugin(kube, "audit", "logged", "-n", namespace)
    assert res.returncode == 1, res
    assert res.stdout.splitlines()[1].split()[:2] == [f"pod/{pod}", "0"]
    assert f"container guard in pod {namespace}/{pod}" in res.stderr
    assert "--file" in res.stderr

    ok(plugin(kube, "suspend", "logged", "-n", namespace))
    poll(
        lambda: not objects_of(kube, "pods", namespace, "logged"),
        timeout=60,
        what="the pods to go away",
    )
    res = plugin(kube, "audit", "logged", "-n", namespace)
    assert res.returncode == 1 and "logged has no pods (phase Suspended)" in res.stderr


# ----------------------------------------------------------------------------------- errors


def test_errors_are_clear_and_exit_codes_are_right(
    operator: OperatorProcess, kube: Kube, namespace: str, tmp_path: Path
) -> None:
    missing = f'agentdeployment "ghost" not found in namespace "{namespace}"'
    for command in (
        ["status", "ghost"],
        ["suspend", "ghost"],
        ["resume", "ghost"],
        ["rollback", "ghost"],
        ["history", "ghost"],
        ["audit", "ghost"],
    ):
        res = plugin(kube, *command, "-n", namespace)
        assert res.returncode == 1, (command, res)
        assert res.stderr.startswith(f"error: {missing}"), (command, res.stderr)
        assert res.stdout == ""
    res = via_kubectl(kube, "status", "ghost", "-n", namespace)
    assert res.returncode == 1 and missing in res.stderr

    res = plugin(kube, "status", "-n", namespace, "-o", "jsn")
    assert res.returncode == 2
    assert "argument -o/--output: invalid choice: 'jsn' (choose from 'wide', 'json', 'yaml')" in res.stderr
    assert plugin(kube, "status", "x", "-A").returncode == 2

    kube.apply(agent("solo", namespace))
    wait_reconciled(kube, namespace, "solo")
    res = plugin(kube, "rollback", "solo", "-n", namespace)
    assert res.returncode == 1
    assert "nothing to roll back to: revision 1" in res.stderr
    res = plugin(kube, "rollback", "solo", "-n", namespace, "--to-revision", "9")
    assert res.returncode == 1 and "no revision '9'; revisions: 1 (" in res.stderr
    assert "agentfleet.dev/rollback-to" not in (
        kube.get_json("agd", "solo", "-n", namespace)["metadata"].get("annotations") or {}
    )

    # An empty namespace is not an error.
    empty = plugin(kube, "status", "-n", f"{namespace}-none")
    assert empty.returncode == 0 and "No agentdeployments found" in empty.stderr

    # An unreachable API server and a missing context are named.
    config = yaml.safe_load(Path(kube.kubeconfig).read_text())
    for cluster in config["clusters"]:
        cluster["cluster"]["server"] = "https://127.0.0.1:1"
    dead = tmp_path / "dead.kubeconfig"
    dead.write_text(yaml.safe_dump(config))
    res = subprocess.run(
        [str(PLUGIN), "status", "--kubeconfig", str(dead), "--request-timeout", "5s"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert res.returncode == 1 and "cannot reach the API server at https://127.0.0.1:1" in res.stderr
    res = plugin(kube, "status", "--context", "nope")
    assert res.returncode == 1 and 'context "nope" not found' in res.stderr
