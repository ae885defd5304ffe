"""The shared budget ledger as the chart installs it and the operator wires it in (issue #11).

Without a cluster: the chart's Redis (StatefulSet, Service, password Secret and its copies,
NetworkPolicy) renders hardened, with append-only persistence and the password from a Secret, and
the rendered ``redis.conf`` runs under a real ``redis-server`` (Debian's): it demands the
password, keeps an append-only file, never evicts and refuses FLUSHALL/CONFIG.

On a private control plane of its own (the chart installs cluster-scoped objects, and the
session's operator must not judge these agents with its development platform): the chart is
installed with ``ledger.install=true``, the operator runs as the chart's ServiceAccount with the
chart's platform file, and an agent in a namespace covered by an AgentPolicy with a spendQuota
gets the ledger in its guard config (the strictest outage behaviour, the quota), the password
Secret in its guard container only, and egress to the Redis pods and nowhere new.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
import redis
import yaml

from agentfleet.api.guardconfig import AuditSink, GuardConfig
from agentfleet.api.ledger import PlatformLedger
from agentfleet.api.types import AgentDeployment, AgentPolicy
from agentfleet.guard.ledger import agent_budgets
from agentfleet.guard.redis_ledger import RedisLedger
from agentfleet.policy import ledger_terms
from agentfleet.policy.platform import load_platform
from agentfleet.render import render as render_agent
from hack.harness.agents import agent_policy, condition, objects_of, status, wait_reconciled
from hack.harness.chart import CHART, helm, token_kubeconfig
from hack.harness.kube import ROOT, Cluster, Kube, free_port, poll
from hack.harness.processes import FakeLLMProcess, OperatorProcess
from tests.guard.redisd import REDIS_SERVER
from tests.guard.support import AGENT_KEY, AGENTFLEET, UPSTREAM_KEY, start
from tests.integration.test_chart import BINS, K8S_VERSION, find, values_file

pytestmark = pytest.mark.integration

RELEASE, RELEASE_NS = "af", "agentfleet-system"
FULLNAME = f"{RELEASE}-agentfleet"
LEDGER = f"{FULLNAME}-ledger"
SECRET = "agentfleet-ledger"
PORT_BASE = 23400
SERVICE_CIDR = "10.96.0.0/12"
TEAM = "ledger-team"
PLUGIN = ROOT / ".venv" / "bin" / "kubectl-agentfleet"
HARDENED = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "privileged": False,
    "capabilities": {"drop": ["ALL"]},
}


def render(tmp: Path, values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    args = ["template", RELEASE, str(CHART), "-n", RELEASE_NS, f"--kube-version={K8S_VERSION}"]
    if values:
        args += ["-f", values_file(tmp, values)]
    out = helm(str(BINS["helm"]), *args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def platform_of(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (cm,) = find(docs, "ConfigMap", f"{FULLNAME}-platform")
    data: dict[str, Any] = yaml.safe_load(cm["data"]["platform.yaml"])
    return data


def installed_values(**ledger: Any) -> dict[str, Any]:
    return {"clusterCIDRs": [SERVICE_CIDR], "ledger": {"install": True, **ledger}}


# ============================================================================= without a cluster


def test_by_default_the_chart_installs_no_ledger_and_the_platform_names_none(tmp_path: Path) -> None:
    docs = render(tmp_path)
    assert not [d for d in docs if d["metadata"]["name"].endswith("-ledger") or d["kind"] == "StatefulSet"]
    assert not find(docs, "Secret")
    assert "ledger" not in platform_of(docs)


def test_the_installed_redis_is_hardened_persistent_and_reads_its_password_from_a_secret(tmp_path: Path) -> None:
    docs = render(tmp_path, installed_values(agentNamespaces=["team-a", "team-b"]))
    (sts,) = find(docs, "StatefulSet", LEDGER)
    assert sts["spec"]["replicas"] == 1
    pod = sts["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for c in [*pod["initContainers"], *pod["containers"]]:
        assert c["securityContext"] == HARDENED, c["name"]
        assert c["resources"]["limits"]["memory"], c["name"]
        # The password is never an argument or an environment variable, only a mounted file.
        assert "env" not in c and "envFrom" not in c, c["name"]
        assert "requirepass" not in " ".join(c.get("args", [])), c["name"]
    (redis_container,) = pod["containers"]
    assert redis_container["command"] == ["redis-server", "/etc/redis/redis.conf"]
    (password,) = [v for v in pod["volumes"] if "secret" in v]
    assert password["secret"]["secretName"] == SECRET
    # Persistence: a PVC by default, an emptyDir on request.
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data" and claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    ephemeral = render(tmp_path, installed_values(redis={"persistence": {"enabled": False}}))
    (sts2,) = find(ephemeral, "StatefulSet", LEDGER)
    assert "volumeClaimTemplates" not in sts2["spec"]
    assert {"name": "data", "emptyDir": {"sizeLimit": "1Gi"}} in sts2["spec"]["template"]["spec"]["volumes"]

    (cm,) = find(docs, "ConfigMap", LEDGER)
    conf = cm["data"]["redis.conf"].splitlines()
    for line in ("appendonly yes", "appendfsync everysec", "maxmemory-policy noeviction", 'save ""'):
        assert line in conf, line

    # One generated password, the same in the release namespace and in every agent namespace.
    secrets = find(docs, "Secret")
    assert sorted(s["metadata"]["namespace"] for s in secrets) == [RELEASE_NS, "team-a", "team-b"]
    assert {s["metadata"]["name"] for s in secrets} == {SECRET}
    assert len({s["data"]["password"] for s in secrets}) == 1

    (svc,) = find(docs, "Service", LEDGER)
    assert svc["spec"]["ports"] == [{"name": "redis", "port": 6379, "targetPort": "redis", "protocol": "TCP"}]
    assert svc["spec"]["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()


def test_only_agent_pods_reach_the_installed_redis_and_it_reaches_nothing(tmp_path: Path) -> None:
    (policy,) = find(render(tmp_path, installed_values()), "NetworkPolicy", LEDGER)
    spec = policy["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"] and spec["egress"] == []
    (rule,) = spec["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 6379}]
    assert rule["from"] == [
        {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app.kubernetes.io/managed-by": "agentfleet"}}}
    ]
    watched = render(tmp_path, {**installed_values(), "operator": {"watchNamespaces": ["team-a"]}})
    (peer,) = find(watched, "NetworkPolicy", LEDGER)[0]["spec"]["ingress"][0]["from"]
    assert peer["namespaceSelector"] == {
        "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-a"]}]
    }


def test_the_platform_file_names_the_ledger_the_operator_reads(tmp_path: Path) -> None:
    docs = render(tmp_path, installed_values(timeout="500ms"))
    platform = load_platform(platform_of(docs))
    assert platform.ledger is not None
    assert platform.ledger.url == f"redis://{LEDGER}.{RELEASE_NS}.svc:6379/0"
    assert platform.ledger.password_secret == SECRET and platform.ledger.timeout == "500ms"
    (sts,) = find(docs, "StatefulSet", LEDGER)
    assert platform.ledger.pods is not None and platform.ledger.pods.namespace == RELEASE_NS
    assert platform.ledger.pods.labels.items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    # An existing instance instead: no Redis objects, only the platform's pointer to it.
    existing = {
        "ledger": {
            "url": "rediss://ledger.corp.example:6380/1",
            "passwordSecret": "corp-ledger",
            "cidrs": ["198.51.100.7/32"],
        }
    }
    docs = render(tmp_path, existing)
    assert not find(docs, "StatefulSet") and not find(docs, "Secret")
    named = load_platform(platform_of(docs)).ledger
    assert named is not None and named.url == "rediss://ledger.corp.example:6380/1"
    assert (named.password_secret, named.cidrs) == ("corp-ledger", ["198.51.100.7/32"])


def test_the_values_schema_refuses_a_ledger_it_cannot_use(tmp_path: Path) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"ledger": {"url": "http://redis:6379"}}, "/ledger/url"),
        ({"ledger": {"url": "redis://user:secret@redis:6379"}}, "/ledger/url"),
        ({"ledger": {"passwordSecret": "Bad_Name"}}, "/ledger/passwordSecret"),
        ({"ledger": {"install": True, "redis": {"maxMemory": "lots"}}}, "/ledger/redis/maxMemory"),
        ({"ledger": {"pods": {"namespace": "x", "labels": {}}}}, "/ledger/pods/labels"),
        ({"ledger": {"passsword": "x"}}, "passsword"),
    ]
    for values, where in cases:
        args = ["template", RELEASE, str(CHART), f"--kube-version={K8S_VERSION}", "-f", values_file(tmp_path, values)]
        res = helm(str(BINS["helm"]), *args, check=False)
        assert res.returncode != 0, f"accepted {values}"
        assert "schema" in res.stderr and where in res.stderr, (values, res.stderr)


PASSWORD = "s3cret-from-the-secret"


@dataclass
class ChartRedis:
    """A real redis-server running the chart's rendered ``redis.conf`` (paths and port moved)."""

    port: int
    data: Path
    client: redis.Redis

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


@pytest.fixture
def chart_redis(tmp_path: Path) -> Iterator[ChartRedis]:
    (cm,) = find(render(tmp_path, installed_values()), "ConfigMap", LEDGER)
    data, auth = tmp_path / "data", tmp_path / "auth.conf"
    data.mkdir()
    auth.write_text(f'requirepass "{PASSWORD}"\n')  # what the chart's init container writes
    port = free_port()
    conf = (
        cm["data"]["redis.conf"]
        .replace("bind * -::*", "bind 127.0.0.1")
        .replace("port 6379", f"port {port}")
        .replace("dir /data", f"dir {data}")
        .replace("include /run/ledger-auth/auth.conf", f"include {auth}")
    )
    (tmp_path / "redis.conf").write_text(conf)
    log = (tmp_path / "redis.log").open("ab")
    proc = subprocess.Popen([REDIS_SERVER, str(tmp_path / "redis.conf")], stdout=log, stderr=log)
    client = redis.Redis(port=port, password=PASSWORD, socket_timeout=2, socket_connect_timeout=2)
    try:

        def up() -> bool:
            assert proc.poll() is None, (tmp_path / "redis.log").read_text()
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        poll(up, timeout=10, what="the chart's redis.conf under redis-server")
        yield ChartRedis(port, data, client)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def test_the_rendered_redis_conf_runs_under_a_real_redis_server(chart_redis: ChartRedis) -> None:
    """The chart's configuration: password required, append-only, no eviction, no FLUSHALL."""
    anonymous = redis.Redis(port=chart_redis.port, socket_timeout=2, socket_connect_timeout=2)
    with pytest.raises(redis.AuthenticationError):
        anonymous.set("k", "v")
    client = chart_redis.client
    assert client.info("persistence")["aof_enabled"] == 1
    assert client.info("memory")["maxmemory_policy"] == "noeviction"
    for command in ("FLUSHALL", "FLUSHDB", "CONFIG GET maxmemory"):
        with pytest.raises(redis.ResponseError, match="unknown command"):
            client.execute_command(*command.split())
    # Server-side scripts (the ledger's reserve and settle) run.
    assert client.eval("return redis.call('INCRBY', KEYS[1], ARGV[1])", 1, "ledger:test", 7) == 7
    assert any(chart_redis.data.rglob("*.aof")), list(chart_redis.data.iterdir())


def rendered_guard(tmp: Path, name: str, ledger: PlatformLedger, fake_url: str) -> tuple[GuardConfig, Path]:
    """The guard config the operator renders for agent ``name`` under the quota policy, as a file
    a guard process can run: only the mounted files' paths move to ``tmp``."""
    body = small_agent(name, "team-a")
    body["metadata"]["uid"] = f"uid-{name}"
    body["spec"]["agent"]["model"].update(
        {
            "endpoint": fake_url,
            "apiKeySecretRef": {"name": "llm-key", "key": "token"},
            "pricing": {"inputPerMillion": "1", "outputPerMillion": "2"},
        }
    )
    body["spec"]["budgets"]["latency"] = {"perCallDeadline": "5s"}
    quota = AgentPolicy.model_validate(
        {
            "metadata": {"name": "team-a-quota"},
            "spec": {"spendQuota": {"dollars": "5"}, "ledger": {"onUnavailable": "FailClosed"}},
        }
    )
    agent_ = AgentDeployment.model_validate(body)
    behaviour, quotas = ledger_terms(agent_, [quota], {})
    out = render_agent(agent_, ledger=ledger, ledger_policy=behaviour, quotas=quotas)
    (cm,) = [o for o in out.objects if o["kind"] == "ConfigMap"]
    cfg = GuardConfig.model_validate(yaml.safe_load(cm["data"]["guard.yaml"]))
    assert cfg.ledger is not None and cfg.ledger.password_file == "/var/run/agentfleet/ledger/password"
    secrets = tmp / name
    secrets.mkdir()
    (secrets / "password").write_text(PASSWORD + "\n")
    (secrets / "token").write_text(UPSTREAM_KEY + "\n")
    cfg = cfg.model_copy(
        update={
            "ledger": cfg.ledger.model_copy(update={"password_file": str(secrets / "password")}),
            "api_key_file": str(secrets / "token"),
            "audit": AuditSink(stdout=False, file=str(secrets / "audit.jsonl")),
        }
    )
    path = secrets / "guard.yaml"
    path.write_text(yaml.safe_dump(cfg.wire()))
    return cfg, path


def test_guards_rendered_by_the_operator_share_the_quota_in_the_charts_redis(
    chart_redis: ChartRedis, tmp_path: Path
) -> None:
    """Two agents covered by one spendQuota, each with a real guard process running the config
    the operator renders, against the chart's Redis (password from the mounted file): each agent's
    own budget counts its spend, and the policy's quota counts both."""
    ledger = PlatformLedger(url=chart_redis.url, password_secret=SECRET)
    fake = FakeLLMProcess.start(tmp_path / "fake-llm.log")
    procs = []
    try:
        configs = {}
        for name, calls in (("alpha", 3), ("beta", 2)):
            cfg, path = rendered_guard(tmp_path, name, ledger, fake.url)
            proc, line = start(
                [AGENTFLEET, "guard", "--config", str(path), "--port", "0", "--metrics-port", "0"],
                '"event": "listening"',
                tmp_path / f"{name}.log",
                "stderr",
            )
            procs.append(proc)
            configs[name] = cfg
            client = openai.OpenAI(base_url=json.loads(line)["url"] + "/v1", api_key=AGENT_KEY, max_retries=0)
            for i in range(calls):
                client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": f"ticket {i}"}], max_tokens=20
                )
        for proc in procs:  # a clean stop settles everything in flight
            proc.terminate()
            proc.wait(timeout=20)

        def status(cfg: GuardConfig) -> dict[str, dict[str, Any]]:
            assert cfg.ledger is not None

            async def read() -> dict[str, dict[str, Any]]:
                led = RedisLedger(agent_budgets(cfg), cfg.ledger, hold_ttl=1, password=PASSWORD)  # type: ignore[arg-type]
                await led.start()
                try:
                    return await led.status()
                finally:
                    await led.close()

            return asyncio.run(read())

        alpha, beta = status(configs["alpha"]), status(configs["beta"])
        assert alpha["cost_per_day"]["held"] == beta["cost_per_day"]["held"] == 0
        spent_alpha, spent_beta = alpha["cost_per_day"]["used"], beta["cost_per_day"]["used"]
        assert spent_alpha > 0 and spent_beta > 0 and spent_alpha != spent_beta  # 3 calls vs 2
        assert alpha["spend_quota"]["used"] == beta["spend_quota"]["used"] == spent_alpha + spent_beta
        assert alpha["spend_quota"]["scope"] == "policy/team-a-quota"
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        fake.stop()


# ============================================================================= on a private control plane


@dataclass
class World:
    admin: Kube
    operator: OperatorProcess
    team: str
    helm_bin: str
    values: str
    """The values file the chart was installed with."""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    run_dir = tmp_path_factory.mktemp("ledger") / "run"
    cluster = Cluster(run_dir, port_base=PORT_BASE, nodes=1)
    up = cluster.run("up", "--no-prometheus", check=False, timeout=240)
    operator: OperatorProcess | None = None
    try:
        if up.returncode != 0:
            pytest.fail(f"the ledger tests' cluster did not start:\n{up.stdout}\n{up.stderr}", pytrace=False)
        admin = cluster.kube
        for ns in (RELEASE_NS, TEAM):
            admin.kubectl("create", "namespace", ns)
        # KWOK runs no containers and provisions no volumes: the ledger's data is an emptyDir here.
        values = values_file(
            run_dir.parent, installed_values(agentNamespaces=[TEAM], redis={"persistence": {"enabled": False}})
        )
        helm(
            cluster.helm_bin,
            "install",
            RELEASE,
            str(CHART),
            "-n",
            RELEASE_NS,
            "-f",
            values,
            "--wait",
            "--timeout=120s",
            kubeconfig=admin.kubeconfig,
        )
        admin.kubectl(
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/agentdeployments.agentfleet.dev",
            "crd/agentpolicies.agentfleet.dev",
        )
        platform = run_dir.parent / "platform.yaml"
        platform.write_text(
            admin.get_json("configmap", f"{FULLNAME}-platform", "-n", RELEASE_NS)["data"]["platform.yaml"]
        )
        kubeconfig = token_kubeconfig(admin, FULLNAME, RELEASE_NS, run_dir.parent / "operator.kubeconfig")
        operator = OperatorProcess(kubeconfig, run_dir.parent / "operator.log", extra=[f"--platform={platform}"])
        operator.start()
        yield World(admin, operator, TEAM, cluster.helm_bin, values)
    finally:
        if operator is not None:
            operator.stop()
            print(f"operator log: {operator.log_path}")
        cluster.down()


def small_agent(name: str, namespace: str, **agent_fields: Any) -> dict[str, Any]:
    return {
        "apiVersion": "agentfleet.dev/v1alpha1",
        "kind": "AgentDeployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": 2,
            "agent": {
                "image": "registry.invalid/agent:1",
                "model": {"name": "gpt-4o-mini", "endpoint": "https://api.openai.com/v1"},
                **agent_fields,
            },
            "budgets": {"costPerDay": "1.50"},
        },
    }


def test_the_chart_installs_a_running_ledger_and_its_secret_where_agents_live(world: World) -> None:
    sts = world.admin.get_json("statefulset", LEDGER, "-n", RELEASE_NS)
    assert sts["status"].get("readyReplicas") == 1
    for ns in (RELEASE_NS, world.team):
        assert world.admin.get_json("secret", SECRET, "-n", ns)["data"]["password"]
    # The chart's operator identity cannot read it: it never needs to.
    can = world.admin.kubectl(
        "auth",
        "can-i",
        "get",
        "secrets",
        "-n",
        world.team,
        f"--as=system:serviceaccount:{RELEASE_NS}:{FULLNAME}",
        check=False,
    )
    assert can.stdout.strip() == "no"
    # An upgrade keeps the generated password (the guards hold it), here and in agent namespaces.
    before = {ns: world.admin.get_json("secret", SECRET, "-n", ns)["data"] for ns in (RELEASE_NS, world.team)}
    helm(
        world.helm_bin,
        "upgrade",
        RELEASE,
        str(CHART),
        "-n",
        RELEASE_NS,
        "-f",
        world.values,
        "--wait",
        "--timeout=120s",
        kubeconfig=world.admin.kubeconfig,
    )
    after = {ns: world.admin.get_json("secret", SECRET, "-n", ns)["data"] for ns in (RELEASE_NS, world.team)}
    assert after == before and before[RELEASE_NS] == before[world.team]


def test_an_agent_under_a_spend_quota_gets_the_ledger_in_its_guard_only_and_egress_to_it(world: World) -> None:
    admin, team = world.admin, world.team
    admin.apply(
        [
            agent_policy(
                "ledger-team-quota",
                namespaces=[team],
                spendQuota={"dollars": "40", "period": "Day", "timeZone": "Europe/Berlin"},
                ledger={"onUnavailable": "LocalAllowance", "localAllowance": {"dollars": "0.25", "tokens": 20000}},
            ),
            agent_policy(
                "ledger-org-outage",
                namespaceSelector={"matchLabels": {"kubernetes.io/metadata.name": team}},
                ledger={"onUnavailable": "LocalAllowance", "localAllowance": {"dollars": "0.10"}},
            ),
        ]
    )
    admin.apply(small_agent("budgeted", team))
    st = wait_reconciled(admin, team, "budgeted", timeout=90)
    assert condition(st, "PolicyViolation")["status"] == "False"
    rev = st["currentRevision"]

    # The guard config: the chart's Redis, the password file, the strictest outage behaviour of
    # the two covering policies, and the team's quota.
    cm = admin.get_json("configmap", f"budgeted-guard-{rev}", "-n", team)
    config = GuardConfig.model_validate(yaml.safe_load(cm["data"]["guard.yaml"]))
    assert config.ledger is not None
    assert config.ledger.url == f"redis://{LEDGER}.{RELEASE_NS}.svc:6379/0"
    assert config.ledger.password_file == "/var/run/agentfleet/ledger/password"
    assert config.ledger.on_unavailable == "LocalAllowance"
    assert config.ledger.local_allowance is not None
    assert (config.ledger.local_allowance.dollars, config.ledger.local_allowance.tokens) == ("0.10", 20000)
    assert [(q.policy, q.dollars, q.time_zone) for q in config.quotas] == [("ledger-team-quota", "40", "Europe/Berlin")]

    # The password Secret is mounted into the guard container only (and the pods exist with it).
    pod_spec = admin.get_json("deployment", "budgeted", "-n", team)["spec"]["template"]["spec"]
    (volume,) = [v for v in pod_spec["volumes"] if v.get("secret", {}).get("secretName") == SECRET]
    (guard,) = pod_spec["initContainers"]
    (agent_container,) = pod_spec["containers"]
    assert [m["mountPath"] for m in guard["volumeMounts"] if m["name"] == volume["name"]] == [
        "/var/run/agentfleet/ledger"
    ]
    assert not [m for m in agent_container.get("volumeMounts", []) if m["name"] == volume["name"]]
    assert SECRET not in str(agent_container)
    for pod in objects_of(admin, "pods", team, "budgeted"):
        assert pod["status"]["phase"] == "Running"
        assert any(v.get("secret", {}).get("secretName") == SECRET for v in pod["spec"]["volumes"])

    # Egress to the Redis pods on 6379, as the chart's NetworkPolicy admits them from agent pods.
    egress = admin.get_json("networkpolicy", "budgeted", "-n", team)["spec"]["egress"]
    ledger_rules = [r for r in egress if r.get("ports") == [{"protocol": "TCP", "port": 6379}]]
    assert ledger_rules == [
        {
            "to": [
                {
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": RELEASE_NS}},
                    "podSelector": {
                        "matchLabels": {
                            "app.kubernetes.io/component": "ledger",
                            "app.kubernetes.io/instance": RELEASE,
                            "app.kubernetes.io/name": "agentfleet",
                        }
                    },
                }
            ],
            "ports": [{"protocol": "TCP", "port": 6379}],
        }
    ]
    redis_pods = admin.get_json("pods", "-n", RELEASE_NS, "-l", "app.kubernetes.io/component=ledger")["items"]
    assert len(redis_pods) == 1
    selector = ledger_rules[0]["to"][0]["podSelector"]["matchLabels"]
    assert selector.items() <= redis_pods[0]["metadata"]["labels"].items()
    agent_pod_labels = objects_of(admin, "pods", team, "budgeted")[0]["metadata"]["labels"]
    ingress = admin.get_json("networkpolicy", LEDGER, "-n", RELEASE_NS)["spec"]["ingress"][0]["from"][0]
    assert ingress["podSelector"]["matchLabels"].items() <= agent_pod_labels.items()

    # A policy change reaches the guard: without the org policy the team's allowance holds.
    admin.kubectl("delete", "agentpolicy", "ledger-org-outage")

    def team_allowance() -> str | None:
        guard_yaml = admin.get_json("configmap", f"budgeted-guard-{rev}", "-n", team)["data"]["guard.yaml"]
        allowance = yaml.safe_load(guard_yaml)["ledger"].get("localAllowance") or {}
        return "0.25" if allowance.get("dollars") == "0.25" else None

    assert poll(team_allowance, timeout=60, what="the guard config to follow the policy change") == "0.25"


def test_an_agent_naming_the_ledger_secret_is_refused_even_where_every_secret_is_allowed(world: World) -> None:
    admin, team = world.admin, world.team
    admin.apply(agent_policy("ledger-team-secrets", namespaces=[team], allowedSecrets=["*"]))
    thief = small_agent("thief", team, env=[{"name": "X", "secretKeyRef": {"name": SECRET, "key": "password"}}])
    thief["spec"]["permissions"] = {"secrets": [SECRET]}
    admin.apply(thief)

    def refused() -> dict[str, Any] | None:
        c = condition(status(admin, team, "thief"), "PolicyViolation")
        return c if c and c["status"] == "True" else None

    c = poll(refused, timeout=60, what="the agent naming the ledger's Secret to be refused")
    assert "ledger" in c["message"] and SECRET in c["message"]
    assert not objects_of(admin, "pods", team, "thief")
    admin.kubectl("delete", "agentpolicy", "ledger-team-secrets")


def test_the_budget_command_shows_the_hierarchy_and_says_what_it_could_not_read(world: World) -> None:
    """KWOK pods run no guard, so the pod proxy cannot reach /readyz: the command still shows the
    hierarchy from the revision's guard config, and says per pod why LAST SEEN is empty."""
    admin, team = world.admin, world.team
    admin.apply(agent_policy("ledger-cli-quota", namespaces=[team], spendQuota={"dollars": "12", "period": "Month"}))
    admin.apply(small_agent("counted", team))
    wait_reconciled(admin, team, "counted", timeout=90)

    def quota_rendered() -> dict[str, Any] | None:
        res = subprocess.run(
            [str(PLUGIN), "--kubeconfig", admin.kubeconfig, "-n", team, "budget", "counted", "-o", "json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert res.returncode == 0, res.stderr
        doc: dict[str, Any] = yaml.safe_load(res.stdout)
        return doc if any(b["level"] == "policy/ledger-cli-quota" for b in doc["budgets"]) else None

    doc = poll(quota_rendered, timeout=60, what="the budget command to show the policy's quota")
    levels = {(b["level"], b["budget"]): b for b in doc["budgets"]}
    assert levels[("agent", "cost_per_day")]["limit"] == "$1.50"
    assert levels[("agent", "cost_per_day")]["resets"].endswith("+00:00")
    quota = levels[("policy/ledger-cli-quota", "spend_quota")]
    assert (
        quota["limit"] == "$12" and quota["window"] == "Month (UTC)" and quota["resets"].endswith("-01T00:00:00+00:00")
    )
    assert doc["ledger"].startswith(f"shared ledger at {LEDGER}.{RELEASE_NS}.svc:6379")
    assert len(doc["guards"]) == 2 and all(g.get("error") for g in doc["guards"]), doc["guards"]
    assert all(b["lastSeen"] is None for b in doc["budgets"])
    table = subprocess.run(
        [str(PLUGIN), "--kubeconfig", admin.kubeconfig, "-n", team, "budget", "counted"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "LAST SEEN" in table and "policy/ledger-cli-quota" in table and "not a live reading" in table
    admin.kubectl("delete", "agentpolicy", "ledger-cli-quota")
