"""The checks of calls between agents, as pure functions: token verification (against a
locally generated RSA key), the callee allowlist, depth and fan-out."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest

from agentfleet.api.guardconfig import PeerAuth, SubAgentRoute, peer_audience
from agentfleet.guard.errors import Code, GuardError
from agentfleet.guard.peer_auth import PeerAuthError, Verifier
from agentfleet.guard.peers import Depths, FanOut, check_callee, check_inbound_depth, check_tail, check_task
from tests.guard.peer_tokens import Issuer

pytestmark = pytest.mark.unit

AUDIENCE = peer_audience("team-a", "researcher")


@pytest.fixture(scope="module")
def issuer() -> Issuer:
    return Issuer()


def verifier(issuer: Issuer) -> Verifier:
    return Verifier(PeerAuth(issuer=issuer.issuer, jwks=issuer.jwks, audience=AUDIENCE), "team-a")


def refused(v: Verifier, token: str) -> PeerAuthError:
    with pytest.raises(PeerAuthError) as info:
        v.verify(f"Bearer {token}", time.time())
    return info.value


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def test_a_good_token_names_the_calling_agent(issuer: Issuer) -> None:
    caller = verifier(issuer).verify(f"Bearer {issuer.token(AUDIENCE)}", time.time())
    assert (caller.namespace, caller.service_account, caller.agent) == ("team-a", "support-agent", "support")
    assert caller.pod == "support-agent-pod"


def test_a_token_for_another_callee_or_audience_is_refused(issuer: Issuer) -> None:
    v = verifier(issuer)
    for audience in (peer_audience("team-a", "planner"), peer_audience("team-b", "researcher"), "https://kubernetes"):
        err = refused(v, issuer.token(audience))
        assert (err.status, err.reason) == (401, "wrong_audience"), audience


def test_an_expired_token_is_refused(issuer: Issuer) -> None:
    now = int(time.time())
    err = refused(verifier(issuer), issuer.token(AUDIENCE, exp=now - 120, iat=now - 720, nbf=now - 720))
    assert (err.status, err.reason) == (401, "expired")


def test_a_token_from_another_namespace_or_not_an_agent_is_forbidden(issuer: Issuer) -> None:
    v = verifier(issuer)
    err = refused(v, issuer.token(AUDIENCE, namespace="team-b"))
    assert (err.status, err.reason) == (403, "wrong_namespace")
    for sa in ("default", "support", "Support-agent", "-agent"):
        err = refused(v, issuer.token(AUDIENCE, service_account=sa))
        assert (err.status, err.reason) == (403, "not_an_agent"), sa


def test_forged_signatures_are_refused(issuer: Issuer) -> None:
    v = verifier(issuer)
    impostor = Issuer(kid=issuer.kid)  # another key claiming the cluster's key id
    err = refused(v, impostor.token(AUDIENCE))
    assert (err.status, err.reason) == (401, "bad_signature")
    err = refused(v, Issuer(kid="someone-else").token(AUDIENCE))
    assert (err.status, err.reason) == (401, "unknown_key")
    # A genuine token whose claims were edited (another caller) no longer verifies.
    head, _, sig = issuer.token(AUDIENCE).split(".")
    edited = issuer.claims(AUDIENCE, service_account="admin-agent")
    err = refused(v, f"{head}.{_b64(edited)}.{sig}")
    assert (err.status, err.reason) == (401, "bad_signature")


def test_alg_none_and_hmac_with_the_public_key_are_refused(issuer: Issuer) -> None:
    v = verifier(issuer)
    claims = issuer.claims(AUDIENCE)
    unsigned = f"{_b64({'alg': 'none', 'typ': 'JWT', 'kid': issuer.kid})}.{_b64(claims)}."
    err = refused(v, unsigned)
    assert (err.status, err.reason) == (401, "invalid_token") and "'none'" in err.message
    public_pem = jwt.algorithms.RSAAlgorithm.to_jwk(issuer.key.public_key()).encode()
    hmac = f"{_b64({'alg': 'HS256', 'typ': 'JWT', 'kid': issuer.kid})}.{_b64(claims)}"
    import hashlib
    import hmac as hmac_mod

    sig = base64.urlsafe_b64encode(hmac_mod.new(public_pem, hmac.encode(), hashlib.sha256).digest()).rstrip(b"=")
    err = refused(v, f"{hmac}.{sig.decode()}")
    assert err.status == 401 and "HS256" in err.message


def test_malformed_and_incomplete_tokens_are_refused(issuer: Issuer) -> None:
    v = verifier(issuer)
    for header in (None, "", "Basic abc", "Bearer ", "Bearer not.a.jwt", "Bearer " + "a" * 20000):
        with pytest.raises(PeerAuthError) as info:
            v.verify(header, time.time())
        assert info.value.status == 401, header
    for missing in ("exp", "iss", "sub", "kubernetes.io"):
        assert refused(v, issuer.token(AUDIENCE, **{missing: None})).status == 401, missing
    assert refused(v, issuer.token(AUDIENCE, iss="https://evil.example")).reason == "wrong_issuer"
    assert refused(v, issuer.token(AUDIENCE, sub="system:serviceaccount:team-a:other-agent")).status == 401
    now = int(time.time())
    assert refused(v, issuer.token(AUDIENCE, iat=now, exp=now + 30 * 86400)).reason == "invalid_token"


def test_a_key_set_without_asymmetric_keys_is_unusable() -> None:
    secret = json.dumps({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "x"}]})
    with pytest.raises(ValueError, match="no asymmetric key"):
        Verifier(PeerAuth(issuer="i", jwks=secret, audience="a"), "team-a")
    with pytest.raises(ValueError, match="JWKS"):
        Verifier(PeerAuth(issuer="i", jwks="not json", audience="a"), "team-a")


def code(exc: pytest.ExceptionInfo[GuardError]) -> tuple[int, Code]:
    return exc.value.status, exc.value.code


def test_only_permitted_callees() -> None:
    routes = {"researcher": SubAgentRoute(name="researcher", url="http://r-metrics.team-a.svc:9443", token_file="/t")}
    assert check_callee(routes, "researcher").name == "researcher"
    for name in ("planner", "Researcher", "researcher-2", ""):
        with pytest.raises(GuardError) as info:
            check_callee(routes, name)
        assert code(info) == (403, Code.SUB_AGENT_NOT_PERMITTED)


def test_paths_and_tasks() -> None:
    assert check_tail("v1/chat/completions") == "/v1/chat/completions"
    for bad in ("../metrics", "v1/../../x", "v1/%2e%2e", "a b", "x" * 600):
        with pytest.raises(GuardError):
            check_tail(bad)
    assert check_task("t-1") == "t-1"
    for bad_task in (None, "", "t" * 257):
        with pytest.raises(GuardError):
            check_task(bad_task)


def test_inbound_depth_is_bounded() -> None:
    assert check_inbound_depth("1", 3) == 1 and check_inbound_depth("3", 3) == 3
    with pytest.raises(GuardError) as info:
        check_inbound_depth("4", 3)
    assert code(info) == (403, Code.SUB_AGENT_DEPTH)
    for bad in (None, "", "0", "-1", "1.5", "x", "9999"):
        with pytest.raises(GuardError):
            check_inbound_depth(bad, 3)


def test_the_depth_an_agent_acts_at_outlives_the_call_it_served() -> None:
    """An agent cannot shed depth by answering first and calling afterwards."""
    d = Depths(window=60.0)
    assert d.current(0.0) == 0
    d.enter(2, 1.0)
    d.enter(1, 1.0)
    assert d.current(2.0) == 2
    d.leave(2, 3.0)
    assert d.current(50.0) == 2, "served at depth 2 within the window"
    d.leave(1, 4.0)
    assert d.current(63.5) == 1 and d.current(64.5) == 0
    d.enter(3, 100.0)
    assert d.current(1000.0) == 3, "a call in flight counts however long it lasts"


def test_fan_out_is_counted_per_task_and_bounded_in_memory() -> None:
    f = FanOut(limit=2, capacity=3)
    assert f.take("a") == 1 and f.take("a") == 2
    with pytest.raises(GuardError) as info:
        f.take("a")
    assert code(info) == (429, Code.SUB_AGENT_FAN_OUT)
    assert f.take("b") == 1
    for other in ("c", "d", "e"):
        f.take(other)
    assert len(f._calls) == 3
