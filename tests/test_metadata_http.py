"""RFC 9728 protected-resource metadata over real HTTP, from every adapter and both examples.

Each app of ``tests/metadataapps.py`` and each example API runs once per module under its real
server (uvicorn, gunicorn) on a free loopback port, all started at once, trusting one
LocalIssuer served on loopback. A client fetches the document the way RFC 9728 tells it to:
from the URL derived from the resource identifier (section 3.1: the well-known path between
host and path) or named by ``resource_metadata`` in a 401/403 challenge (section 5.1), and
sends the request to the app with that URL's host in the Host header.

The document's members are checked one by one against what each app configured (section 2),
zero-value members left out (section 3.2), and ``resource`` identical to the identifier the
URL was derived from (section 3.3). Each server's first request is the document itself, so
``scopes_supported`` is checked as a client sees it on first contact.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
from metadataapps import (
    CATALOGUE,
    GATEWAY_AUDIENCE,
    GATEWAY_URL,
    ITEMS,
    MCP,
    MCP_AUDIENCE,
    ORDERS,
    PARTNER_ISSUER,
    QUIET,
    REPORTS,
    SHOP,
)
from procs import example_command, free_port, interpreter, stop

from bearerguard.testing import LocalIssuer

TESTS = Path(__file__).parent
ROOT = TESTS.parent
WELL_KNOWN = "/.well-known/oauth-protected-resource"
SHOPPING = "https://shopping.api"  # AUTH_AUDIENCE of the examples
READY_WITHIN = 20.0  # seconds for every server to answer its first request
CHALLENGE_METADATA = re.compile(r'resource_metadata="([^"]*)"\Z')

OPTIONAL_MEMBERS = (
    "resource_name",
    "resource_documentation",
    "resource_policy_uri",
    "resource_tos_uri",
)


def derived_url(resource: str) -> str:
    """RFC 9728 section 3.1, as a client computes it: the well-known path between the host and
    the resource's path (its terminating slash removed first); the query stays."""
    scheme, host, path, query, _ = urlsplit(resource)
    return urlunsplit((scheme, host, WELL_KNOWN + path.rstrip("/"), query, ""))


# -- the apps --------------------------------------------------------------------------------------


def uvicorn(factory: str) -> Callable[[int], list[str]]:
    return lambda port: [
        interpreter(),
        "-m",
        "uvicorn",
        "--factory",
        "--app-dir",
        str(TESTS),
        f"metadataapps:{factory}",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]


def gunicorn(factory: str) -> Callable[[int], list[str]]:
    return lambda port: [
        interpreter(),
        "-m",
        "gunicorn",
        "--pythonpath",
        str(TESTS),
        "--workers",
        "1",
        "--bind",
        f"127.0.0.1:{port}",
        f"metadataapps:{factory}()",
    ]


@dataclass(frozen=True)
class Case:
    """One running app: how to start it, what it configured, what it must serve."""

    name: str
    command: Callable[[int], list[str]]
    audience: str  # minted tokens carry it
    protected: str  # GET: 401 without a token, 403 with a token lacking the route's scope
    resource: str  # the configured resource identifier
    path: str | None  # where the document is served (None: not published)
    # The whole document, given the issuer URL (none when not published).
    document: Callable[[str], dict[str, Any]] = lambda issuer: {}

    def __str__(self) -> str:
        return self.name


def shop_document(issuer: str) -> dict[str, Any]:
    """The examples' contract: resource=AUTH_AUDIENCE, authorization_servers=[AUTH_ISSUER]."""
    return {
        "resource": SHOPPING,
        "authorization_servers": [issuer],
        "scopes_supported": ["read:products", "write:products"],
        "bearer_methods_supported": ["header"],
    }


PUBLISHED = [
    Case(
        "starlette_middleware",
        uvicorn("starlette_middleware"),
        ORDERS,
        "/orders",
        ORDERS,
        "/.well-known/oauth-protected-resource",
        lambda issuer: {
            "resource": ORDERS,
            "authorization_servers": [issuer, PARTNER_ISSUER],
            "scopes_supported": ["orders:audit", "orders:read", "orders:write", "orders:admin"],
            "bearer_methods_supported": ["header"],
            "resource_name": "Orders API",
            "resource_documentation": "https://docs.orders.example/api",
            "resource_policy_uri": "https://orders.example/policy",
            "resource_tos_uri": "https://orders.example/terms",
        },
    ),
    Case(
        "fastapi_middleware",
        uvicorn("fastapi_middleware"),
        MCP_AUDIENCE,
        "/v1/mcp/tools",
        MCP,
        "/.well-known/oauth-protected-resource/v1/mcp",
        lambda issuer: {
            "resource": MCP,
            "authorization_servers": [issuer],
            "scopes_supported": ["mcp:tools", "mcp:admin"],
            "bearer_methods_supported": ["header"],
        },
    ),
    Case(
        "fastapi_one_line",
        uvicorn("fastapi_one_line"),
        SHOP,
        "/tools",
        SHOP,
        "/.well-known/oauth-protected-resource",
        lambda issuer: {
            "resource": SHOP,
            "authorization_servers": [issuer],
            "scopes_supported": ["shop:read", "shop:admin"],
            "bearer_methods_supported": ["header"],
        },
    ),
    Case(
        "starlette_endpoint",
        uvicorn("starlette_endpoint"),
        CATALOGUE,
        "/catalogue",
        CATALOGUE,
        "/.well-known/oauth-protected-resource",
        lambda issuer: {
            "resource": CATALOGUE,  # the terminating slash kept: the identifier as configured
            "authorization_servers": [issuer],
            "scopes_supported": ["catalogue:read", "catalogue:write"],
            "bearer_methods_supported": ["header"],
        },
    ),
    Case(
        "wsgi_middleware",
        gunicorn("wsgi_middleware"),
        ITEMS,
        "/api/v2/items",
        ITEMS,
        "/.well-known/oauth-protected-resource/api/v2",
        lambda issuer: {
            "resource": ITEMS,
            "authorization_servers": [issuer],
            "scopes_supported": ["items:read", "items:write"],
            "bearer_methods_supported": ["header"],
        },
    ),
    Case(
        "flask_guard",
        gunicorn("flask_guard"),
        REPORTS,
        "/reports",
        REPORTS,
        "/.well-known/oauth-protected-resource",
        lambda issuer: {
            "resource": REPORTS,
            "authorization_servers": [issuer],
            "scopes_supported": ["reports:write", "reports:read"],
            "bearer_methods_supported": ["header"],
            "resource_name": "Reports API",
            "resource_documentation": "https://docs.reports.example/",
        },
    ),
    Case(
        "fastapi_example",
        lambda port: example_command("fastapi", port),
        SHOPPING,
        "/products",
        SHOPPING,
        "/.well-known/oauth-protected-resource",
        shop_document,
    ),
    Case(
        "flask_example",
        lambda port: example_command("flask", port),
        SHOPPING,
        "/products",
        SHOPPING,
        "/.well-known/oauth-protected-resource",
        shop_document,
    ),
]
GATEWAY = Case(
    "gateway_middleware",
    uvicorn("gateway_middleware"),
    GATEWAY_AUDIENCE,
    "/orders",
    GATEWAY_AUDIENCE,
    urlsplit(GATEWAY_URL).path,  # the gateway forwards the path as it is
    lambda issuer: {
        "resource": GATEWAY_AUDIENCE,
        "authorization_servers": [issuer],
        "bearer_methods_supported": ["header"],
    },
)
QUIET_CASES = [
    Case("quiet_middleware", uvicorn("quiet_middleware"), QUIET, "/orders", QUIET, None),
    Case("quiet_flask", gunicorn("quiet_flask"), QUIET, "/orders", QUIET, None),
]
CASES = [*PUBLISHED, GATEWAY, *QUIET_CASES]


# -- servers ---------------------------------------------------------------------------------------


@dataclass
class Running:
    case: Case
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    client: httpx.Client
    first: httpx.Response | None = None  # the answer to the server's first request

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def fetch(
        self, url: str, method: str = "GET", headers: dict[str, str] | None = None
    ) -> httpx.Response:
        """``method`` ``url`` as a client would send it, to this app on loopback."""
        parts = urlsplit(url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        return self.client.request(
            method,
            f"http://127.0.0.1:{self.port}{target}",
            headers={"Host": parts.netloc, **(headers or {})},
        )

    def at(self, path: str, method: str = "GET", token: str | None = None) -> httpx.Response:
        """``path`` of the resource's origin."""
        scheme, host = urlsplit(self.case.resource)[:2]
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        return self.fetch(f"{scheme}://{host}{path}", method, headers)


def wait_until_answering(servers: list[Running]) -> None:
    """Until each server answers its first request (the document, else /health)."""
    deadline = time.monotonic() + READY_WITHIN
    for server in servers:
        probe = server.case.path or "/health"
        while server.first is None:
            if server.process.poll() is not None:
                pytest.fail(f"{server.case} exited early:\n{server.output()}")
            with contextlib.suppress(httpx.TransportError):
                server.first = server.at(probe)
            if server.first is None:
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"{server.case} not answering in {READY_WITHIN} s:\n{server.output()}"
                    )
                time.sleep(0.05)  # polling a starting process, not a timing assertion


@pytest.fixture(scope="module")
def issuer() -> Iterator[LocalIssuer]:
    """The one issuer every app trusts, its discovery and JWKS served on loopback."""
    local = LocalIssuer(audience=SHOPPING)
    with local.serve():
        yield local


@pytest.fixture(scope="module")
def servers(
    issuer: LocalIssuer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Running]]:
    """Start every app under its real server at once; stop them all after the module."""
    logs = tmp_path_factory.mktemp("metadata-servers")
    env = {
        **os.environ,
        "METADATA_ISSUER": issuer.issuer,
        "AUTH_ISSUER": issuer.issuer,
        "AUTH_AUDIENCE": SHOPPING,
    }
    with contextlib.ExitStack() as stack:
        client = stack.enter_context(httpx.Client(timeout=10))
        running = []
        for case in CASES:
            port = free_port()
            log = logs / f"{case}.log"
            with log.open("wb") as out:
                process = subprocess.Popen(
                    case.command(port),
                    cwd=ROOT,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            stack.callback(stop, process)
            running.append(Running(case, port, process, log, client))
        wait_until_answering(running)
        yield {server.case.name: server for server in running}
        for server in running:
            assert server.process.poll() is None, f"{server.case} died:\n{server.output()}"


@pytest.fixture(params=PUBLISHED, ids=str)
def app(request: pytest.FixtureRequest, servers: dict[str, Running]) -> Running:
    """Each app publishing its document at the URL derived from its resource."""
    return servers[request.param.name]


def document(app: Running) -> dict[str, Any]:
    response = app.fetch(derived_url(app.case.resource))
    assert response.status_code == 200, response.text
    body = response.json()
    assert isinstance(body, dict)
    return body


def challenge_url(response: httpx.Response, status: int) -> str | None:
    """The ``resource_metadata`` that ends the response's Bearer challenge, if any."""
    assert response.status_code == status, response.text
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("Bearer "), challenge
    match = CHALLENGE_METADATA.search(challenge)
    assert match is not None or "resource_metadata" not in challenge, challenge
    return None if match is None else match[1]


# -- the document, member by member (RFC 9728 section 2) ------------------------------------------


def test_served_at_the_url_derived_from_the_resource_and_names_it(app: Running) -> None:
    """Sections 3.1 and 3.3: fetched from the URL derived from the configured resource
    identifier, ``resource`` is that identifier, character for character."""
    url = derived_url(app.case.resource)
    assert urlsplit(url).path == app.case.path
    assert document(app)["resource"] == app.case.resource


def test_authorization_servers(app: Running, issuer: LocalIssuer) -> None:
    servers = document(app)["authorization_servers"]
    assert servers == app.case.document(issuer.issuer)["authorization_servers"]
    for server in servers:
        parts = urlsplit(server)
        assert parts.scheme in ("https", "http"), server  # http: the loopback test issuer
        assert parts.netloc, server


def test_scopes_supported_on_first_contact(
    app: Running, issuer: LocalIssuer, request: pytest.FixtureRequest
) -> None:
    """Every scope the app declared (rules, @protect, BearerAuth and its routes,
    @guard.require, scopes_supported=) is listed once, before any route was requested."""
    assert app.first is not None
    assert app.first.status_code == 200, app.first.text
    scopes = app.first.json()["scopes_supported"]
    assert len(set(scopes)) == len(scopes), scopes
    assert all(isinstance(s, str) and s and " " not in s for s in scopes), scopes
    assert sorted(scopes) == sorted(app.case.document(issuer.issuer)["scopes_supported"])


def test_bearer_methods_supported_is_the_header_only(app: Running) -> None:
    """RFC 6750 section 2.1 only: tokens in a query or form body are never accepted."""
    assert document(app)["bearer_methods_supported"] == ["header"]


def test_optional_members_only_when_set(app: Running, issuer: LocalIssuer) -> None:
    """Section 3.2: members with no value are left out, not sent as null or empty."""
    served = document(app)
    expected = app.case.document(issuer.issuer)
    for member in OPTIONAL_MEMBERS:
        if member in expected:
            assert served[member] == expected[member]
        else:
            assert member not in served
    assert all(value not in (None, "", [], {}) for value in served.values()), served
    # Nothing else (scopes_supported: see test_scopes_supported_on_first_contact).
    assert set(served) == set(expected)
    assert {k: v for k, v in served.items() if k != "scopes_supported"} == {
        k: v for k, v in expected.items() if k != "scopes_supported"
    }


# -- the responses ---------------------------------------------------------------------------------


def test_get_is_public_json_readable_from_anywhere_and_cacheable(app: Running) -> None:
    for headers in ({}, {"Authorization": "Bearer not-a-token"}):  # no check at all
        response = app.fetch(derived_url(app.case.resource), headers=headers)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].split(";")[0].strip() == "application/json"
        assert response.headers["access-control-allow-origin"] == "*"
        assert response.headers["cache-control"] == "public, max-age=3600"
        assert "www-authenticate" not in response.headers
        assert isinstance(response.json(), dict)


def test_head_is_get_without_the_body(app: Running, request: pytest.FixtureRequest) -> None:
    url = derived_url(app.case.resource)
    get, head = app.fetch(url), app.fetch(url, "HEAD")
    assert head.status_code == 200
    assert head.content == b""
    for name in ("content-type", "access-control-allow-origin", "cache-control"):
        assert head.headers[name] == get.headers[name]
    # RFC 9110 section 8.6: a Content-Length in a HEAD response is the GET body's length.
    assert head.headers.get("content-length", str(len(get.content))) == str(len(get.content))


def test_cors_preflight(app: Running) -> None:
    preflight = {"Origin": "https://client.example", "Access-Control-Request-Method": "GET"}
    response = app.fetch(derived_url(app.case.resource), "OPTIONS", preflight)
    assert response.status_code == 204, response.text
    assert response.content == b""
    assert response.headers["access-control-allow-origin"] == "*"
    methods = {m.strip() for m in response.headers["access-control-allow-methods"].split(",")}
    assert {"GET", "HEAD"} <= methods


def test_other_methods_are_405_with_allow(app: Running, request: pytest.FixtureRequest) -> None:
    response = app.fetch(derived_url(app.case.resource), "POST")
    assert response.status_code == 405, response.text
    allowed = {m.strip() for m in response.headers["allow"].split(",")}
    assert {"GET", "HEAD"} <= allowed
    assert "POST" not in allowed


# -- discovery from a challenge (RFC 9728 section 5) ----------------------------------------------


def test_a_401_names_the_document_a_client_then_fetches(app: Running) -> None:
    """Deny by default everywhere else: the protected route answers 401 whose challenge ends
    with resource_metadata; that URL is the derived one, and fetching it needs no token."""
    url = challenge_url(app.at(app.case.protected), 401)
    assert url == derived_url(app.case.resource)
    response = app.fetch(url)
    assert response.status_code == 200, response.text
    assert response.json()["resource"] == app.case.resource


def test_a_403_names_the_document_too(app: Running, issuer: LocalIssuer) -> None:
    token = issuer.mint("unrelated:scope", audience=app.case.audience)
    response = app.at(app.case.protected, token=token)
    assert 'error="insufficient_scope"' in response.headers.get("www-authenticate", "")
    assert challenge_url(response, 403) == derived_url(app.case.resource)


# -- particular configurations ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["fastapi_middleware", "wsgi_middleware"])
def test_a_resource_with_a_path_has_its_own_document_url(
    servers: dict[str, Running], name: str
) -> None:
    """``https://host/v1/mcp`` -> ``/.well-known/oauth-protected-resource/v1/mcp``; the bare
    well-known path and the path with the suffix appended are just protected paths."""
    app = servers[name]
    resource_path = urlsplit(app.case.resource).path
    assert app.at(WELL_KNOWN + resource_path).status_code == 200
    for elsewhere in (WELL_KNOWN, resource_path + WELL_KNOWN):
        assert challenge_url(app.at(elsewhere), 401) == derived_url(app.case.resource)


def test_an_explicit_metadata_url_is_named_by_every_challenge(
    servers: dict[str, Running], issuer: LocalIssuer
) -> None:
    """``resource_metadata="https://gateway.example/..."``: challenges name that URL, and a
    gateway forwarding it unchanged reaches the document. No scopes and an empty
    resource_name are zero values: left out (section 3.2)."""
    app = servers[GATEWAY.name]
    assert challenge_url(app.at("/orders"), 401) == GATEWAY_URL
    invalid = app.at("/orders", token=issuer.tampered(issuer.mint(audience=GATEWAY_AUDIENCE)))
    assert 'error="invalid_token"' in invalid.headers.get("www-authenticate", "")
    assert challenge_url(invalid, 401) == GATEWAY_URL
    response = app.fetch(GATEWAY_URL)
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == "*"
    assert response.json() == GATEWAY.document(issuer.issuer)


@pytest.mark.parametrize(
    ("case", "status"), [(QUIET_CASES[0], 401), (QUIET_CASES[1], 404)], ids=str
)
def test_switched_off_nothing_is_served_nor_named(
    servers: dict[str, Running], issuer: LocalIssuer, case: Case, status: int
) -> None:
    """``resource_metadata=False``: the well-known path is an ordinary path (401 under deny
    by default, else 404) and no challenge carries resource_metadata."""
    app = servers[case.name]
    response = app.fetch(derived_url(QUIET))
    assert response.status_code == status, response.text
    assert "resource_metadata" not in response.headers.get("www-authenticate", "")
    assert challenge_url(app.at(case.protected), 401) is None
    token = issuer.mint("unrelated:scope", audience=QUIET)
    assert challenge_url(app.at(case.protected, token=token), 403) is None


def test_the_one_line_route_stays_out_of_the_openapi_document(
    servers: dict[str, Running],
) -> None:
    app = servers["fastapi_one_line"]
    paths = app.at("/openapi.json").json()["paths"]
    assert "/tools" in paths
    assert WELL_KNOWN not in paths
