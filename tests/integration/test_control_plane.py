"""The local control plane is real: upstream binaries at the pinned version, RBAC, admission
policies, scheduling onto KWOK nodes, ServiceAccount tokens, and a Prometheus that scrapes."""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, watch
from prometheus_client import CollectorRegistry, Gauge, start_http_server

from hack.harness.kube import VERSIONS, Kube, Prometheus, poll

pytestmark = pytest.mark.integration


def test_server_reports_pinned_version(kube: Kube) -> None:
    version = json.loads(kube.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == VERSIONS["KUBERNETES_VERSION"]
    assert version["clientVersion"]["gitVersion"] == VERSIONS["KUBERNETES_VERSION"]


def test_kwok_nodes_are_ready(kube: Kube) -> None:
    nodes = kube.get_json("nodes")["items"]
    kwok = [n for n in nodes if n["metadata"]["annotations"].get("kwok.x-k8s.io/node") == "fake"]
    assert len(kwok) >= 1
    for node in kwok:
        ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
        assert ready == "True", node["metadata"]["name"]


def test_crd_can_be_created_and_its_objects_watched(kube: Kube, namespace: str) -> None:
    group = f"g{uuid.uuid4().hex[:8]}.test.agentfleet.dev"
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {"type": "object", "properties": {"size": {"type": "integer", "minimum": 1}}}
                            },
                        }
                    },
                }
            ],
        },
    }
    kube.apply(crd)
    try:
        kube.kubectl("wait", "--for=condition=Established", "--timeout=30s", f"crd/widgets.{group}")
        api = client.CustomObjectsApi(kube.api_client())
        events: queue.Queue[dict[str, Any]] = queue.Queue()
        w = watch.Watch()

        def consume() -> None:
            for ev in w.stream(
                api.list_namespaced_custom_object, group, "v1", namespace, "widgets", timeout_seconds=30
            ):
                events.put(ev)
                if ev["type"] == "ADDED":
                    w.stop()

        t = threading.Thread(target=consume, daemon=True)
        t.start()
        kube.apply(
            {
                "apiVersion": f"{group}/v1",
                "kind": "Widget",
                "metadata": {"name": "w1", "namespace": namespace},
                "spec": {"size": 3},
            }
        )
        ev = events.get(timeout=30)
        assert ev["type"] == "ADDED"
        assert ev["object"]["spec"]["size"] == 3
        # The schema is enforced by the real API server.
        bad = kube.kubectl(
            "apply",
            "-f",
            "-",
            check=False,
            input=json.dumps(
                {
                    "apiVersion": f"{group}/v1",
                    "kind": "Widget",
                    "metadata": {"name": "w2", "namespace": namespace},
                    "spec": {"size": 0},
                }
            ),
        )
        assert bad.returncode != 0 and "should be greater than or equal to 1" in bad.stderr
    finally:
        kube.kubectl("delete", "crd", f"widgets.{group}", "--wait=false", check=False)


def test_deployment_becomes_available_on_kwok_nodes(kube: Kube, namespace: str) -> None:
    kube.apply(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": namespace},
            "spec": {
                "replicas": 3,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {"containers": [{"name": "web", "image": "registry.invalid/web:1"}]},
                },
            },
        }
    )
    kube.kubectl("wait", "--for=condition=Available", "--timeout=60s", "deployment/web", "-n", namespace)
    pods = kube.get_json("pods", "-n", namespace, "-l", "app=web")["items"]
    assert len(pods) == 3
    for pod in pods:
        assert pod["status"]["phase"] == "Running"
        assert pod["spec"]["nodeName"].startswith("kwok-node-")


def test_rbac_denies_a_serviceaccount_until_a_rolebinding_grants_it(kube: Kube, namespace: str) -> None:
    kube.kubectl("create", "serviceaccount", "probe", "-n", namespace)
    who = f"--as=system:serviceaccount:{namespace}:probe"
    denied = kube.kubectl("get", "pods", "-n", namespace, who, check=False)
    assert denied.returncode != 0 and "Forbidden" in denied.stderr
    # A real token from the TokenRequest API, signed by the service-account issuer, is also denied.
    token = kube.kubectl("create", "token", "probe", "-n", namespace, "--duration=10m").stdout.strip()
    assert token.count(".") == 2
    cfg = json.loads(Path(kube.kubeconfig).read_text())["clusters"][0]["cluster"]
    as_token = [
        "--kubeconfig=/dev/null",
        f"--server={cfg['server']}",
        f"--certificate-authority={cfg['certificate-authority']}",
        f"--token={token}",
    ]

    def with_token(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [kube.kubectl_bin, *as_token, *args], capture_output=True, text=True, timeout=30, check=False
        )

    whoami = with_token("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}")
    assert whoami.stdout == f"system:serviceaccount:{namespace}:probe", whoami.stderr
    denied_token = with_token("get", "pods", "-n", namespace)
    assert denied_token.returncode != 0 and "Forbidden" in denied_token.stderr
    kube.kubectl("create", "role", "pod-reader", "--verb=get,list", "--resource=pods", "-n", namespace)
    kube.kubectl(
        "create",
        "rolebinding",
        "probe-reads",
        "--role=pod-reader",
        f"--serviceaccount={namespace}:probe",
        "-n",
        namespace,
    )
    poll(
        lambda: kube.kubectl("get", "pods", "-n", namespace, who, check=False).returncode == 0,
        timeout=20,
        what="RoleBinding to take effect",
    )
    assert with_token("get", "pods", "-n", namespace).returncode == 0
    still_denied = kube.kubectl("create", "configmap", "nope", "-n", namespace, who, check=False)
    assert still_denied.returncode != 0 and "forbidden" in still_denied.stderr.lower()


def test_validating_admission_policy_rejects_with_its_message(kube: Kube, namespace: str) -> None:
    name = f"no-forbidden-{uuid.uuid4().hex[:6]}"
    kube.apply(
        [
            {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "ValidatingAdmissionPolicy",
                "metadata": {"name": name},
                "spec": {
                    "failurePolicy": "Fail",
                    "matchConstraints": {
                        "resourceRules": [
                            {
                                "apiGroups": [""],
                                "apiVersions": ["v1"],
                                "operations": ["CREATE", "UPDATE"],
                                "resources": ["configmaps"],
                            }
                        ]
                    },
                    "validations": [
                        {
                            "expression": "!has(object.data) || !('forbidden' in object.data)",
                            "message": "configmaps may not carry the key 'forbidden'",
                        }
                    ],
                },
            },
            {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "ValidatingAdmissionPolicyBinding",
                "metadata": {"name": name},
                "spec": {
                    "policyName": name,
                    "validationActions": ["Deny"],
                    "matchResources": {
                        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
                    },
                },
            },
        ]
    )
    try:

        def rejected() -> str | None:
            res = kube.kubectl("create", "configmap", "bad", "-n", namespace, "--from-literal=forbidden=1", check=False)
            if res.returncode == 0:  # the policy is not loaded yet: undo and retry
                kube.kubectl("delete", "configmap", "bad", "-n", namespace, check=False)
                return None
            return res.stderr

        stderr = poll(rejected, timeout=30, what="the admission policy to load")
        assert "configmaps may not carry the key 'forbidden'" in stderr
        kube.kubectl("create", "configmap", "good", "-n", namespace, "--from-literal=fine=1")
    finally:
        kube.kubectl("delete", "validatingadmissionpolicybinding", name, check=False)
        kube.kubectl("delete", "validatingadmissionpolicy", name, check=False)


def test_prometheus_scrapes_a_file_sd_target(prometheus: Prometheus) -> None:
    registry = CollectorRegistry()
    probe = uuid.uuid4().hex[:8]
    Gauge("agentfleet_harness_probe", "A value the test expects to read back.", ["probe"], registry=registry).labels(
        probe=probe
    ).set(42)
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    target = prometheus.add_target(
        f"probe-{probe}", f"127.0.0.1:{server.server_port}", {"namespace": "harness", "agent": "probe"}
    )
    try:
        result = poll(
            lambda: prometheus.query(f'agentfleet_harness_probe{{probe="{probe}"}}'),
            timeout=30,
            what="Prometheus to scrape the probe target",
        )
        assert float(result[0]["value"][1]) == 42
        assert result[0]["metric"]["agent"] == "probe"
        assert result[0]["metric"]["job"] == "agentfleet"
    finally:
        target.unlink(missing_ok=True)
        server.shutdown()
        thread.join(timeout=5)
