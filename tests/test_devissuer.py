"""The dev issuer, through its HTTP endpoints (in-process and over real loopback HTTP)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import httpx
import jwt
import pytest

import bearerguard.devissuer as devissuer
from bearerguard import AccessToken, ConfigurationError, InvalidToken, ResourceServer
from bearerguard.devissuer import (
    DEFAULT_ISSUER,
    DevIssuer,
    KeyStore,
    OAuthError,
    create_app,
    load_config,
    parse_config,
)
from bearerguard.testing import thumbprint

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "issuer.toml"
SHOP = "https://shopping.api"
MGMT = "https://default.logto.app/api"
ADMIN = ("shopping-admin", "dev-only-shopping-admin-secret")
STATS = ("stats-service", "dev-only-stats-service-secret")
GRANT = {"grant_type": "client_credentials"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
NOW = 1_800_000_000.0


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    return tmp_path / "state" / "keys.json"


@pytest.fixture
def issuer(key_file: Path, clock: Clock) -> DevIssuer:
    return DevIssuer(load_config(EXAMPLE), keys=KeyStore(key_file), clock=clock)


class AppClient:
    """A sync face over httpx.ASGITransport (Starlette's AppClient deprecates httpx)."""

    def __init__(self, app: Any, base_url: str = "http://127.0.0.1:3001") -> None:
        self.app = app
        self.base_url = base_url

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url=self.base_url) as client:
                return await client.request(method, url, **kwargs)

        return asyncio.run(send())

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def options(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("OPTIONS", url, **kwargs)


@pytest.fixture
def client(issuer: DevIssuer) -> AppClient:
    return AppClient(issuer)


def request_token(client: AppClient, auth: Any = ADMIN, **form: str) -> httpx.Response:
    return client.post("/oidc/token", auth=auth, data={**GRANT, **form})


def decode(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    header, payload, _ = token.split(".")
    return tuple(  # type: ignore[return-value]
        json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
        for part in (header, payload)
    )


def verify(issuer: DevIssuer, token: str, clock: Clock, audience: str = SHOP) -> AccessToken:
    """Verify as an API would: ResourceServer, strict RFC 9068, keys fetched from the issuer."""
    server = ResourceServer(
        issuer.issuer, audience, require_typ=True, transport=issuer.transport(), clock=clock
    )
    return asyncio.run(server.authenticate_async("Bearer " + token))


# -- discovery and JWKS ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/oidc/.well-known/openid-configuration",
        "/oidc/.well-known/oauth-authorization-server",
        "/.well-known/oauth-authorization-server/oidc",
    ],
)
def test_discovery_documents(client: AppClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    metadata = response.json()
    assert metadata["issuer"] == DEFAULT_ISSUER == "http://127.0.0.1:3001/oidc"
    assert metadata["jwks_uri"] == DEFAULT_ISSUER + "/jwks"
    assert metadata["token_endpoint"] == DEFAULT_ISSUER + "/token"
    assert metadata["authorization_endpoint"] == DEFAULT_ISSUER + "/auth"
    assert metadata["grant_types_supported"] == ["client_credentials"]
    assert metadata["token_endpoint_auth_methods_supported"] == [
        "client_secret_basic",
        "client_secret_post",
    ]
    assert metadata["scopes_supported"] == ["all", "read:products", "write:products"]


def test_jwks_like_logto(client: AppClient, issuer: DevIssuer) -> None:
    response = client.get("/oidc/jwks")
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-cache, max-age=0, must-revalidate"
    (jwk,) = response.json()["keys"]
    assert jwk["kty"] == "EC"
    assert jwk["crv"] == "P-384"
    assert jwk["alg"] == "ES384"
    assert jwk["use"] == "sig"
    assert jwk["kid"] == thumbprint(jwk) == issuer.keys.current.kid
    assert "d" not in jwk
    again = client.get("/oidc/jwks", headers={"If-None-Match": response.headers["etag"]})
    assert again.status_code == 304


def test_unknown_paths_and_methods(client: AppClient) -> None:
    assert client.get("/oidc/token").status_code == 405
    assert client.get("/oidc/userinfo").status_code == 404
    # Advertised because RFC 8414 requires it; only client credentials are served.
    response = client.get("/oidc/auth?response_type=code&client_id=shopping-admin")
    assert response.status_code == 400
    assert response.json()["error"] == "unsupported_response_type"


# -- the token endpoint ---------------------------------------------------------------------------


def test_token_with_basic_auth(client: AppClient, issuer: DevIssuer, clock: Clock) -> None:
    response = request_token(client, resource=SHOP, scope="read:products write:products")
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert set(body) == {"access_token", "expires_in", "token_type", "scope"}
    assert body["expires_in"] == 3600
    assert body["token_type"] == "Bearer"
    assert body["scope"] == "read:products write:products"

    header, claims = decode(body["access_token"])
    assert header == {"alg": "ES384", "typ": "at+jwt", "kid": issuer.keys.current.kid}
    assert list(claims) == ["jti", "sub", "iat", "exp", "scope", "client_id", "iss", "aud"]
    assert claims["sub"] == claims["client_id"] == "shopping-admin"
    assert claims["iss"] == DEFAULT_ISSUER
    assert claims["aud"] == SHOP  # one string, as Logto
    assert claims["iat"] == int(NOW)
    assert claims["exp"] - claims["iat"] == 3600

    token = verify(issuer, body["access_token"], clock)
    assert token.scopes == {"read:products", "write:products"}
    assert token.sub == "shopping-admin"


def test_token_with_client_secret_post(client: AppClient, issuer: DevIssuer, clock: Clock) -> None:
    client_id, secret = STATS
    form = {**GRANT, "client_id": client_id, "client_secret": secret, "scope": "read:products"}
    response = client.post("/oidc/token", data=form)
    assert response.status_code == 200
    assert verify(issuer, response.json()["access_token"], clock).client_id == "stats-service"


def test_basic_credentials_are_form_urlencoded(tmp_path: Path) -> None:
    """RFC 6749 section 2.3.1: id and secret are form-urlencoded before Basic encoding."""
    config = parse_config(
        f"""
        [[resources]]
        indicator = "{SHOP}"
        scopes = ["read:products"]
        [[apps]]
        id = "app:one"
        secret = "s3cr+t/ %"
        """
    )
    client = AppClient(DevIssuer(config))
    raw = f"{quote_plus('app:one')}:{quote_plus('s3cr+t/ %')}"
    basic = {"Authorization": "Basic " + base64.b64encode(raw.encode()).decode()}
    ok = client.post("/oidc/token", headers=basic, data={**GRANT, "resource": SHOP})
    assert ok.status_code == 200
    assert decode(ok.json()["access_token"])[1]["sub"] == "app:one"
    # Unencoded, "+" means a space: the secret no longer matches.
    unencoded = client.post("/oidc/token", auth=("app%3Aone", "s3cr+t/ %"), data=GRANT)
    assert unencoded.status_code == 401


def test_scopes_are_narrowed_without_error(client: AppClient) -> None:
    response = request_token(client, STATS, resource=SHOP, scope="read:products write:products")
    assert response.status_code == 200
    assert response.json()["scope"] == "read:products"
    assert decode(response.json()["access_token"])[1]["scope"] == "read:products"


@pytest.mark.parametrize("scope", [None, "write:products", "all unknown:scope"])
def test_no_scope_claim_when_none_requested_or_granted(
    client: AppClient, scope: str | None
) -> None:
    form = {"resource": SHOP} if scope is None else {"resource": SHOP, "scope": scope}
    response = request_token(client, STATS, **form)
    assert response.status_code == 200
    assert "scope" not in response.json()
    assert "scope" not in decode(response.json()["access_token"])[1]


def test_default_resource(client: AppClient) -> None:
    response = request_token(client, ADMIN, scope="read:products")
    assert response.status_code == 200
    assert decode(response.json()["access_token"])[1]["aud"] == SHOP


def test_missing_resource_without_default_is_invalid_target() -> None:
    config = parse_config(f'[[resources]]\nindicator = "{SHOP}"\n[[apps]]\nid = "a"\nsecret = "s"')
    client = AppClient(DevIssuer(config))
    response = client.post("/oidc/token", auth=("a", "s"), data=GRANT)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_target"
    assert client.post("/oidc/token", auth=("a", "s"), data={**GRANT, "resource": SHOP}).is_success


def test_management_api_resource(client: AppClient, issuer: DevIssuer, clock: Clock) -> None:
    app = ("management-client", "dev-only-management-client-secret")
    response = request_token(client, app, resource=MGMT, scope="all")
    assert response.json()["scope"] == "all"
    assert verify(issuer, response.json()["access_token"], clock, audience=MGMT).scopes == {"all"}
    # The shopping admin holds no role on the Management API: a token, but no scope.
    assert "scope" not in request_token(client, ADMIN, resource=MGMT, scope="all").json()


def test_ttl_is_per_resource(clock: Clock) -> None:
    config = parse_config(
        f"""
        [[resources]]
        indicator = "{SHOP}"
        scopes = ["read:products"]
        ttl = 600
        [roles.reader]
        permissions = {{ "{SHOP}" = ["read:products"] }}
        [[apps]]
        id = "a"
        secret = "s"
        roles = ["reader"]
        """
    )
    issuer = DevIssuer(config, clock=clock)
    body = issuer.issue("a", SHOP, ["read:products"])
    assert body["expires_in"] == 600
    claims = decode(body["access_token"])[1]
    assert claims["exp"] - claims["iat"] == 600


BASIC_GARBAGE = {"Authorization": "Basic !!not-base64!!"}
RAW_GRANT = "grant_type=client_credentials"


@pytest.mark.parametrize(
    ("request_args", "status", "error"),
    [
        ({"auth": ("shopping-admin", "wrong"), "data": GRANT}, 401, "invalid_client"),
        (
            {"auth": ("nobody", "dev-only-shopping-admin-secret"), "data": GRANT},
            401,
            "invalid_client",
        ),
        ({"data": GRANT}, 401, "invalid_client"),
        ({"data": {**GRANT, "client_id": "shopping-admin"}}, 401, "invalid_client"),
        ({"headers": BASIC_GARBAGE, "data": GRANT}, 401, "invalid_client"),
        ({"headers": {"Authorization": "Bearer abc"}, "data": GRANT}, 401, "invalid_client"),
        ({"auth": ADMIN, "json": GRANT}, 400, "invalid_request"),
        ({"auth": ADMIN, "content": b"grant_type=client_credentials"}, 400, "invalid_request"),
        ({"auth": ADMIN, "data": {"resource": SHOP}}, 400, "invalid_request"),
        (
            {"auth": ADMIN, "headers": FORM, "content": f"{RAW_GRANT}&scope=a&scope=b"},
            400,
            "invalid_request",
        ),
        ({"auth": ADMIN, "data": {**GRANT, "client_secret": ADMIN[1]}}, 400, "invalid_request"),
        ({"auth": ADMIN, "data": {**GRANT, "client_id": "stats-service"}}, 400, "invalid_request"),
        ({"auth": ADMIN, "headers": FORM, "content": b"grant_type=\xff"}, 400, "invalid_request"),
        ({"auth": ADMIN, "data": {"grant_type": "password"}}, 400, "unsupported_grant_type"),
        ({"auth": ADMIN, "data": {**GRANT, "resource": "https://nope.api"}}, 400, "invalid_target"),
        (
            {"auth": ADMIN, "headers": FORM, "content": f"{RAW_GRANT}&resource=a&resource=b"},
            400,
            "invalid_target",
        ),
    ],
    ids=[
        "wrong-secret",
        "unknown-app",
        "no-client-auth",
        "client-id-without-secret",
        "malformed-basic",
        "not-basic",
        "json-body",
        "no-content-type",
        "missing-grant-type",
        "duplicate-parameter",
        "both-auth-methods",
        "client-id-mismatch",
        "invalid-utf8",
        "unsupported-grant-type",
        "unknown-resource",
        "two-resources",
    ],
)
def test_token_errors(
    client: AppClient, request_args: dict[str, Any], status: int, error: str
) -> None:
    response = client.post("/oidc/token", **request_args)
    assert response.status_code == status
    body = response.json()
    assert set(body) == {"error", "error_description"}
    assert body["error"] == error
    assert body["error_description"]
    assert response.headers["cache-control"] == "no-store"
    if status == 401:
        assert response.headers["www-authenticate"] == f'Basic realm="{DEFAULT_ISSUER}"'
    else:
        assert "www-authenticate" not in response.headers


def test_oversized_body_is_refused(client: AppClient) -> None:
    big = b"grant_type=client_credentials&x=" + b"a" * 70_000
    response = client.post("/oidc/token", auth=ADMIN, headers=FORM, content=big)
    assert response.status_code == 413
    assert response.json()["error"] == "invalid_request"

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit holds while reading
        for _ in range(20):
            yield b"a" * 4096

    response = client.post("/oidc/token", auth=ADMIN, headers=FORM, content=chunks())
    assert response.status_code == 413


def test_issue_refuses_unknown_app(issuer: DevIssuer) -> None:
    with pytest.raises(OAuthError) as caught:
        issuer.issue("nobody")
    assert caught.value.error == "invalid_client"


# -- CORS -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "origin", ["http://127.0.0.1:8000", "http://localhost:8000", "http://[::1]:8000"]
)
def test_cors_for_loopback_origins(client: AppClient, origin: str) -> None:
    preflight = client.options(
        "/oidc/token",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type,x-requested-with",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == origin
    assert preflight.headers["access-control-allow-methods"] == "POST"
    allowed = {
        h.strip().lower() for h in preflight.headers["access-control-allow-headers"].split(",")
    }
    assert {"authorization", "content-type", "x-requested-with"} <= allowed

    response = client.post("/oidc/token", auth=ADMIN, data=GRANT, headers={"Origin": origin})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == origin
    failed = client.post("/oidc/token", auth=("x", "y"), data=GRANT, headers={"Origin": origin})
    assert failed.status_code == 401  # the page can read the error too
    assert failed.headers["access-control-allow-origin"] == origin


@pytest.mark.parametrize(
    "origin", ["https://evil.example", "http://127.0.0.1.evil.example:8000", "null"]
)
def test_cors_refused_for_other_origins(client: AppClient, origin: str) -> None:
    preflight = client.options(
        "/oidc/token", headers={"Origin": origin, "Access-Control-Request-Method": "POST"}
    )
    assert preflight.status_code == 403
    assert "access-control-allow-origin" not in preflight.headers
    response = client.post("/oidc/token", auth=ADMIN, data=GRANT, headers={"Origin": origin})
    assert response.status_code == 403
    assert "access-control-allow-origin" not in response.headers
    assert "access_token" not in response.text


# -- keys -----------------------------------------------------------------------------------------


def test_keys_persist_across_restarts(key_file: Path, clock: Clock) -> None:
    first = DevIssuer(keys=KeyStore(key_file), clock=clock)
    token = first.issue("stats-service", SHOP, "read:products")["access_token"]
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert json.loads(key_file.read_text())["keys"][0]["kid"] == first.keys.current.kid

    restarted = DevIssuer(keys=KeyStore(key_file), clock=clock)
    assert restarted.keys.current.kid == first.keys.current.kid
    assert verify(restarted, token, clock).sub == "stats-service"


def test_key_file_is_private_whatever_the_umask(key_file: Path) -> None:
    old = os.umask(0)
    try:
        KeyStore(key_file)
    finally:
        os.umask(old)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_rotate_key_keeps_previous_key_published(issuer: DevIssuer, clock: Clock) -> None:
    old_kid = issuer.keys.current.kid
    old_token = issuer.issue("stats-service", SHOP, "read:products")["access_token"]
    new = issuer.rotate_key()
    assert new.kid != old_kid
    assert [k["kid"] for k in issuer.keys.jwks()["keys"]] == [old_kid, new.kid]

    new_token = issuer.issue("stats-service", SHOP, "read:products")["access_token"]
    assert decode(new_token)[0]["kid"] == new.kid
    assert verify(issuer, old_token, clock).sub == "stats-service"
    assert verify(issuer, new_token, clock).sub == "stats-service"

    for _ in range(3):
        issuer.rotate_key()
    kids = [k["kid"] for k in issuer.keys.jwks()["keys"]]
    assert len(kids) == 3
    assert old_kid not in kids
    with pytest.raises(InvalidToken, match="unknown signing key"):
        verify(issuer, old_token, clock)


def test_running_issuer_sees_rotation_from_another_process(
    client: AppClient, issuer: DevIssuer, key_file: Path
) -> None:
    before = issuer.keys.current.kid
    rotated = KeyStore(key_file).rotate("RS256")  # as `bearerguard dev-issuer rotate-key` does
    kids = [k["kid"] for k in client.get("/oidc/jwks").json()["keys"]]
    assert kids == [before, rotated.kid]
    header = decode(request_token(client).json()["access_token"])[0]
    assert header == {"alg": "RS256", "typ": "at+jwt", "kid": rotated.kid}


def test_rs256_keys(clock: Clock) -> None:
    issuer = DevIssuer(keys=KeyStore(alg="RS256"), clock=clock)
    (jwk,) = issuer.keys.jwks()["keys"]
    assert jwk["kty"] == "RSA"
    assert "alg" not in jwk
    assert jwk["kid"] == thumbprint(jwk)
    token = issuer.issue("shopping-admin", SHOP, "write:products")["access_token"]
    assert jwt.get_unverified_header(token)["alg"] == "RS256"
    assert verify(issuer, token, clock).scopes == {"write:products"}


@pytest.mark.parametrize("content", ["not json", '{"format": "other"}', '{"keys": []}'])
def test_unusable_key_file(key_file: Path, content: str) -> None:
    key_file.parent.mkdir(parents=True)
    key_file.write_text(content)
    with pytest.raises(ConfigurationError, match="not a usable dev issuer key file"):
        KeyStore(key_file)


def test_unsupported_algorithm() -> None:
    with pytest.raises(ConfigurationError, match="unsupported signing algorithm"):
        KeyStore(alg="HS256")


# -- configuration --------------------------------------------------------------------------------


def test_example_config_is_the_built_in_default() -> None:
    builtin = Path(devissuer.__file__).parent / "default.toml"
    assert builtin.read_text() == EXAMPLE.read_text()
    assert load_config() == load_config(EXAMPLE)
    config = load_config(EXAMPLE)
    assert config.default_resource == SHOP
    admin, stats = config.app("shopping-admin"), config.app("stats-service")
    shop = config.resource(SHOP)
    assert admin
    assert stats
    assert shop
    assert config.granted_scopes(admin, shop) == {"read:products", "write:products"}
    assert config.granted_scopes(stats, shop) == {"read:products"}
    assert "dev-only" in admin.secret
    assert admin.secret not in repr(admin)


RESOURCE = f'[[resources]]\nindicator = "{SHOP}"\nscopes = ["read:products"]\n'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("resources = [", "not valid TOML"),
        ("", "at least one [[resources]]"),
        (RESOURCE + 'colour = "blue"', "unknown key(s) colour"),
        (RESOURCE + RESOURCE, "defined twice"),
        ('[[resources]]\nindicator = "shopping"', "absolute URI"),
        (RESOURCE + "ttl = 0", "ttl must be between"),
        (RESOURCE + 'ttl = "1h"', "ttl must be an integer"),
        ('[[resources]]\nindicator = "https://a"\nscopes = ["read products"]', "not a valid scope"),
        (RESOURCE + '[roles.r]\npermissions = { "https://x" = ["a"] }', "unknown resource"),
        (RESOURCE + f'[roles.r]\npermissions = {{ "{SHOP}" = ["write"] }}', "not defined on"),
        (RESOURCE + '[[apps]]\nid = "a"\nsecret = "s"\nroles = ["nope"]', "unknown role 'nope'"),
        (RESOURCE + '[[apps]]\nid = "a"', "secret must be a non-empty string"),
        (RESOURCE + '[[apps]]\nid = "a"\nsecret = "s"\n' * 2, "id 'a' is defined twice"),
        ('default_resource = "https://x"\n' + RESOURCE, "default_resource 'https://x'"),
        ("apps = 3\n" + RESOURCE, "apps: must be an array"),
    ],
)
def test_config_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=r"^my\.toml: ") as caught:
        parse_config(text, "my.toml")
    assert message in str(caught.value)


def test_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read the config file"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[[apps]]\nid = 1\n")
    with pytest.raises(ConfigurationError, match=r"bad\.toml: apps\[0\]: id must be"):
        load_config(bad)


# -- over real HTTP -------------------------------------------------------------------------------


def test_serve_over_loopback_http(key_file: Path) -> None:
    issuer = DevIssuer(keys=KeyStore(key_file))
    with issuer.serve() as url:
        assert url.startswith("http://127.0.0.1:")
        assert url.endswith("/oidc")
        assert url != DEFAULT_ISSUER
        assert httpx.get(url + "/.well-known/openid-configuration").json()["issuer"] == url
        response = httpx.post(
            url + "/token", auth=STATS, data={**GRANT, "scope": "read:products"}, timeout=5
        )
        assert response.status_code == 200
        server = ResourceServer(url, SHOP, require_typ=True)
        token = server.authenticate("Bearer " + response.json()["access_token"])
        assert token.issuer == url
        assert token.scopes == {"read:products"}
    assert issuer.issuer == DEFAULT_ISSUER
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/jwks", timeout=2)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "example.com"])
def test_serve_refuses_public_addresses(host: str) -> None:
    with pytest.raises(ConfigurationError, match="refusing to listen"), DevIssuer().serve(host):
        pass  # pragma: no cover


def test_create_app_is_the_starlette_app(clock: Clock) -> None:
    app = create_app(issuer="http://localhost:9000/custom", clock=clock)
    client = AppClient(app)
    assert client.get("/custom/.well-known/openid-configuration").json()["token_endpoint"] == (
        "http://localhost:9000/custom/token"
    )
    assert client.post("/custom/token", auth=ADMIN, data=GRANT).status_code == 200


def test_issuer_must_be_an_http_url() -> None:
    with pytest.raises(ConfigurationError, match="issuer must be"):
        DevIssuer(issuer="ftp://x/oidc")


def test_an_mcp_servers_url_is_a_resource_indicator_on_loopback_only(tmp_path: Path) -> None:
    config = load_config(EXAMPLE)
    mcp = config.resource("http://127.0.0.1:8003/mcp")
    assert mcp is not None
    stats = config.app("stats-service")
    assert stats is not None
    assert config.granted_scopes(stats, mcp) == {"read:products"}
    text = EXAMPLE.read_text().replace("http://127.0.0.1:8003/mcp", "http://mcp.example.com/mcp")
    with pytest.raises(ConfigurationError, match="http:// indicator must be on loopback"):
        parse_config(text)
