"""Path rules over real HTTP: the path the router sees, and other spellings of it.

Each app of ``tests/pathapps.py`` runs once per module under its real server on a free
loopback port (uvicorn with h11, gunicorn with a sync worker), trusting a LocalIssuer served
over loopback. Requests go out with httpx (raw paths where httpx would normalise them) or a
raw socket (a lowercase method). Every response carries ``x-seen-*`` headers with what the
server handed the app, so each test also checks that the spelling arrived as intended.

Under ``uvicorn --root-path /api`` (uvicorn >= 0.26) the client sends ``/orders``, as a proxy
that strips ``/api`` would, and uvicorn hands the app ``path="/api/orders"``,
``root_path="/api"``; a client that sends ``/api/orders`` gets ``/api/api/orders`` (404).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from procs import free_port, interpreter, stop

from bearerguard.testing import LocalIssuer

TESTS = Path(__file__).parent
ROOT = TESTS.parent
AUDIENCE = "https://paths.api"
READY_WITHIN = 20.0  # seconds for every server to answer its first request


def uvicorn(factory: str, port: int, *extra: str) -> list[str]:
    return [
        interpreter(),
        "-m",
        "uvicorn",
        "--factory",
        "--app-dir",
        str(TESTS),
        f"pathapps:{factory}",
        "--http",
        "h11",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *extra,
    ]


def gunicorn(factory: str, port: int) -> list[str]:
    return [
        interpreter(),
        "-m",
        "gunicorn",
        "--pythonpath",
        str(TESTS),
        "--worker-class",
        "sync",
        "--workers",
        "1",
        "--bind",
        f"127.0.0.1:{port}",
        f"pathapps:{factory}()",
    ]


# name -> command for a port
COMMANDS: dict[str, Callable[[int], list[str]]] = {
    "uvicorn_root_path": lambda port: uvicorn("guarded_starlette", port, "--root-path", "/api"),
    "starlette_mount": lambda port: uvicorn("mounted_starlette", port),
    "fastapi_root_path": lambda port: uvicorn("fastapi_root_path", port),
    "flask_middleware": lambda port: gunicorn("flask_middleware", port),
    "flask_guard": lambda port: gunicorn("flask_guard", port),
}


@dataclass
class Running:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def wait_until_answering(servers: list[Running]) -> None:
    """Until each server answers any HTTP response (a 401 counts), bounded by READY_WITHIN."""
    deadline = time.monotonic() + READY_WITHIN
    for server in servers:
        while True:
            if server.process.poll() is not None:
                pytest.fail(f"{server.name} exited early:\n{server.output()}")
            try:
                httpx.get(f"http://127.0.0.1:{server.port}/", timeout=1)
                break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"{server.name} not answering in {READY_WITHIN} s:\n{server.output()}")
            time.sleep(0.05)  # polling a starting process, not a timing assertion


@pytest.fixture(scope="module")
def issuer() -> Iterator[LocalIssuer]:
    """The issuer every app trusts, its discovery and JWKS served on loopback."""
    local = LocalIssuer(audience=AUDIENCE)
    with local.serve():
        yield local


@pytest.fixture(scope="module")
def ports(
    issuer: LocalIssuer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, int]]:
    """Start every app under its real server at once; stop them all after the module."""
    logs = tmp_path_factory.mktemp("path-servers")
    # PYTHONPATH (if set) is inherited: the servers import the same bearerguard as pytest.
    env = {**os.environ, "PATHAPPS_ISSUER": issuer.issuer, "PATHAPPS_AUDIENCE": AUDIENCE}
    with contextlib.ExitStack() as stack:
        servers = []
        for name, command in COMMANDS.items():
            port = free_port()
            log = logs / f"{name}.log"
            with log.open("wb") as out:
                process = subprocess.Popen(
                    command(port),
                    cwd=ROOT,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            stack.callback(stop, process)
            servers.append(Running(name, port, process, log))
        wait_until_answering(servers)
        yield {server.name: server.port for server in servers}


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as c:
        yield c


@dataclass
class Api:
    """One running app: requests by raw path, so httpx sends the path exactly as written."""

    client: httpx.Client
    port: int

    def request(self, method: str, raw_path: str, token: str | None = None) -> httpx.Response:
        url = httpx.URL(
            scheme="http", host="127.0.0.1", port=self.port, raw_path=raw_path.encode("ascii")
        )
        return self.client.request(method, url, headers=auth(token))

    def raw(self, request_line: str, token: str | None = None) -> httpx.Response:
        """Send ``request_line`` byte for byte over a socket; parse the response."""
        lines = [request_line, f"Host: 127.0.0.1:{self.port}", "Content-Length: 0"]
        lines += [f"{k}: {v}" for k, v in auth(token).items()]
        lines.append("Connection: close")
        data = b""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            while chunk := sock.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = [tuple(line.split(":", 1)) for line in header_lines]
        return httpx.Response(
            int(status_line.split()[1]),
            headers=[(k.strip(), v.strip()) for k, v in headers],
            content=body,
        )


def auth(token: str | None) -> dict[str, str]:
    return {} if token is None else {"Authorization": f"Bearer {token}"}


def shown(response: httpx.Response) -> str:
    seen = {k: v for k, v in response.headers.items() if k.startswith("x-seen-")}
    return f"{response.status_code} {seen} {response.text[:300]!r}"


def handler(response: httpx.Response) -> str | None:
    """The name of the handler that answered, or None when no handler of the app did."""
    if "application/json" not in response.headers.get("content-type", ""):
        return None
    body = response.json()
    return body.get("handler") if isinstance(body, dict) else None


def assert_insufficient_scope(response: httpx.Response, scope: str) -> None:
    assert response.status_code == 403, shown(response)
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("Bearer"), challenge
    assert 'error="insufficient_scope"' in challenge, challenge
    assert f'scope="{scope}"' in challenge, challenge
    if response.content:  # HEAD has no body
        assert response.json()["error"] == "insufficient_scope"


def assert_answered_by(response: httpx.Response, name: str) -> dict[str, Any]:
    assert response.status_code == 200, shown(response)
    assert handler(response) == name, shown(response)
    body: dict[str, Any] = response.json()
    return body


def assert_seen(response: httpx.Response, path: str, root_path: str | None = None) -> None:
    """The server handed the app this (decoded) path, and this root_path (ASGI)."""
    assert response.headers["x-seen-path"] == path, shown(response)
    if root_path is not None:
        assert response.headers["x-seen-root-path"] == root_path, shown(response)


# -- one guarded Starlette/FastAPI app below a prefix ----------------------------------------------


@dataclass(frozen=True)
class Deployment:
    server: str
    prefix: str  # what the client puts before the app's own paths
    root_path: str  # the root_path the app is handed
    seen: str  # what ``scope["path"]`` starts with


ORDERS_BEHIND_A_PREFIX = {
    "uvicorn_root_path": Deployment("uvicorn_root_path", "", "/api", "/api"),
    "starlette_mount": Deployment("starlette_mount", "/v1", "/v1", "/v1"),
    "fastapi_root_path": Deployment("fastapi_root_path", "/api", "/api", "/api"),
}
# The guarded Starlette app (with /orders/{id}), below uvicorn's root_path or a Mount.
STARLETTE_DEPLOYMENTS = ["uvicorn_root_path", "starlette_mount"]


@pytest.fixture(params=sorted(ORDERS_BEHIND_A_PREFIX))
def deployment(request: pytest.FixtureRequest) -> Deployment:
    return ORDERS_BEHIND_A_PREFIX[request.param]


@pytest.fixture(params=STARLETTE_DEPLOYMENTS)
def starlette(request: pytest.FixtureRequest) -> Deployment:
    return ORDERS_BEHIND_A_PREFIX[request.param]


def api_for(d: Deployment, ports: dict[str, int], client: httpx.Client) -> Api:
    return Api(client, ports[d.server])


def test_below_a_prefix_a_read_only_token_cannot_post_orders(
    deployment: Deployment, ports: dict[str, int], client: httpx.Client, issuer: LocalIssuer
) -> None:
    api = api_for(deployment, ports, client)
    response = api.request("POST", f"{deployment.prefix}/orders", issuer.mint("read:orders"))
    assert_insufficient_scope(response, "write:orders")
    assert_seen(response, f"{deployment.seen}/orders", deployment.root_path)


def test_below_a_prefix_a_write_token_posts_orders(
    deployment: Deployment, ports: dict[str, int], client: httpx.Client, issuer: LocalIssuer
) -> None:
    api = api_for(deployment, ports, client)
    response = api.request("POST", f"{deployment.prefix}/orders", issuer.mint("write:orders"))
    body = assert_answered_by(response, "orders")
    assert body["root_path"] == deployment.root_path


def test_below_a_prefix_get_orders_needs_read_scope(
    deployment: Deployment, ports: dict[str, int], client: httpx.Client, issuer: LocalIssuer
) -> None:
    api = api_for(deployment, ports, client)
    path = f"{deployment.prefix}/orders"
    assert_insufficient_scope(api.request("GET", path, issuer.mint("write:orders")), "read:orders")
    assert_answered_by(api.request("GET", path, issuer.mint("read:orders")), "orders")


def test_below_a_prefix_health_is_public_without_a_token(
    deployment: Deployment, ports: dict[str, int], client: httpx.Client
) -> None:
    response = api_for(deployment, ports, client).request("GET", f"{deployment.prefix}/health")
    assert response.status_code == 200, shown(response)
    assert response.json() == {"status": "ok"}
    assert_seen(response, f"{deployment.seen}/health", deployment.root_path)


@pytest.mark.parametrize("path", ["/api/docs", "/api/openapi.json", "/api/health"])
def test_fastapi_root_path_docs_openapi_and_health_are_public_without_a_token(
    path: str, ports: dict[str, int], client: httpx.Client
) -> None:
    response = Api(client, ports["fastapi_root_path"]).request("GET", path)
    assert response.status_code == 200, shown(response)
    assert "www-authenticate" not in response.headers
    assert_seen(response, path, "/api")


def test_fastapi_root_path_guards_the_unprefixed_path_it_also_routes(
    ports: dict[str, int], client: httpx.Client, issuer: LocalIssuer
) -> None:
    # FastAPI routes /orders as /orders too (root_path is stripped only where it prefixes).
    api = Api(client, ports["fastapi_root_path"])
    response = api.request("POST", "/orders", issuer.mint("read:orders"))
    assert_insufficient_scope(response, "write:orders")
    assert_seen(response, "/orders", "/api")
    assert_answered_by(api.request("POST", "/orders", issuer.mint("write:orders")), "orders")


def test_uvicorn_root_path_a_client_repeating_the_prefix_reaches_no_handler(
    ports: dict[str, int], client: httpx.Client, issuer: LocalIssuer
) -> None:
    # uvicorn >= 0.26 prepends --root-path itself: /api/orders arrives as /api/api/orders.
    api = Api(client, ports["uvicorn_root_path"])
    for token in (issuer.mint("read:orders"), issuer.mint("write:orders")):
        response = api.request("POST", "/api/orders", token)
        assert response.status_code == 404, shown(response)
        assert_seen(response, "/api/api/orders", "/api")


# -- other spellings of a path under the guarded Starlette app -------------------------------------


def test_trailing_slash_post_with_a_read_only_token_never_reaches_the_handler(
    starlette: Deployment, ports: dict[str, int], client: httpx.Client, issuer: LocalIssuer
) -> None:
    api = api_for(starlette, ports, client)
    response = api.request("POST", f"{starlette.prefix}/orders/", issuer.mint("read:orders"))
    assert response.status_code in (403, 307, 308), shown(response)  # denied, or redirected
    assert handler(response) is None, shown(response)
    if response.status_code == 403:
        assert_insufficient_scope(response, "write:orders")
    assert_seen(response, f"{starlette.seen}/orders/", starlette.root_path)


@pytest.mark.parametrize("spelling", ["//orders", "///orders", "//orders/"])
def test_doubled_slashes_post_with_a_read_only_token_is_403(
    spelling: str,
    starlette: Deployment,
    ports: dict[str, int],
    client: httpx.Client,
    issuer: LocalIssuer,
) -> None:
    api = api_for(starlette, ports, client)
    response = api.request("POST", starlette.prefix + spelling, issuer.mint("read:orders"))
    assert_insufficient_scope(response, "write:orders")
    assert_seen(response, starlette.seen + spelling, starlette.root_path)


def test_percent_encoded_path_is_decoded_by_the_server_and_guarded_as_decoded(
    starlette: Deployment, ports: dict[str, int], client: httpx.Client, issuer: LocalIssuer
) -> None:
    api = api_for(starlette, ports, client)
    encoded = f"{starlette.prefix}/%6Frders"
    response = api.request("POST", encoded, issuer.mint("read:orders"))
    assert_insufficient_scope(response, "write:orders")
    assert_seen(response, f"{starlette.seen}/orders", starlette.root_path)
    assert response.headers["x-seen-raw-path"] == f"{starlette.seen}/%6Frders"
    # The server does route it to the orders handler: the 403 above is the rule, not a 404.
    assert_answered_by(api.request("POST", encoded, issuer.mint("write:orders")), "orders")


@pytest.mark.parametrize("tail", ["%0A", "%0D", "%00", "%09", "%7F", "%0A%0A"])
def test_a_control_character_in_the_path_is_400_before_any_handler(
    tail: str,
    starlette: Deployment,
    ports: dict[str, int],
    client: httpx.Client,
    issuer: LocalIssuer,
) -> None:
    """Starlette routes "/orders\n" (from %0A) to "/orders": its route regexes end in "$",
    which matches before a final newline, while no rule for "/orders" matched it."""
    api = api_for(starlette, ports, client)
    response = api.request("POST", f"{starlette.prefix}/orders{tail}", issuer.mint("read:orders"))
    assert handler(response) is None, shown(response)
    # 404 only where a Mount in front of the guard matches nothing (its ".*" stops at "\n").
    assert response.status_code in (400, 404), shown(response)
    if response.status_code == 400:
        assert 'error="invalid_request"' in response.headers["www-authenticate"]


def test_flask_control_characters_in_the_path_are_400(flask_api: Api, issuer: LocalIssuer) -> None:
    for tail in ("%0A", "%00", "%7F"):
        response = flask_api.request("POST", f"/products{tail}", issuer.mint("read:products"))
        assert response.status_code == 400, shown(response)
        assert handler(response) is None, shown(response)


def test_head_on_a_get_protected_route_needs_the_read_scope(
    starlette: Deployment, ports: dict[str, int], client: httpx.Client, issuer: LocalIssuer
) -> None:
    api = api_for(starlette, ports, client)
    path = f"{starlette.prefix}/orders"
    response = api.request("HEAD", path, issuer.mint("write:orders"))
    assert_insufficient_scope(response, "read:orders")
    assert response.headers["x-seen-method"] == "HEAD"
    response = api.request("HEAD", path, issuer.mint("read:orders"))
    assert response.status_code == 200, shown(response)


def test_lowercase_method_sent_raw_needs_the_scopes_of_the_uppercase_rule(
    starlette: Deployment, ports: dict[str, int], client: httpx.Client, issuer: LocalIssuer
) -> None:
    api = api_for(starlette, ports, client)
    line = f"delete {starlette.prefix}/orders/1 HTTP/1.1"
    response = api.raw(line, issuer.mint("read:orders write:orders"))
    assert_insufficient_scope(response, "admin")
    assert response.headers["x-seen-method"] == "delete"  # the server passed it on as sent
    assert_seen(response, f"{starlette.seen}/orders/1", starlette.root_path)
    # The handler takes the lowercase method: without the rule this would have been a 200.
    body = assert_answered_by(api.raw(line, issuer.mint("admin")), "order_item")
    assert body["method"] == "delete"


# -- Flask under gunicorn: the WSGI middleware and BearerGuard -------------------------------------

FLASK_SERVERS = ["flask_middleware", "flask_guard"]


@pytest.fixture(params=FLASK_SERVERS)
def flask_api(request: pytest.FixtureRequest, ports: dict[str, int], client: httpx.Client) -> Api:
    return Api(client, ports[request.param])


def test_flask_post_products_needs_the_write_scope(flask_api: Api, issuer: LocalIssuer) -> None:
    response = flask_api.request("POST", "/products", issuer.mint("read:products"))
    assert_insufficient_scope(response, "write:products")
    response = flask_api.request("POST", "/products", issuer.mint("write:products"))
    assert_answered_by(response, "products")


def test_flask_health_is_public_without_a_token(flask_api: Api) -> None:
    response = flask_api.request("GET", "/health")
    assert response.status_code == 200, shown(response)
    assert response.json() == {"status": "ok"}


@pytest.mark.parametrize("spelling", ["//products", "///products"])
def test_flask_leading_slashes_reach_products_without_redirect_and_still_need_write_scope(
    spelling: str, flask_api: Api, issuer: LocalIssuer
) -> None:
    response = flask_api.request("POST", spelling, issuer.mint("read:products"))
    assert_insufficient_scope(response, "write:products")
    assert_seen(response, spelling)
    assert response.headers["x-seen-raw-path"] == spelling
    # Werkzeug routes this spelling to /products itself (no redirect): the 403 is what stops it.
    body = assert_answered_by(
        flask_api.request("POST", spelling, issuer.mint("write:products")), "products"
    )
    assert body["path_info"] == spelling
    assert body["path"] == "/products"


def test_flask_admin_with_leading_slashes_needs_the_admin_scope(
    flask_api: Api, issuer: LocalIssuer
) -> None:
    response = flask_api.request("GET", "///admin/users", issuer.mint("read:products"))
    assert_insufficient_scope(response, "admin")
    assert_seen(response, "///admin/users")
    body = assert_answered_by(
        flask_api.request("GET", "///admin/users", issuer.mint("admin")), "admin_users"
    )
    assert body["path_info"] == "///admin/users"


def test_flask_doubled_slash_health_without_a_token_reaches_no_protected_handler(
    flask_api: Api,
) -> None:
    response = flask_api.request("GET", "//health")
    assert_seen(response, "//health")
    # Fail-closed: a 401 challenge, or the public health handler itself; nothing else.
    if response.status_code == 200:
        assert response.json() == {"status": "ok"}, shown(response)
    else:
        assert response.status_code == 401, shown(response)
        assert response.headers["www-authenticate"].startswith("Bearer")
    response = flask_api.request("POST", "//products")
    assert response.status_code == 401, shown(response)
