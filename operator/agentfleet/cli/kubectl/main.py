"""``kubectl-agentfleet``: the kubectl plugin (``kubectl agentfleet COMMAND``).

    kubectl agentfleet status [NAME] [-A] [-o wide|json|yaml]
    kubectl agentfleet suspend NAME | resume NAME
    kubectl agentfleet rollback NAME [--to-revision N] [--no-wait] [--timeout 2m]
    kubectl agentfleet history NAME [-o wide|json|yaml]
    kubectl agentfleet census [-A] [-o wide|json|yaml]
    kubectl agentfleet audit NAME [--file PATH ...]

kubectl conventions: ``-n/--namespace`` (default: the kubeconfig context's namespace),
``-A/--all-namespaces``, ``-o``, ``--kubeconfig``, ``--context``, ``--request-timeout``.
Exit codes: 0 success; 1 failure (not found, API error, broken audit chain, timeout);
2 usage error (bad flag or value). Errors go to stderr and say what to do.

Every write goes through the operator's plain-kubectl interface (``spec.suspended`` and the
``agentfleet.dev/rollback-to`` and ``agentfleet.dev/resume`` annotations), so the plugin
needs no permission the equivalent ``kubectl patch``/``kubectl annotate`` would not.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agentfleet.api.names import AGENT as AGENT_LABEL
from agentfleet.api.names import RESUME, ROLLBACK_TO
from agentfleet.cli.kubectl.audit import (
    AuditReport,
    guard_container_of,
    guard_restarts,
    parse_anchors,
    status_anchors,
    verify_files,
    verify_log,
    verify_runs,
)
from agentfleet.cli.kubectl.fleet import (
    AgentStatus,
    Census,
    Revision,
    RevisionNotFound,
    breach_details,
    conditions_table,
    history_rows,
    history_table,
    revisions_of,
    rollback_target,
    spec_revision,
    status_table,
)
from agentfleet.cli.kubectl.format import NONE, OUTPUT_FORMATS, cell, dump, parse_duration, table
from agentfleet.cli.kubectl.kube import RESOURCE, Cluster, NotFound, PluginError, connect

if TYPE_CHECKING:
    from agentfleet.audit import Anchor

PROG = "kubectl agentfleet"
KIND = f"agentdeployment.{RESOURCE.split('.', 1)[1]}"
DEFAULT_REQUEST_TIMEOUT = 30.0
DEFAULT_ROLLBACK_TIMEOUT = 120.0

EXAMPLES = """examples:
  kubectl agentfleet status -A                       # every agent: phase, revision, spend, last breach
  kubectl agentfleet status support -o wide          # one agent, with its conditions
  kubectl agentfleet suspend support                 # manual kill switch (spec.suspended=true)
  kubectl agentfleet resume support                  # lift a manual or automatic suspension
  kubectl agentfleet history support                 # revisions: model, prompt, tools
  kubectl agentfleet rollback support --to-revision 3
  kubectl agentfleet census -A                       # what actually runs, counted honestly
  kubectl agentfleet audit support                   # verify the guards' hash-chained audit trail
  kubectl agentfleet budget support                  # budgets by level, resets, what the guards last saw

exit codes: 0 success, 1 failure (not found, API error, broken chain, timeout), 2 usage error"""


def now_utc() -> datetime:
    return datetime.now(UTC)


def rfc3339(when: datetime) -> str:
    return when.replace(microsecond=0).isoformat().replace("+00:00", "Z")


# ----------------------------------------------------------------------------------- arguments


def _duration(text: str) -> float:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
    return seconds


def build_parser() -> argparse.ArgumentParser:
    """The argument parser. Connection flags are accepted before or after the command
    (``kubectl agentfleet -n team status`` and ``... status -n team``)."""
    connection = argparse.ArgumentParser(add_help=False)
    group = connection.add_argument_group("connection (as in kubectl)")
    group.add_argument(
        "-n",
        "--namespace",
        default=argparse.SUPPRESS,
        help="namespace (default: the kubeconfig context's namespace, else 'default')",
    )
    group.add_argument(
        "--kubeconfig", default=argparse.SUPPRESS, help="kubeconfig file (default: $KUBECONFIG, else ~/.kube/config)"
    )
    group.add_argument("--context", default=argparse.SUPPRESS, help="kubeconfig context to use")
    group.add_argument(
        "--request-timeout",
        type=_duration,
        default=argparse.SUPPRESS,
        metavar="DURATION",
        help=f"timeout of each API request, e.g. 10s (default {DEFAULT_REQUEST_TIMEOUT:.0f}s)",
    )
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument(
        "-o",
        "--output",
        choices=OUTPUT_FORMATS,
        default=None,
        help="output format: wide (more columns), json or yaml (default: a table)",
    )
    every = argparse.ArgumentParser(add_help=False)
    every.add_argument("-A", "--all-namespaces", action="store_true", help="across all namespaces (ignores -n)")

    parser = argparse.ArgumentParser(
        prog=PROG,
        parents=[connection],
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Operate agentfleet AgentDeployments (agd).",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, text: str, *parents: argparse.ArgumentParser) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=text, description=text, parents=[connection, *parents])

    p = command("status", "Phase, ready, revisions, spend today, tokens per hour and last breach.", output, every)
    p.add_argument("name", nargs="?", metavar="NAME", help="one AgentDeployment (default: all in the namespace)")
    p = command("suspend", "Suspend an agent (spec.suspended=true): scale to zero, keep the spec.")
    p.add_argument("name", metavar="NAME")
    p = command("resume", "Resume an agent: spec.suspended=false, and clear an automatic suspension.")
    p.add_argument("name", metavar="NAME")
    p = command("rollback", "Roll back to the stable revision, the previous one, or --to-revision.")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--to-revision", metavar="N", help="revision number or hash (see `history`)")
    p.add_argument(
        "--wait",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="wait until the agent runs the target revision (default: wait)",
    )
    p.add_argument(
        "--timeout",
        type=_duration,
        default=DEFAULT_ROLLBACK_TIMEOUT,
        metavar="DURATION",
        help=f"how long to wait (default {DEFAULT_ROLLBACK_TIMEOUT:.0f}s)",
    )
    p = command("history", "Revisions of an agent: number, hash, age, current/stable, model, prompt, tools.", output)
    p.add_argument("name", metavar="NAME")
    p = command(
        "census",
        "An honest count of the fleet: agents, replicas, distinct models, prompts, tool sets and revisions.",
        output,
        every,
    )
    p = command(
        "budget",
        "An agent's budgets by level (task, agent, AgentPolicy quotas), when each resets, the shared ledger "
        "and what each guard last saw of it.",
        output,
    )
    p.add_argument("name", metavar="NAME")
    p = command("audit", "Fetch and verify a guard's hash-chained audit trail.", output)
    p.add_argument("name", metavar="NAME")
    p.add_argument(
        "--file",
        action="append",
        type=Path,
        metavar="PATH",
        help="verify this audit file instead of the pods' guard logs; repeat for rotated files, "
        "oldest first; '-' reads a saved log from stdin",
    )
    p.add_argument(
        "--previous",
        action="store_true",
        help="read only the previous (restarted) guard container's log; by default a restarted guard's "
        "previous log and its current one are verified as one chain",
    )
    p.add_argument("--pod", metavar="POD", help="only this pod of the agent")
    p.add_argument(
        "--anchor",
        action="append",
        default=[],
        metavar="SEQ:HASH",
        help="a chain head published earlier (GET :9090/audit/head on the guard); it must be in the trail, "
        "and vouches for a trail that starts mid-chain; repeatable; one pod only (--pod)",
    )
    return parser


class Session:
    """Parsed arguments plus a lazily opened connection."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self._cluster: Cluster | None = None
        self._namespace: str | None = getattr(args, "namespace", None)
        self.output: str | None = getattr(args, "output", None)
        self.all_namespaces: bool = bool(getattr(args, "all_namespaces", False))
        self.now = now_utc()

    @property
    def cluster(self) -> Cluster:
        if self._cluster is None:
            conn = connect(getattr(self.args, "kubeconfig", None), getattr(self.args, "context", None))
            if self._namespace is None:
                self._namespace = conn.namespace
            self._cluster = Cluster(conn, getattr(self.args, "request_timeout", DEFAULT_REQUEST_TIMEOUT))
        return self._cluster

    @property
    def namespace(self) -> str:
        if self._namespace is None:
            _ = self.cluster
        assert self._namespace is not None
        return self._namespace

    @property
    def scope(self) -> str | None:
        """The namespace to list in, or None for all namespaces (-A)."""
        return None if self.all_namespaces else self.namespace

    def where(self) -> str:
        return "any namespace" if self.all_namespaces else f"namespace {self.namespace}"


def out(text: str) -> None:
    print(text)


def note(text: str) -> None:
    print(text, file=sys.stderr)


def _annotations(obj: dict[str, Any]) -> dict[str, Any]:
    return dict((obj.get("metadata") or {}).get("annotations") or {})


def _status(obj: dict[str, Any]) -> dict[str, Any]:
    return dict(obj.get("status") or {})


def _condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in _status(obj).get("conditions") or [] if c.get("type") == type_), {})


def _optional(fetch: Callable[[], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """An enrichment (revision numbers) that is skipped when RBAC or the server refuses it."""
    try:
        return fetch()
    except PluginError:
        return []


# ----------------------------------------------------------------------------------- commands


def cmd_status(s: Session) -> int:
    name: str | None = s.args.name
    if name and s.all_namespaces:
        raise PluginError("a resource cannot be retrieved by name across all namespaces: drop -A or NAME", 2)
    enrich = bool(name) or s.output is not None
    if name:
        objects = [s.cluster.get_agent(s.namespace, name)]
        revision_objects = _optional(lambda: s.cluster.revisions(s.namespace, name)) if enrich else []
    else:
        objects = sorted(
            s.cluster.agents(s.scope), key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"])
        )
        revision_objects = _optional(lambda: s.cluster.revisions(s.scope)) if enrich else []
    by_agent: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for rev in revision_objects:
        meta = rev.get("metadata") or {}
        by_agent[(meta.get("namespace", ""), (meta.get("labels") or {}).get(AGENT_LABEL, ""))].append(rev)
    rows = [
        AgentStatus.of(o, revisions_of(by_agent[(o["metadata"].get("namespace", ""), o["metadata"]["name"])]))
        for o in objects
    ]
    if s.output in {"json", "yaml"}:
        out(dump(rows[0].json() if name else {"items": [r.json() for r in rows]}, s.output))
        return 0
    if not rows:
        note(f"No agentdeployments found in {s.where()}.")
        return 0
    wide = s.output == "wide"
    out(status_table(rows, s.now, wide=wide, namespaces=s.all_namespaces))
    if name and wide:
        row = rows[0]
        if row.conditions:
            out("\nConditions:\n" + conditions_table(row.conditions, s.now))
        if row.last_breach:
            out("\nLast breach:\n" + breach_details(row.last_breach))
    return 0


def cmd_suspend(s: Session) -> int:
    name: str = s.args.name
    before = s.cluster.get_agent(s.namespace, name)
    already = bool((before.get("spec") or {}).get("suspended"))
    s.cluster.patch_agent(s.namespace, name, {"spec": {"suspended": True}})
    out(f"{KIND}/{name} suspended" + (" (it already was)" if already else ""))
    return 0


def cmd_resume(s: Session) -> int:
    name: str = s.args.name
    before = s.cluster.get_agent(s.namespace, name)
    suspended = _condition(before, "Suspended")
    after = s.cluster.patch_agent(
        s.namespace,
        name,
        {
            "spec": {"suspended": False},
            "metadata": {"annotations": {RESUME: rfc3339(s.now)}},
        },
    )
    reason = suspended.get("reason") if suspended.get("status") == "True" else None
    out(f"{KIND}/{name} resumed" + (f" (was suspended: {reason})" if reason else ""))
    if reason == "FleetKillSwitch":
        note(
            "warning: an AgentPolicy covering this namespace has suspendAll: true (the fleet kill switch); the "
            "agent stays at zero replicas until it is lifted (kubectl get agp)"
        )
    over = _condition(after, "BudgetExceeded")
    if over.get("status") == "True":
        note(
            f"warning: the agent is over budget ({over.get('message') or over.get('reason')}); the evaluator "
            f"suspends it again at its next evaluation unless the budget is raised (spec.budgets) or resets"
        )
    if _condition(after, "PolicyViolation").get("status") == "True":
        note(
            f"warning: the agent violates an AgentPolicy and runs no pods until that is fixed "
            f"(kubectl describe agd {name} -n {s.namespace})"
        )
    return 0


def cmd_rollback(s: Session) -> int:
    name: str = s.args.name
    obj = s.cluster.get_agent(s.namespace, name)
    status = _status(obj)
    revisions = revisions_of(s.cluster.revisions(s.namespace, name))
    try:
        target = rollback_target(
            revisions, status.get("currentRevision"), status.get("stableRevision"), s.args.to_revision
        )
    except RevisionNotFound as exc:
        raise NotFound(f"cannot roll back {name}: {exc}") from None
    rev = target.revision
    s.cluster.patch_agent(s.namespace, name, {"metadata": {"annotations": {ROLLBACK_TO: rev.hash}}})
    if not s.args.wait:
        out(f"{KIND}/{name} rollback to revision {rev.number} ({rev.hash}) requested: {target.why}")
        return 0
    note(
        f"rolling back {name} to revision {rev.number} ({rev.hash}), {target.why}; waiting up to "
        f"{s.args.timeout:.0f}s for the operator"
    )

    def done(seen: dict[str, Any]) -> bool:
        return ROLLBACK_TO not in _annotations(seen) and _status(seen).get("currentRevision") == rev.hash

    final = s.cluster.wait_agent(s.namespace, name, done, s.args.timeout)
    if final is None:
        latest = s.cluster.get_agent(s.namespace, name)
        pending = ROLLBACK_TO in _annotations(latest)
        why = (
            "the operator has not picked up the request: is it running?"
            if pending
            else "the operator took the request but the agent runs another revision; see its events"
        )
        raise PluginError(
            f"timed out after {s.args.timeout:.0f}s waiting for {name} to run revision {rev.number} "
            f"({rev.hash}); it runs {_status(latest).get('currentRevision') or 'nothing yet'}: {why} "
            f"(kubectl describe agd {name} -n {s.namespace})"
        )
    out(f"{KIND}/{name} rolled back to revision {rev.number} ({rev.hash})")
    return 0


def cmd_history(s: Session) -> int:
    name: str = s.args.name
    obj = s.cluster.get_agent(s.namespace, name)
    status = _status(obj)
    current, stable = status.get("currentRevision"), status.get("stableRevision")
    revisions: list[Revision] = revisions_of(s.cluster.revisions(s.namespace, name))
    rows = history_rows(revisions, current, stable)
    if s.output in {"json", "yaml"}:
        out(
            dump(
                {
                    "namespace": s.namespace,
                    "name": name,
                    "currentRevision": current,
                    "stableRevision": stable,
                    "items": [r.json() for r in rows],
                },
                s.output,
            )
        )
        return 0
    if not rows:
        note(f"No revisions recorded for {name} yet (the operator records one when it first reconciles it).")
        return 0
    out(history_table(rows, s.now, wide=s.output == "wide"))
    return 0


def running_spec(s: Session, obj: dict[str, Any]) -> dict[str, Any] | None:
    """The stored spec of the revision an agent's pods run, when it is not the one its spec
    describes (a rollback pins an older revision); None when they agree or it cannot be read."""
    current = _status(obj).get("currentRevision")
    if not current or current == spec_revision(obj.get("spec") or {}):
        return None
    meta = obj["metadata"]
    try:
        stored = s.cluster.revision(meta["namespace"], f"{meta['name']}-{current}")
    except PluginError:
        return None
    spec = (stored.get("data") or {}).get("spec")
    return spec if isinstance(spec, dict) else None


def cmd_census(s: Session) -> int:
    census = Census()
    for obj in s.cluster.agents(s.scope):
        census.add(obj, running_spec(s, obj))
    if s.output in {"json", "yaml"}:
        scope = {"allNamespaces": True} if s.all_namespaces else {"namespace": s.namespace}
        out(dump({"scope": scope, **census.json()}, s.output))
        return 0
    out(census.table(wide=s.output == "wide"))
    return 0


def _audit_pods(s: Session, name: str, anchors: Sequence[Anchor]) -> list[AuditReport]:
    obj = s.cluster.get_agent(s.namespace, name)
    pods = sorted(s.cluster.pods(s.namespace, name), key=lambda p: p["metadata"]["name"])
    if s.args.pod:
        pods = [p for p in pods if p["metadata"]["name"] == s.args.pod]
        if not pods:
            raise NotFound(f"pod {s.args.pod} is not a pod of {name} in namespace {s.namespace}")
    if not pods:
        phase = _status(obj).get("phase") or "not reconciled yet"
        raise PluginError(
            f"{name} has no pods (phase {phase}), so there is no guard log to read; verify a saved "
            "copy of its audit trail with --file PATH"
        )
    if anchors and len(pods) > 1:
        raise PluginError("--anchor vouches for one guard's trail: name its pod with --pod", 2)
    reports = []
    for pod in pods:
        pod_name = pod["metadata"]["name"]
        container = guard_container_of(pod)
        source = f"pod/{pod_name}"
        try:
            log = s.cluster.pod_log(s.namespace, pod_name, container, previous=s.args.previous)
            runs = [(source, log)]
            if not s.args.previous and guard_restarts(pod, container):
                # The restarted guard goes on with the chain of the run before it: read that run's
                # log too (the kubelet keeps one), so the trail starts where the chain does.
                try:
                    before = s.cluster.pod_log(s.namespace, pod_name, container, previous=True)
                except NotFound:
                    before = ""
                runs.insert(0, (f"{source} (previous run)", before))
        except PluginError as exc:
            reports.append(
                AuditReport(
                    source,
                    0,
                    None,
                    None,
                    False,
                    f"cannot read the guard's log: {exc.message}. Verify a copy of the audit "
                    "trail from your log pipeline with --file PATH (or --file - from stdin)",
                )
            )
            continue
        # Without --anchor, the head the operator copied off this pod vouches for its trail (the
        # current run only: an older run's log ends before it).
        published = () if anchors or s.args.previous else status_anchors(_status(obj), pod_name)
        reports.append(verify_runs(source, runs, anchors or published))
    return reports


def _audit_files(paths: Sequence[Path], anchors: Sequence[Anchor]) -> list[AuditReport]:
    if [str(p) for p in paths] == ["-"]:
        return [verify_log("stdin", sys.stdin.read(), anchors)]
    if any(str(p) == "-" for p in paths):
        raise PluginError("--file - (stdin) cannot be combined with other files", 2)
    for path in paths:
        if not path.is_file():
            raise PluginError(f"--file {path}: no such file")
    return [verify_files(paths, anchors)]


def cmd_audit(s: Session) -> int:
    name: str = s.args.name
    try:
        anchors = parse_anchors(s.args.anchor)
    except ValueError as exc:
        raise PluginError(f"--anchor: {exc}", 2) from None
    reports = _audit_files(s.args.file, anchors) if s.args.file else _audit_pods(s, name, anchors)
    ok = all(r.ok for r in reports)
    if s.output in {"json", "yaml"}:
        out(dump({"name": name, "ok": ok, "sources": [r.json() for r in reports]}, s.output))
    else:
        wide = s.output == "wide"
        headers = ["source", "records", "first", "last", "chain"] + (["agents", "detail"] if wide else [])
        rows = [
            [r.source, str(r.records), cell(r.first), cell(r.last), "OK" if r.ok else "BROKEN"]
            + ([",".join(r.agents) or NONE, r.message] if wide else [])
            for r in reports
        ]
        out(table(headers, rows))
        for r in reports:
            if not r.ok:
                note(f"BROKEN: {r.message}")
    for r in reports:
        others = [a for a in r.agents if a.rsplit("/", 1)[-1] != name]
        if others:
            note(f"warning: {r.source} holds records of {', '.join(others)}, not of {name}")
    return 0 if ok else 1


def cmd_budget(s: Session) -> int:
    from agentfleet.cli.kubectl import budget as budgets  # the guard config's models: only this command pays

    name: str = s.args.name
    obj = s.cluster.get_agent(s.namespace, name)
    revision = _status(obj).get("currentRevision")
    if not revision:
        raise PluginError(f"agentdeployment {s.namespace}/{name} has no running revision yet (not reconciled)")
    config_map = f"{name}-guard-{revision}"
    try:
        cfg = budgets.guard_config_of(s.cluster.config_map(s.namespace, config_map))
    except ValueError as exc:
        raise PluginError(f"configmap {s.namespace}/{config_map}: {exc}") from None
    rows = budgets.hierarchy(cfg, s.now)
    views = []
    for pod in s.cluster.pods(s.namespace, name):
        pod_name = str((pod.get("metadata") or {}).get("name", ""))
        if (pod.get("status") or {}).get("phase") != "Running":
            continue
        try:
            views.append(
                budgets.guard_view(pod_name, s.cluster.pod_get(s.namespace, pod_name, cfg.metrics_port, "/readyz"))
            )
        except PluginError as exc:
            views.append(budgets.GuardView(pod_name, error=exc.message))
    seen = budgets.level_cells(rows, views)
    ledger = budgets.ledger_summary(cfg)
    if s.output in {"json", "yaml"}:
        doc = {
            "name": name,
            "namespace": s.namespace,
            "revision": revision,
            "ledger": ledger,
            "budgets": [{**r.json(), "lastSeen": c if c != "-" else None} for r, c in zip(rows, seen, strict=True)],
            "guards": [v.json() for v in views],
        }
        out(dump(doc, s.output))
        return 0
    out(f"Agent {s.namespace}/{name}, revision {revision}: budgets counted {ledger}.\n")
    headers = ["LEVEL", "BUDGET", "LIMIT", "WINDOW", "RESETS", "LAST SEEN"]
    out(
        table(
            headers,
            [
                [r.level, r.name, r.limit, r.window, rfc3339(r.resets) if r.resets else NONE, c]
                for r, c in zip(rows, seen, strict=True)
            ],
        )
    )
    if views:
        guard_rows = [
            [
                v.pod,
                cell(v.ledger),
                NONE if v.available is None else ("yes" if v.available else "NO"),
                cell(v.pending_settles),
                NONE if v.local_dollars is None else f"${v.local_dollars}",
                v.error or "",
            ]
            for v in views
        ]
        out("\nGuards (LAST SEEN is used + held at a guard's last reservation, not a live reading):")
        out(table(["POD", "LEDGER", "AVAILABLE", "QUEUED SETTLES", "LOCAL SPEND", "ERROR"], guard_rows))
    else:
        note("no running guard to ask: LAST SEEN is empty")
    return 0


COMMANDS: dict[str, Callable[[Session], int]] = {
    "status": cmd_status,
    "suspend": cmd_suspend,
    "resume": cmd_resume,
    "rollback": cmd_rollback,
    "history": cmd_history,
    "census": cmd_census,
    "audit": cmd_audit,
    "budget": cmd_budget,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2), already printed
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return COMMANDS[args.command](Session(args))
    except PluginError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `... | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
