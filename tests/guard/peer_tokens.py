"""A stand-in for the cluster's service-account issuer: an RSA key, its JWKS, and tokens shaped
like the kubelet's projected ServiceAccount tokens (``kubernetes.io`` claims included)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

ISSUER = "https://kubernetes.default.svc.cluster.local"


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass
class Issuer:
    """One signing key and the JWKS the operator would render for it."""

    key: rsa.RSAPrivateKey = field(default_factory=new_key)
    kid: str = "test-key-1"
    issuer: str = ISSUER

    @property
    def jwks(self) -> str:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        jwk.update(kid=self.kid, use="sig", alg="RS256")
        return json.dumps({"keys": [jwk]})

    def claims(
        self, audience: str, namespace: str = "team-a", service_account: str = "support-agent", ttl: int = 600
    ) -> dict[str, Any]:
        now = int(time.time())
        return {
            "aud": [audience],
            "exp": now + ttl,
            "iat": now,
            "nbf": now,
            "iss": self.issuer,
            "sub": f"system:serviceaccount:{namespace}:{service_account}",
            "kubernetes.io": {
                "namespace": namespace,
                "serviceaccount": {"name": service_account, "uid": "0000-sa"},
                "pod": {"name": f"{service_account}-pod", "uid": "0000-pod"},
            },
        }

    def token(self, audience: str, **claims: Any) -> str:
        """A token as the kubelet would mint it; ``claims`` override (or, as None, remove) fields."""
        body = self.claims(
            audience,
            **{k: claims.pop(k) for k in ("namespace", "service_account", "ttl") if k in claims},
        )
        for name, value in claims.items():
            if value is None:
                body.pop(name, None)
            else:
                body[name] = value
        return jwt.encode(body, self.key, algorithm="RS256", headers={"kid": self.kid})
