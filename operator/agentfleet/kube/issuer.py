"""The cluster's service-account issuer and signing keys, for the guards to verify the tokens
agents call each other with (docs/sub-agents.md).

Read from the API server's OIDC discovery endpoints (``/.well-known/openid-configuration`` and
``/openid/v1/jwks``), which Kubernetes lets every ServiceAccount read (the default
``system:service-account-issuer-discovery`` binding). Public keys only: nothing secret is read.
"""

from __future__ import annotations

import json
from typing import Any

from agentfleet.kube.client import Kube, KubeError

MAX_JWKS_BYTES = 64 * 1024
"""A key set larger than this is refused (a cluster publishes a handful of keys)."""


class IssuerError(Exception):
    """The issuer or its keys cannot be read or used; the message says why."""


def parse(discovery: dict[str, Any] | None, jwks: dict[str, Any] | None) -> tuple[str, str]:
    """(issuer, key set as canonical JSON text) from the two documents, checked."""
    issuer = (discovery or {}).get("issuer")
    if not isinstance(issuer, str) or not issuer:
        raise IssuerError("the API server's openid-configuration names no issuer")
    keys = (jwks or {}).get("keys")
    if (
        not isinstance(keys, list)
        or not keys
        or not all(isinstance(k, dict) and k.get("kty") in ("RSA", "EC") for k in keys)
    ):
        raise IssuerError("the API server's JWKS holds no RSA or EC key")
    text = json.dumps({"keys": keys}, sort_keys=True, separators=(",", ":"))
    if len(text) > MAX_JWKS_BYTES:
        raise IssuerError(f"the API server's JWKS is larger than {MAX_JWKS_BYTES} bytes")
    return issuer, text


async def read_issuer(kube: Kube) -> tuple[str, str]:
    """The cluster's issuer and JWKS (``IssuerError`` when they cannot be read)."""
    try:
        discovery = await kube.request("GET", "/.well-known/openid-configuration")
        jwks = await kube.request("GET", "/openid/v1/jwks", accept="application/jwk-set+json")
    except KubeError as exc:
        raise IssuerError(f"cannot read the service-account issuer: {exc}") from None
    return parse(discovery, jwks)
