"""FastAPI: BearerAuth as a Security/Depends dependency, without the middleware, and OpenAPI."""

# No "from __future__ import annotations": FastAPI must resolve the Annotated[...] of routes
# defined inside build_app(), whose names exist only in that function.
import logging
import socket
import time
from typing import Annotated, Any

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, Security
from faults import TRICKLE_HEADERS, FaultyIssuer
from pydantic import BaseModel
from recorder import Recorder
from starlette.testclient import TestClient

from bearerguard import AccessToken, ResourceServer, require_scopes
from bearerguard.asgi import BearerAuthMiddleware
from bearerguard.fastapi import BearerAuth, add_exception_handler
from bearerguard.testing import LocalIssuer

NOW = 1_800_000_000.0
AUDIENCE = "https://api.test"
SCOPES = {
    "read": "Read things",
    "write": "Change things",
    "audit": "Read the audit log",
    "admin": "Administer",
}


def clock() -> float:
    return NOW


@pytest.fixture
def issuer() -> LocalIssuer:
    return LocalIssuer(audience=AUDIENCE, clock=clock)


@pytest.fixture
def server(issuer: LocalIssuer) -> ResourceServer:
    return issuer.resource_server()


def unreachable(issuer: LocalIssuer, asked: list[str] | None = None) -> ResourceServer:
    def refuse(request: httpx.Request) -> httpx.Response:
        if asked is not None:
            asked.append(str(request.url))
        raise httpx.ConnectError("refused", request=request)

    return ResourceServer(
        issuer.issuer,
        AUDIENCE,
        require_typ=True,
        transport=httpx.MockTransport(refuse),
        clock=clock,
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Thing(BaseModel):
    name: str


def describe(token: AccessToken) -> dict[str, Any]:
    assert isinstance(token, AccessToken)
    return {"sub": token.sub, "scopes": sorted(token.scopes)}


def build_app(
    server: ResourceServer, *, explicit_handler: bool = False, token_url: str | None = None
) -> FastAPI:
    auth = BearerAuth(server, scopes=SCOPES, token_url=token_url)
    any_of = auth.any_of()
    app = FastAPI()
    if explicit_handler:
        add_exception_handler(app)

    @app.get("/public")
    def public() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/read")
    async def read(
        token: Annotated[AccessToken, Security(auth, scopes=["read"])],
    ) -> dict[str, Any]:
        return describe(token)

    @app.get("/read-sync")
    def read_sync(
        token: Annotated[AccessToken, Security(auth, scopes=["read"])],
    ) -> dict[str, Any]:
        return describe(token)

    @app.post("/write", status_code=201)
    async def write(
        thing: Thing, token: Annotated[AccessToken, Security(auth, scopes=["read", "write"])]
    ) -> dict[str, Any]:
        return {"name": thing.name, **describe(token)}

    @app.get("/either")
    async def either(
        token: Annotated[AccessToken, Security(any_of, scopes=["read", "audit"])],
    ) -> dict[str, Any]:
        return describe(token)

    @app.get("/me")
    async def me(token: Annotated[AccessToken, Depends(auth)]) -> dict[str, Any]:
        return describe(token)

    def current_sub(token: Annotated[AccessToken, Security(auth, scopes=["read"])]) -> str:
        return token.sub or ""

    @app.get("/nested")
    def nested(sub: Annotated[str, Depends(current_sub)]) -> dict[str, str]:
        return {"sub": sub}

    router = APIRouter(prefix="/admin", dependencies=[Security(auth, scopes=["admin"])])

    @router.get("/stats")
    def stats() -> dict[str, int]:
        return {"users": 3}

    app.include_router(router)

    # Scope checks made in the route body, on a token the dependency verified.
    @app.get("/body/check-scopes")
    async def body_check_scopes(
        token: Annotated[AccessToken, Security(auth, scopes=["read"])],
    ) -> dict[str, Any]:
        server.check_scopes(token, "admin")
        return describe(token)

    @app.get("/body/require-scopes")
    async def body_require_scopes(token: Annotated[AccessToken, Depends(auth)]) -> dict[str, Any]:
        require_scopes(token, "admin")  # raises without a realm
        return describe(token)

    @app.get("/body/require-scopes-sync")
    def body_require_scopes_sync(
        token: Annotated[AccessToken, Security(auth, scopes=["read"])],
    ) -> dict[str, Any]:
        require_scopes(token, "admin")
        return describe(token)

    return app


@pytest.fixture(params=[False, True], ids=["implicit-handler", "explicit-handler"])
def client(request: pytest.FixtureRequest, server: ResourceServer) -> TestClient:
    return TestClient(
        build_app(server, explicit_handler=request.param), raise_server_exceptions=False
    )


def assert_error(
    response: httpx.Response, status: int, error: str | None, scope: str | None = None
) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert "detail" not in body
    assert set(body) >= {"error", "error_description"}
    assert response.headers["content-type"] == "application/json"
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith(f'Bearer realm="{AUDIENCE}"')
    if error is None:
        assert "error=" not in challenge
    else:
        assert f'error="{error}"' in challenge
        assert body["error"] == error
    if scope is not None:
        assert f'scope="{scope}"' in challenge


ROUTES = [
    ("GET", "/read", "read"),
    ("GET", "/read-sync", "read"),
    ("POST", "/write", "read write"),
    ("GET", "/either", "read audit"),
    ("GET", "/me", None),
    ("GET", "/nested", "read"),
    ("GET", "/admin/stats", "admin"),
]


@pytest.mark.parametrize(("method", "path", "scopes"), ROUTES)
def test_errors_are_rendered_by_bearerguard(
    client: TestClient, issuer: LocalIssuer, method: str, path: str, scopes: str | None
) -> None:
    body = {"json": {"name": "x"}} if method == "POST" else {}

    def call(headers: Any = None) -> httpx.Response:
        return client.request(method, path, headers=headers, **body)  # type: ignore[arg-type]

    assert_error(call(), 401, None)
    assert_error(call({"Authorization": "Basic eHl6"}), 401, None)
    assert_error(call({"Authorization": "Bearer"}), 400, "invalid_request")
    assert_error(call({"Authorization": "Bearer a b"}), 400, "invalid_request")
    assert_error(call({"Authorization": "Bearer a,b"}), 400, "invalid_request")
    token = issuer.mint("read")
    assert_error(call([("Authorization", f"Bearer {token}")] * 2), 400, "invalid_request")
    assert_error(call(bearer(issuer.tampered(token))), 401, "invalid_token")
    assert_error(call(bearer(issuer.expired("read write audit admin"))), 401, "invalid_token")
    assert_error(call(bearer(issuer.mint("read", header={"typ": "JWT"}))), 401, "invalid_token")
    if scopes is not None:
        assert_error(call(bearer(issuer.mint("other"))), 403, "insufficient_scope", scopes)


@pytest.mark.parametrize(("method", "path", "scopes"), ROUTES)
def test_valid_tokens_pass(
    client: TestClient, issuer: LocalIssuer, method: str, path: str, scopes: str | None
) -> None:
    body = {"json": {"name": "x"}} if method == "POST" else {}
    token = issuer.mint("read write audit admin", sub="eve")
    response = client.request(method, path, headers=bearer(token), **body)  # type: ignore[arg-type]
    assert response.status_code in (200, 201), response.text


def test_dependency_returns_the_access_token(client: TestClient, issuer: LocalIssuer) -> None:
    response = client.get("/read", headers=bearer(issuer.mint("read audit", sub="eve")))
    assert response.json() == {"sub": "eve", "scopes": ["audit", "read"]}
    response = client.get("/me", headers=bearer(issuer.mint(sub="fay")))
    assert response.json() == {"sub": "fay", "scopes": []}
    response = client.get("/nested", headers=bearer(issuer.mint("read", sub="gus")))
    assert response.json() == {"sub": "gus"}


def test_all_of_and_any_of(client: TestClient, issuer: LocalIssuer) -> None:
    write = {"json": {"name": "pen"}}
    ok = client.post("/write", headers=bearer(issuer.mint("read write")), **write)
    assert ok.status_code == 201
    assert ok.json()["name"] == "pen"
    for scopes in ("read", "write"):
        response = client.post("/write", headers=bearer(issuer.mint(scopes)), **write)
        assert_error(response, 403, "insufficient_scope", "read write")
    for scopes in ("read", "audit"):
        assert client.get("/either", headers=bearer(issuer.mint(scopes))).status_code == 200
    assert_error(
        client.get("/either", headers=bearer(issuer.mint("write"))),
        403,
        "insufficient_scope",
        "read audit",
    )


def test_auth_is_checked_before_the_body(client: TestClient, issuer: LocalIssuer) -> None:
    # A bad body without a token is 401, not FastAPI's 422.
    assert_error(client.post("/write", json={"nope": 1}), 401, None)
    response = client.post("/write", headers=bearer(issuer.mint("read write")), json={"nope": 1})
    assert response.status_code == 422


def test_public_route_needs_nothing(client: TestClient) -> None:
    response = client.get("/public", headers={"Authorization": "Bearer a b"})
    assert response.status_code == 200


@pytest.mark.parametrize("explicit_handler", [False, True])
def test_issuer_down_is_503_with_retry_after(issuer: LocalIssuer, explicit_handler: bool) -> None:
    app = build_app(unreachable(issuer), explicit_handler=explicit_handler)
    client = TestClient(app, raise_server_exceptions=False)
    for path in ("/read", "/read-sync", "/me", "/admin/stats"):
        response = client.get(path, headers=bearer(issuer.mint("read admin")))
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] == "1"
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert response.json()["error"] == "temporarily_unavailable"
        assert "detail" not in response.json()


def test_reuses_the_token_verified_by_the_middleware(
    issuer: LocalIssuer, server: ResourceServer
) -> None:
    seen = Recorder()
    server.observer = seen
    app = build_app(server)
    app.add_middleware(BearerAuthMiddleware, server=server, public=["/public"])
    client = TestClient(app, raise_server_exceptions=False)
    response = client.get("/read", headers=bearer(issuer.mint("read", sub="hal")))
    assert response.status_code == 200
    assert response.json()["sub"] == "hal"
    assert_error(
        client.get("/read", headers=bearer(issuer.mint("write"))),
        403,
        "insufficient_scope",
        "read",
    )
    # Each token verified once, by the middleware; the dependency reused it (and refused
    # the second for its scopes without verifying it again).
    assert [(e.result, e.cached) for e in seen.events] == [
        ("success", False),
        ("success", False),
        ("failure", None),
    ]


def test_verifies_again_a_token_another_server_verified(issuer: LocalIssuer) -> None:
    # The middleware's server is another API's: its verdict is not this dependency's.
    asked: list[str] = []
    app = build_app(unreachable(issuer, asked))
    app.add_middleware(BearerAuthMiddleware, server=issuer.resource_server(), public=["/public"])
    client = TestClient(app, raise_server_exceptions=False)
    response = client.get("/read", headers=bearer(issuer.mint("read", sub="hal")))
    assert response.status_code == 503
    assert asked


ADMIN_CHALLENGE = (
    f'Bearer realm="{AUDIENCE}", error="insufficient_scope", '
    'error_description="token lacks the scopes: admin", scope="admin", '
    f'resource_metadata="{AUDIENCE}/.well-known/oauth-protected-resource"'
)
ADMIN_BODY = {
    "error": "insufficient_scope",
    "error_description": "token lacks the scopes: admin",
    "scope": "admin",
}


@pytest.mark.parametrize("explicit_handler", [False, True])
@pytest.mark.parametrize(
    "path", ["/body/check-scopes", "/body/require-scopes", "/body/require-scopes-sync"]
)
def test_scope_error_in_the_route_body_is_403_from_the_first_request(
    server: ResourceServer, issuer: LocalIssuer, explicit_handler: bool, path: str
) -> None:
    # A fresh app: no earlier request has failed inside BearerAuth. The answer must not
    # depend on that (it was 500 until some request had failed in the dependency).
    app = build_app(server, explicit_handler=explicit_handler)
    client = TestClient(app, raise_server_exceptions=False)
    headers = bearer(issuer.mint("read"))
    first = client.get(path, headers=headers)
    assert first.status_code == 403, first.text
    assert first.headers["www-authenticate"] == ADMIN_CHALLENGE
    assert first.json() == ADMIN_BODY
    assert_error(first, 403, "insufficient_scope", "admin")
    # The same answer as a scope failure inside the dependency, and the same afterwards.
    dependency = client.get("/admin/stats", headers=headers)
    assert dependency.status_code == 403
    assert dependency.headers["www-authenticate"] == first.headers["www-authenticate"]
    assert dependency.json() == first.json()
    again = client.get(path, headers=headers)
    assert (again.status_code, again.json()) == (403, ADMIN_BODY)
    assert again.headers["www-authenticate"] == ADMIN_CHALLENGE


# -- OpenAPI --------------------------------------------------------------------------------------


def test_openapi_security_scheme(server: ResourceServer, issuer: LocalIssuer) -> None:
    document = TestClient(build_app(server)).get("/openapi.json").json()
    schemes = document["components"]["securitySchemes"]
    assert list(schemes) == ["OAuth2ClientCredentials"]
    scheme = schemes["OAuth2ClientCredentials"]
    assert scheme["type"] == "oauth2"
    assert scheme["description"]
    assert scheme["flows"] == {
        "clientCredentials": {"tokenUrl": issuer.issuer + "/token", "scopes": SCOPES}
    }


def token_url(client: TestClient) -> str:
    document = client.get("/openapi.json").json()
    flow = document["components"]["securitySchemes"]["OAuth2ClientCredentials"]["flows"]
    return flow["clientCredentials"]["tokenUrl"]  # type: ignore[no-any-return]


def test_openapi_token_url_can_be_set(issuer: LocalIssuer) -> None:
    asked: list[str] = []
    app = build_app(unreachable(issuer, asked), token_url="https://tenant.logto.app/oidc/token")
    assert token_url(TestClient(app)) == "https://tenant.logto.app/oidc/token"
    assert asked == []  # an explicit token_url needs no discovery


class Auth0LikeIssuer(LocalIssuer):
    """A LocalIssuer whose discovery names its token endpoint ``/oauth/token`` (as Auth0's)."""

    def metadata(self) -> dict[str, Any]:
        token_endpoint = str(httpx.URL(self.issuer).join("/oauth/token"))
        return {**super().metadata(), "token_endpoint": token_endpoint}


def discoveries(issuer: LocalIssuer) -> int:
    return sum(".well-known" in path for path in issuer.requests)


def test_openapi_token_url_is_discovered() -> None:
    issuer = Auth0LikeIssuer(audience=AUDIENCE, clock=clock)
    with issuer.serve() as url:
        server = ResourceServer(url, AUDIENCE, require_typ=True, clock=clock, fetch_timeout=5)
        client = TestClient(build_app(server))
        assert token_url(client) == url.removesuffix("/oidc") + "/oauth/token"
    assert discoveries(issuer) == 1


def test_openapi_token_url_reuses_the_discovery_made_for_the_keys() -> None:
    issuer = Auth0LikeIssuer(audience=AUDIENCE, clock=clock)
    with issuer.serve() as url:
        server = ResourceServer(url, AUDIENCE, require_typ=True, clock=clock, fetch_timeout=5)
        client = TestClient(build_app(server))
        assert client.get("/read", headers=bearer(issuer.mint("read"))).status_code == 200
        assert discoveries(issuer) == 1
        assert token_url(client) == url.removesuffix("/oidc") + "/oauth/token"
    assert discoveries(issuer) == 1  # no second discovery for the docs


def closed_port_issuer() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/oidc"


def test_openapi_token_url_falls_back_when_the_issuer_is_unreachable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = closed_port_issuer()
    server = ResourceServer(url, AUDIENCE, clock=clock, fetch_timeout=2)
    with caplog.at_level(logging.WARNING, logger="bearerguard"):
        assert token_url(TestClient(build_app(server))) == url + "/token"
    assert "token endpoint" in caplog.text


def test_openapi_token_url_discovery_is_bounded_in_time() -> None:
    # Response headers trickled a byte at a time never trip httpx's read timeout.
    with FaultyIssuer(audience=AUDIENCE) as faulty:
        faulty.set_mode(TRICKLE_HEADERS)
        server = ResourceServer(faulty.url, AUDIENCE, clock=clock, fetch_timeout=0.3)
        started = time.monotonic()
        assert token_url(TestClient(build_app(server))) == faulty.url + "/token"
        assert time.monotonic() - started < 2


def test_openapi_lists_each_routes_scopes(server: ResourceServer) -> None:
    paths = TestClient(build_app(server)).get("/openapi.json").json()["paths"]

    def security(method: str, path: str) -> list[dict[str, list[str]]]:
        return paths[path][method.lower()].get("security", [])  # type: ignore[no-any-return]

    assert security("GET", "/read") == [{"OAuth2ClientCredentials": ["read"]}]
    assert security("GET", "/read-sync") == [{"OAuth2ClientCredentials": ["read"]}]
    assert security("GET", "/nested") == [{"OAuth2ClientCredentials": ["read"]}]
    assert security("GET", "/admin/stats") == [{"OAuth2ClientCredentials": ["admin"]}]
    assert security("GET", "/me") == [{"OAuth2ClientCredentials": []}]
    [write] = security("POST", "/write")
    assert sorted(write["OAuth2ClientCredentials"]) == ["read", "write"]
    [either] = security("GET", "/either")
    assert sorted(either["OAuth2ClientCredentials"]) == ["audit", "read"]
    assert security("GET", "/public") == []
