"""``agentfleet operator``: configure kopf for fleets and run it.

Tuning (see docs/architecture.md): bounded workers, Events only for warnings from kopf's own
logging (our handlers post meaningful Events explicitly), long server-side watch timeouts with a
client-side safety net, progress and diff-base kept in annotations so status stays ours.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import json
import logging
import os
import socket
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, cast

import kopf
import yaml
from kopf._core.engines.peering import Identity  # the type of kopf.operator(identity=), not re-exported
from prometheus_client import Gauge, start_http_server

from agentfleet.api import names
from agentfleet.api.guardconfig import AuditSink
from agentfleet.audit import AuditLog
from agentfleet.controller.handlers import ReadyMirror, labels_of, policies_of
from agentfleet.controller.policy_status import PolicyStatusWriter
from agentfleet.controller.reconcile import Context, reconcile
from agentfleet.evaluator.actions import Actor
from agentfleet.evaluator.loop import Evaluator, EvaluatorSettings
from agentfleet.evaluator.notify import Notifier, alerting_of, destinations
from agentfleet.evaluator.prom import Prometheus
from agentfleet.health import HealthServer, stale
from agentfleet.kube.client import Kube
from agentfleet.kube.issuer import IssuerError, read_issuer
from agentfleet.kube.lease import LeaderElector, LeaseSettings
from agentfleet.policy.platform import Platform, load_platform
from agentfleet.registry import REGISTRY
from agentfleet.render import RenderSettings


class HashedDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """kopf's annotation diff-base, reduced to a hash of the essence.

    kopf stores the last handled "essence" (spec, labels, annotations) in an annotation to tell
    an update from a no-op. The whole spec in an annotation broke on large specs: annotations
    are limited to 256 KiB in total and a legal spec can exceed that once JSON-escaped, after
    which every reconcile failed its bookkeeping. The reconciler is level-triggered and never
    reads the diff, so a SHA-256 of the essence says all kopf needs (changed or not) in 80 bytes
    whatever the spec's size. The essence is built from the body without ``status`` and
    ``managedFields`` (deep-copying them was the operator's largest CPU cost at fleet scale),
    and without kopf's own progress annotations (which change while a handler runs).
    """

    def __init__(self, progress: kopf.ProgressStorage, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._progress = progress

    def build(self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None) -> kopf.BodyEssence:
        lean: dict[str, Any] = {k: v for k, v in body.items() if k != "status"}
        lean["metadata"] = {k: v for k, v in (body.get("metadata") or {}).items() if k != "managedFields"}
        essence = super().build(body=kopf.Body(cast(kopf.RawBody, lean)), extra_fields=extra_fields)
        essence = self._progress.clear(essence=essence)
        digest = hashlib.sha256(json.dumps(essence, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
        return cast(kopf.BodyEssence, {"sha256": digest})


def read_platform(path: str) -> Platform:
    """The platform file, or the built-in deny-by-default; a bad file stops the operator."""
    if not path:
        return Platform()
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError("the file must hold a mapping")
        return load_platform(data)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise SystemExit(f"agentfleet operator: --platform {path}: {exc}") from None


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="agentfleet operator", description=__doc__)
    p.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="watch only these namespaces (repeatable); default: the whole cluster",
    )
    p.add_argument("--guard-image", default=RenderSettings.guard_image, help="image of the guard sidecar")
    p.add_argument(
        "--metrics-scrapers",
        default="monitoring",
        help="comma-separated namespaces whose pods (Prometheus) may scrape the guards' metrics port; empty: none",
    )
    p.add_argument(
        "--upstream-cidr",
        action="append",
        default=[],
        help="egress CIDRs for hostname LLM endpoints (NetworkPolicy cannot match names)",
    )
    p.add_argument("--metrics-port", type=int, default=8080, help="port for /metrics (0 disables)")
    p.add_argument("--metrics-address", default="0.0.0.0")
    p.add_argument(
        "--liveness", default="http://0.0.0.0:8081/healthz", help="health endpoint URL (probes); empty: none"
    )
    p.add_argument(
        "--leader-election-namespace",
        default="",
        help="take part in leader election on a Lease in this namespace (run 2+ replicas); empty: lead alone",
    )
    p.add_argument("--lease-duration", type=float, default=10.0, help="seconds a leader's Lease lasts unrenewed")
    p.add_argument("--workers", type=int, default=64, help="max AgentDeployments reconciled concurrently")
    p.add_argument("--api-concurrency", type=int, default=64, help="max concurrent API requests")
    p.add_argument("--prometheus-url", default="", help="Prometheus for the fleet evaluator (empty: no evaluator)")
    p.add_argument("--evaluation-interval", type=float, default=5.0, help="seconds between fleet evaluations")
    p.add_argument("--rate-window", default="1m", help="PromQL range for rates and increases")
    p.add_argument("--query-timeout", type=float, default=5.0, help="seconds per PromQL query")
    p.add_argument(
        "--ready-coalesce",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="mirror a Deployment's readiness onto status at most this late, coalescing its bursts",
    )
    p.add_argument(
        "--platform",
        default="",
        help="YAML with the default policy (where no AgentPolicy covers a namespace), the delegation "
        "ceiling and the cluster's pod/service CIDRs; unset: built-in deny-by-default",
    )
    p.add_argument("--audit-file", default="", help="also append the operator's audit trail to this file")
    p.add_argument("--verbose", action="store_true")
    return p.parse_args(argv)


def configure(args: argparse.Namespace) -> None:
    @kopf.on.startup()
    async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **kwargs: Any) -> None:
        # kopf's worker limit counts per-object workers, and a worker keeps its slot while it idles
        # (idle_timeout) after its last event: under a burst of new objects, a limit of 64 capped
        # the operator near 64 objects per (reconcile + idle) seconds, and blocked the watch
        # stream while it waited for a slot. Workers are cheap coroutines: leave them unbounded,
        # and bound what costs -- concurrent reconciles (--workers) and API calls (--api-concurrency).
        settings.queueing.worker_limit = None
        settings.queueing.idle_timeout = 1.0
        memo.reconcile_slots = asyncio.Semaphore(args.workers)
        settings.posting.level = logging.WARNING
        settings.watching.server_timeout = 300
        settings.watching.client_timeout = 330
        settings.watching.connect_timeout = 10
        settings.networking.request_timeout = 30
        progress = kopf.AnnotationsProgressStorage(prefix=names.KOPF_PREFIX)
        settings.persistence.progress_storage = progress
        settings.persistence.diffbase_storage = HashedDiffBaseStorage(
            progress, prefix=names.KOPF_PREFIX, key="last-handled-configuration"
        )
        settings.persistence.finalizer = names.FINALIZER
        memo.kube = await Kube.connect(concurrency=args.api_concurrency)
        memo.ready_mirror = ReadyMirror(memo.kube, delay=args.ready_coalesce)
        upstream = tuple(args.upstream_cidr) or RenderSettings.upstream_cidrs
        scrapers = tuple(n.strip() for n in args.metrics_scrapers.split(",") if n.strip())
        memo.render_settings = RenderSettings(
            guard_image=args.guard_image, upstream_cidrs=upstream, metrics_from_namespaces=scrapers
        )
        memo.render_settings = await with_cluster_keys(memo.kube, memo.render_settings)
        memo.cluster_keys = asyncio.create_task(refresh_cluster_keys(memo, kwargs), name="cluster-keys")
        memo.platform = read_platform(args.platform)
        memo.evaluator = None
        if args.prometheus_url:
            memo.evaluator = start_evaluator(args, memo, kwargs)
        memo.policy_status = start_policy_status(memo, kwargs)

    @kopf.on.cleanup()
    async def cleanup(memo: kopf.Memo, **_: Any) -> None:
        memo.cluster_keys.cancel()
        await asyncio.gather(memo.cluster_keys, return_exceptions=True)
        memo.policy_status.cancel()
        await asyncio.gather(memo.policy_status, return_exceptions=True)
        if memo.evaluator is not None:
            task, prom, audit = memo.evaluator
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await prom.close()
            audit.close()
        await memo.ready_mirror.close()
        await memo.kube.close()


KEYS_REFRESH_SECONDS = 600.0
"""How often the operator re-reads the cluster's service-account keys (a rotation publishes the
new key before signing with it, so this only needs to beat the kubelet's token refresh)."""


async def with_cluster_keys(kube: Kube, settings: RenderSettings) -> RenderSettings:
    """``settings`` with the cluster's issuer and JWKS, so that agents can call each other;
    unchanged (and said in the log) when they cannot be read: then no agent can be called."""
    try:
        issuer, jwks = await read_issuer(kube)
    except IssuerError as exc:
        logging.getLogger("agentfleet").warning("calls between agents are off: %s", exc)
        return settings
    return dataclasses.replace(settings, peer_issuer=issuer, peer_jwks=jwks)


async def refresh_cluster_keys(memo: kopf.Memo, indexes: dict[str, Any]) -> None:
    """Re-read the keys periodically; on a change, re-render every agent (its guard config, and
    so its pods' config hash, changes) so that tokens signed with a new key are accepted."""
    agent_index, policy_index, namespace_index = (
        indexes["agent_index"],
        indexes["policy_index"],
        indexes["namespace_index"],
    )
    log = logging.getLogger("agentfleet")
    while True:
        await asyncio.sleep(KEYS_REFRESH_SECONDS)
        fresh = await with_cluster_keys(memo.kube, memo.render_settings)
        if (fresh.peer_issuer, fresh.peer_jwks) == (memo.render_settings.peer_issuer, memo.render_settings.peer_jwks):
            continue
        memo.render_settings = fresh
        log.warning("the cluster's service-account keys changed: re-rendering every agent")
        for body in [b for store in list(agent_index.values()) for b in store]:
            namespace = body["metadata"]["namespace"]
            ctx = Context(
                kube=memo.kube,
                settings=fresh,
                policies=policies_of(policy_index),
                namespace_labels=labels_of(namespace_index, namespace),
                platform=memo.platform,
            )
            try:
                await reconcile(ctx, body)
            except Exception as exc:  # one agent's trouble must not stop the others' keys
                log.warning(
                    "re-rendering %s/%s after a key change failed: %s", namespace, body["metadata"]["name"], exc
                )


def start_policy_status(memo: kopf.Memo, indexes: dict[str, Any]) -> asyncio.Task[None]:
    """The AgentPolicy census (covered agents, violations), from the same in-memory indexes."""
    agent_index, policy_index, namespace_index = (
        indexes["agent_index"],
        indexes["policy_index"],
        indexes["namespace_index"],
    )

    def agents() -> list[tuple[str, dict[str, Any]]]:
        return [(ns, body.get("status") or {}) for (ns, _), store in list(agent_index.items()) for body in store]

    writer = PolicyStatusWriter(
        memo.kube, lambda: policies_of(policy_index), agents, lambda ns: labels_of(namespace_index, ns)
    )
    return asyncio.create_task(writer.run(), name="policy-status")


def start_evaluator(
    args: argparse.Namespace, memo: kopf.Memo, indexes: dict[str, Any]
) -> tuple[asyncio.Task[None], Prometheus, AuditLog]:
    """One fleet-wide evaluation loop, reading the same in-memory indexes as the handlers."""
    agent_index, policy_index, namespace_index = (
        indexes["agent_index"],
        indexes["policy_index"],
        indexes["namespace_index"],
    )

    async def carry_out(body: dict[str, Any]) -> list[tuple[str, str, str]]:
        namespace = body["metadata"]["namespace"]
        ctx = Context(
            kube=memo.kube,
            settings=memo.render_settings,
            policies=policies_of(policy_index),
            namespace_labels=labels_of(namespace_index, namespace),
            platform=memo.platform,
        )
        return (await reconcile(ctx, body)).events

    def agents() -> list[dict[str, Any]]:
        return [body for store in list(agent_index.values()) for body in store]

    prom = Prometheus(args.prometheus_url, query_timeout=args.query_timeout)
    audit = AuditLog(AuditSink(stdout=True, file=args.audit_file or None), {"component": "agentfleet-operator"})
    audit.start()
    notifier = Notifier(  # the covering policies' spec.alerting, read when an action is sent
        lambda ns: destinations(alerting_of(ns, policies_of(policy_index), labels_of(namespace_index, ns)))
    )
    evaluator = Evaluator(
        prom,
        Actor(memo.kube, carry_out, lambda: evaluator.memory, audit, notifier),
        agents,
        EvaluatorSettings(interval=args.evaluation_interval, rate_window=args.rate_window),
        policies=lambda: policies_of(policy_index),  # their customQueries are what queryRef names
        namespace_labels=lambda namespace: labels_of(namespace_index, namespace),
    )
    limit = max(10 * args.evaluation_interval, 60.0)
    HEALTH.checks.append(stale("the evaluation cycle", lambda: evaluator.last_cycle_at, limit))
    return asyncio.create_task(evaluator.run(), name="fleet-evaluator"), prom, audit


def identity(env: Mapping[str, str] = os.environ) -> str:
    """Who this operator is, for kopf: the pod's name (``POD_NAME``, which the chart sets from
    the downward API), else the host's name (a pod's hostname is its name too).

    Without it kopf derives one from ``getpass.getuser()``, which raises for a uid that has no
    passwd entry -- as in the image, which runs as 65532 -- and the operator crash-looped.
    """
    return env.get("POD_NAME") or socket.gethostname()


def main(argv: list[str]) -> int:
    args = parse(argv)
    configure(args)
    if args.metrics_port:
        start_http_server(args.metrics_port, addr=args.metrics_address, registry=REGISTRY)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        pass
    kopf.configure(verbose=args.verbose, log_format=kopf.LogFormat.JSON)
    if not args.verbose:  # per-object "Handler succeeded" lines are noise at fleet scale
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    return asyncio.run(run(args))


async def run(args: argparse.Namespace) -> int:
    """Serve health, win the Lease (when leader election is on), run kopf until it stops or the
    Lease is lost. Losing the Lease stops the operator and exits 1: the pod restarts as a
    candidate, so there is never a moment with two writers that both believe they lead."""
    if args.liveness:
        await HEALTH.start(args.liveness)
    elector: LeaderElector | None = None
    if args.leader_election_namespace:
        # A client of its own: renewals must never queue behind a burst of reconcile calls.
        kube = await Kube.connect(concurrency=4)
        settings = LeaseSettings(namespace=args.leader_election_namespace, lease_duration=args.lease_duration)
        elector = LeaderElector(kube, identity(), settings)
        HEALTH.role = "standby"
        await elector.acquire()
    HEALTH.role = "leader"
    LEADER.set(1)
    stop = asyncio.Event()
    operator = asyncio.create_task(
        kopf.operator(
            clusterwide=not args.namespace,
            namespaces=args.namespace,
            standalone=True,
            identity=Identity(identity()),
            stop_flag=stop,
        ),
        name="kopf",
    )
    HEALTH.checks.append(lambda: "kopf has stopped" if operator.done() else None)
    if elector is None:
        await operator
        await HEALTH.close()
        return 0
    holding = asyncio.create_task(elector.hold(), name="lease")
    done, _ = await asyncio.wait({operator, holding}, return_when=asyncio.FIRST_COMPLETED)
    if holding in done:  # lost the Lease: stop acting at once
        logging.getLogger("agentfleet.lease").error("lost the lease; stopping so another replica can lead")
        stop.set()
        await asyncio.wait({operator}, timeout=30)
        await HEALTH.close()
        return 1
    holding.cancel()
    await elector.release()
    await HEALTH.close()
    return 0


HEALTH = HealthServer()
"""The process's health endpoint (configured in ``run``; the evaluator adds its check)."""
LEADER = Gauge(
    "agentfleet_operator_leader",
    "1 while this replica holds the leader Lease (or leads alone), else 0: the no-leader alert reads it.",
    registry=REGISTRY,
)
