"""Configuration mistakes fail at start-up with ConfigurationError, never on the first request."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import pytest

from bearerguard import (
    DEFAULT_ALGORITHMS,
    AuthError,
    ConfigurationError,
    InvalidToken,
    IssuerUnavailable,
    ResourceServer,
)
from bearerguard.testing import LocalIssuer
from bearerguard.verify import SUPPORTED_ALGORITHMS

if TYPE_CHECKING:
    from conftest import FakeClock, StubIssuer

ISSUER = "https://issuer.test/oidc"
AUDIENCE = "https://api.test"


def never_called(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"configuration checking made a request to {request.url}")


def build(issuer: Any = ISSUER, audience: Any = AUDIENCE, **kwargs: Any) -> ResourceServer:
    return ResourceServer(issuer, audience, transport=httpx.MockTransport(never_called), **kwargs)


@pytest.mark.parametrize(
    "issuer",
    [
        "http://issuer.test/oidc",
        "http://localhost.evil.test/oidc",
        "http://127.0.0.1.nip.io/oidc",
        "http://10.0.0.1/oidc",
        "http://[2001:db8::1]/oidc",
        "ftp://issuer.test/oidc",
        "issuer.test/oidc",
        "https:///oidc",
        "https://[::1/oidc",
        "https://issuer\x00.test/oidc",
        ["https://issuer.test/oidc", "http://issuer.test/oidc"],
    ],
)
def test_plain_http_issuer_off_loopback_is_refused(issuer: Any) -> None:
    with pytest.raises(ConfigurationError, match="issuer"):
        build(issuer)


@pytest.mark.parametrize(
    "issuer",
    [
        "https://issuer.test/oidc",
        "http://127.0.0.1:3001/oidc",
        "http://127.0.0.1/oidc",
        "http://localhost:3001/oidc",
        "http://[::1]:3001/oidc",
    ],
)
def test_https_and_loopback_http_issuers_are_allowed(issuer: str) -> None:
    assert build(issuer).issuers == (issuer,)


def test_plain_http_jwks_uri_off_loopback_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="jwks_uri"):
        build(jwks_uri="http://keys.issuer.test/jwks")
    assert build(jwks_uri="http://127.0.0.1:3001/oidc/jwks")


@pytest.mark.parametrize("issuer", ["", [], [""], "   "])
def test_empty_issuer_is_refused(issuer: Any) -> None:
    with pytest.raises(ConfigurationError, match="issuer"):
        build(issuer)


@pytest.mark.parametrize("audience", ["", [], [""], "  ", [AUDIENCE, ""], ()])
def test_empty_audience_is_refused(audience: Any) -> None:
    with pytest.raises(ConfigurationError, match="audience"):
        build(audience=audience)


@pytest.mark.parametrize(
    "algorithms",
    [
        ["none"],
        ["NONE"],
        ["None"],
        ["HS256"],
        ["HS384"],
        ["HS512"],
        ["ES256", "HS256"],
        ["ES384", "none"],
        ["ES999"],
        ["es256"],
        ["RSA-OAEP"],
        [],
    ],
)
def test_dangerous_or_unknown_algorithms_are_refused(algorithms: list[str]) -> None:
    with pytest.raises(ConfigurationError):
        build(algorithms=algorithms)


def test_an_unsupported_algorithm_is_named_with_the_choices() -> None:
    with pytest.raises(ConfigurationError) as info:
        build(algorithms=["ES256", "none", "HS256"])
    assert str(info.value) == (
        f"unsupported algorithms ['HS256', 'none']; choose from {sorted(SUPPORTED_ALGORITHMS)}"
        " (none and HS* are never accepted)"
    )


def test_the_default_algorithms_are_the_asymmetric_allow_list() -> None:
    assert set(DEFAULT_ALGORITHMS) == {
        "ES256",
        "ES384",
        "ES512",
        "RS256",
        "RS384",
        "RS512",
        "PS256",
        "PS384",
        "PS512",
        "EdDSA",
    }
    assert build().options.algorithms == frozenset(DEFAULT_ALGORITHMS)


@pytest.mark.parametrize("algorithms", ["ES384", ("ES384",), ["ES384", "RS256"]])
def test_algorithms_may_be_narrowed(algorithms: Any) -> None:
    assert "ES384" in build(algorithms=algorithms).options.algorithms
    assert "ES256" not in build(algorithms=algorithms).options.algorithms


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("fetch_timeout", -1),
        ("fetch_timeout", 0),
        ("fetch_timeout", float("nan")),
        ("fetch_timeout", True),
        ("fetch_timeout", "5"),
        ("jwks_ttl", -1),
        ("jwks_ttl", 0),
        ("jwks_min_ttl", -1),
        ("jwks_max_ttl", -1),
        ("refetch_cooldown", -1),
        ("refresh_retry", -1),
        ("refresh_retry", float("nan")),
        ("outage_retry_max", -1),
        ("outage_retry_max", "5"),
        ("max_stale", -1),
        ("leeway", -1),
        ("leeway", 3600),
        ("leeway", float("nan")),
        ("token_cache_ttl", -1),
        ("token_cache_size", -1),
        ("max_token_length", 10),
        ("max_token_length", 1 << 30),
    ],
)
def test_negative_or_absurd_numbers_are_refused(name: str, value: Any) -> None:
    with pytest.raises(ConfigurationError, match=name):
        build(**{name: value})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("leeway", 0),
        ("refetch_cooldown", 0),
        ("refresh_retry", 0),
        ("outage_retry_max", 0),
        ("max_stale", 0),
        ("jwks_min_ttl", 0),
        ("token_cache_size", 0),
    ],
)
def test_zero_is_allowed_where_it_means_off(name: str, value: Any) -> None:
    assert build(**{name: value})


@pytest.mark.parametrize("length", [512, 8192, 1 << 20])
def test_max_token_length_takes_512_to_1_mib_bounds_included(length: int) -> None:
    assert build(max_token_length=length).max_token_length == length


@pytest.mark.parametrize("length", [511, (1 << 20) + 1, True, False])
def test_max_token_length_outside_512_to_1_mib_is_refused(length: Any) -> None:
    with pytest.raises(
        ConfigurationError, match="max_token_length must be between 512 and 1048576"
    ):
        build(max_token_length=length)


def test_a_token_exactly_max_token_length_long_is_accepted() -> None:
    issuer = LocalIssuer(ISSUER, audience=AUDIENCE, alg="ES256")
    token = issuer.mint(note="x" * 300)
    assert len(token) > 513
    at_limit = issuer.resource_server(max_token_length=len(token))
    assert at_limit.verify_token(token).issuer == ISSUER
    assert at_limit.authenticate(f"Bearer {token}").issuer == ISSUER
    below = issuer.resource_server(max_token_length=len(token) - 1)
    with pytest.raises(InvalidToken, match="too large") as caught:
        below.verify_token(token)
    assert caught.value.reason.value == "token_too_large"


def test_jwks_ttl_bounds_must_be_ordered() -> None:
    with pytest.raises(ConfigurationError, match="jwks_min_ttl"):
        build(jwks_min_ttl=700, jwks_ttl=600)
    with pytest.raises(ConfigurationError, match="jwks_max_ttl"):
        build(jwks_ttl=600, jwks_max_ttl=300)
    assert build(jwks_min_ttl=600, jwks_ttl=600, jwks_max_ttl=600)


def test_scope_claims_must_name_a_claim() -> None:
    with pytest.raises(ConfigurationError, match="scope_claims"):
        build(scope_claims=[])


@pytest.mark.parametrize("endpoint", ["https://tenant.logto.app", "https://tenant.logto.app/"])
def test_logto_preset(endpoint: str) -> None:
    server = ResourceServer.logto(endpoint=endpoint, audience="https://shopping.api")
    assert server.issuers == ("https://tenant.logto.app/oidc",)
    assert server.options.issuers == {"https://tenant.logto.app/oidc"}
    assert server.options.require_typ is True
    assert {"sub", "client_id", "iat", "jti"} <= set(server.options.required_claims)
    assert server.audiences == ("https://shopping.api",)


def test_logto_preset_verifies_a_logto_shaped_token_and_refuses_a_plain_jwt() -> None:
    issuer = LocalIssuer("https://tenant.logto.app/oidc", audience="https://shopping.api")
    server = ResourceServer.logto(
        endpoint="https://tenant.logto.app",
        audience="https://shopping.api",
        transport=issuer.transport(),
    )
    access = server.authenticate(f"Bearer {issuer.mint('read:products')}")
    assert access.issuer == "https://tenant.logto.app/oidc"
    assert access.scopes == {"read:products"}
    with pytest.raises(InvalidToken, match="at\\+jwt"):
        server.authenticate(f"Bearer {issuer.mint(header={'typ': 'JWT'})}")


def test_logto_preset_with_a_custom_domain() -> None:
    server = ResourceServer.logto(
        endpoint=["https://tenant.logto.app", "https://auth.shop.test"],
        audience="https://shopping.api",
    )
    assert server.issuers == ("https://tenant.logto.app/oidc", "https://auth.shop.test/oidc")


def test_logto_preset_refuses_plain_http_off_loopback() -> None:
    with pytest.raises(ConfigurationError):
        ResourceServer.logto(endpoint="http://tenant.logto.app", audience="https://shopping.api")
    local = ResourceServer.logto(endpoint="http://localhost:3001", audience="https://shopping.api")
    assert local.issuers == ("http://localhost:3001/oidc",)


@pytest.mark.parametrize(
    "endpoint",
    [
        "https://tenant.logto.app/oidc",
        "https://tenant.logto.app/oidc/",
        "https://auth.shop.example/oidc",
    ],
)
def test_logto_given_the_issuer_instead_of_the_endpoint_says_which_form_it_wants(
    endpoint: str,
) -> None:
    with pytest.raises(ConfigurationError, match="tenant endpoint") as info:
        ResourceServer.logto(endpoint=endpoint, audience="https://shopping.api")
    assert repr(endpoint.rstrip("/")[: -len("/oidc")]) in str(info.value)  # what to pass
    with pytest.raises(ConfigurationError, match="ends in /oidc"):
        ResourceServer.logto(
            endpoint=["https://tenant.logto.app", endpoint], audience="https://shopping.api"
        )


# -- a transport of the wrong kind is a start-up error --------------------------------------------


def _asgi_only() -> httpx.ASGITransport:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("never asked")

    return httpx.ASGITransport(app=app)


def _wsgi_only() -> httpx.WSGITransport:
    def app(environ: Any, start_response: Any) -> Any:
        raise AssertionError("never asked")

    return httpx.WSGITransport(app=app)


def _server(transport: Any) -> ResourceServer:
    return ResourceServer("https://issuer.test/oidc", "https://api.test", transport=transport)


def test_an_async_only_transport_fails_sync_adapters_at_start_up() -> None:
    from flask import Flask

    from bearerguard import wsgi
    from bearerguard.flask import BearerGuard
    from bearerguard.starlette import Protect

    server = _server(_asgi_only())
    with pytest.raises(ConfigurationError, match=r"async-only.*http_client=httpx\.Client"):
        wsgi.BearerAuthMiddleware(lambda e, s: [], server=server)
    with pytest.raises(ConfigurationError, match="async-only"):
        BearerGuard(Flask(__name__), server=server)
    with pytest.raises(ConfigurationError, match="async-only"):

        @Protect(server)("read")
        def sync_endpoint(request: Any) -> None: ...

    with pytest.raises(ConfigurationError, match="async-only"):  # a direct call says it too
        server.authenticate("Bearer " + LocalIssuer(ISSUER, audience=AUDIENCE).mint("read"))


def test_a_sync_only_transport_fails_async_adapters_at_start_up() -> None:
    from bearerguard.asgi import BearerAuthMiddleware
    from bearerguard.fastapi import BearerAuth
    from bearerguard.starlette import Protect

    server = _server(_wsgi_only())
    with pytest.raises(ConfigurationError, match=r"sync-only.*async_http_client"):
        BearerAuthMiddleware(lambda s, r, se: None, server=server)  # type: ignore[arg-type,return-value]
    with pytest.raises(ConfigurationError, match="sync-only"):
        BearerAuth(server)
    with pytest.raises(ConfigurationError, match="sync-only"):

        @Protect(server)("read")
        async def async_endpoint(request: Any) -> None: ...


def test_the_matching_face_and_a_two_faced_transport_are_accepted() -> None:
    from bearerguard.asgi import BearerAuthMiddleware

    BearerAuthMiddleware(lambda s, r, se: None, server=_server(_asgi_only()))  # type: ignore[arg-type,return-value]
    two_faced = _server(httpx.MockTransport(lambda request: httpx.Response(404)))
    two_faced.check_face("sync")
    two_faced.check_face("async")
    with_client = ResourceServer(
        "https://issuer.test/oidc",
        "https://api.test",
        transport=_asgi_only(),
        http_client=httpx.Client(transport=_wsgi_only()),
    )
    with_client.check_face("sync")


@pytest.mark.parametrize("bad", [object(), "http://x", httpx.Client])
def test_a_transport_that_is_no_httpx_transport_is_refused(bad: Any) -> None:
    with pytest.raises(ConfigurationError, match="transport"):
        _server(bad)


def test_an_async_http_client_that_is_no_async_client_is_refused() -> None:
    with httpx.Client() as client:
        with pytest.raises(ConfigurationError, match="async_http_client must be an httpx"):
            build(async_http_client=client)
        with pytest.raises(ConfigurationError, match="async_http_client must be an httpx"):
            ResourceServer(ISSUER, AUDIENCE, async_http_client=client)  # type: ignore[arg-type]


def test_an_async_client_given_as_http_client_fetches_the_keys_of_the_async_face() -> None:
    # The issuer's own address refuses connections: only the given client can reach it.
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        issuer = LocalIssuer(f"http://127.0.0.1:{closed.getsockname()[1]}/oidc", audience=AUDIENCE)
        client = httpx.AsyncClient(transport=issuer.transport())
        server = ResourceServer(issuer.issuer, AUDIENCE, http_client=client)
        server.check_face("async")

        async def run() -> str:
            async with client:
                return (await server.authenticate_async(f"Bearer {issuer.mint()}")).issuer

        assert anyio.run(run) == issuer.issuer
    assert issuer.requests[-1] == "/oidc/jwks"


@pytest.mark.parametrize("face", ["both", "Sync", "wsgi", ""])
def test_check_face_takes_sync_or_async_only(face: str) -> None:
    with pytest.raises(ValueError, match="face must be 'sync' or 'async'"):
        build().check_face(face)


# -- the documented defaults (README "Defaults, and why"), at their edges -------------------------


def bearer(token: str) -> str:
    return f"Bearer {token}"


def test_the_default_leeway_accepts_a_token_29_s_past_exp_and_refuses_one_30_s_past(
    stub_issuer: StubIssuer, fake_clock: FakeClock
) -> None:
    server = stub_issuer.resource_server()
    now = int(fake_clock())
    assert server.authenticate(bearer(stub_issuer.mint(exp=now - 29)))
    with pytest.raises(InvalidToken) as caught:
        server.authenticate(bearer(stub_issuer.mint(exp=now - 30)))
    assert caught.value.reason.value == "expired"


@pytest.mark.parametrize(
    ("cache_control", "lifetime"),
    [
        (None, 600),  # jwks_ttl
        ("no-cache, max-age=0", 60),  # Logto's header: jwks_min_ttl
        ("max-age=1000000", 86400),  # jwks_max_ttl
    ],
)
def test_keys_are_fetched_again_when_the_default_jwks_lifetimes_run_out(
    stub_issuer: StubIssuer, fake_clock: FakeClock, cache_control: str | None, lifetime: int
) -> None:
    if cache_control is not None:
        stub_issuer.jwks_headers["Cache-Control"] = cache_control
    server = stub_issuer.resource_server()
    server.warm_up()
    fake_clock.advance(lifetime - 1)
    server.authenticate(bearer(stub_issuer.mint()))
    assert stub_issuer.jwks_fetches == 1
    fake_clock.advance(1)
    server.authenticate(bearer(stub_issuer.mint()))
    assert stub_issuer.jwks_fetches == 2


def test_stale_keys_serve_for_an_hour_by_default_while_the_issuer_is_down(
    stub_issuer: StubIssuer, fake_clock: FakeClock
) -> None:
    server = stub_issuer.resource_server()
    server.warm_up()
    stub_issuer.down = True
    fake_clock.advance(600)  # the keys' TTL is over and the refresh fails
    assert server.authenticate(bearer(stub_issuer.mint()))
    fake_clock.advance(3599)
    assert server.authenticate(bearer(stub_issuer.mint()))
    fake_clock.advance(1)  # an hour past the TTL: nothing usable is left
    with pytest.raises(IssuerUnavailable):
        server.authenticate(bearer(stub_issuer.mint()))


def test_with_no_keys_a_down_issuer_is_asked_again_after_1_2_4_then_every_5_s(
    stub_issuer: StubIssuer, fake_clock: FakeClock
) -> None:
    stub_issuer.down = True
    server = stub_issuer.resource_server()
    token = stub_issuer.mint()
    waits: list[int] = []
    attempts: list[int] = []
    for _ in range(6):
        with pytest.raises(AuthError) as caught:
            server.authenticate(bearer(token))
        assert caught.value.status_code == 503
        waits.append(int(caught.value.headers["Retry-After"]))
        attempts.append(stub_issuer.discovery_fetches)
        fake_clock.advance(waits[-1] - 1)  # a second early: not asked again
        with pytest.raises(IssuerUnavailable):
            server.authenticate(bearer(token))
        assert stub_issuer.discovery_fetches == attempts[-1]
        fake_clock.advance(1)
    assert waits == [1, 2, 4, 5, 5, 5]
    assert len(set(attempts)) == 6  # each wait ended in a new attempt


def test_each_request_to_the_issuer_times_out_after_5_s_by_default(
    stub_issuer: StubIssuer,
) -> None:
    stub_issuer.resource_server().warm_up()
    assert stub_issuer.discovery_fetches == 1
    assert stub_issuer.jwks_fetches == 1
    for request in stub_issuer.seen:
        assert request.extensions["timeout"] == {
            "connect": 5.0,
            "read": 5.0,
            "write": 5.0,
            "pool": 5.0,
        }
