"""ClientCredentialsAuth and fetch_token: caching, single refresh, retry, errors, discovery."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from procs import free_port
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bearerguard import AuthError, ConfigurationError, ResourceServer
from bearerguard.client import ClientCredentialsAuth, TokenRequestError, fetch_token
from bearerguard.devissuer import DevIssuer

ISSUER = "https://tenant.example/oidc"
TOKEN_ENDPOINT = ISSUER + "/token"
API = "https://api.example"
SHOP = "https://shopping.api"
STATS = ("stats-service", "dev-only-stats-service-secret")
INVALID_TOKEN = 'Bearer realm="api", error="invalid_token", error_description="token expired"'


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeIssuer:
    """Discovery and a token endpoint as an httpx mock, recording every request."""

    def __init__(self, expires_in: Any = 3600) -> None:
        self.expires_in = expires_in
        self.requests: list[httpx.Request] = []
        self.token_requests: list[httpx.Request] = []
        self.metadata: dict[str, Any] = {"issuer": ISSUER, "token_endpoint": TOKEN_ENDPOINT}
        self.discovery_paths = {"/oidc/.well-known/openid-configuration"}
        self.reply: Callable[[], httpx.Response] | None = None
        self.gate: threading.Event | None = None  # set: token requests wait for it

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.path in self.discovery_paths:
            return httpx.Response(200, json=self.metadata)
        if request.url.path != "/oidc/token":
            return httpx.Response(404, json={"error": "not_found"})
        self.token_requests.append(request)
        if self.gate is not None:
            self.gate.wait(0.05)  # let the other threads pile up behind the lock
        if self.reply is not None:
            return self.reply()
        body = {"access_token": f"token-{len(self.token_requests)}", "token_type": "Bearer"}
        if self.expires_in is not None:
            body["expires_in"] = self.expires_in
        return httpx.Response(200, json=body)

    async def handle_async(self, request: httpx.Request) -> httpx.Response:
        for _ in range(5):  # give the other tasks a chance to arrive meanwhile
            await asyncio.sleep(0)
        return self.handle(request)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def async_transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle_async)


class FakeAPI:
    """A protected API: 401 invalid_token for the tokens in ``reject``, else 200."""

    def __init__(self, reject: Callable[[str], bool] = lambda token: False) -> None:
        self.reject = reject
        self.seen: list[str] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        request.read()
        token = request.headers["authorization"].removeprefix("Bearer ")
        self.seen.append(token)
        if self.reject(token):
            return httpx.Response(401, headers={"WWW-Authenticate": INVALID_TOKEN})
        return httpx.Response(200, json={"token": token, "body": request.content.decode()})

    async def handle_async(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        return self.handle(request)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def issuer() -> FakeIssuer:
    return FakeIssuer()


def make_auth(fake: FakeIssuer, clock: Clock, **kwargs: Any) -> ClientCredentialsAuth:
    kwargs.setdefault("token_endpoint", TOKEN_ENDPOINT)
    kwargs.setdefault("transport", fake.transport())
    return ClientCredentialsAuth(
        client_id="stats-service",
        client_secret="s3cret",
        resource=SHOP,
        scope=["read:products", "write:products"],
        clock=clock,
        **kwargs,
    )


# -- the token request ----------------------------------------------------------------------------


def test_token_request_is_basic_auth_with_resource_and_scope(
    issuer: FakeIssuer, clock: Clock
) -> None:
    auth = ClientCredentialsAuth(
        client_id="app id:1",
        client_secret="p@ss+word",
        token_endpoint=TOKEN_ENDPOINT,
        resource=SHOP,
        scope="read:products",
        transport=issuer.transport(),
        clock=clock,
    )
    assert auth.get_token() == "token-1"
    (request,) = issuer.token_requests
    assert request.method == "POST"
    assert str(request.url) == TOKEN_ENDPOINT
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    # RFC 6749 section 2.3.1: form-urlencode id and secret, then Basic.
    expected = base64.b64encode(b"app+id%3A1:p%40ss%2Bword").decode()
    assert request.headers["authorization"] == f"Basic {expected}"
    assert parse_qs(request.content.decode()) == {
        "grant_type": ["client_credentials"],
        "resource": [SHOP],
        "scope": ["read:products"],
    }


def test_scope_list_is_space_delimited(issuer: FakeIssuer, clock: Clock) -> None:
    make_auth(issuer, clock).get_token()
    form = parse_qs(issuer.token_requests[0].content.decode())
    assert form["scope"] == ["read:products write:products"]


def test_one_token_for_many_calls(issuer: FakeIssuer, clock: Clock) -> None:
    api = FakeAPI()
    with httpx.Client(
        auth=make_auth(issuer, clock), transport=httpx.MockTransport(api.handle)
    ) as c:
        for _ in range(10):
            assert c.get(API + "/products").status_code == 200
    assert len(issuer.token_requests) == 1
    assert api.seen == ["token-1"] * 10


@pytest.mark.parametrize(
    ("expires_in", "kept_until", "margin"),
    [(3600, 3600, 60), (100, 100, 10), ("120", 120, 12), (None, 300, 30), (-5, 300, 30)],
)
def test_token_refreshed_shortly_before_it_expires(
    issuer: FakeIssuer, clock: Clock, expires_in: Any, kept_until: float, margin: float
) -> None:
    issuer.expires_in = expires_in
    auth = make_auth(issuer, clock)
    start = clock.now
    assert auth.get_token() == "token-1"
    clock.now = start + kept_until - margin - 1
    assert auth.get_token() == "token-1"
    clock.now = start + kept_until - margin
    assert auth.get_token() == "token-2"


def test_one_refresh_for_concurrent_tasks(issuer: FakeIssuer, clock: Clock) -> None:
    api = FakeAPI()
    auth = make_auth(issuer, clock, transport=issuer.async_transport())

    async def main() -> list[int]:
        transport = httpx.MockTransport(api.handle_async)
        async with httpx.AsyncClient(auth=auth, transport=transport) as client:
            responses = await asyncio.gather(*(client.get(API) for _ in range(20)))
        return [r.status_code for r in responses]

    assert asyncio.run(main()) == [200] * 20
    assert len(issuer.token_requests) == 1
    # A second event loop (e.g. another asyncio.run) works with the same auth.
    clock.now += 7200
    assert asyncio.run(main()) == [200] * 20
    assert len(issuer.token_requests) == 2


def test_one_refresh_for_concurrent_threads(issuer: FakeIssuer, clock: Clock) -> None:
    api = FakeAPI()
    issuer.gate = threading.Event()
    auth = make_auth(issuer, clock)
    start = threading.Barrier(8)
    statuses: list[int] = []

    def call() -> None:
        with httpx.Client(auth=auth, transport=httpx.MockTransport(api.handle)) as client:
            start.wait(5)
            statuses.append(client.get(API).status_code)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert statuses == [200] * 8
    assert len(issuer.token_requests) == 1


# -- retry after 401 invalid_token ----------------------------------------------------------------


def test_retry_once_with_a_new_token_after_invalid_token(issuer: FakeIssuer, clock: Clock) -> None:
    api = FakeAPI(reject=lambda token: token == "token-1")
    with httpx.Client(
        auth=make_auth(issuer, clock), transport=httpx.MockTransport(api.handle)
    ) as c:
        response = c.post(API + "/products", json={"name": "beans"})
        assert response.status_code == 200
        assert response.json() == {"token": "token-2", "body": '{"name":"beans"}'}
        assert c.get(API).json()["token"] == "token-2"
    assert api.seen == ["token-1", "token-2", "token-2"]
    assert len(issuer.token_requests) == 2


def test_retry_only_once(issuer: FakeIssuer, clock: Clock) -> None:
    api = FakeAPI(reject=lambda token: True)
    with httpx.Client(
        auth=make_auth(issuer, clock), transport=httpx.MockTransport(api.handle)
    ) as c:
        response = c.get(API)
    assert response.status_code == 401
    assert api.seen == ["token-1", "token-2"]


def test_async_retry_once(issuer: FakeIssuer, clock: Clock) -> None:
    api = FakeAPI(reject=lambda token: token == "token-1")
    auth = make_auth(issuer, clock, transport=issuer.async_transport())

    async def main() -> httpx.Response:
        transport = httpx.MockTransport(api.handle_async)
        async with httpx.AsyncClient(auth=auth, transport=transport) as client:
            return await client.put(API, content=b"data")

    response = asyncio.run(main())
    assert response.json() == {"token": "token-2", "body": "data"}
    assert api.seen == ["token-1", "token-2"]


@pytest.mark.parametrize(
    ("status", "challenge"),
    [
        (401, "Bearer"),  # no token-specific error: nothing a new token would fix
        (401, 'Bearer error="invalid_request"'),
        (403, 'Bearer error="insufficient_scope", scope="write:products"'),
    ],
)
def test_no_retry_for_other_refusals(
    issuer: FakeIssuer, clock: Clock, status: int, challenge: str
) -> None:
    calls: list[httpx.Request] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(status, headers={"WWW-Authenticate": challenge})

    with httpx.Client(auth=make_auth(issuer, clock), transport=httpx.MockTransport(refuse)) as c:
        assert c.get(API).status_code == status
    assert len(calls) == 1
    assert len(issuer.token_requests) == 1


class StreamingTransport(httpx.BaseTransport):
    """Consumes the request body as a network transport does (MockTransport reads it first)."""

    def __init__(self, api: FakeAPI) -> None:
        self.api = api

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        for _ in request.stream:  # type: ignore[union-attr]
            pass
        token = request.headers["authorization"].removeprefix("Bearer ")
        self.api.seen.append(token)
        status = 401 if self.api.reject(token) else 200
        return httpx.Response(status, headers={"WWW-Authenticate": INVALID_TOKEN})


def test_streamed_body_is_not_replayed_but_token_is_dropped(
    issuer: FakeIssuer, clock: Clock
) -> None:
    api = FakeAPI(reject=lambda token: token == "token-1")

    def body() -> Iterator[bytes]:
        yield b"streamed"

    with httpx.Client(auth=make_auth(issuer, clock), transport=StreamingTransport(api)) as c:
        assert c.post(API, content=body()).status_code == 401  # cannot be sent again
        assert c.post(API, content=body()).status_code == 200  # with a new token
        assert c.post(API, content=b"in memory").status_code == 200
    assert api.seen == ["token-1", "token-2", "token-2"]


# -- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "error", "status", "description"),
    [
        (
            httpx.Response(
                401, json={"error": "invalid_client", "error_description": "client auth failed"}
            ),
            "invalid_client",
            401,
            "client auth failed",
        ),
        (httpx.Response(400, json={"error": "invalid_target"}), "invalid_target", 400, ""),
        (httpx.Response(502, text="<html>bad gateway</html>"), "invalid_response", 502, "refused"),
        (httpx.Response(200, text="not json"), "invalid_response", 200, "not JSON"),
        (httpx.Response(200, json={"token_type": "Bearer"}), "invalid_response", 200, "no access"),
        (
            httpx.Response(200, json={"access_token": "t", "token_type": "mac"}),
            "invalid_response",
            200,
            "not Bearer",
        ),
    ],
)
def test_token_endpoint_errors(
    issuer: FakeIssuer,
    clock: Clock,
    response: httpx.Response,
    error: str,
    status: int | None,
    description: str,
) -> None:
    issuer.reply = lambda: response
    api = FakeAPI()
    with (
        httpx.Client(auth=make_auth(issuer, clock), transport=httpx.MockTransport(api.handle)) as c,
        pytest.raises(TokenRequestError) as caught,
    ):
        c.get(API)
    assert caught.value.error == error
    assert caught.value.status_code == status
    assert description in caught.value.description
    assert error in str(caught.value)
    assert api.seen == []  # the API never saw a request


def test_async_token_endpoint_error(issuer: FakeIssuer, clock: Clock) -> None:
    issuer.reply = lambda: httpx.Response(400, json={"error": "invalid_target"})
    auth = make_auth(issuer, clock, transport=issuer.async_transport())
    with pytest.raises(TokenRequestError, match="invalid_target"):
        asyncio.run(auth.aget_token())


def test_unreachable_token_endpoint(clock: Clock) -> None:
    url = f"http://127.0.0.1:{free_port()}/oidc/token"
    auth = ClientCredentialsAuth(client_id="a", client_secret="b", token_endpoint=url, timeout=2)
    with pytest.raises(TokenRequestError) as caught:
        auth.get_token()
    assert caught.value.error == "request_failed"
    assert caught.value.status_code is None
    assert "ConnectError" in caught.value.description


@contextlib.contextmanager
def trickling_token_endpoint(interval: float = 0.2) -> Iterator[tuple[str, list[bytes]]]:
    """A token endpoint on 127.0.0.1 that reads the POST, then sends a status line and headers
    one byte per ``interval``, never ending them. Yields (its URL, the requests it read); on
    exit every connection is closed and every thread it started is joined."""
    stop = threading.Event()
    requests: list[bytes] = []
    threads: list[threading.Thread] = []
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)  # how often the accept loop looks at ``stop``

    def trickle(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            request = b""
            with contextlib.suppress(OSError):
                while b"\r\n\r\n" not in request and (chunk := conn.recv(65536)):
                    request += chunk
            requests.append(request)
            head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Padding: "
            for byte in itertools.chain(head, itertools.repeat(ord("x"))):
                if stop.wait(interval):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:  # the client hung up
                    return

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            thread = threading.Thread(target=trickle, args=(conn,))
            threads.append(thread)
            thread.start()

    acceptor = threading.Thread(target=serve)
    acceptor.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/oidc/token", requests
    finally:
        stop.set()
        acceptor.join()
        listener.close()
        for thread in threads:
            thread.join()


def test_sync_token_fetch_is_bounded_when_headers_trickle() -> None:
    # httpx's read timeout (0.5 s) never fires: a byte comes every 0.2 s. Only the hard bound
    # of two timeouts ends the request.
    before = set(threading.enumerate())
    outcome: list[BaseException | str] = []
    elapsed: list[float] = []
    with trickling_token_endpoint() as (url, requests):
        auth = ClientCredentialsAuth(
            client_id=STATS[0], client_secret=STATS[1], token_endpoint=url, timeout=0.5
        )

        def call() -> None:
            started = time.monotonic()
            try:
                outcome.append(auth.get_token())
            except Exception as exc:
                outcome.append(exc)
            elapsed.append(time.monotonic() - started)

        caller = threading.Thread(target=call)
        caller.start()
        caller.join(10)  # a guard so that a missing bound fails the test instead of hanging it
        returned = not caller.is_alive()
    # The server is stopped: whatever still waited on it (the caller without the bound, the
    # abandoned fetch thread with it) now ends.
    for thread in set(threading.enumerate()) - before:
        thread.join(10)
        assert not thread.is_alive(), thread
    assert returned, "get_token() was still waiting on the trickling endpoint after 10 s"
    assert elapsed[0] < 5  # the bound is 2 * timeout = 1 s
    error = outcome[0]
    assert isinstance(error, TokenRequestError), error
    assert error.error == "request_failed"
    assert "took too long" in error.description
    assert requests[0].startswith(b"POST /oidc/token ")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "either token_endpoint or issuer"),
        ({"issuer": ISSUER, "token_endpoint": TOKEN_ENDPOINT}, "either token_endpoint or issuer"),
        ({"token_endpoint": "http://auth.example/token"}, "https://"),
        ({"issuer": "http://auth.example/oidc"}, "https://"),
        ({"token_endpoint": TOKEN_ENDPOINT, "client_secret": ""}, "non-empty"),
        ({"token_endpoint": TOKEN_ENDPOINT, "margin": -1}, "margin"),
    ],
)
def test_configuration_errors(kwargs: dict[str, Any], message: str) -> None:
    kwargs = {"client_id": "a", "client_secret": "b", **kwargs}
    with pytest.raises(ConfigurationError, match=message):
        ClientCredentialsAuth(**kwargs)


def test_transport_kind_must_fit_the_client(issuer: FakeIssuer, clock: Clock) -> None:
    asgi = httpx.ASGITransport(app=Starlette())
    with pytest.raises(ConfigurationError, match="AsyncClient"):
        make_auth(issuer, clock, transport=asgi).get_token()
    with pytest.raises(ConfigurationError, match=r"httpx\.Client"):
        asyncio.run(make_auth(issuer, clock, transport=httpx.HTTPTransport()).aget_token())


# -- discovery ------------------------------------------------------------------------------------


def test_discovery_finds_the_token_endpoint_once(issuer: FakeIssuer, clock: Clock) -> None:
    auth = make_auth(issuer, clock, token_endpoint=None, issuer=ISSUER)
    assert auth.get_token() == "token-1"
    clock.now += 7200
    assert auth.get_token() == "token-2"
    paths = [r.url.path for r in issuer.requests]
    assert paths == ["/oidc/.well-known/openid-configuration", "/oidc/token", "/oidc/token"]
    assert auth.token_endpoint == TOKEN_ENDPOINT


def test_discovery_falls_back_to_rfc8414(issuer: FakeIssuer, clock: Clock) -> None:
    issuer.discovery_paths = {"/oidc/.well-known/oauth-authorization-server"}
    assert make_auth(issuer, clock, token_endpoint=None, issuer=ISSUER).get_token() == "token-1"
    assert [r.url.path for r in issuer.requests][-2:] == [
        "/oidc/.well-known/oauth-authorization-server",
        "/oidc/token",
    ]


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        (
            {"issuer": "https://elsewhere.example/oidc", "token_endpoint": TOKEN_ENDPOINT},
            "does not equal",
        ),
        ({"issuer": ISSUER}, "no token_endpoint"),
        ({"issuer": ISSUER, "token_endpoint": "http://tenant.example/token"}, "https://"),
        (None, "no discovery document"),
    ],
)
def test_discovery_failures(
    issuer: FakeIssuer, clock: Clock, metadata: dict[str, Any] | None, message: str
) -> None:
    if metadata is None:
        issuer.discovery_paths = set()
    else:
        issuer.metadata = metadata
    auth = make_auth(issuer, clock, token_endpoint=None, issuer=ISSUER)
    with pytest.raises(TokenRequestError, match=message) as caught:
        auth.get_token()
    assert caught.value.error == "discovery_failed"


def test_fetch_token_returns_the_token_response(issuer: FakeIssuer) -> None:
    response = fetch_token(
        client_id="a",
        client_secret="b",
        issuer=ISSUER,
        resource=SHOP,
        transport=issuer.transport(),
    )
    assert response == {"access_token": "token-1", "token_type": "Bearer", "expires_in": 3600}
    assert "scope" not in parse_qs(issuer.token_requests[0].content.decode())


# -- against the dev issuer -----------------------------------------------------------------------


def protected_api(server: ResourceServer, statuses: list[int]) -> Starlette:
    """A tiny API verifying tokens with bearerguard, answering RFC 6750 errors."""

    async def products(request: Request) -> Response:
        try:
            token = await server.authenticate_async(request.headers.get("authorization"))
        except AuthError as exc:
            statuses.append(exc.status_code)
            return Response(exc.to_json(), exc.status_code, exc.headers)
        statuses.append(200)
        return JSONResponse({"client_id": token.client_id, "scopes": sorted(token.scopes)})

    return Starlette(routes=[Route("/products", products)])


def test_async_against_the_dev_issuer_with_retry() -> None:
    # The issuer's clock was two hours behind for its first token: the API rejects that one
    # as expired (401 invalid_token) and the client fetches a good one and retries.
    now = 1_800_000_000.0
    times = iter([now - 7200])
    dev = DevIssuer(clock=lambda: next(times, now))
    server = ResourceServer(
        dev.issuer, SHOP, require_typ=True, transport=dev.transport(), clock=lambda: now
    )
    auth = ClientCredentialsAuth(
        client_id=STATS[0],
        client_secret=STATS[1],
        issuer=dev.issuer,
        resource=SHOP,
        scope="read:products write:products",
        transport=dev.transport(),
    )
    statuses: list[int] = []

    async def main() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=protected_api(server, statuses))
        async with httpx.AsyncClient(auth=auth, transport=transport, base_url=API) as client:
            return [await client.get("/products") for _ in range(3)]

    responses = asyncio.run(main())
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert statuses == [401, 200, 200, 200]  # one rejection, one retry, then the cached token
    assert responses[0].json() == {"client_id": "stats-service", "scopes": ["read:products"]}


def test_sync_over_real_http_against_the_dev_issuer() -> None:
    dev = DevIssuer()
    with dev.serve() as url:
        server = ResourceServer(url, SHOP, require_typ=True)
        seen: list[Any] = []

        def api(request: httpx.Request) -> httpx.Response:
            token = server.authenticate(request.headers.get("authorization"))
            seen.append(token)
            return httpx.Response(200)

        auth = ClientCredentialsAuth(
            client_id=STATS[0], client_secret=STATS[1], issuer=url, resource=SHOP, timeout=5
        )
        with httpx.Client(auth=auth, transport=httpx.MockTransport(api)) as client:
            assert client.get(API).status_code == 200
            assert client.get(API).status_code == 200
        assert seen[0].client_id == "stats-service"
        assert seen[0].scopes == frozenset()  # no scope asked for: none in the token
        assert seen[0].claims["jti"] == seen[1].claims["jti"]  # the cached token

        with pytest.raises(TokenRequestError) as caught:
            fetch_token(client_id=STATS[0], client_secret="wrong", issuer=url, resource=SHOP)
        assert caught.value.error == "invalid_client"
        assert caught.value.status_code == 401
