"""The Starlette endpoint decorator: ``@protect(...)`` on functions and HTTPEndpoint methods."""

from __future__ import annotations

import threading
from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.endpoints import HTTPEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from bearerguard import AccessToken, ResourceServer
from bearerguard.asgi import BearerAuthMiddleware
from bearerguard.starlette import Protect
from bearerguard.testing import LocalIssuer

NOW = 1_800_000_000.0
AUDIENCE = "https://api.test"


def clock() -> float:
    return NOW


@pytest.fixture
def issuer() -> LocalIssuer:
    return LocalIssuer(audience=AUDIENCE, clock=clock)


@pytest.fixture
def server(issuer: LocalIssuer) -> ResourceServer:
    return issuer.resource_server()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def describe(request: Request, how: str) -> JSONResponse:
    token = request.auth
    assert isinstance(token, AccessToken)
    assert request.scope["auth"] is token
    return JSONResponse(
        {
            "how": how,
            "sub": token.sub,
            "scopes": sorted(token.scopes),
            "authenticated": request.user.is_authenticated,
        }
    )


def build_app(server: ResourceServer) -> Starlette:
    protect = Protect(server)

    @protect("read")
    async def async_read(request: Request) -> JSONResponse:
        return describe(request, "async")

    @protect("read")
    def sync_read(request: Request) -> JSONResponse:
        # Starlette runs sync endpoints in a worker thread.
        assert threading.current_thread() is not threading.main_thread()
        return describe(request, "sync")

    @protect("read", "write")
    async def both(request: Request) -> JSONResponse:
        return describe(request, "all-of")

    @protect("read write")
    def both_spaced(request: Request) -> JSONResponse:
        return describe(request, "all-of")

    @protect("read", "audit", any_of=True)
    async def either(request: Request) -> JSONResponse:
        return describe(request, "any-of")

    @protect("read", "audit", any_of=True)
    def either_sync(request: Request) -> JSONResponse:
        return describe(request, "any-of")

    @protect()
    async def anyone(request: Request) -> JSONResponse:
        return describe(request, "authenticated")

    class Items(HTTPEndpoint):
        @protect("read")
        async def get(self, request: Request) -> JSONResponse:
            assert isinstance(self, Items)
            return describe(request, "endpoint-get")

        @protect("write")
        def post(self, request: Request) -> JSONResponse:
            assert isinstance(self, Items)
            return describe(request, "endpoint-post")

    return Starlette(
        routes=[
            Route("/async", async_read),
            Route("/sync", sync_read),
            Route("/both", both),
            Route("/both-spaced", both_spaced),
            Route("/either", either),
            Route("/either-sync", either_sync),
            Route("/anyone", anyone),
            Route("/items", Items),
        ]
    )


@pytest.fixture
def client(server: ResourceServer) -> TestClient:
    return TestClient(build_app(server))


def assert_error(
    response: httpx.Response, status: int, error: str | None, scope: str | None = None
) -> None:
    assert response.status_code == status, response.text
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith(f'Bearer realm="{AUDIENCE}"')
    if error is None:
        assert "error=" not in challenge
    else:
        assert f'error="{error}"' in challenge
        assert response.json()["error"] == error
    if scope is not None:
        assert f'scope="{scope}"' in challenge
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    assert set(response.json()) >= {"error", "error_description"}


@pytest.mark.parametrize(
    ("path", "method", "how"),
    [
        ("/async", "GET", "async"),
        ("/sync", "GET", "sync"),
        ("/items", "GET", "endpoint-get"),
    ],
)
def test_read_endpoints(
    client: TestClient, issuer: LocalIssuer, path: str, method: str, how: str
) -> None:
    response = client.request(method, path, headers=bearer(issuer.mint("read", sub="ann")))
    assert response.status_code == 200, response.text
    assert response.json() == {
        "how": how,
        "sub": "ann",
        "scopes": ["read"],
        "authenticated": True,
    }
    assert_error(client.request(method, path), 401, None)
    assert_error(
        client.request(method, path, headers={"Authorization": "Bearer a b"}),
        400,
        "invalid_request",
    )
    tampered = issuer.tampered(issuer.mint("read"))
    assert_error(client.request(method, path, headers=bearer(tampered)), 401, "invalid_token")
    expired = issuer.expired("read")
    assert_error(client.request(method, path, headers=bearer(expired)), 401, "invalid_token")
    no_scope = issuer.mint("write")
    assert_error(
        client.request(method, path, headers=bearer(no_scope)), 403, "insufficient_scope", "read"
    )


def test_sync_method_endpoint(client: TestClient, issuer: LocalIssuer) -> None:
    response = client.post("/items", headers=bearer(issuer.mint("write")))
    assert response.status_code == 200
    assert response.json()["how"] == "endpoint-post"
    # a read token cannot post; an invalid write token is 401, not 403
    assert_error(
        client.post("/items", headers=bearer(issuer.mint("read"))),
        403,
        "insufficient_scope",
        "write",
    )
    tampered = issuer.tampered(issuer.mint("write"))
    assert_error(client.post("/items", headers=bearer(tampered)), 401, "invalid_token")


@pytest.mark.parametrize("path", ["/both", "/both-spaced"])
def test_all_of(client: TestClient, issuer: LocalIssuer, path: str) -> None:
    assert client.get(path, headers=bearer(issuer.mint("read write"))).status_code == 200
    assert client.get(path, headers=bearer(issuer.mint(["write", "read", "x"]))).status_code == 200
    for scopes in ("read", "write", None):
        response = client.get(path, headers=bearer(issuer.mint(scopes)))
        assert_error(response, 403, "insufficient_scope", "read write")


@pytest.mark.parametrize("path", ["/either", "/either-sync"])
def test_any_of(client: TestClient, issuer: LocalIssuer, path: str) -> None:
    for scopes in ("read", "audit", "audit read"):
        response = client.get(path, headers=bearer(issuer.mint(scopes)))
        assert response.status_code == 200
        assert response.json()["how"] == "any-of"
    for scopes in ("write", None):
        response = client.get(path, headers=bearer(issuer.mint(scopes)))
        assert_error(response, 403, "insufficient_scope", "read audit")


def test_no_scopes_needs_only_a_valid_token(client: TestClient, issuer: LocalIssuer) -> None:
    assert client.get("/anyone", headers=bearer(issuer.mint())).json()["scopes"] == []
    assert_error(client.get("/anyone"), 401, None)
    assert_error(client.get("/anyone", headers={"Authorization": "Basic eHl6"}), 401, None)


def test_several_authorization_headers(client: TestClient, issuer: LocalIssuer) -> None:
    token = issuer.mint("read")
    headers = [("Authorization", f"Bearer {token}"), ("Authorization", f"Bearer {token}")]
    for path in ("/async", "/sync"):
        assert_error(client.get(path, headers=headers), 400, "invalid_request")


def test_issuer_down_is_503(issuer: LocalIssuer) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    down = ResourceServer(
        issuer.issuer,
        AUDIENCE,
        require_typ=True,
        transport=httpx.MockTransport(refuse),
        clock=clock,
    )
    client = TestClient(build_app(down))
    for path in ("/async", "/sync", "/items"):
        response = client.get(path, headers=bearer(issuer.mint("read")))
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert response.json()["error"] == "temporarily_unavailable"


def test_reuses_the_token_verified_by_the_middleware(
    issuer: LocalIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The decorator must not verify again what the middleware verified with its server."""
    server = issuer.resource_server(token_cache_size=0)
    calls: list[str] = []
    monkeypatch.setattr(server, "_finish", counting_finish(server, calls))
    client = TestClient(BearerAuthMiddleware(build_app(server), server=server))
    for path in ("/async", "/sync", "/items"):
        calls.clear()
        response = client.get(path, headers=bearer(issuer.mint("read", sub="dan")))
        assert response.status_code == 200, response.text
        assert response.json()["sub"] == "dan"
        assert calls == ["finish"]  # one signature check: the middleware's
        # the decorator still applies its own scope requirement to the reused token
        response = client.get(path, headers=bearer(issuer.mint("write")))
        assert_error(response, 403, "insufficient_scope", "read")


def counting_finish(server: ResourceServer, calls: list[str]) -> Any:
    finish = server._finish

    def counted(*args: Any) -> AccessToken:
        calls.append("finish")
        return finish(*args)

    return counted


def test_a_token_verified_for_another_api_is_verified_again(issuer: LocalIssuer) -> None:
    """Two resource servers in one app: B's routes never take a token A's guard verified.

    One issuer, two APIs: the middleware guards "https://other.api", the decorators guard
    AUDIENCE. A token for the other API holding "read" must not pass the decorators.
    """
    outer = ResourceServer(
        issuer.issuer,
        "https://other.api",
        require_typ=True,
        transport=issuer.transport(),
        clock=clock,
    )
    app = BearerAuthMiddleware(build_app(issuer.resource_server()), server=outer)
    client = TestClient(app)
    for path in ("/async", "/sync", "/items"):
        token = issuer.mint("read", audience="https://other.api")
        response = client.get(path, headers=bearer(token))
        assert_error(response, 401, "invalid_token")
        assert "audience mismatch" in response.json()["error_description"]


def test_endpoint_without_request_is_a_type_error(server: ResourceServer) -> None:
    protect = Protect(server)

    @protect("read")
    async def no_request(value: int) -> Any:  # pragma: no cover - never runs
        return value

    with pytest.raises(TypeError, match="Request"):
        anyio.run(no_request, 1)


def test_decorator_keeps_the_endpoint_name(server: ResourceServer) -> None:
    protect = Protect(server)

    @protect("read")
    async def list_things(request: Request) -> JSONResponse:  # pragma: no cover
        return JSONResponse([])

    assert list_things.__name__ == "list_things"
