"""Configuration mistakes fail at start-up with ConfigurationError, never on the first request."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from bearerguard import DEFAULT_ALGORITHMS, ConfigurationError, InvalidToken, ResourceServer
from bearerguard.testing import LocalIssuer

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
