"""DPoP (RFC 9449) at the resource server: every check of section 4.3 broken alone, replay,
nonces, the schemes each mode takes, challenges and metadata."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import anyio
import pytest
from clocks import FakeClock as Clock

from bearerguard import AuthError, ConfigurationError, ResourceServer
from bearerguard.dpop import DPoPKey, NonceSource, normalize_url, thumbprint
from bearerguard.replay import MemoryReplayStore
from bearerguard.request import RequestView
from bearerguard.rules import Requirement
from bearerguard.signing import b64url
from bearerguard.testing import LocalIssuer

AUDIENCE = "https://api.test"
URL = "https://api.test/products"
NOW = 1_800_000_000.0


@pytest.fixture
def clock() -> Clock:
    return Clock(NOW)


@pytest.fixture
def issuer(clock: Clock) -> LocalIssuer:
    return LocalIssuer("https://issuer.test/oidc", audience=AUDIENCE, clock=clock)


@pytest.fixture(scope="module")
def key() -> DPoPKey:
    return DPoPKey.generate("ES256")


def server(issuer: LocalIssuer, mode: str = "required", **kwargs: Any) -> ResourceServer:
    return issuer.resource_server(dpop=mode, **kwargs)


def bound(issuer: LocalIssuer, key: DPoPKey, scopes: str = "read") -> str:
    return issuer.mint(scopes, claims={"cnf": {"jkt": key.jkt}})


def request(
    rs: ResourceServer,
    authorization: list[str],
    proofs: list[str],
    *,
    method: str = "GET",
    url: str = URL,
    requirement: Requirement | None = None,
) -> Any:
    """The token, or the AuthError the request is refused with."""
    view = RequestView(method, authorization, url=url, dpop=proofs)
    try:
        token = rs.authorize(view, requirement or Requirement(scopes=("read",)))
    except AuthError as exc:
        return exc
    return token, view.reply


def refused(result: Any) -> AuthError:
    assert isinstance(result, AuthError), result
    return result


def dpop(token: str) -> list[str]:
    return [f"DPoP {token}"]


# -- a good proof passes; each check broken alone fails --------------------------------------------


def test_a_bound_token_with_a_fresh_proof_is_accepted(
    issuer: LocalIssuer, key: DPoPKey, clock: Clock
) -> None:
    rs = server(issuer)
    token = bound(issuer, key)
    result = request(rs, dpop(token), [key.proof("GET", URL, access_token=token, iat=clock.now)])
    assert not isinstance(result, AuthError), result
    access, reply = result
    assert access.jkt == key.jkt
    assert reply is None


def broken_proofs(
    key: DPoPKey, token: str, now: float, url: str = URL
) -> dict[str, tuple[Callable[[], list[str]], str]]:
    """name -> (the DPoP header values for a GET of ``url``, the error it is refused with)."""
    other = DPoPKey.generate("ES256")
    parts = urlsplit(url)
    other_scheme = "http" if parts.scheme == "https" else "https"

    def proof(**kwargs: Any) -> str:
        kwargs.setdefault("access_token", token)
        kwargs.setdefault("iat", now)
        method = kwargs.pop("method", "GET")
        return key.proof(method, kwargs.pop("url", url), **kwargs)

    def signed_by_other_key() -> str:
        h, p, _ = proof().split(".")
        _, _, s = other.proof("GET", url, access_token=token, iat=now).split(".")
        return f"{h}.{p}.{s}"

    private = {**key.jwk, "d": b64url(b"\x01" * 32)}
    invalid = "invalid_dpop_proof"
    return {
        "no DPoP header": (lambda: [], invalid),
        "two DPoP headers": (lambda: [proof(), proof()], invalid),
        "two proofs in one header": (lambda: [proof() + ", " + proof()], invalid),
        "not a JWT": (lambda: ["not-a-jwt"], invalid),
        "empty": (lambda: [""], invalid),
        "typ JWT": (lambda: [proof(header={"typ": "JWT"})], invalid),
        "no typ": (lambda: [proof(header={"typ": None})], invalid),
        "alg none": (lambda: [_unsigned(proof())], invalid),
        "alg HS256": (lambda: [_hs256(token, now, key, url)], invalid),
        "alg not allowed (ES512)": (
            lambda: [DPoPKey.generate("ES512").proof("GET", url, access_token=token, iat=now)],
            invalid,
        ),
        "no jwk": (lambda: [proof(header={"jwk": None})], invalid),
        "jwk with private members": (lambda: [proof(header={"jwk": private})], invalid),
        "jwk not a key": (lambda: [proof(header={"jwk": {"kty": "EC", "crv": "P-256"}})], invalid),
        "signature by another key": (lambda: [signed_by_other_key()], invalid),
        "no jti": (lambda: [proof(claims={"jti": None})], invalid),
        "jti not a string": (lambda: [proof(claims={"jti": 7})], invalid),
        "jti too long": (lambda: [proof(claims={"jti": "j" * 300})], invalid),
        "no htm": (lambda: [proof(claims={"htm": None})], invalid),
        "no htu": (lambda: [proof(claims={"htu": None})], invalid),
        "no iat": (lambda: [proof(claims={"iat": None})], invalid),
        "iat a string": (lambda: [proof(claims={"iat": str(int(now))})], invalid),
        "another method": (lambda: [proof(method="POST")], invalid),
        "another URL": (lambda: [proof(url=url + "/orders")], invalid),
        "another host": (lambda: [proof(url=url.replace(parts.netloc, "evil.test"))], invalid),
        "another scheme": (
            lambda: [proof(url=url.replace(parts.scheme, other_scheme, 1))],
            invalid,
        ),
        "htu not a URL": (lambda: [proof(claims={"htu": "products"})], invalid),
        "61 s old": (lambda: [proof(iat=now - 61)], invalid),
        "6 s in the future": (lambda: [proof(iat=now + 6)], invalid),
        "no ath": (lambda: [proof(access_token=None)], invalid),
        "ath of another token": (lambda: [proof(claims={"ath": b64url(b"x" * 32)})], invalid),
        "key is not cnf.jkt": (
            lambda: [other.proof("GET", url, access_token=token, iat=now)],
            "invalid_token",
        ),
        "oversized": (lambda: [proof(claims={"pad": "x" * 9000})], invalid),
    }


def _unsigned(proof: str) -> str:
    import base64
    import json

    h, p, _ = proof.split(".")
    header = json.loads(base64.urlsafe_b64decode(h + "=="))
    header["alg"] = "none"
    return b64url(json.dumps(header).encode()) + "." + p + "."


def _hs256(token: str, now: float, key: DPoPKey, url: str) -> str:
    import jwt

    ath = b64url(hashlib.sha256(token.encode()).digest())
    claims = {"jti": "x", "htm": "GET", "htu": url, "iat": int(now), "ath": ath}
    headers = {"typ": "dpop+jwt", "jwk": key.jwk}
    return jwt.encode(claims, "s" * 32, algorithm="HS256", headers=headers)


# What each refusal says: each check fails for its own reason, not for an earlier one.
SAYS = {
    "no DPoP header": "exactly one DPoP header",
    "two DPoP headers": "exactly one DPoP header",
    "two proofs in one header": "must hold one JWT",
    "not a JWT": "not a well-formed JWT",
    "empty": "must hold one JWT",
    "typ JWT": "typ",
    "no typ": "typ",
    "alg none": "not a well-formed JWT",
    "alg HS256": "alg must be one of",
    "alg not allowed (ES512)": "alg must be one of",
    "no jwk": "no jwk",
    "jwk with private members": "must be a public key",
    "jwk not a key": "not a usable public key",
    "signature by another key": "signature does not verify",
    "no jti": "needs jti",
    "jti not a string": "needs jti",
    "jti too long": "jti is too long",
    "no htm": "needs htm",
    "no htu": "needs htu",
    "no iat": "needs iat",
    "iat a string": "needs iat",
    "another method": "another method",
    "another URL": "another URL",
    "another host": "another URL",
    "another scheme": "another URL",
    "htu not a URL": "not an http(s) URL",
    "61 s old": "too old",
    "6 s in the future": "from the future",
    "no ath": "another access token",
    "ath of another token": "another access token",
    "key is not cnf.jkt": "bound to another key",
    "oversized": "must hold one JWT",
}


def test_each_check_broken_alone_is_refused(
    issuer: LocalIssuer, key: DPoPKey, clock: Clock
) -> None:
    token = bound(issuer, key)
    cases = broken_proofs(key, token, clock.now)
    assert set(cases) == set(SAYS)
    for name, (proofs, error) in cases.items():
        exc = refused(request(server(issuer), dpop(token), proofs()))
        assert SAYS[name] in exc.description, (name, exc.description)
        assert exc.status_code == 401, name
        assert exc.to_dict()["error"] == error, name
        challenge = exc.www_authenticate
        assert challenge.startswith(f'DPoP realm="{AUDIENCE}", error="{error}"'), name
        assert 'algs="ES256 ES384 EdDSA RS256 PS256"' in challenge, name


def test_the_window_edges(issuer: LocalIssuer, key: DPoPKey, clock: Clock) -> None:
    rs = server(issuer)
    token = bound(issuer, key)
    for iat in (clock.now - 60, clock.now + 5):
        proof = key.proof("GET", URL, access_token=token, iat=iat)
        assert not isinstance(request(rs, dpop(token), [proof]), AuthError), iat


def test_htu_is_compared_after_normalization(
    issuer: LocalIssuer, key: DPoPKey, clock: Clock
) -> None:
    rs = server(issuer)
    token = bound(issuer, key)
    for htu in (
        "HTTPS://API.TEST/products",
        "https://api.test:443/products",
        "https://api.test/%70roducts",
        "https://api.test/a/../products",
        "https://api.test/products?page=2",  # query and fragment are not part of htu
    ):
        proof = key.proof("GET", URL, access_token=token, iat=clock.now, claims={"htu": htu})
        assert not isinstance(request(rs, dpop(token), [proof]), AuthError), htu
    proof = key.proof("GET", URL, access_token=token, iat=clock.now)
    assert not isinstance(
        request(rs, dpop(token), [proof], url="https://api.test/products?page=2#x"), AuthError
    )
    assert (
        normalize_url("https://API.test:8443/%7euser/./a/%2f")
        == "https://api.test:8443/~user/a/%2F"
    )


def test_a_proof_is_accepted_once(issuer: LocalIssuer, key: DPoPKey, clock: Clock) -> None:
    rs = server(issuer)
    token = bound(issuer, key)
    proof = key.proof("GET", URL, access_token=token, iat=clock.now)
    assert not isinstance(request(rs, dpop(token), [proof]), AuthError)
    exc = refused(request(rs, dpop(token), [proof]))
    assert exc.reason.value == "dpop_replay"
    assert exc.to_dict()["error"] == "invalid_dpop_proof"
    # The same jti for another URL or method is another proof (the key hashes jti, htm, htu).
    claims = {"jti": "same"}
    first = key.proof("GET", URL, access_token=token, iat=clock.now, claims=claims)
    other_url = "https://api.test/products/1"
    second = key.proof("GET", other_url, access_token=token, iat=clock.now, claims=claims)
    assert not isinstance(request(rs, dpop(token), [first]), AuthError)
    assert not isinstance(request(rs, dpop(token), [second], url=other_url), AuthError)


def test_replays_are_refused_by_the_async_face_and_across_servers_sharing_a_store(
    issuer: LocalIssuer, key: DPoPKey, clock: Clock
) -> None:
    store = MemoryReplayStore()
    replica_a = server(issuer, dpop_replay_store=store)
    replica_b = server(issuer, dpop_replay_store=store)
    token = bound(issuer, key)
    proof = key.proof("GET", URL, access_token=token, iat=clock.now)

    async def both() -> tuple[Any, Any]:
        view_a = RequestView("GET", dpop(token), url=URL, dpop=[proof])
        view_b = RequestView("GET", dpop(token), url=URL, dpop=[proof])
        first = await replica_a.authorize_async(view_a, Requirement())
        try:
            await replica_b.authorize_async(view_b, Requirement())
        except AuthError as exc:
            return first, exc
        return first, None

    first, second = anyio.run(both)
    assert first is not None
    assert second is not None
    assert second.reason.value == "dpop_replay"


# -- schemes and modes ---------------------------------------------------------------------------


def test_a_bound_token_as_bearer_is_refused_in_every_mode(
    issuer: LocalIssuer, key: DPoPKey
) -> None:
    token = bound(issuer, key)
    for mode in ("off", "allowed", "required"):
        rs = server(issuer, mode)
        for _ in range(2):  # verified, then from the cache
            exc = refused(request(rs, [f"Bearer {token}"], []))
            assert exc.status_code == 401, mode
            assert exc.to_dict()["error"] == "invalid_token", mode
            assert exc.reason.value == "dpop_binding", mode
        with pytest.raises(AuthError):
            rs.authenticate(f"Bearer {token}")
        with pytest.raises(AuthError):
            rs.verify_token(token)


def test_an_unbound_token_with_the_dpop_scheme_is_refused(
    issuer: LocalIssuer, key: DPoPKey, clock: Clock
) -> None:
    token = issuer.mint("read")
    proof = key.proof("GET", URL, access_token=token, iat=clock.now)
    exc = refused(request(server(issuer, "allowed"), dpop(token), [proof]))
    assert exc.to_dict()["error"] == "invalid_token"
    assert exc.reason.value == "dpop_binding"
    assert exc.www_authenticate.startswith("DPoP ")  # the challenge of the scheme it used


def test_required_refuses_bearer_allowed_takes_both_off_takes_bearer_only(
    issuer: LocalIssuer, key: DPoPKey, clock: Clock
) -> None:
    plain = issuer.mint("read")
    exc = refused(request(server(issuer, "required"), [f"Bearer {plain}"], []))
    assert exc.reason.value == "dpop_binding"
    assert exc.www_authenticate.startswith(f'DPoP realm="{AUDIENCE}", error="invalid_token"')
    assert "Bearer" not in exc.www_authenticate
    assert not isinstance(request(server(issuer, "allowed"), [f"Bearer {plain}"], []), AuthError)
    token = bound(issuer, key)
    proof = key.proof("GET", URL, access_token=token, iat=clock.now)
    off = refused(request(server(issuer, "off"), dpop(token), [proof]))
    assert off.reason.value == "missing_token"  # another scheme, as before DPoP existed
    assert off.www_authenticate.startswith("Bearer ")


def test_both_challenges_when_both_schemes_are_allowed(issuer: LocalIssuer) -> None:
    rs = server(issuer, "allowed")
    exc = refused(request(rs, [], []))
    metadata = 'resource_metadata="https://api.test/.well-known/oauth-protected-resource"'
    algs = 'algs="ES256 ES384 EdDSA RS256 PS256"'
    assert exc.www_authenticate == (  # no credentials: Bearer's first, as before DPoP
        f'Bearer realm="{AUDIENCE}", scope="read", {metadata}, '
        f'DPoP realm="{AUDIENCE}", scope="read", {metadata}, {algs}'
    )


def test_insufficient_scope_on_a_dpop_request_names_the_scopes_on_its_challenge(
    issuer: LocalIssuer, key: DPoPKey, clock: Clock
) -> None:
    token = bound(issuer, key, "other")
    proof = key.proof("GET", URL, access_token=token, iat=clock.now)
    exc = refused(request(server(issuer, "allowed"), dpop(token), [proof]))
    assert exc.status_code == 403
    assert exc.www_authenticate.startswith(
        f'DPoP realm="{AUDIENCE}", error="insufficient_scope", error_description='
    )
    assert 'scope="read"' in exc.www_authenticate


def test_a_cached_token_still_needs_a_proof_every_time(
    issuer: LocalIssuer, key: DPoPKey, clock: Clock
) -> None:
    rs = server(issuer)
    token = bound(issuer, key)
    for _ in range(3):
        proof = key.proof("GET", URL, access_token=token, iat=clock.now)
        assert not isinstance(request(rs, dpop(token), [proof]), AuthError)
    assert refused(request(rs, dpop(token), [])).to_dict()["error"] == "invalid_dpop_proof"


def test_authenticate_alone_cannot_check_a_proof(issuer: LocalIssuer, key: DPoPKey) -> None:
    rs = server(issuer, "allowed")
    with pytest.raises(AuthError) as caught:
        rs.authenticate(f"DPoP {bound(issuer, key)}")
    assert caught.value.to_dict()["error"] == "invalid_dpop_proof"


# -- nonces ----------------------------------------------------------------------------------------


def test_nonces_are_asked_for_then_accepted_and_refreshed_near_expiry(
    issuer: LocalIssuer, key: DPoPKey, clock: Clock
) -> None:
    rs = server(issuer, dpop_nonce=True, dpop_nonce_secret="s" * 32)
    token = bound(issuer, key)
    exc = refused(
        request(rs, dpop(token), [key.proof("GET", URL, access_token=token, iat=clock.now)])
    )
    assert exc.to_dict()["error"] == "use_dpop_nonce"
    assert exc.status_code == 401
    nonce = exc.headers["DPoP-Nonce"]
    assert exc.www_authenticate.startswith('DPoP realm="https://api.test", error="use_dpop_nonce"')
    proof = key.proof("GET", URL, access_token=token, iat=clock.now, nonce=nonce)
    _, reply = request(rs, dpop(token), [proof])
    assert reply is None  # a current nonce: nothing new to send
    clock.now += 300  # the nonce's step is over: still accepted, and a fresh one comes back
    proof = key.proof("GET", URL, access_token=token, iat=clock.now, nonce=nonce)
    _, reply = request(rs, dpop(token), [proof])
    assert reply is not None
    assert reply["DPoP-Nonce"] != nonce
    clock.now += 300  # two steps on: expired
    proof = key.proof("GET", URL, access_token=token, iat=clock.now, nonce=nonce)
    assert refused(request(rs, dpop(token), [proof])).to_dict()["error"] == "use_dpop_nonce"


def test_replicas_with_one_secret_accept_each_others_nonces(clock: Clock) -> None:
    a, b = (
        NonceSource("shared secret of 32 bytes or so!"),
        NonceSource("shared secret of 32 bytes or so!"),
    )
    stranger = NonceSource()
    nonce = a.current(clock.now)
    assert b.check(nonce, clock.now) is True
    assert stranger.check(nonce, clock.now) is None
    for bad in ("", "x" * 32, nonce[:-1] + ("A" if nonce[-1] != "A" else "B"), None, 5):
        assert a.check(bad, clock.now) is None


# -- metadata and configuration ----------------------------------------------------------------


def test_metadata_names_the_proof_algorithms_and_whether_dpop_is_required(
    issuer: LocalIssuer,
) -> None:
    required = server(issuer, "required").metadata()
    assert required is not None
    document = required.document()
    assert document["dpop_signing_alg_values_supported"] == [
        "ES256",
        "ES384",
        "EdDSA",
        "RS256",
        "PS256",
    ]
    assert document["dpop_bound_access_tokens_required"] is True
    allowed = server(issuer, "allowed", dpop_algorithms=["ES256"]).metadata()
    assert allowed is not None
    assert allowed.document()["dpop_signing_alg_values_supported"] == ["ES256"]
    assert "dpop_bound_access_tokens_required" not in allowed.document()
    off = server(issuer, "off").metadata()
    assert off is not None
    assert "dpop_signing_alg_values_supported" not in off.document()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"dpop": "sometimes"},
        {"dpop": "required", "dpop_algorithms": ["HS256"]},
        {"dpop": "required", "dpop_algorithms": []},
        {"dpop": "required", "dpop_max_age": 0},
        {"dpop": "off", "dpop_nonce": True},
        {"dpop": "required", "dpop_nonce": True, "dpop_nonce_secret": "short"},
        {"dpop": "required", "dpop_replay_store": object()},
    ],
)
def test_bad_dpop_configuration_is_refused(issuer: LocalIssuer, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        issuer.resource_server(**kwargs)


def test_thumbprint_is_rfc_7638s_example() -> None:
    # RFC 7638 section 3.1's RSA key and its thumbprint.
    jwk = {
        "kty": "RSA",
        "n": (
            "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc"
            "_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQ"
            "R0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bF"
            "TWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
        ),
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }
    assert thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


# -- a fresh nonce rides on the successful response, through each adapter ------------------------


def nonce_apps(rs: ResourceServer) -> dict[str, Any]:
    from flask import Flask
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from bearerguard.asgi import BearerAuthMiddleware
    from bearerguard.flask import BearerGuard
    from bearerguard.starlette import Protect
    from bearerguard.wsgi import BearerAuthMiddleware as WSGIMiddleware

    def hello(request: Any) -> PlainTextResponse:
        return PlainTextResponse("hello")

    asgi = Starlette(routes=[Route("/products", hello)])
    asgi.add_middleware(BearerAuthMiddleware, server=rs)
    decorated = Starlette(routes=[Route("/products", Protect(rs)()(hello))])

    flask_app = Flask("nonces")
    guard = BearerGuard(flask_app, server=rs)
    flask_app.add_url_rule("/products", "products", guard.require()(lambda: "hello"))
    wsgi = Flask("wsgi-nonces")
    wsgi.add_url_rule("/products", "products", lambda: "hello")
    wsgi.wsgi_app = WSGIMiddleware(wsgi.wsgi_app, server=rs)  # type: ignore[method-assign]

    def via_testclient(app: Any) -> Any:
        client = TestClient(app, base_url="https://api.test")
        return lambda headers: client.get("/products", headers=headers)

    def via_flask(app: Any) -> Any:
        client = app.test_client()
        return lambda headers: client.get("/products", headers=headers, base_url="https://api.test")

    return {
        "asgi middleware": via_testclient(asgi),
        "starlette decorator": via_testclient(decorated),
        "flask guard": via_flask(flask_app),
        "wsgi middleware": via_flask(wsgi),
    }


def test_every_adapter_asks_for_a_nonce_and_sends_a_fresh_one_near_expiry(
    issuer: LocalIssuer, key: DPoPKey, clock: Clock
) -> None:
    rs = server(issuer, dpop_nonce=True, dpop_nonce_secret="n" * 32)
    token = bound(issuer, key)
    for name, get in nonce_apps(rs).items():
        clock.now = NOW

        def headers(nonce: str | None) -> dict[str, str]:
            proof = key.proof("GET", URL, access_token=token, iat=clock.now, nonce=nonce)
            return {"Authorization": f"DPoP {token}", "DPoP": proof}

        asked = get(headers(None))
        assert asked.status_code == 401, name
        assert 'error="use_dpop_nonce"' in asked.headers["WWW-Authenticate"], name
        nonce = asked.headers["DPoP-Nonce"]
        current = get(headers(nonce))
        assert current.status_code == 200, name
        assert "DPoP-Nonce" not in current.headers, name
        clock.now += 300  # its last step: accepted, with the next one
        late = get(headers(nonce))
        assert late.status_code == 200, name
        assert late.headers["DPoP-Nonce"] not in ("", nonce), name


# -- per route: DPoP only where a route says so ---------------------------------------------------


def test_a_route_can_take_dpop_only_on_a_server_that_allows_both(
    issuer: LocalIssuer, key: DPoPKey, clock: Clock
) -> None:
    from fastapi import FastAPI, Security
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from bearerguard.asgi import BearerAuthMiddleware
    from bearerguard.fastapi import BearerAuth
    from bearerguard.rules import Rule
    from bearerguard.starlette import Protect

    rs = server(issuer, "allowed")

    def hello(request: Any) -> PlainTextResponse:
        return PlainTextResponse("hello")

    by_rule = Starlette(routes=[Route("/products", hello), Route("/open", hello)])
    by_rule.add_middleware(BearerAuthMiddleware, server=rs, rules=[Rule("/products", dpop=True)])
    by_decorator = Starlette(
        routes=[
            Route("/products", Protect(rs)(dpop=True)(hello)),
            Route("/open", Protect(rs)()(hello)),
        ]
    )
    api = FastAPI()
    auth = BearerAuth(rs)

    @api.get("/products", dependencies=[Security(auth.dpop())])
    def products() -> str:
        return "hello"

    @api.get("/open", dependencies=[Security(auth)])
    def open_route() -> str:
        return "hello"

    plain = issuer.mint("read")
    token = bound(issuer, key)
    for name, app in (("rule", by_rule), ("decorator", by_decorator), ("fastapi", api)):
        client = TestClient(app, base_url="https://api.test")
        bearer = client.get("/products", headers={"Authorization": f"Bearer {plain}"})
        assert bearer.status_code == 401, name
        assert "this route takes DPoP-bound tokens only" in bearer.text, name
        assert client.get("/open", headers={"Authorization": f"Bearer {plain}"}).status_code == 200
        proof = key.proof("GET", URL, access_token=token, iat=clock.now)
        headers = {"Authorization": f"DPoP {token}", "DPoP": proof}
        assert client.get("/products", headers=headers).status_code == 200, name


def test_a_dpop_only_route_on_a_server_without_dpop_is_a_start_up_error(
    issuer: LocalIssuer,
) -> None:
    from starlette.applications import Starlette

    from bearerguard.asgi import BearerAuthMiddleware
    from bearerguard.fastapi import BearerAuth
    from bearerguard.rules import Rule
    from bearerguard.starlette import Protect

    rs = server(issuer, "off")
    with pytest.raises(ConfigurationError, match="dpop"):
        BearerAuthMiddleware(Starlette(), server=rs, rules=[Rule("/x", dpop=True)])
    with pytest.raises(ConfigurationError, match="dpop"):
        Protect(rs)(dpop=True)
    with pytest.raises(ConfigurationError, match="dpop"):
        BearerAuth(rs).dpop()
    with pytest.raises(ValueError, match="public"):
        Rule("/x", public=True, dpop=True)


# -- from an attacker's review: each of these was a way through or a 500 -------------------------


def test_a_bearer_token_a_middleware_let_through_is_refused_by_a_dpop_only_route(
    issuer: LocalIssuer,
) -> None:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from bearerguard.asgi import BearerAuthMiddleware
    from bearerguard.starlette import Protect

    rs = server(issuer, "allowed")

    def hello(request: Any) -> PlainTextResponse:
        return PlainTextResponse("hello")

    app = Starlette(routes=[Route("/products", Protect(rs)("read", dpop=True)(hello))])
    app.add_middleware(BearerAuthMiddleware, server=rs)  # lets Bearer through, stores the token
    client = TestClient(app, base_url="https://api.test")
    response = client.get("/products", headers={"Authorization": f"Bearer {issuer.mint('read')}"})
    assert response.status_code == 401
    assert "takes DPoP-bound tokens only" in response.text


def test_a_host_header_cannot_move_the_wsgi_url_a_proof_is_compared_with(
    issuer: LocalIssuer, key: DPoPKey, clock: Clock
) -> None:
    from flask import Flask

    from bearerguard.wsgi import BearerAuthMiddleware as WSGIMiddleware

    rs = server(issuer)
    app = Flask("hosts")
    app.add_url_rule("/admin", "admin", lambda: "admin")
    app.wsgi_app = WSGIMiddleware(app.wsgi_app, server=rs)  # type: ignore[method-assign]
    token = bound(issuer, key)
    proof = key.proof("GET", "http://api.test/public", access_token=token, iat=clock.now)
    for host in ("api.test/public?", "api.test/public#", "api.test/public"):
        response = app.test_client().get(
            "/admin", headers={"Host": host, "Authorization": f"DPoP {token}", "DPoP": proof}
        )
        assert response.status_code == 401, host


def test_dpop_origins_pin_htu_to_the_apis_own_names(
    issuer: LocalIssuer, key: DPoPKey, clock: Clock
) -> None:
    rs = server(issuer, dpop_origins=["https://api.test"])
    token = bound(issuer, key)
    # A proof made for another API, replayed here with its Host: refused.
    elsewhere = key.proof(
        "GET", "https://other.example/products", access_token=token, iat=clock.now
    )
    exc = refused(request(rs, dpop(token), [elsewhere], url="https://other.example/products"))
    assert "another URL" in exc.description
    # Behind a load balancer that rewrites Host: the path is what is compared.
    proof = key.proof("GET", URL, access_token=token, iat=clock.now)
    assert not isinstance(
        request(rs, dpop(token), [proof], url="http://10.0.0.7:8000/products"), AuthError
    )
    with pytest.raises(ConfigurationError):
        issuer.resource_server(dpop="required", dpop_origins=["https://api.test/path"])


@pytest.mark.parametrize(
    "claims",
    [
        {"ath": "\\u00e9"},
        {"jti": "\\ud800"},
        {"htu": "https://api.test/\\ud800"},
        {"jti": "\\u00e9"},
    ],
)
def test_non_ascii_members_are_refused_not_a_500(
    issuer: LocalIssuer, clock: Clock, claims: dict[str, str]
) -> None:
    import json

    decoded = {k: json.loads(f'"{v}"') for k, v in claims.items()}
    holder = DPoPKey.generate()
    token = bound(issuer, holder)
    # By the attacker's own key (no private key of the victim's), and by the holder's.
    for signer in (DPoPKey.generate(), holder):
        proof = signer.proof("GET", URL, access_token=token, iat=clock.now, claims=decoded)
        exc = refused(request(server(issuer), dpop(token), [proof]))
        assert exc.status_code == 401

        async def run(proof: str = proof) -> Any:
            view = RequestView("GET", dpop(token), url=URL, dpop=[proof])
            try:
                return await server(issuer).authorize_async(view, Requirement())
            except AuthError as error:
                return error

        assert refused(anyio.run(run)).status_code == 401


def test_a_full_memory_store_refuses_new_proofs_rather_than_forget_a_live_one(
    issuer: LocalIssuer, key: DPoPKey, clock: Clock
) -> None:
    store = MemoryReplayStore(maxsize=2, clock=clock)
    rs = server(issuer, dpop_replay_store=store)
    token = bound(issuer, key)
    victim = key.proof("GET", URL, access_token=token, iat=clock.now)
    assert not isinstance(request(rs, dpop(token), [victim]), AuthError)
    assert not isinstance(
        request(rs, dpop(token), [key.proof("GET", URL, access_token=token, iat=clock.now)]),
        AuthError,
    )
    flood = refused(
        request(rs, dpop(token), [key.proof("GET", URL, access_token=token, iat=clock.now)])
    )
    assert flood.status_code == 503
    assert refused(request(rs, dpop(token), [victim])).reason.value == "dpop_replay"
    clock.now += 62  # both expired: room again
    assert not isinstance(
        request(rs, dpop(token), [key.proof("GET", URL, access_token=token, iat=clock.now)]),
        AuthError,
    )


def test_a_proof_is_remembered_as_long_as_it_could_be_accepted(
    issuer: LocalIssuer, key: DPoPKey, clock: Clock
) -> None:
    rs = server(issuer, dpop_replay_store=MemoryReplayStore(clock=clock))
    token = bound(issuer, key)
    ahead = key.proof("GET", URL, access_token=token, iat=clock.now + 5)
    assert not isinstance(request(rs, dpop(token), [ahead]), AuthError)
    clock.now += 64.5  # iat + 60 is still ahead: the proof is still acceptable, so remembered
    assert refused(request(rs, dpop(token), [ahead])).reason.value == "dpop_replay"


def test_one_clients_jti_cannot_use_up_anothers(issuer: LocalIssuer, clock: Clock) -> None:
    rs = server(issuer)
    for _ in range(2):
        key = DPoPKey.generate()
        token = bound(issuer, key)
        proof = key.proof("GET", URL, access_token=token, iat=clock.now, claims={"jti": "1"})
        assert not isinstance(request(rs, dpop(token), [proof]), AuthError)


def test_proofs_and_htus_have_their_own_small_bounds(
    issuer: LocalIssuer, key: DPoPKey, clock: Clock
) -> None:
    rs = server(issuer, max_token_length=1 << 20)
    token = bound(issuer, key)
    big = key.proof("GET", URL, access_token=token, iat=clock.now, claims={"pad": "x" * 9000})
    assert "hold one JWT" in refused(request(rs, dpop(token), [big])).description
    long_url = URL + "/" + "a" * 3000
    proof = key.proof("GET", long_url, access_token=token, iat=clock.now)
    assert "too long" in refused(request(rs, dpop(token), [proof], url=long_url)).description


def test_a_redis_store_without_the_faces_client_is_a_start_up_error(issuer: LocalIssuer) -> None:
    from flask import Flask

    from bearerguard.replay import RedisReplayStore
    from bearerguard.wsgi import BearerAuthMiddleware as WSGIMiddleware

    rs = server(issuer, dpop_replay_store=RedisReplayStore(async_client=object()))
    with pytest.raises(ConfigurationError, match="sync"):
        WSGIMiddleware(Flask("x").wsgi_app, server=rs)


def test_a_public_mcp_endpoint_checks_a_dpop_request_for_a_scoped_tool(
    issuer: LocalIssuer, key: DPoPKey, clock: Clock
) -> None:
    import json

    from starlette.testclient import TestClient

    from bearerguard.mcp import MCPGuard

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ran"})

    rs = server(issuer, "allowed")
    guard = MCPGuard(app, server=rs, public=["/mcp"], tools={"add": "write"})
    token = bound(issuer, key, "write")
    url = "https://api.test/mcp"
    body = json.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "add"}}
    )
    proof = key.proof("POST", url, access_token=token, iat=clock.now)
    client = TestClient(guard, base_url="https://api.test")
    response = client.post(
        "/mcp", content=body, headers={"Authorization": f"DPoP {token}", "DPoP": proof}
    )
    assert response.status_code == 200, response.text
    assert response.text == "ran"


def test_the_proof_bounds_are_exact_and_userinfo_is_refused(
    issuer: LocalIssuer, key: DPoPKey, clock: Clock
) -> None:
    rs = server(issuer, max_token_length=1 << 20)
    token = bound(issuer, key)

    def says(proof: str, url: str = URL) -> str:
        result = request(rs, dpop(token), [proof], url=url)
        return "ok" if not isinstance(result, AuthError) else result.description

    for length, fits in ((256, True), (257, False)):
        proof = key.proof(
            "GET", URL, access_token=token, iat=clock.now, claims={"jti": "j" * length}
        )
        assert (says(proof) == "ok") is fits, length
    base = URL + "/"
    for length, fits in ((2048, True), (2049, False)):
        url = base + "a" * (length - len(base))
        assert (says(key.proof("GET", url, access_token=token, iat=clock.now), url) == "ok") is fits
    with_user = key.proof(
        "GET",
        URL,
        access_token=token,
        iat=clock.now,
        claims={"htu": "https://u:p@api.test/products"},
    )
    assert "not an http(s) URL" in says(with_user)
    assert normalize_url("http://api.test:80/x") == "http://api.test/x"
    assert normalize_url("https://api.test:443/x") == "https://api.test/x"
    assert normalize_url("http://api.test:443/x") == "http://api.test:443/x"


# -- every bound to the unit: proof length, dot segments, userinfo ------------------------------


def proof_of_length(key: DPoPKey, token: str, now: float, length: int) -> str:
    """A good proof for a GET of URL exactly ``length`` characters long (padded in a claim and,
    for the lengths base64url cannot make, in a header member)."""
    for kid in range(4):
        header = {"kid": "k" * kid} if kid else None

        def made(pad: int, header: dict[str, str] | None = header) -> str:
            claims = {"pad": "x" * pad}
            return key.proof("GET", URL, access_token=token, iat=now, claims=claims, header=header)

        guess = (length - len(made(0))) * 3 // 4
        for pad in range(max(0, guess - 3), guess + 4):
            proof = made(pad)
            if len(proof) == length:
                return proof
    raise AssertionError(f"no proof of {length} characters")


def test_a_proof_of_8192_characters_is_taken_and_one_of_8193_is_not(
    issuer: LocalIssuer, key: DPoPKey, clock: Clock
) -> None:
    # Tokens may be far longer here: the proof's own bound is what stops the second.
    rs = server(issuer, max_token_length=1 << 20)
    token = bound(issuer, key)
    fits = proof_of_length(key, token, clock.now, 8192)
    assert not isinstance(request(rs, dpop(token), [fits]), AuthError)
    too_long = refused(request(rs, dpop(token), [proof_of_length(key, token, clock.now, 8193)]))
    assert too_long.description == "the DPoP header must hold one JWT"


def test_dot_segments_never_climb_above_the_root(
    issuer: LocalIssuer, key: DPoPKey, clock: Clock
) -> None:
    # RFC 3986 section 5.2.4: "/..//products" is "//products" (an empty first segment stays).
    assert normalize_url("https://api.test/..//products") == "https://api.test//products"
    assert normalize_url("https://api.test/../products") == "https://api.test/products"
    assert normalize_url("https://api.test/a/..//b") == "https://api.test//b"
    rs = server(issuer)
    token = bound(issuer, key)
    proof = key.proof("GET", URL, access_token=token, iat=clock.now)
    exc = refused(request(rs, dpop(token), [proof], url="https://api.test/..//products"))
    assert exc.description == "the DPoP proof is for another URL (htu)"


@pytest.mark.parametrize(
    "htu",
    [
        "ftp://api.test/products",  # a host, another scheme
        "https:///products",  # the scheme, no host
        "https://u@api.test/products",  # a user, no password
        "https://:p@api.test/products",  # a password, no user
    ],
)
def test_htu_must_be_an_http_url_with_a_host_and_no_userinfo(
    issuer: LocalIssuer, key: DPoPKey, clock: Clock, htu: str
) -> None:
    with pytest.raises(ValueError, match="URL"):
        normalize_url(htu)
    token = bound(issuer, key)
    proof = key.proof("GET", URL, access_token=token, iat=clock.now, claims={"htu": htu})
    exc = refused(request(server(issuer), dpop(token), [proof]))
    assert exc.status_code == 401
    assert exc.description == "the DPoP proof's htu is not an http(s) URL"


# -- the header's alg, and what a refusal names -------------------------------------------------


@pytest.mark.parametrize("alg", [["ES256"], {"ES256": True}, 256, None])
def test_an_alg_that_is_no_string_is_refused_not_a_500(
    issuer: LocalIssuer, key: DPoPKey, clock: Clock, alg: Any
) -> None:
    import base64
    import json

    token = bound(issuer, key)
    h, p, s = key.proof("GET", URL, access_token=token, iat=clock.now).split(".")
    header = json.loads(base64.urlsafe_b64decode(h + "=" * (-len(h) % 4)))
    header["alg"] = alg
    proof = ".".join((b64url(json.dumps(header).encode()), p, s))
    exc = refused(request(server(issuer), dpop(token), [proof]))
    assert exc.status_code == 401
    assert exc.description == ("the DPoP proof's alg must be one of: ES256 ES384 EdDSA RS256 PS256")


@pytest.mark.parametrize(
    ("algorithms", "named"),
    [
        (["ES384"], "ES384"),
        (["PS256", "ES384"], "ES384 PS256"),  # in the order of the defaults
        (["ES512"], "ES512"),  # not a default: named all the same
        (["RS512", "ES256", "ES512"], "ES256 ES512 RS512"),  # the defaults first, then sorted
    ],
)
def test_a_refused_alg_names_the_algorithms_this_server_takes(
    issuer: LocalIssuer, clock: Clock, algorithms: list[str], named: str
) -> None:
    other = DPoPKey.generate("EdDSA")
    token = bound(issuer, other)
    proof = other.proof("GET", URL, access_token=token, iat=clock.now)
    exc = refused(request(server(issuer, dpop_algorithms=algorithms), dpop(token), [proof]))
    assert exc.description == f"the DPoP proof's alg must be one of: {named}"
    assert f'algs="{named}"' in exc.www_authenticate


# -- nonces: five-minute steps, secrets and lifetimes -------------------------------------------


def test_a_nonce_lives_for_the_rest_of_its_five_minute_step_and_the_whole_next(
    issuer: LocalIssuer, key: DPoPKey, clock: Clock
) -> None:
    assert NOW % 300 == 0  # steps are counted from the epoch: NOW starts one
    rs = server(issuer, dpop_nonce=True, dpop_nonce_secret="s" * 32)
    token = bound(issuer, key)

    def send(nonce: str | None) -> Any:
        proof = key.proof("GET", URL, access_token=token, iat=clock.now, nonce=nonce)
        return request(rs, dpop(token), [proof])

    nonce = refused(send(None)).headers["DPoP-Nonce"]
    clock.now = NOW + 299.5  # its own step: current, nothing new sent
    _, reply = send(nonce)
    assert reply is None
    for late in (300, 599.5):  # the next step, its last: accepted, with a fresh one
        clock.now = NOW + late
        _, reply = send(nonce)
        assert reply is not None, late
        assert reply["DPoP-Nonce"] != nonce, late
    clock.now = NOW + 600
    exc = refused(send(nonce))
    assert exc.to_dict()["error"] == "use_dpop_nonce"
    assert exc.headers["DPoP-Nonce"] not in ("", nonce)


def test_a_nonce_secret_needs_16_bytes_and_a_lifetime_10_seconds(
    issuer: LocalIssuer, clock: Clock
) -> None:
    for secret in ("x" * 16, b"x" * 16, "\u00e9" * 8):  # bytes, not characters: é is two
        source = NonceSource(secret)
        assert source.check(source.current(clock.now), clock.now) is True
        server(issuer, dpop_nonce=True, dpop_nonce_secret=secret)
    for secret in ("x" * 15, b"x" * 15, "\u00e9" * 7 + "x"):
        with pytest.raises(ConfigurationError, match="at least 16 bytes"):
            NonceSource(secret)
        with pytest.raises(ConfigurationError, match="at least 16 bytes"):
            server(issuer, dpop_nonce=True, dpop_nonce_secret=secret)
    shortest = NonceSource("x" * 16, lifetime=10)
    nonce = shortest.current(NOW)  # NOW starts a 10 s step: current for 10 s, then its last
    assert [shortest.check(nonce, NOW + t) for t in (9.5, 10, 19.5, 20)] == [
        True,
        False,
        False,
        None,
    ]
    for lifetime in (9.5, 0, -10, float("nan")):
        with pytest.raises(ConfigurationError, match="at least 10 seconds"):
            NonceSource("x" * 16, lifetime=lifetime)


# -- configuration at start-up -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_age", "max_future"),
    [(1, 0), (0.5, 0), (3600, 300), (60, 5)],
)
def test_the_proof_window_may_be_set_anywhere_in_its_documented_range(
    issuer: LocalIssuer, max_age: float, max_future: float
) -> None:
    rs = server(issuer, dpop_max_age=max_age, dpop_max_future=max_future)
    assert rs.dpop is not None
    assert (rs.dpop.max_age, rs.dpop.max_future) == (max_age, max_future)


@pytest.mark.parametrize(
    ("max_age", "max_future"),
    [(0, 5), (-1, 5), (3600.5, 5), (3601, 5), (60, -0.5), (60, 300.5), (60, 301)],
)
def test_a_proof_window_outside_its_range_is_a_start_up_error(
    issuer: LocalIssuer, max_age: float, max_future: float
) -> None:
    with pytest.raises(ConfigurationError, match="0 < dpop_max_age <= 3600"):
        server(issuer, dpop_max_age=max_age, dpop_max_future=max_future)


def test_the_window_edges_follow_the_configured_window(
    issuer: LocalIssuer, key: DPoPKey, clock: Clock
) -> None:
    rs = server(issuer, dpop_max_age=3600, dpop_max_future=0)
    token = bound(issuer, key)

    def says(iat: float) -> str:
        proof = key.proof("GET", URL, access_token=token, iat=iat)
        result = request(rs, dpop(token), [proof])
        return "ok" if not isinstance(result, AuthError) else result.description

    assert says(clock.now - 3600) == "ok"
    assert says(clock.now) == "ok"
    assert says(clock.now - 3601) == "the DPoP proof is too old (iat)"
    assert says(clock.now + 1) == "the DPoP proof is from the future (iat)"


@pytest.mark.parametrize("origin", ["api.test", "ftp://api.test", "https://"])
def test_dpop_origins_that_are_no_http_urls_are_a_start_up_error(
    issuer: LocalIssuer, origin: str
) -> None:
    with pytest.raises(ConfigurationError, match="dpop_origins takes http"):
        server(issuer, dpop_origins=[origin])


# -- what the replay store is asked ---------------------------------------------------------------


class RecordingStore(MemoryReplayStore):
    """A memory store that remembers the ttl it was given for each proof."""

    def __init__(self) -> None:
        super().__init__()
        self.ttls: list[float] = []

    def add(self, key: str, ttl: float) -> bool:
        self.ttls.append(ttl)
        return super().add(key, ttl)


def test_a_proof_is_kept_for_as_long_as_it_stays_acceptable_and_one_second_more(
    issuer: LocalIssuer, key: DPoPKey, clock: Clock
) -> None:
    store = RecordingStore()
    rs = server(issuer, dpop_replay_store=store)  # dpop_max_age 60, dpop_max_future 5
    token = bound(issuer, key)
    for iat in (clock.now, clock.now + 5, clock.now - 30, clock.now - 60):
        proof = key.proof("GET", URL, access_token=token, iat=iat)
        assert not isinstance(request(rs, dpop(token), [proof]), AuthError), iat
    # Acceptable until iat + 60, plus 1 s; at least 1 s plus 1 s for one at the very edge.
    assert store.ttls == [61.0, 66.0, 31.0, 2.0]


class RecordingRedis:
    """What a sync Redis client is asked to SET (a stand-in that always answers "new")."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bytes, dict[str, Any]]] = []

    def set(self, name: str, value: bytes, **options: Any) -> bool:
        self.calls.append((name, value, options))
        return True


def test_a_redis_store_sets_each_key_once_for_its_ttl_in_whole_milliseconds() -> None:
    from bearerguard.replay import RedisReplayStore

    client = RecordingRedis()
    store = RedisReplayStore(client, prefix="p:")
    for ttl in (65, 2.0, 0.0015, 0.0004, 0):
        assert store.add("k", ttl) is True
    # Redis refuses PX 0 ("invalid expire time"): below a millisecond is one millisecond.
    assert [options["px"] for _, _, options in client.calls] == [65_000, 2000, 1, 1, 1]
    assert all(
        (name, value, options["nx"]) == ("p:k", b"1", True) for name, value, options in client.calls
    )


def test_a_redis_store_needs_a_client_and_each_face_its_own() -> None:
    import redis
    import redis.asyncio
    from procs import free_port

    from bearerguard.replay import RedisReplayStore

    with pytest.raises(ConfigurationError, match="needs a client, an async_client, or both"):
        RedisReplayStore()
    url = f"redis://127.0.0.1:{free_port()}/0"  # never connected to
    async_only = RedisReplayStore(async_client=redis.asyncio.Redis.from_url(url))
    with pytest.raises(ConfigurationError, match="no sync client"):
        async_only.add("k", 5)
    sync_only = RedisReplayStore(client=redis.Redis.from_url(url))
    with pytest.raises(ConfigurationError, match="no async client"):
        anyio.run(sync_only.add_async, "k", 5)


def test_an_unreachable_redis_is_a_503_on_the_async_face_too(
    issuer: LocalIssuer, key: DPoPKey, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    import redis.asyncio
    from procs import free_port
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    from bearerguard.replay import RedisReplayStore

    token = bound(issuer, key)
    proof = key.proof("GET", URL, access_token=token, iat=clock.now)

    async def call() -> Any:
        # Nothing listens on this loopback port: the connection is refused, and not retried.
        port = free_port()
        client = redis.asyncio.Redis(host="127.0.0.1", port=port, retry=Retry(NoBackoff(), 0))
        rs = server(issuer, dpop_replay_store=RedisReplayStore(async_client=client, retry_after=7))
        try:
            view = RequestView("GET", dpop(token), url=URL, dpop=[proof])
            return await rs.authorize_async(view, Requirement())
        except AuthError as exc:
            return exc
        finally:
            await client.aclose()

    with caplog.at_level(logging.WARNING, logger="bearerguard"):
        down = refused(anyio.run(call))
    assert down.status_code == 503
    assert down.reason.value == "replay_store_unavailable"
    assert down.to_dict()["error"] == "temporarily_unavailable"
    assert down.headers["Retry-After"] == "7"
    assert "the DPoP replay store is unavailable: ConnectionError" in caplog.text


def test_a_replay_store_url_is_memory_or_redis_with_one_second_timeouts() -> None:
    from procs import free_port

    from bearerguard.replay import RedisReplayStore, replay_store_from_url

    assert isinstance(replay_store_from_url(""), MemoryReplayStore)
    assert isinstance(replay_store_from_url("memory"), MemoryReplayStore)
    for url in ("mysql://db/0", "Memory", "127.0.0.1:6379"):
        with pytest.raises(ConfigurationError, match="is 'memory' or a redis:// URL"):
            replay_store_from_url(url)
    url = f"redis://127.0.0.1:{free_port()}/0"  # never connected to
    store = replay_store_from_url(url)
    assert isinstance(store, RedisReplayStore)
    for client in (store.client, store.async_client):
        options = client.connection_pool.connection_kwargs
        assert (options["socket_timeout"], options["socket_connect_timeout"]) == (1.0, 1.0)
    patient = replay_store_from_url(url, socket_timeout=3.0)
    assert isinstance(patient, RedisReplayStore)
    options = patient.client.connection_pool.connection_kwargs
    assert (options["socket_timeout"], options["socket_connect_timeout"]) == (3.0, 1.0)


def test_a_redis_url_without_the_redis_extra_is_a_start_up_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    from bearerguard.replay import replay_store_from_url

    monkeypatch.setitem(sys.modules, "redis", None)  # as if redis were not installed
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)
    with pytest.raises(ConfigurationError, match=r"pip install 'bearerguard\[redis\]'"):
        replay_store_from_url("redis://127.0.0.1:6379/0")


# -- the examples' environment: dpop_settings --------------------------------------------------


def test_dpop_settings_reads_the_examples_environment(issuer: LocalIssuer) -> None:
    from bearerguard.dpop import dpop_settings
    from bearerguard.replay import RedisReplayStore

    def settings(**environ: str) -> dict[str, Any]:
        found = dpop_settings(environ)
        if found:
            store = found.pop("dpop_replay_store")
            assert isinstance(store, (MemoryReplayStore, RedisReplayStore))
            found["store"] = type(store).__name__
        return found

    assert settings() == {}
    assert settings(AUTH_DPOP="  ") == {}  # set but empty: off
    assert settings(AUTH_DPOP=" Off ") == {}
    memory = {"dpop": "required", "dpop_nonce": False, "store": "MemoryReplayStore"}
    assert settings(AUTH_DPOP=" Required ") == memory
    assert settings(AUTH_DPOP="required", AUTH_DPOP_NONCE="off") == memory
    # A secret is passed only with nonces on: a random one per process otherwise.
    secret = "a shared secret for the replicas!"
    assert settings(AUTH_DPOP="required", AUTH_DPOP_NONCE_SECRET=secret) == memory
    assert settings(AUTH_DPOP="allowed", AUTH_DPOP_NONCE=" ON ") == {
        "dpop": "allowed",
        "dpop_nonce": True,
        "store": "MemoryReplayStore",
    }
    assert settings(AUTH_DPOP="allowed", AUTH_DPOP_NONCE="on", AUTH_DPOP_NONCE_SECRET=secret) == {
        "dpop": "allowed",
        "dpop_nonce": True,
        "dpop_nonce_secret": secret,
        "store": "MemoryReplayStore",
    }
    redis_url = "redis://127.0.0.1:6379/0"  # never connected to
    assert settings(AUTH_DPOP="required", AUTH_REPLAY_STORE=redis_url)["store"] == (
        "RedisReplayStore"
    )
    for nonce in ("yes", "true", "1"):
        with pytest.raises(ConfigurationError, match="AUTH_DPOP_NONCE must be 'on' or 'off'"):
            dpop_settings({"AUTH_DPOP": "required", "AUTH_DPOP_NONCE": nonce})
    found = dpop_settings({"APP_DPOP": "required", "APP_DPOP_NONCE": "on"}, prefix="APP_")
    assert (found["dpop"], found["dpop_nonce"]) == ("required", True)
    # What it reads builds a server: nonces on, the secret given.
    built = dpop_settings(
        {"AUTH_DPOP": "required", "AUTH_DPOP_NONCE": "on", "AUTH_DPOP_NONCE_SECRET": secret}
    )
    rs = issuer.resource_server(**built)
    assert rs.dpop is not None
    assert rs.dpop.nonces is not None
    assert NonceSource(secret).check(rs.dpop.nonces.current(NOW), NOW) is True
