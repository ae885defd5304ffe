"""Reading the cluster's service-account issuer and keys (pure part)."""

from __future__ import annotations

import json

import pytest

from agentfleet.kube.issuer import MAX_JWKS_BYTES, IssuerError, parse

pytestmark = pytest.mark.unit

KEY = {"kty": "RSA", "kid": "k1", "alg": "RS256", "use": "sig", "n": "AQAB", "e": "AQAB"}


def test_the_issuer_and_its_keys_become_canonical_text() -> None:
    issuer, jwks = parse({"issuer": "https://kubernetes.default.svc"}, {"keys": [KEY]})
    assert issuer == "https://kubernetes.default.svc"
    assert (
        json.loads(jwks) == {"keys": [KEY]}
        and jwks == parse({"issuer": "x"}, {"keys": [dict(reversed(KEY.items()))]})[1]
    )


@pytest.mark.parametrize(
    ("discovery", "jwks", "message"),
    [
        (None, {"keys": [KEY]}, "no issuer"),
        ({"issuer": ""}, {"keys": [KEY]}, "no issuer"),
        ({"issuer": "x"}, None, "no RSA or EC key"),
        ({"issuer": "x"}, {"keys": []}, "no RSA or EC key"),
        ({"issuer": "x"}, {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}, "no RSA or EC key"),
        ({"issuer": "x"}, {"keys": [{**KEY, "n": "A" * MAX_JWKS_BYTES}]}, "larger than"),
    ],
)
def test_unusable_answers_are_refused(
    discovery: dict[str, str] | None, jwks: dict[str, object] | None, message: str
) -> None:
    with pytest.raises(IssuerError, match=message):
        parse(discovery, jwks)
