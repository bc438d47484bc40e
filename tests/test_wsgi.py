"""The WSGI middleware on plain WSGI apps, driven with werkzeug's test utilities."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

import httpx
import pytest
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.test import Client, TestResponse, create_environ, run_wsgi_app

from bearerguard import AccessToken, ResourceServer
from bearerguard.rules import Rule
from bearerguard.testing import LocalIssuer
from bearerguard.wsgi import ENVIRON_KEY, BearerAuthMiddleware

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


class Recorder:
    """A WSGI app answering ``METHOD /path`` and keeping every environ it was called with."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        self.calls.append(environ)
        token = environ.get(ENVIRON_KEY, "absent")
        body = json.dumps(
            {
                "route": f"{environ['REQUEST_METHOD']} {environ.get('PATH_INFO', '')}",
                "token": None if token is None else token if token == "absent" else token.sub,
                "scopes": sorted(token.scopes) if isinstance(token, AccessToken) else None,
            }
        ).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]


RULES = [
    Rule("/static/*", public=True),
    Rule("/items", methods=["GET"], scopes=["read"]),
    Rule("/items", methods=["POST"], scopes="write"),
    Rule("/items/{item_id}", methods=["GET"], scopes=["read"]),
    Rule("/items/{item_id}", methods=["DELETE"], scopes=["write"]),
    Rule("/admin/*", scopes=["admin"]),
    Rule("/reports", scopes=["read", "audit"], any_of=True),
]


@pytest.fixture
def inner() -> Recorder:
    return Recorder()


@pytest.fixture
def client(server: ResourceServer, inner: Recorder) -> Client:
    return Client(BearerAuthMiddleware(inner, server, public=["/health"], rules=RULES))


def assert_error(
    response: TestResponse, status: int, error: str | None, scope: str | None = None
) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith(f'Bearer realm="{AUDIENCE}"')
    if error is None:
        assert "error=" not in challenge
    else:
        assert f'error="{error}"' in challenge
    if scope is not None:
        assert f'scope="{scope}"' in challenge
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    body = response.get_data()
    assert response.headers["Content-Length"] == str(len(body))
    data: dict[str, Any] = json.loads(body)
    assert {"error", "error_description"} <= set(data)
    assert data["error"] == (error or ("invalid_request" if status == 401 else data["error"]))
    return data


def test_deny_by_default_and_the_app_is_not_called(client: Client, inner: Recorder) -> None:
    for path in ("/whoami", "/items/1/extra", "/no/such/route", "/", "/health/", "/healthz"):
        assert_error(client.get(path), 401, None)
    for method in ("POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"):
        assert client.open("/whoami", method=method).status_code == 401
    assert inner.calls == []


def test_public_paths_ignore_the_authorization_header(client: Client, inner: Recorder) -> None:
    for headers in ({}, bearer("bogus"), {"Authorization": "Bearer a b"}, {"Authorization": "x"}):
        response = client.get("/health", headers=headers)
        assert response.status_code == 200
        assert response.json == {"route": "GET /health", "token": None, "scopes": None}
        assert client.post("/static/css/site.css", headers=headers).status_code == 200
    assert client.get("/static").status_code == 200
    assert_error(client.get("/statics"), 401, None)


def test_token_reaches_the_app(client: Client, inner: Recorder, issuer: LocalIssuer) -> None:
    response = client.get("/whoami", headers=bearer(issuer.mint("read", sub="alice")))
    assert response.json == {"route": "GET /whoami", "token": "alice", "scopes": ["read"]}
    token = inner.calls[0][ENVIRON_KEY]
    assert isinstance(token, AccessToken)
    assert token.issuer == issuer.issuer


def test_rules_by_method_and_path(client: Client, issuer: LocalIssuer) -> None:
    read, write, plain = issuer.mint("read"), issuer.mint("write"), issuer.mint()
    assert client.get("/items", headers=bearer(read)).status_code == 200
    assert client.head("/items", headers=bearer(read)).status_code == 200  # HEAD is GET
    assert_error(client.head("/items", headers=bearer(plain)), 403, "insufficient_scope", "read")
    assert_error(client.get("/items", headers=bearer(plain)), 403, "insufficient_scope", "read")
    assert_error(client.post("/items", headers=bearer(read)), 403, "insufficient_scope", "write")
    assert client.post("/items", headers=bearer(write)).json["route"] == "POST /items"
    assert client.get("/items/42", headers=bearer(read)).status_code == 200
    assert_error(client.delete("/items/42", headers=bearer(read)), 403, "insufficient_scope")
    assert client.delete("/items/42", headers=bearer(write)).json["route"] == "DELETE /items/42"
    # a method no rule names on a ruled path, and deeper paths: a valid token is enough
    assert client.put("/items", headers=bearer(plain)).status_code == 200
    assert client.get("/items/42/extra", headers=bearer(plain)).status_code == 200
    # an invalid token is 401 even where a scope is required, never 403
    assert_error(
        client.post("/items", headers=bearer(issuer.tampered(write))), 401, "invalid_token"
    )


def test_prefix_and_any_of_rules(client: Client, issuer: LocalIssuer) -> None:
    read, admin = issuer.mint("read"), issuer.mint("admin")
    for path in ("/admin", "/admin/", "/admin/users/7"):
        assert_error(client.get(path, headers=bearer(read)), 403, "insufficient_scope", "admin")
        assert client.get(path, headers=bearer(admin)).status_code == 200
    assert client.get("/administrator", headers=bearer(read)).status_code == 200
    assert client.get("/reports", headers=bearer(issuer.mint("audit"))).status_code == 200
    assert client.get("/reports", headers=bearer(read)).status_code == 200
    body = assert_error(
        client.get("/reports", headers=bearer(admin)), 403, "insufficient_scope", "read audit"
    )
    assert body["scope"] == "read audit"


@pytest.mark.parametrize(
    ("header", "status", "error"),
    [
        ("Bearer", 400, "invalid_request"),
        ("Bearer ", 400, "invalid_request"),
        ("Bearer a b", 400, "invalid_request"),
        ("Bearer a!b", 400, "invalid_request"),
        ("Bearer\ttoken", 400, "invalid_request"),
        ("Basic dXNlcjpwYXNz", 401, None),
        ("Bearer abc.def.ghi", 401, "invalid_token"),
        ("Bearer " + "a" * 20000, 401, "invalid_token"),
    ],
)
def test_malformed_and_foreign_headers(
    client: Client, inner: Recorder, header: str, status: int, error: str | None
) -> None:
    assert_error(client.get("/whoami", headers={"Authorization": header}), status, error)
    assert inner.calls == []


def test_invalid_tokens(client: Client, issuer: LocalIssuer) -> None:
    good = issuer.mint("read")
    for token in (
        issuer.tampered(good),
        issuer.expired("read"),
        issuer.mint("read", audience="https://other.api"),
        issuer.mint("read", header={"typ": "JWT"}),
        LocalIssuer(audience=AUDIENCE, clock=clock).mint("read"),  # another key
    ):
        assert_error(client.get("/items", headers=bearer(token)), 401, "invalid_token")
    assert client.get("/items", headers=bearer(good)).status_code == 200


def test_token_in_query_string_is_not_accepted(client: Client, issuer: LocalIssuer) -> None:
    token = issuer.mint("read")
    assert_error(client.get(f"/whoami?access_token={token}"), 401, None)


def test_several_authorization_headers_are_invalid_request(
    client: Client, inner: Recorder, issuer: LocalIssuer
) -> None:
    token = issuer.mint("read")
    # werkzeug's test client joins repeated headers with ", " as WSGI servers do
    response = client.get("/whoami", headers=[("Authorization", f"Bearer {token}")] * 2)
    assert_error(response, 400, "invalid_request")
    # gunicorn and wsgiref join with ","; a comma inside one value is no token68 either
    for joined in (f"Bearer {token},Bearer {token}", f"Bearer {token},{token}", f"Bearer {token},"):
        assert_error(
            client.get("/whoami", headers={"Authorization": joined}), 400, "invalid_request"
        )
    assert inner.calls == []
    assert client.get("/whoami", headers=bearer(token)).status_code == 200


def test_issuer_unavailable_is_503_with_retry_after(issuer: LocalIssuer, inner: Recorder) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    down = issuer.resource_server(transport=httpx.MockTransport(refuse))
    client = Client(BearerAuthMiddleware(inner, down, public=["/health"]))
    response = client.get("/whoami", headers=bearer(issuer.mint()))
    body = assert_error(response, 503, None)
    assert body["error"] == "temporarily_unavailable"
    assert int(response.headers["Retry-After"]) >= 1
    assert client.get("/health").status_code == 200  # public paths need no keys
    assert inner.calls[-1]["PATH_INFO"] == "/health"
    assert len(inner.calls) == 1


def test_realm_comes_from_the_server(issuer: LocalIssuer, inner: Recorder) -> None:
    client = Client(BearerAuthMiddleware(inner, issuer.resource_server(realm="shop")))
    assert client.get("/x").headers["WWW-Authenticate"] == (
        'Bearer realm="shop", resource_metadata="https://api.test/.well-known/oauth-protected-resource"'
    )
    response = client.get("/x", headers={"Authorization": "Bearer a b"})
    assert response.headers["WWW-Authenticate"].startswith('Bearer realm="shop", error=')


def test_non_ascii_paths_match_as_the_app_routes_them(
    server: ResourceServer, inner: Recorder
) -> None:
    client = Client(BearerAuthMiddleware(inner, server, public=["/café", "/menü/*"]))
    assert client.get("/caf%C3%A9").status_code == 200
    assert client.get("/men%C3%BC/heute").status_code == 200
    assert_error(client.get("/cafe"), 401, None)


def test_rules_match_path_info_below_the_mount_point(
    server: ResourceServer, inner: Recorder, issuer: LocalIssuer
) -> None:
    api = BearerAuthMiddleware(inner, server, public=["/health"])
    client = Client(DispatcherMiddleware(Recorder(), {"/api": api}))
    response = client.get("/api/health")
    assert response.json["route"] == "GET /health"
    assert inner.calls[-1]["SCRIPT_NAME"] == "/api"
    assert_error(client.get("/api/items"), 401, None)


# -- the response passes through untouched ------------------------------------------------------


class Body:
    """A response iterable recording how far it was consumed and whether it was closed."""

    def __init__(self) -> None:
        self.produced: list[bytes] = []
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        for chunk in (b"one", b"two", b"three"):
            self.produced.append(chunk)
            yield chunk

    def close(self) -> None:
        self.closed = True


def test_response_iterable_is_returned_as_is(server: ResourceServer, issuer: LocalIssuer) -> None:
    body = Body()
    statuses: list[str] = []

    def app(environ: dict[str, Any], start_response: Any) -> Body:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return body

    environ = create_environ("/stream", headers=bearer(issuer.mint()))
    result = BearerAuthMiddleware(app, server)(environ, lambda s, h, e=None: statuses.append(s))
    assert result is body
    assert statuses == ["200 OK"]
    assert body.produced == []  # nothing was read on the way through


def test_generator_body_streams(server: ResourceServer, issuer: LocalIssuer) -> None:
    produced: list[bytes] = []
    closed: list[bool] = []

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])

        def chunks() -> Iterator[bytes]:
            try:
                for chunk in (b"one", b"two", b"three"):
                    produced.append(chunk)
                    yield chunk
            finally:
                closed.append(True)

        return chunks()

    middleware = BearerAuthMiddleware(app, server)
    environ = create_environ("/stream", headers=bearer(issuer.mint()))
    app_iter, status, _ = run_wsgi_app(middleware, environ, buffered=False)
    assert status == "200 OK"
    chunks = iter(app_iter)
    assert next(chunks) == b"one"
    assert produced == [b"one"]  # the next chunk is not produced before it is asked for
    assert next(chunks) == b"two"
    assert produced == [b"one", b"two"]
    app_iter.close()  # type: ignore[attr-defined]
    assert closed == [True]  # close() reaches the generator


def test_rejected_streaming_route_never_starts_the_app(server: ResourceServer) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:  # pragma: no cover
        raise AssertionError("the app must not run")

    response = Client(BearerAuthMiddleware(app, server)).get("/stream")
    assert_error(response, 401, None)


def test_error_status_line_and_exact_body(client: Client) -> None:
    response = client.get("/items", headers={"Authorization": "Bearer a b"})
    assert response.status == "400 Bad Request"
    body = json.loads(response.get_data())
    assert set(body) == {"error", "error_description"}
    assert body["error"] == "invalid_request"
    assert client.get("/items").status == "401 Unauthorized"
