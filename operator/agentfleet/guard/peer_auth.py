"""Who is calling the peer port: Kubernetes ServiceAccount tokens, verified offline.

A caller's guard presents a projected ServiceAccount token whose audience names this agent
(``agentfleet.dev/agent/<namespace>/<callee>``). The kubelet mints it for the caller's pod, and
only a pod whose spec asks for that audience gets one -- the operator asks only for the callees
in ``permissions.subAgents``, after the policy check, and mounts it into the guard container
alone. This module checks such a token against the cluster's signing keys (the issuer's JWKS,
rendered into the guard's config), so no call to the API server is needed per request:

- signature, with the key its ``kid`` names, by an asymmetric algorithm only (``alg: none`` and
  HMAC are refused, so a public key can never be used as a shared secret);
- ``iss`` is the cluster's issuer, ``aud`` contains exactly this agent's audience, ``exp`` is in
  the future and the token lives at most ``MAX_LIFETIME``;
- the ``kubernetes.io`` claims: the caller's namespace is this agent's, and its ServiceAccount is
  an agent's (``<agent>-agent``, the operator's naming), consistent with ``sub``.

Pure: no I/O; ``now`` is a parameter so the tests can age tokens.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import jwt

from agentfleet.api.guardconfig import PeerAuth

ALGORITHMS = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512")
"""Asymmetric algorithms the API server may sign with (it uses RS256 or ES256)."""
MAX_TOKEN_BYTES = 16 * 1024
"""Longest token looked at (a projected token is about 1 KiB)."""
MAX_LIFETIME = 48 * 3600
"""Longest ``exp - iat`` accepted: projected tokens for an audience are short-lived and rotated
by the kubelet; a long-lived one (a legacy Secret token has no ``exp`` at all) is refused."""
AGENT_SA_SUFFIX = "-agent"
"""The operator names an agent's ServiceAccount ``<agent>-agent`` (``render.children``)."""
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class PeerAuthError(Exception):
    """A caller that is not let in: ``status`` 401 (no valid token) or 403 (a valid token of
    someone who may not call), ``reason`` a stable code for metrics and the audit trail."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message


@dataclass(frozen=True, slots=True)
class Caller:
    """A verified caller."""

    namespace: str
    service_account: str
    agent: str
    """The calling AgentDeployment (its ServiceAccount's name without ``-agent``)."""
    pod: str | None
    expires: int


class Verifier:
    """Checks tokens against one issuer's keys for one audience and namespace."""

    def __init__(self, auth: PeerAuth, namespace: str) -> None:
        self.issuer = auth.issuer
        self.audience = auth.audience
        self.namespace = namespace
        self.leeway = auth.leeway
        try:
            keys = jwt.PyJWKSet.from_dict(json.loads(auth.jwks))
        except (ValueError, jwt.PyJWTError) as exc:
            raise ValueError(f"peer auth: the JWKS cannot be used: {exc}") from None
        self._keys: dict[str | None, jwt.PyJWK] = {}
        for key in keys.keys:
            if key.key_type == "oct":  # a symmetric key in a public key set would allow forgeries
                continue
            self._keys[key.key_id] = key
        if not self._keys:
            raise ValueError("peer auth: the JWKS has no asymmetric key")

    def _key(self, kid: Any) -> jwt.PyJWK:
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        key = self._keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise PeerAuthError(401, "unknown_key", "the token is signed with a key the cluster does not publish")
        return key

    def verify(self, authorization: str | None, now: float) -> Caller:
        """The caller behind an ``Authorization: Bearer`` header, or ``PeerAuthError``."""
        if not authorization:
            raise PeerAuthError(401, "missing_token", "no Authorization: Bearer token")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise PeerAuthError(401, "missing_token", "the Authorization header is not a Bearer token")
        if len(token) > MAX_TOKEN_BYTES:
            raise PeerAuthError(401, "invalid_token", f"the token is longer than {MAX_TOKEN_BYTES} bytes")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise PeerAuthError(401, "invalid_token", f"the token is not a JWT: {exc}") from None
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise PeerAuthError(401, "invalid_token", f"the token's algorithm {str(alg)[:20]!r} is not accepted")
        key = self._key(header.get("kid"))
        if key.algorithm_name and key.algorithm_name != alg:
            raise PeerAuthError(401, "invalid_token", "the token's algorithm does not match its key")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise PeerAuthError(401, "expired", "the token has expired") from None
        except jwt.InvalidAudienceError:
            raise PeerAuthError(401, "wrong_audience", f"the token's audience is not {self.audience!r}") from None
        except jwt.InvalidIssuerError:
            raise PeerAuthError(401, "wrong_issuer", "the token was not issued by this cluster") from None
        except jwt.InvalidSignatureError:
            raise PeerAuthError(401, "bad_signature", "the token's signature does not verify") from None
        except jwt.PyJWTError as exc:
            raise PeerAuthError(401, "invalid_token", f"the token is not valid: {exc}") from None
        return self._caller(claims, now)

    def _caller(self, claims: dict[str, Any], now: float) -> Caller:
        exp, iat = claims.get("exp"), claims.get("iat")
        if not isinstance(exp, int) or not isinstance(iat, int):
            raise PeerAuthError(401, "invalid_token", "exp and iat must be integers")
        if exp <= now - self.leeway:  # PyJWT checked this against the wall clock; this is our clock
            raise PeerAuthError(401, "expired", "the token has expired")
        if exp - iat > MAX_LIFETIME:
            raise PeerAuthError(401, "invalid_token", f"the token lives longer than {MAX_LIFETIME // 3600}h")
        k8s = claims.get("kubernetes.io")
        if not isinstance(k8s, dict):
            raise PeerAuthError(401, "invalid_token", "the token has no kubernetes.io claims")
        namespace = k8s.get("namespace")
        sa = k8s.get("serviceaccount")
        sa_name = sa.get("name") if isinstance(sa, dict) else None
        if not isinstance(namespace, str) or not isinstance(sa_name, str):
            raise PeerAuthError(401, "invalid_token", "the token names no namespace and ServiceAccount")
        if claims.get("sub") != f"system:serviceaccount:{namespace}:{sa_name}":
            raise PeerAuthError(401, "invalid_token", "the token's subject does not match its ServiceAccount")
        if namespace != self.namespace:
            raise PeerAuthError(
                403, "wrong_namespace", f"callers from namespace {namespace[:63]!r} may not call this agent"
            )
        agent = sa_name.removesuffix(AGENT_SA_SUFFIX)
        if not sa_name.endswith(AGENT_SA_SUFFIX) or not _DNS_LABEL.match(agent) or len(agent) > 63:
            raise PeerAuthError(
                403, "not_an_agent", f"ServiceAccount {sa_name[:253]!r} is not an agent's; only agents may call"
            )
        pod = k8s.get("pod")
        pod_name = pod.get("name") if isinstance(pod, dict) and isinstance(pod.get("name"), str) else None
        return Caller(namespace=namespace, service_account=sa_name, agent=agent, pod=pod_name, expires=exp)
