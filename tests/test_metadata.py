"""RFC 9728 protected-resource metadata: the URL, the document, the challenges."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from bearerguard import ConfigurationError, MissingToken, ResourceServer
from bearerguard.metadata import ResourceMetadata, metadata_url, respond

ISSUER = "https://tenant.logto.app/oidc"


@pytest.mark.parametrize(
    ("resource", "url"),
    [
        ("https://shopping.api", "https://shopping.api/.well-known/oauth-protected-resource"),
        ("https://shopping.api/", "https://shopping.api/.well-known/oauth-protected-resource"),
        (
            "https://api.example.com/v1/mcp",
            "https://api.example.com/.well-known/oauth-protected-resource/v1/mcp",
        ),
        (
            "https://api.example.com/v1/mcp/",
            "https://api.example.com/.well-known/oauth-protected-resource/v1/mcp",
        ),
        (
            "https://api.example.com:8443/a?tenant=x",
            "https://api.example.com:8443/.well-known/oauth-protected-resource/a?tenant=x",
        ),
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000/.well-known/oauth-protected-resource"),
    ],
)
def test_the_well_known_path_goes_between_host_and_path(resource: str, url: str) -> None:
    """RFC 9728 section 3.1."""
    assert metadata_url(resource) == url


def test_empty_members_are_left_out() -> None:
    """RFC 9728 section 3.2: zero-value members are omitted."""
    document = ResourceMetadata("https://shopping.api", (ISSUER,)).document()
    assert document == {
        "resource": "https://shopping.api",
        "authorization_servers": [ISSUER],
        "bearer_methods_supported": ["header"],
    }


def test_the_server_describes_itself() -> None:
    server = ResourceServer(
        ISSUER,
        ["https://shopping.api", "https://other.api"],
        scopes_supported=["read:products"],
        resource_name="Shopping API",
        resource_documentation="https://docs.shop.example/api",
    )
    server.declare_scopes(["write:products", "read:products"])
    metadata = server.metadata()
    assert metadata is not None
    assert metadata.document() == {
        "resource": "https://shopping.api",  # the first audience
        "authorization_servers": [ISSUER],
        "scopes_supported": ["read:products", "write:products"],
        "bearer_methods_supported": ["header"],
        "resource_name": "Shopping API",
        "resource_documentation": "https://docs.shop.example/api",
    }
    assert server.metadata_url == "https://shopping.api/.well-known/oauth-protected-resource"
    assert server.metadata_path == "/.well-known/oauth-protected-resource"


def test_every_401_and_403_challenge_says_where_the_metadata_is() -> None:
    server = ResourceServer(ISSUER, "https://shopping.api")
    with pytest.raises(MissingToken) as info:
        server.authenticate(None)
    assert info.value.www_authenticate == (
        'Bearer realm="https://shopping.api", '
        'resource_metadata="https://shopping.api/.well-known/oauth-protected-resource"'
    )


def test_an_explicit_url_for_an_api_served_behind_another_name() -> None:
    url = "https://gateway.example/shop/.well-known/oauth-protected-resource"
    server = ResourceServer(ISSUER, "https://shopping.api", resource_metadata=url)
    assert server.metadata_url == url
    with pytest.raises(MissingToken) as info:
        server.authenticate(None)
    assert info.value.www_authenticate.endswith(f'resource_metadata="{url}"')


def test_switched_off_or_no_url_resource_means_no_metadata() -> None:
    off = ResourceServer(ISSUER, "https://shopping.api", resource_metadata=False)
    assert off.metadata() is None
    with pytest.raises(MissingToken) as info:
        off.authenticate(None)
    assert "resource_metadata" not in info.value.www_authenticate
    urn = ResourceServer(ISSUER, "api://shopping")  # an audience that is no URL
    assert urn.metadata_url is None


@pytest.mark.parametrize(
    "kwargs",
    [
        {"resource": "api://shopping"},
        {"resource": "https://shopping.api#x"},
        {"resource": "http://shopping.api"},
        {"resource_metadata": "ftp://x"},
        {"resource_metadata": 3},
        {"scopes_supported": ["read write"]},
        {"resource_documentation": "javascript:alert(1)"},
    ],
)
def test_bad_metadata_settings_fail_at_start_up(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        ResourceServer(ISSUER, "https://shopping.api", **kwargs)  # type: ignore[arg-type]


def test_responses_for_each_method() -> None:
    metadata = ResourceMetadata("https://shopping.api", (ISSUER,), ("read:products",))
    status, headers, body = respond("GET", metadata)
    assert status == 200
    assert dict(headers)["content-type"] == "application/json"
    assert dict(headers)["access-control-allow-origin"] == "*"
    assert dict(headers)["cache-control"] == "public, max-age=3600"
    assert json.loads(body)["scopes_supported"] == ["read:products"]
    assert respond("HEAD", metadata)[2] == b""
    status, headers, body = respond("OPTIONS", metadata)
    assert (status, body) == (204, b"")
    assert dict(headers)["access-control-allow-origin"] == "*"
    status, headers, _ = respond("POST", metadata)
    assert status == 405
    assert dict(headers)["allow"] == "GET, HEAD, OPTIONS"


def test_flask_protect_all_makes_only_the_metadata_route_public() -> None:
    """Another view matching the metadata path (a catch-all, or the app's "/" when an
    explicit URL points there) still needs a token, for every method."""
    from flask import Flask

    from bearerguard.flask import BearerGuard

    app = Flask(__name__)
    BearerGuard(app, server=ResourceServer(ISSUER, "https://shopping.api"), protect_all=True)

    @app.route("/<path:rest>", methods=["GET", "POST", "DELETE"])
    def anything(rest: str) -> str:
        return "catch-all ran"

    client = app.test_client()
    path = "/.well-known/oauth-protected-resource"
    assert client.get(path).json["resource"] == "https://shopping.api"  # type: ignore[index]
    for method in ("post", "delete"):
        response = getattr(client, method)(path)
        assert response.status_code == 401, response.get_data()


@pytest.mark.parametrize(
    "url", ["https://docs.example.com/", "https://docs.example.com/api/orders"]
)
def test_an_explicit_url_off_the_well_known_path_is_named_but_not_served(url: str) -> None:
    """Serving it would hide the app's own route there."""
    server = ResourceServer(ISSUER, "https://shopping.api", resource_metadata=url)
    assert server.metadata_url == url
    assert server.metadata_path is None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"resource": "https://user:pw@shopping.api"}, "credentials"),
        ({"resource": "https://shopping.api/ü"}, "plain URL"),
        ({"resource": 'https://shopping.api/"x'}, "plain URL"),
        ({"resource_metadata": "https://user@gw.example/.well-known/x"}, "credentials"),
    ],
)
def test_urls_that_a_challenge_would_mangle_are_refused(kwargs: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        ResourceServer(ISSUER, "https://shopping.api", **kwargs)  # type: ignore[arg-type]


# -- scopes_supported: configured, declared by the app's rules, found by scope sources -------


def never_called(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"describing the resource made a request to {request.url}")


def server(**kwargs: Any) -> ResourceServer:
    return ResourceServer(
        "https://issuer.test/oidc",
        "https://api.test",
        transport=httpx.MockTransport(never_called),
        **kwargs,
    )


def supported(rs: ResourceServer, app: object = None) -> tuple[str, ...]:
    document = rs.metadata(app)
    assert document is not None
    return document.scopes_supported


def test_only_scope_names_are_declared() -> None:
    rs = server(scopes_supported=["read"])
    not_names: list[Any] = ["", "read write", None, 7, ("write",)]
    rs.declare_scopes([*not_names, "write", "read"])
    assert supported(rs) == ("read", "write")


def test_scope_sources_are_asked_only_with_the_app_serving_the_document() -> None:
    rs = server()
    app = object()
    asked: list[object] = []

    def routes(found_in: object) -> list[str]:
        asked.append(found_in)
        return ["orders:read"]

    rs.add_scope_source("routes", routes)
    assert supported(rs) == ()  # no app known: no source is asked
    assert asked == []
    assert supported(rs, app) == ("orders:read",)
    assert asked == [app]
