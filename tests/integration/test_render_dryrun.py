"""Rendered children of generated specs are accepted by the real API server: each goes
through the server-side apply the reconciler does, with dryRun=All, so validation,
defaulting and admission all run and nothing is stored."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubernetes import dynamic
from kubernetes.client.exceptions import ApiException

from agentfleet.kube.wire import apply_patch_body
from agentfleet.render import RenderSettings, render, render_controller_revision
from hack.harness.kube import Kube
from tests.support.strategies import agent_deployments, manifest

pytestmark = pytest.mark.integration

PEERS = RenderSettings(
    peer_issuer="https://kubernetes.default.svc.cluster.local",
    peer_jwks='{"keys":[{"alg":"RS256","e":"AQAB","kid":"k1","kty":"RSA","n":"AQAB","use":"sig"}]}',
)
"""Calls between agents on: the peer port, projected tokens and their NetworkPolicy rules."""

# One namespace per test, shared by its examples: dry-run stores nothing, so they cannot collide.
EXAMPLES = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def client(kube: Kube) -> dynamic.DynamicClient:
    return dynamic.DynamicClient(kube.api_client())  # type: ignore[no-untyped-call]


def dry_run_apply(client: dynamic.DynamicClient, obj: dict[str, Any]) -> None:
    resource = client.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
    meta = obj["metadata"]
    try:
        client.server_side_apply(  # type: ignore[no-untyped-call]
            resource,
            body=apply_patch_body(obj),
            name=meta["name"],
            namespace=meta["namespace"],
            field_manager="agentfleet",
            dry_run="All",
        )
    except ApiException as err:
        pytest.fail(f"API server rejected {obj['kind']} {meta['name']}: {err.body}\n{obj}")


@EXAMPLES
@given(data=st.data())
def test_rendered_objects_pass_server_side_dry_run(
    client: dynamic.DynamicClient, namespace: str, data: st.DataObject
) -> None:
    agent = data.draw(agent_deployments(namespace=namespace), label="agent")
    replicas = data.draw(st.none() | st.integers(0, 5), label="replicas")
    settings_ = data.draw(st.sampled_from([RenderSettings(), PEERS]), label="settings")
    rendered = render(agent, settings_, replicas=replicas)
    for obj in [*rendered.objects, render_controller_revision(agent, rendered, 1)]:
        dry_run_apply(client, obj)


@EXAMPLES
@given(data=st.data())
def test_generated_specs_are_accepted_by_the_crd(
    crds_installed: Kube, client: dynamic.DynamicClient, namespace: str, data: st.DataObject
) -> None:
    """Keeps the shared strategy honest: what it calls valid, the CRD (with its CEL) accepts."""
    dry_run_apply(client, manifest(data.draw(agent_deployments(namespace=namespace), label="agent")))
