"""The pure ASGI middleware on a plain Starlette app; one error shape across all adapters."""

# No "from __future__ import annotations": FastAPI must resolve the Annotated[...] of a route
# defined inside a function.
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

import anyio
import anyio.lowlevel
import httpx
import pytest
from fastapi import FastAPI, Security
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.websockets import WebSocket, WebSocketDisconnect

from bearerguard import AccessToken, ResourceServer
from bearerguard.asgi import BearerAuthMiddleware
from bearerguard.fastapi import BearerAuth
from bearerguard.rules import Rule
from bearerguard.starlette import Protect
from bearerguard.testing import LocalIssuer

NOW = 1_800_000_000.0
AUDIENCE = "https://api.test"
METADATA = f'resource_metadata="{AUDIENCE}/.well-known/oauth-protected-resource"'
REALM_CHALLENGE = f'Bearer realm="{AUDIENCE}", {METADATA}'  # where the metadata is, too


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


def down_server(issuer: LocalIssuer) -> ResourceServer:
    """A server whose issuer cannot be reached (connection refused on every fetch)."""

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    return ResourceServer(
        issuer.issuer,
        issuer.audience,
        require_typ=True,
        transport=httpx.MockTransport(refuse),
        clock=clock,
    )


# -- a plain Starlette app behind the middleware ----------------------------------------------


async def whoami(request: Request) -> JSONResponse:
    token = request.auth
    return JSONResponse(
        {
            "is_access_token": isinstance(token, AccessToken),
            "same_as_scope": request.scope["auth"] is token,
            "sub": token.sub,
            "scopes": sorted(token.scopes),
            "authenticated": request.user.is_authenticated,
            "display_name": request.user.display_name,
        }
    )


async def health(request: Request) -> JSONResponse:
    return JSONResponse(
        {"auth": request.auth is None, "authenticated": request.user.is_authenticated}
    )


async def ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse(f"{request.method} {request.url.path}")


def shop_app(server: ResourceServer) -> BearerAuthMiddleware:
    app = Starlette(
        routes=[
            Route("/health", health),
            Route("/whoami", whoami),
            Route("/items", ok, methods=["GET", "POST"]),
            Route("/items/{item_id}", ok, methods=["GET", "DELETE"]),
            Route("/admin", ok),
            Route("/admin/{rest:path}", ok),
            Route("/administrator", ok),
            Route("/static/{rest:path}", ok),
            Route("/reports", ok),
        ]
    )
    return BearerAuthMiddleware(
        app,
        server=server,
        public=["/health"],
        rules=[
            Rule("/static/*", public=True),
            Rule("/items", methods=["GET"], scopes=["read"]),
            Rule("/items", methods=["POST"], scopes="write"),
            Rule("/items/{item_id}", methods=["GET"], scopes=["read"]),
            Rule("/items/{item_id}", methods=["DELETE"], scopes=["write"]),
            Rule("/admin/*", scopes=["admin"]),
            Rule("/reports", scopes=["read", "audit"], any_of=True),
        ],
    )


@pytest.fixture
def client(server: ResourceServer) -> TestClient:
    return TestClient(shop_app(server))


def assert_error(
    response: httpx.Response, status: int, error: str | None, scope: str | None = None
) -> None:
    assert response.status_code == status, response.text
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("Bearer")
    if error is None:
        assert "error=" not in challenge
    else:
        assert f'error="{error}"' in challenge
    if scope is not None:
        assert f'scope="{scope}"' in challenge
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert {"error", "error_description"} <= set(body)
    if error is not None:
        assert body["error"] == error


def test_deny_by_default(client: TestClient) -> None:
    for path in ("/whoami", "/items/1/extra", "/no/such/route", "/"):
        assert_error(client.get(path), 401, None)
    assert_error(client.post("/items"), 401, None)


def test_public_paths_ignore_the_authorization_header(client: TestClient) -> None:
    for headers in ({}, bearer("bogus"), {"Authorization": "Bearer a b"}, {"Authorization": "x"}):
        response = client.get("/health", headers=headers)
        assert response.status_code == 200, response.text
        assert response.json() == {"auth": True, "authenticated": False}
        assert client.get("/static/css/site.css", headers=headers).status_code == 200


def test_auth_and_user_reach_the_app(client: TestClient, issuer: LocalIssuer) -> None:
    response = client.get("/whoami", headers=bearer(issuer.mint("read", sub="alice")))
    assert response.status_code == 200
    assert response.json() == {
        "is_access_token": True,
        "same_as_scope": True,
        "sub": "alice",
        "scopes": ["read"],
        "authenticated": True,
        "display_name": "alice",
    }


def test_rules_by_method_and_path(client: TestClient, issuer: LocalIssuer) -> None:
    read, write, plain = issuer.mint("read"), issuer.mint("write"), issuer.mint()
    assert client.get("/items", headers=bearer(read)).status_code == 200
    assert_error(client.get("/items", headers=bearer(plain)), 403, "insufficient_scope", "read")
    assert_error(client.post("/items", headers=bearer(read)), 403, "insufficient_scope", "write")
    assert client.post("/items", headers=bearer(write)).status_code == 200
    # {item_id} matches exactly one segment
    assert client.get("/items/42", headers=bearer(read)).status_code == 200
    assert_error(client.delete("/items/42", headers=bearer(read)), 403, "insufficient_scope")
    assert client.delete("/items/42", headers=bearer(write)).text == "DELETE /items/42"
    # a deeper path matches no rule: a valid token is enough, then the app routes it (404)
    assert client.get("/items/42/extra", headers=bearer(plain)).status_code == 404
    # an invalid token is 401 even where a scope is required, never 403
    assert_error(
        client.post("/items", headers=bearer(issuer.tampered(write))), 401, "invalid_token"
    )


def test_prefix_rules(client: TestClient, issuer: LocalIssuer) -> None:
    read, admin = issuer.mint("read"), issuer.mint("admin")
    for path in ("/admin", "/admin/", "/admin/users/7"):
        assert_error(client.get(path, headers=bearer(read)), 403, "insufficient_scope", "admin")
        assert client.get(path, headers=bearer(admin)).status_code == 200
    # /admin/* is /admin and what is under it, not every path starting with "/admin"
    assert client.get("/administrator", headers=bearer(read)).status_code == 200
    assert_error(client.get("/administrator"), 401, None)


def test_any_of_rule(client: TestClient, issuer: LocalIssuer) -> None:
    assert client.get("/reports", headers=bearer(issuer.mint("audit"))).status_code == 200
    assert client.get("/reports", headers=bearer(issuer.mint("read"))).status_code == 200
    response = client.get("/reports", headers=bearer(issuer.mint("write")))
    assert_error(response, 403, "insufficient_scope", "read audit")


def test_first_matching_rule_wins(server: ResourceServer, issuer: LocalIssuer) -> None:
    app = Starlette(routes=[Route("/feed", ok, methods=["GET", "POST"])])
    client = TestClient(
        BearerAuthMiddleware(
            app,
            server=server,
            rules=[
                Rule("/feed", methods=["POST"], scopes=["write"]),
                Rule("/feed", public=True),
            ],
        )
    )
    assert client.get("/feed").status_code == 200
    assert_error(client.post("/feed"), 401, None)
    assert_error(
        client.post("/feed", headers=bearer(issuer.mint("read"))), 403, "insufficient_scope"
    )
    assert client.post("/feed", headers=bearer(issuer.mint("write"))).status_code == 200


def test_lifespan_passes_through(server: ResourceServer) -> None:
    events: list[str] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        events.append("startup")
        yield
        events.append("shutdown")

    app = Starlette(routes=[Route("/health", ok)], lifespan=lifespan)
    with TestClient(BearerAuthMiddleware(app, server=server, public=["/health"])) as client:
        assert events == ["startup"]
        assert client.get("/health").status_code == 200
    assert events == ["startup", "shutdown"]


def http_scope(path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
    }


@pytest.mark.anyio
async def test_receive_and_send_are_passed_unwrapped(
    server: ResourceServer, issuer: LocalIssuer
) -> None:
    seen: list[tuple[Any, Any]] = []

    async def raw_app(scope: Any, receive: Any, send: Any) -> None:
        seen.append((receive, send))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    messages: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    app = BearerAuthMiddleware(raw_app, server=server)
    token = issuer.mint()
    await app(http_scope("/x", [(b"authorization", f"Bearer {token}".encode())]), receive, send)
    assert seen == [(receive, send)]
    assert messages[0]["status"] == 204


@pytest.mark.anyio
async def test_streaming_response_is_not_buffered(
    server: ResourceServer, issuer: LocalIssuer
) -> None:
    first_chunk_delivered = anyio.Event()

    async def chunks() -> AsyncIterator[bytes]:
        yield b"one"
        # The next chunk is produced only once the client has received the first one:
        # a middleware that buffered the body would deadlock here.
        with anyio.fail_after(5):
            await first_chunk_delivered.wait()
        yield b"two"
        yield b"three"

    async def stream(request: Request) -> StreamingResponse:
        return StreamingResponse(chunks(), media_type="text/plain")

    app = BearerAuthMiddleware(Starlette(routes=[Route("/stream", stream)]), server=server)
    messages: list[dict[str, Any]] = []
    finished = anyio.Event()
    requested = False

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await finished.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)
        if message["type"] == "http.response.body" and message.get("body") == b"one":
            first_chunk_delivered.set()

    token = issuer.mint()
    with anyio.fail_after(10):
        await app(
            http_scope("/stream", [(b"authorization", f"Bearer {token}".encode())]), receive, send
        )
    finished.set()
    assert messages[0]["type"] == "http.response.start"
    assert messages[0]["status"] == 200
    bodies = [m for m in messages if m["type"] == "http.response.body"]
    assert [m["body"] for m in bodies if m["body"]] == [b"one", b"two", b"three"]
    assert all(m.get("more_body") for m in bodies[:3])
    assert not bodies[-1].get("more_body", False)


@pytest.mark.anyio
async def test_streaming_route_still_denied_without_token(server: ResourceServer) -> None:
    async def stream(request: Request) -> StreamingResponse:  # pragma: no cover - never reached
        raise AssertionError("the app must not run")

    app = BearerAuthMiddleware(Starlette(routes=[Route("/stream", stream)]), server=server)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        assert_error(await client.get("/stream"), 401, None)


# -- websockets --------------------------------------------------------------------------------


async def ws_echo(websocket: WebSocket) -> None:
    await websocket.accept()
    token = websocket.scope["auth"]
    await websocket.send_json({"sub": token.sub, "user": websocket.user.display_name})
    await websocket.close()


def ws_app(server: ResourceServer) -> BearerAuthMiddleware:
    app = Starlette(routes=[WebSocketRoute("/ws", ws_echo), WebSocketRoute("/ws/admin", ws_echo)])
    return BearerAuthMiddleware(app, server=server, rules=[Rule("/ws/admin", scopes=["admin"])])


def test_websocket_with_valid_token_is_accepted(
    server: ResourceServer, issuer: LocalIssuer
) -> None:
    client = TestClient(ws_app(server))
    headers = bearer(issuer.mint(sub="bob"))
    with client.websocket_connect("/ws", headers=headers) as websocket:
        assert websocket.receive_json() == {"sub": "bob", "user": "bob"}


def test_websocket_without_token_is_denied(server: ResourceServer, issuer: LocalIssuer) -> None:
    client = TestClient(ws_app(server))
    with pytest.raises(WebSocketDenialResponse) as denied, client.websocket_connect("/ws"):
        pass  # pragma: no cover
    assert_error(denied.value, 401, None)

    with (
        pytest.raises(WebSocketDenialResponse) as denied,
        client.websocket_connect("/ws", headers=bearer(issuer.tampered(issuer.mint()))),
    ):
        pass  # pragma: no cover
    assert_error(denied.value, 401, "invalid_token")

    with (
        pytest.raises(WebSocketDenialResponse) as denied,
        client.websocket_connect("/ws/admin", headers=bearer(issuer.mint("read"))),
    ):
        pass  # pragma: no cover
    assert_error(denied.value, 403, "insufficient_scope", "admin")


@pytest.mark.anyio
async def test_websocket_denied_by_close_without_denial_extension(
    server: ResourceServer,
) -> None:
    called = False

    async def inner(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover
        nonlocal called
        called = True

    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    scope = http_scope("/ws", [])
    scope["type"] = "websocket"
    del scope["method"]
    await BearerAuthMiddleware(inner, server=server)(scope, receive, send)
    assert not called
    assert len(messages) == 1
    assert messages[0]["type"] == "websocket.close"
    assert messages[0]["code"] == 1008


def test_websocket_disconnect_is_the_denial_base_class() -> None:
    # What a client of the TestClient may catch instead: the denial is a WebSocketDisconnect.
    assert issubclass(WebSocketDenialResponse, WebSocketDisconnect)


# -- one error shape for the middleware, the Starlette decorator and the FastAPI dependency ----


def adapter_apps(server: ResourceServer) -> dict[str, Callable[..., Any]]:
    async def from_scope(request: Request) -> JSONResponse:
        return JSONResponse({"sub": request.auth.sub})

    middleware = BearerAuthMiddleware(
        Starlette(routes=[Route("/r", from_scope)]),
        server=server,
        rules=[Rule("/r", scopes=["read"])],
    )

    protect = Protect(server)

    @protect("read")
    async def decorated(request: Request) -> JSONResponse:
        return JSONResponse({"sub": request.auth.sub})

    decorator = Starlette(routes=[Route("/r", decorated)])

    fastapi_app = FastAPI()
    auth = BearerAuth(server)

    @fastapi_app.get("/r")
    async def route(token: Annotated[AccessToken, Security(auth, scopes=["read"])]) -> Any:
        return {"sub": token.sub}

    return {"middleware": middleware, "decorator": decorator, "fastapi": fastapi_app}


def shape(response: httpx.Response) -> dict[str, Any]:
    return {
        "status": response.status_code,
        "www-authenticate": response.headers.get("www-authenticate"),
        "retry-after": response.headers.get("retry-after"),
        "content-type": response.headers.get("content-type"),
        "body": json.loads(response.content),
    }


ERROR_CASES: dict[str, tuple[int, str | None]] = {
    "missing": (401, None),
    "other-scheme": (401, None),
    "malformed": (400, "invalid_request"),
    "empty": (400, "invalid_request"),
    "not-token68": (400, "invalid_request"),
    "several-headers": (400, "invalid_request"),
    "invalid": (401, "invalid_token"),
    "expired": (401, "invalid_token"),
    "insufficient": (403, "insufficient_scope"),
}


def case_headers(case: str, issuer: LocalIssuer) -> list[tuple[str, str]]:
    token = issuer.mint("read")
    return {
        "missing": [],
        "other-scheme": [("Authorization", "Basic dXNlcjpwYXNz")],
        "malformed": [("Authorization", "Bearer a b")],
        "empty": [("Authorization", "Bearer")],
        "not-token68": [("Authorization", "Bearer a$b")],
        "several-headers": [("Authorization", f"Bearer {token}")] * 2,
        "invalid": [("Authorization", f"Bearer {issuer.tampered(token)}")],
        "expired": [("Authorization", f"Bearer {issuer.expired('read')}")],
        "insufficient": [("Authorization", f"Bearer {issuer.mint('write')}")],
    }[case]


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_errors_are_identical_across_adapters(
    case: str, server: ResourceServer, issuer: LocalIssuer
) -> None:
    headers = case_headers(case, issuer)
    shapes = {}
    for name, app in adapter_apps(server).items():
        shapes[name] = shape(TestClient(app).get("/r", headers=headers))
    first = shapes["middleware"]
    assert shapes["decorator"] == first
    assert shapes["fastapi"] == first
    status, error = ERROR_CASES[case]
    assert first["status"] == status
    assert first["content-type"] == "application/json"
    assert first["retry-after"] is None
    assert set(first["body"]) >= {"error", "error_description"}
    assert isinstance(first["body"]["error_description"], str)
    if error is None:  # bare, but with the route's scopes and the metadata URL
        assert first["www-authenticate"] == (f'Bearer realm="{AUDIENCE}", scope="read", {METADATA}')
    else:
        assert first["www-authenticate"].startswith(f'Bearer realm="{AUDIENCE}", error="{error}"')
        assert first["www-authenticate"].endswith(METADATA) == (first["status"] in (401, 403))
        assert first["body"]["error"] == error
    if case == "insufficient":
        assert 'scope="read"' in first["www-authenticate"]


def test_503_is_identical_across_adapters_and_has_retry_after(issuer: LocalIssuer) -> None:
    server = down_server(issuer)
    token = issuer.mint("read")
    shapes = {
        name: shape(TestClient(app).get("/r", headers=bearer(token)))
        for name, app in adapter_apps(server).items()
    }
    first = shapes["middleware"]
    assert shapes["decorator"] == first
    assert shapes["fastapi"] == first
    assert first["status"] == 503
    assert first["retry-after"] == "1"  # the first outage retry, on a frozen clock
    assert first["www-authenticate"].startswith("Bearer")
    assert first["body"]["error"] == "temporarily_unavailable"
    assert first["body"]["error_description"]


def test_valid_tokens_pass_every_adapter(server: ResourceServer, issuer: LocalIssuer) -> None:
    token = issuer.mint("read", sub="carol")
    for app in adapter_apps(server).values():
        response = TestClient(app).get("/r", headers=bearer(token))
        assert response.status_code == 200
        assert response.json() == {"sub": "carol"}


# -- key fetches never block the event loop -----------------------------------------------------


def slow_issuer_server(
    issuer: LocalIssuer, release: anyio.Event, fetching: anyio.Event, fetched: list[str]
) -> ResourceServer:
    async def handler(request: httpx.Request) -> httpx.Response:
        fetching.set()
        await release.wait()
        fetched.append(request.url.path)
        if request.url.path.endswith("/jwks"):
            return httpx.Response(200, json=issuer.jwks())
        return httpx.Response(200, json=issuer.metadata())

    return ResourceServer(
        issuer.issuer,
        issuer.audience,
        require_typ=True,
        transport=httpx.MockTransport(handler),
        clock=clock,
    )


@pytest.mark.anyio
@pytest.mark.parametrize("adapter", ["middleware", "decorator", "fastapi"])
async def test_key_fetch_does_not_block_the_event_loop(adapter: str, issuer: LocalIssuer) -> None:
    release, fetching = anyio.Event(), anyio.Event()
    fetched: list[str] = []
    app = adapter_apps(slow_issuer_server(issuer, release, fetching, fetched))[adapter]
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        await fetching.wait()
        for _ in range(20):
            ticks += 1
            await anyio.lowlevel.checkpoint()
        release.set()

    responses: list[httpx.Response] = []
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:

        async def call() -> None:
            responses.append(await client.get("/r", headers=bearer(issuer.mint("read"))))

        with anyio.fail_after(10):
            async with anyio.create_task_group() as group:
                group.start_soon(ticker)
                for _ in range(5):
                    group.start_soon(call)
    assert ticks == 20  # the loop kept running while the keys were being fetched
    assert [r.status_code for r in responses] == [200] * 5
    # one discovery and one JWKS fetch for five concurrent requests
    assert sorted(fetched) == ["/oidc/.well-known/openid-configuration", "/oidc/jwks"]


def test_error_response_is_a_plain_response() -> None:
    # The renderers used by the adapters produce ordinary Starlette responses.
    from bearerguard.errors import IssuerUnavailable
    from bearerguard.starlette import error_response

    response = error_response(IssuerUnavailable(retry_after=7))
    assert isinstance(response, Response)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "7"
    assert response.headers["cache-control"] == "no-store"
