"""One parity matrix: the same requests against all five adapters give the same answer.

Every adapter goes through ``ResourceServer.authorize`` / ``authorize_async``, so a request
must look the same from outside whichever adapter guards it: the status, the exact
``WWW-Authenticate`` value, ``Retry-After``, ``Content-Type``, ``Cache-Control`` and the
JSON error body; and on success the token the handler sees (``{"sub", "scopes",
"anonymous"}``).

Each row is sent to five freshly built apps, each with its own fresh ``ResourceServer`` (no
shared token cache, key cache or outage state), exposing the same routes:

============  =================================================================
/read         needs "read"
/both         needs "read" and "write"
/either       needs "read" or "audit"
/optional     no bearer credentials: runs without a token; else needs "read"
/admin        a token-only claim rule: roles include "admin"
/orgs/{org}/  "read" and organization_id == {org} (route-level adapters only:
reports       the middleware never knows the route's path parameters)
============  =================================================================

``assert_identical`` compares every adapter's outcome with the first one's, which is the
same as comparing all five pairwise; a failure lists every distinct outcome with the
adapters that produced it. Each row also checks its expectation (status, error code,
``scope=``, description), so five adapters that were wrong the same way still fail.

A row may name adapters that are known to diverge (``known=``), with the reason: the others
must still agree, and a known divergence xfails (strictly: once it is fixed, the row fails
until the entry is removed).
"""

# No "from __future__ import annotations": FastAPI must resolve the Annotated[...] of routes
# defined inside a function.
import functools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

import anyio
import httpx
import pytest
from fastapi import FastAPI, Security
from fastapi import WebSocket as FastAPIWebSocket
from flask import Flask
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket
from werkzeug.test import Client as WerkzeugClient

from bearerguard import AccessToken, ResourceServer
from bearerguard import asgi as bg_asgi
from bearerguard import wsgi as bg_wsgi
from bearerguard.claims import claim_contains, claim_equals, claim_matches_path
from bearerguard.fastapi import BearerAuth
from bearerguard.flask import BearerGuard, current_token_or_none
from bearerguard.rules import Rule
from bearerguard.starlette import Protect
from bearerguard.testing import LocalIssuer, SigningKey

NOW = 1_800_000_000.0
AUDIENCE = "https://api.test"
OTHER_API = "https://other.api"
REALM = f'Bearer realm="{AUDIENCE}"'
METADATA = f', resource_metadata="{AUDIENCE}/.well-known/oauth-protected-resource"'

ADAPTERS = ("asgi", "starlette", "fastapi", "wsgi", "flask")
ROUTE_LEVEL = ("starlette", "fastapi", "flask")
WEBSOCKET_ADAPTERS = ("asgi", "starlette", "fastapi")

ADMIN_RULE = claim_contains("roles", "admin")  # a token-only rule every adapter can express
TENANT_RULE = claim_equals("tenant", "acme")  # server-wide
ORG_RULE = claim_matches_path("organization_id", "org")  # needs the route's path parameters

# Claim values that must never appear in a response (only the rule's description may).
SECRET_ROLE = "role-7f3a"
SECRET_TENANT = "tenant-91c2"
SECRET_ORG = "org-5d0e"


def clock() -> float:
    return NOW


@pytest.fixture
def issuer() -> LocalIssuer:
    return LocalIssuer(audience=AUDIENCE, clock=clock)


def describe(token: AccessToken | None) -> dict[str, Any]:
    """What every handler answers: the token it was given, or that it was given none."""
    return {
        "sub": None if token is None else token.sub,
        "scopes": [] if token is None else sorted(token.scopes),
        "anonymous": token is None,
    }


# -- the servers ------------------------------------------------------------------------------


def refuse(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


def make_server(issuer: LocalIssuer, kind: str = "plain", **kwargs: Any) -> ResourceServer:
    """A fresh server: "plain", "tenant" (a server-wide claim rule) or "down" (the issuer
    refuses every connection and nothing is cached)."""
    if kind == "tenant":
        kwargs["claim_rules"] = [TENANT_RULE]
    elif kind == "down":
        kwargs["transport"] = httpx.MockTransport(refuse)
    else:
        assert kind == "plain", kind
    return issuer.resource_server(**kwargs)


# -- the same routes behind each adapter -------------------------------------------------------

MIDDLEWARE_RULES = [
    Rule("/read", scopes=["read"]),
    Rule("/both", scopes=["read", "write"]),
    Rule("/either", scopes=["read", "audit"], any_of=True),
    Rule("/optional", scopes=["read"], optional=True),
    Rule("/admin", claims=[ADMIN_RULE]),
]
PATHS = ("/read", "/both", "/either", "/optional", "/admin")


async def from_scope(request: Request) -> JSONResponse:
    return JSONResponse(describe(request.scope.get("auth")))


def asgi_app(server: ResourceServer) -> Any:
    app = Starlette(routes=[Route(path, from_scope) for path in PATHS])
    return bg_asgi.BearerAuthMiddleware(app, server=server, rules=MIDDLEWARE_RULES)


def starlette_app(server: ResourceServer) -> Any:
    protect = Protect(server)

    async def handler(request: Request) -> JSONResponse:
        return JSONResponse(describe(request.auth))

    return Starlette(
        routes=[
            Route("/read", protect("read")(handler)),
            Route("/both", protect("read", "write")(handler)),
            Route("/either", protect("read", "audit", any_of=True)(handler)),
            Route("/optional", protect("read", optional=True)(handler)),
            Route("/admin", protect(claims=[ADMIN_RULE])(handler)),
            Route("/orgs/{org}/reports", protect("read", claims=[ORG_RULE])(handler)),
        ]
    )


def fastapi_app(server: ResourceServer) -> Any:
    auth = BearerAuth(server)
    app = FastAPI()

    @app.get("/read")
    async def read(token: Annotated[AccessToken, Security(auth, scopes=["read"])]) -> Any:
        return describe(token)

    @app.get("/both")
    async def both(
        token: Annotated[AccessToken, Security(auth, scopes=["read", "write"])],
    ) -> Any:
        return describe(token)

    @app.get("/either")
    async def either(
        token: Annotated[AccessToken, Security(auth.any_of(), scopes=["read", "audit"])],
    ) -> Any:
        return describe(token)

    @app.get("/optional")
    async def optional(
        token: Annotated[AccessToken | None, Security(auth.optional(), scopes=["read"])],
    ) -> Any:
        return describe(token)

    @app.get("/admin")
    async def admin(token: Annotated[AccessToken, Security(auth.with_claims(ADMIN_RULE))]) -> Any:
        return describe(token)

    @app.get("/orgs/{org}/reports")
    async def reports(
        org: str,
        token: Annotated[AccessToken, Security(auth.with_claims(ORG_RULE), scopes=["read"])],
    ) -> Any:
        return describe(token)

    return app


def plain_wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    if environ["PATH_INFO"] not in PATHS:
        start_response("404 Not Found", [("Content-Length", "0")])
        return [b""]
    body = json.dumps(describe(environ.get(bg_wsgi.ENVIRON_KEY))).encode()
    start_response(
        "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]


def wsgi_app(server: ResourceServer) -> Any:
    return bg_wsgi.BearerAuthMiddleware(plain_wsgi, server=server, rules=MIDDLEWARE_RULES)


def flask_app(server: ResourceServer) -> Any:
    app = Flask(__name__)
    guard = BearerGuard(app, server)

    def handler(**_: Any) -> Any:
        return describe(current_token_or_none())

    routes: list[tuple[str, Callable[..., Any]]] = [
        ("/read", guard.require("read")),
        ("/both", guard.require("read", "write")),
        ("/either", guard.require("read", "audit", any_of=True)),
        ("/optional", guard.require("read", optional=True)),
        ("/admin", guard.require(claims=[ADMIN_RULE])),
        ("/orgs/<org>/reports", guard.require("read", claims=[ORG_RULE])),
    ]
    for rule, decorator in routes:
        app.add_url_rule(rule, rule, decorator(handler))
    return app


BUILDERS: dict[str, Callable[[ResourceServer], Any]] = {
    "asgi": asgi_app,
    "starlette": starlette_app,
    "fastapi": fastapi_app,
    "wsgi": wsgi_app,
    "flask": flask_app,
}
ASGI_FAMILY = {"asgi", "starlette", "fastapi"}


def wrapped(adapter: str, server: ResourceServer, outer: ResourceServer | None) -> Any:
    """The adapter's app, behind an outer middleware of its family when ``outer`` is given.

    For the middleware adapters the inner guard is then a second middleware.
    """
    app = BUILDERS[adapter](server)
    if outer is None:
        return app
    if adapter in ASGI_FAMILY:
        return bg_asgi.BearerAuthMiddleware(app, server=outer)
    if adapter == "flask":
        app.wsgi_app = bg_wsgi.BearerAuthMiddleware(app.wsgi_app, server=outer)
        return app
    return bg_wsgi.BearerAuthMiddleware(app, server=outer)


# -- sending one request and describing the answer ---------------------------------------------

Headers = list[tuple[str, str]]


def send(adapter: str, app: Any, path: str, headers: Headers) -> dict[str, Any]:
    """The observable answer: status, the headers a client acts on, the body.

    ASGI apps go through Starlette's TestClient (repeated headers arrive as repeated
    headers), WSGI apps through Werkzeug's client (repeated headers arrive joined with ", ",
    as WSGI servers join them).
    """
    if adapter in ASGI_FAMILY:
        response = TestClient(app).get(path, headers=headers)
        status, got, data = response.status_code, response.headers, response.content
        pairs = response.headers.multi_items()  # a repeated header stays repeated
    else:
        client = app.test_client() if adapter == "flask" else WerkzeugClient(app)
        answer = client.get(path, headers=headers)
        status, got, data = answer.status_code, answer.headers, answer.get_data()
        pairs = list(answer.headers.items())
    error = status >= 400
    return {
        "status": status,
        "www-authenticate": got.get("www-authenticate"),
        "retry-after": got.get("retry-after"),
        "content-type": got.get("content-type"),
        "cache-control": got.get("cache-control"),
        "body": json.loads(data),
        # the exact bytes of an error body (a success body is serialized by the framework)
        "error-body": data.decode() if error else None,
        # every header of an error answer (a success's are the framework's business)
        "error-headers": sorted((k.lower(), v) for k, v in pairs) if error else None,
    }


def assert_identical(outcomes: Mapping[str, Any], known: Mapping[str, str] = {}) -> tuple[str, Any]:
    """Every adapter not in ``known`` answered exactly alike: (the first one, its answer)."""
    agreeing = [name for name in outcomes if name not in known]
    groups: list[tuple[list[str], Any]] = []
    for name in agreeing:
        for names, outcome in groups:
            if outcome == outcomes[name]:
                names.append(name)
                break
        else:
            groups.append(([name], outcomes[name]))
    assert len(groups) == 1, "adapters disagree:\n" + "\n".join(
        f"  {', '.join(names)}: {outcome!r}" for names, outcome in groups
    )
    return agreeing[0], outcomes[agreeing[0]]


def settle_known(outcomes: Mapping[str, Any], reference: Any, known: Mapping[str, str]) -> None:
    """A strict xfail for the known divergences: fail once one of them is gone."""
    fixed = [name for name in known if outcomes[name] == reference]
    assert not fixed, f"{fixed} now answer like the others: drop them from the row's known="
    if known:
        reasons = "; ".join(
            f"{', '.join(n for n in known if known[n] == why)}: {why}"
            for why in dict.fromkeys(known.values())
        )
        details = "\n".join(f"  {name}: {outcomes[name]!r}" for name in known)
        pytest.xfail(f"known divergence ({reasons}); they answered:\n{details}")


# -- the rows ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Expect:
    """What the (identical) answer must be.

    ``error`` None with a status >= 400 is the bare challenge (no error code); ``scope``
    is the challenge's ``scope=`` attribute (None: there must be none); ``says`` is part of
    the ``error_description``; ``hides`` must appear nowhere in the answer.
    """

    status: int
    error: str | None = None
    scope: str | None = None
    says: str | None = None
    hides: tuple[str, ...] = ()
    retry_after: str | None = None
    body: Mapping[str, Any] | None = None  # the handler's answer, on success


ANONYMOUS: dict[str, Any] = {"sub": None, "scopes": [], "anonymous": True}


def token_of(sub: str, *scopes: str) -> dict[str, Any]:
    return {"sub": sub, "scopes": sorted(scopes), "anonymous": False}


# The scopes each route needs: every 401 and 403 challenge names them all, in one attribute.
ROUTE_SCOPES = {
    "/read": "read",
    "/both": "read write",
    "/either": "read audit",
    "/optional": "read",
}


def route_scopes(path: str) -> str | None:
    return "read" if path.startswith("/orgs/") else ROUTE_SCOPES.get(path)


def check(answer: Mapping[str, Any], expect: Expect, path: str | None = None) -> None:
    assert answer["status"] == expect.status, answer
    challenge = answer["www-authenticate"]
    body = answer["body"]
    assert answer["retry-after"] == expect.retry_after
    if expect.status < 400:
        assert challenge is None
        assert body == expect.body
        return
    assert answer["content-type"] == "application/json"
    assert answer["cache-control"] == "no-store"
    assert set(body) >= {"error", "error_description"}
    # RFC 9728 section 5.1: every 401 and 403 challenge says where the metadata is, last.
    if expect.status in (401, 403):
        assert challenge.endswith(METADATA), challenge
        challenge = challenge[: -len(METADATA)]
    else:
        assert "resource_metadata" not in challenge
    needed = route_scopes(path) if path is not None else None
    if expect.status == 401 and needed is not None and "claim rule" not in (expect.says or ""):
        assert challenge.endswith(f', scope="{needed}"'), challenge
        challenge = challenge[: -len(f', scope="{needed}"')]
    if expect.error is None:
        assert challenge == REALM  # a bare challenge: no error code, no description
        assert body["error"] in ("invalid_request", "temporarily_unavailable")
    else:
        assert challenge.startswith(f'{REALM}, error="{expect.error}", error_description="')
        assert body["error"] == expect.error
        assert f'error_description="{body["error_description"]}"' in challenge
    if expect.scope is None:
        assert "scope=" not in challenge
        assert "scope" not in body
    else:
        assert challenge.endswith(f', scope="{expect.scope}"')
        assert body["scope"] == expect.scope
    if expect.says is not None:
        assert expect.says in body["error_description"]
    for secret in expect.hides:
        assert secret not in challenge
        assert secret not in answer["error-body"]


def bearer(token: str) -> Headers:
    return [("Authorization", f"Bearer {token}")]


@dataclass(frozen=True)
class Row:
    spec: str  # the test id: what the row specifies
    path: str
    headers: Callable[[LocalIssuer], Headers]
    expect: Expect
    server: str = "plain"
    known: Mapping[str, str] = field(default_factory=dict)  # adapter -> why it differs


def unknown_kid(issuer: LocalIssuer) -> Headers:
    stranger = SigningKey.generate("ES384")  # never published in the issuer's JWKS
    return bearer(issuer.mint("read", key=stranger))


ROWS = [
    # -- the Authorization header ---------------------------------------------------------
    Row(
        "no Authorization header -> 401, bare challenge",
        "/read",
        lambda i: [],
        Expect(401),
    ),
    Row(
        "another scheme (Basic) -> 401, bare challenge",
        "/read",
        lambda i: [("Authorization", "Basic dXNlcjpwYXNz")],
        Expect(401),
    ),
    Row(
        "Bearer without a token -> 400 invalid_request",
        "/read",
        lambda i: [("Authorization", "Bearer")],
        Expect(400, "invalid_request"),
    ),
    Row(
        "Bearer with two credentials (Bearer a b) -> 400 invalid_request",
        "/read",
        lambda i: [("Authorization", "Bearer a b")],
        Expect(400, "invalid_request", says="single token68"),
    ),
    Row(
        "Bearer with non-token68 credentials (a$b) -> 400 invalid_request",
        "/read",
        lambda i: [("Authorization", "Bearer a$b")],
        Expect(400, "invalid_request", says="single token68"),
    ),
    Row(
        "two Authorization headers -> 400 invalid_request",
        "/read",
        lambda i: bearer(i.mint("read")) * 2,
        Expect(400, "invalid_request"),
    ),
    Row(
        "lowercase bearer scheme -> accepted",
        "/read",
        lambda i: [("Authorization", "bearer " + i.mint("read", sub="alice"))],
        Expect(200, body=token_of("alice", "read")),
    ),
    # -- the token ------------------------------------------------------------------------
    Row(
        "token longer than 8192 characters -> 401 invalid_token, too large",
        "/read",
        lambda i: bearer("a" * 8193),
        Expect(401, "invalid_token", says="too large"),
    ),
    Row(
        "three garbage segments -> 401 invalid_token",
        "/read",
        lambda i: bearer("abc.def.ghi"),
        Expect(401, "invalid_token"),
    ),
    Row(
        "tampered payload, signature kept -> 401 invalid_token",
        "/read",
        lambda i: bearer(i.tampered(i.mint("read"))),
        Expect(401, "invalid_token", says="signature"),
    ),
    Row(
        "expired token -> 401 invalid_token",
        "/read",
        lambda i: bearer(i.expired("read")),
        Expect(401, "invalid_token", says="expired"),
    ),
    Row(
        "token for another audience -> 401 invalid_token",
        "/read",
        lambda i: bearer(i.mint("read", audience=OTHER_API)),
        Expect(401, "invalid_token", says="audience"),
    ),
    Row(
        "token from another issuer -> 401 invalid_token",
        "/read",
        lambda i: bearer(i.mint("read", claims={"iss": "https://evil.test/oidc"})),
        Expect(401, "invalid_token", says="issuer"),
    ),
    Row(
        "token signed by an unpublished key (unknown kid) -> 401 invalid_token",
        "/read",
        unknown_kid,
        Expect(401, "invalid_token"),
    ),
    Row(
        "issuer down with nothing cached -> 503 with Retry-After",
        "/read",
        lambda i: bearer(i.mint("read")),
        Expect(503, retry_after="1"),
        server="down",
    ),
    # -- scopes ---------------------------------------------------------------------------
    Row(
        "valid token with the scope -> 200, the token reaches the handler",
        "/read",
        lambda i: bearer(i.mint("read", sub="alice")),
        Expect(200, body=token_of("alice", "read")),
    ),
    Row(
        "valid token without the scope -> 403, scope=read",
        "/read",
        lambda i: bearer(i.mint("write")),
        Expect(403, "insufficient_scope", scope="read"),
    ),
    Row(
        "all-of route, one of two scopes -> 403, scope=read write",
        "/both",
        lambda i: bearer(i.mint("read")),
        Expect(403, "insufficient_scope", scope="read write", says="lacks the scopes"),
    ),
    Row(
        "all-of route, both scopes -> 200",
        "/both",
        lambda i: bearer(i.mint("write read", sub="alice")),
        Expect(200, body=token_of("alice", "read", "write")),
    ),
    Row(
        "any-of route, audit alone -> 200",
        "/either",
        lambda i: bearer(i.mint("audit", sub="alice")),
        Expect(200, body=token_of("alice", "audit")),
    ),
    Row(
        "any-of route, neither scope -> 403, scope=read audit",
        "/either",
        lambda i: bearer(i.mint("write")),
        Expect(403, "insufficient_scope", scope="read audit", says="one of the scopes"),
    ),
    # -- optional authentication ----------------------------------------------------------
    Row(
        "optional route without credentials -> 200 anonymous",
        "/optional",
        lambda i: [],
        Expect(200, body=ANONYMOUS),
    ),
    Row(
        "optional route with Basic credentials (an API key) -> 200 anonymous",
        "/optional",
        lambda i: [("Authorization", "Basic dXNlcjpwYXNz")],
        Expect(200, body=ANONYMOUS),
    ),
    Row(
        "optional route with an invalid bearer token -> 401 invalid_token",
        "/optional",
        lambda i: bearer(i.tampered(i.mint("read"))),
        Expect(401, "invalid_token"),
    ),
    Row(
        "optional route with Bearer and no token -> 400 invalid_request",
        "/optional",
        lambda i: [("Authorization", "Bearer")],
        Expect(400, "invalid_request"),
    ),
    Row(
        "optional route with a valid token lacking the scope -> 403, scope=read",
        "/optional",
        lambda i: bearer(i.mint("write")),
        Expect(403, "insufficient_scope", scope="read"),
    ),
    Row(
        "optional route with a valid token -> 200 with the token",
        "/optional",
        lambda i: bearer(i.mint("read", sub="alice")),
        Expect(200, body=token_of("alice", "read")),
    ),
    # -- claim rules ----------------------------------------------------------------------
    Row(
        "server-wide claim rule fails -> 401 invalid_token naming the rule, not the value",
        "/read",
        lambda i: bearer(i.mint("read", tenant=SECRET_TENANT)),
        Expect(
            401,
            "invalid_token",
            says="claim rule of this API: tenant must be 'acme'",
            hides=(SECRET_TENANT,),
        ),
        server="tenant",
    ),
    Row(
        "server-wide claim rule holds -> 200",
        "/read",
        lambda i: bearer(i.mint("read", sub="alice", tenant="acme")),
        Expect(200, body=token_of("alice", "read")),
        server="tenant",
    ),
    Row(
        "route claim rule fails -> 403 insufficient_scope, no scope=, names the rule only",
        "/admin",
        lambda i: bearer(i.mint("read", roles=["viewer", SECRET_ROLE])),
        Expect(
            403,
            "insufficient_scope",
            says="claim rule: roles must include 'admin'",
            hides=(SECRET_ROLE, "viewer"),
        ),
    ),
    Row(
        "route claim rule holds -> 200",
        "/admin",
        lambda i: bearer(i.mint(sub="alice", roles=[SECRET_ROLE, "admin"])),
        Expect(200, body=token_of("alice")),
    ),
]


def run_row(row: Row, issuer: LocalIssuer, adapters: Sequence[str]) -> None:
    headers = row.headers(issuer)  # one token for all: only the adapter changes
    outcomes = {
        name: send(name, BUILDERS[name](make_server(issuer, row.server)), row.path, headers)
        for name in adapters
    }
    _, reference = assert_identical(outcomes, row.known)
    for name in adapters:  # the row's meaning holds for every adapter, diverging or not
        check(outcomes[name], row.expect, row.path)
    settle_known(outcomes, reference, row.known)


@pytest.mark.parametrize("row", ROWS, ids=[row.spec for row in ROWS])
def test_all_five_adapters_answer_alike(row: Row, issuer: LocalIssuer) -> None:
    run_row(row, issuer, ADAPTERS)


# -- claim rules on path parameters: the route-level adapters ----------------------------------

ORG_ROWS = [
    Row(
        "organization_id matches the path's org -> 200",
        "/orgs/acme/reports",
        lambda i: bearer(i.mint("read", sub="alice", organization_id="acme")),
        Expect(200, body=token_of("alice", "read")),
    ),
    Row(
        "organization from a urn:logto:organization audience matches -> 200",
        "/orgs/acme/reports",
        lambda i: bearer(
            i.mint("read", sub="alice", audience=[AUDIENCE, "urn:logto:organization:acme"])
        ),
        Expect(200, body=token_of("alice", "read")),
    ),
    Row(
        "token for another organization -> 403 naming the rule, not the token's org",
        "/orgs/acme/reports",
        lambda i: bearer(i.mint("read", organization_id=SECRET_ORG)),
        Expect(
            403,
            "insufficient_scope",
            says="claim rule: organization_id must match the path's org",
            hides=(SECRET_ORG,),
        ),
    ),
    Row(
        "token without an organization -> 403 insufficient_scope, no scope=",
        "/orgs/acme/reports",
        lambda i: bearer(i.mint("read")),
        Expect(403, "insufficient_scope", says="organization_id must match"),
    ),
    Row(
        "right organization, missing scope -> 403, scope=read (scopes are checked first)",
        "/orgs/acme/reports",
        lambda i: bearer(i.mint("write", organization_id="acme")),
        Expect(403, "insufficient_scope", scope="read"),
    ),
    Row(
        "no credentials on the org route -> 401, bare challenge",
        "/orgs/acme/reports",
        lambda i: [],
        Expect(401),
    ),
    Row(
        "invalid token on the org route -> 401 invalid_token, before any claim rule",
        "/orgs/acme/reports",
        lambda i: bearer(i.expired("read", organization_id="acme")),
        Expect(401, "invalid_token", says="expired"),
    ),
]


@pytest.mark.parametrize("row", ORG_ROWS, ids=[row.spec for row in ORG_ROWS])
def test_route_level_adapters_answer_path_claim_rules_alike(row: Row, issuer: LocalIssuer) -> None:
    run_row(row, issuer, ROUTE_LEVEL)


@pytest.mark.parametrize("adapter", ["asgi", "wsgi"])
def test_a_path_claim_rule_in_a_middleware_rule_fails_closed(
    adapter: str, issuer: LocalIssuer
) -> None:
    """The middleware runs before routing: no path parameters, so the rule never holds."""
    server = make_server(issuer)
    rules = [Rule("/read", scopes=["read"], claims=[ORG_RULE])]
    if adapter == "asgi":
        app: Any = bg_asgi.BearerAuthMiddleware(
            Starlette(routes=[Route("/read", from_scope)]), server=server, rules=rules
        )
    else:
        app = bg_wsgi.BearerAuthMiddleware(plain_wsgi, server=server, rules=rules)
    answer = send(adapter, app, "/read", bearer(issuer.mint("read", organization_id="acme")))
    check(answer, Expect(403, "insufficient_scope", says="organization_id must match"))


# -- a token verified upstream -----------------------------------------------------------------


def counting(server: ResourceServer) -> list[str]:
    """Count ``server``'s signature checks (its cache is off, so each one is a verification)."""
    calls: list[str] = []
    finish = server._finish

    def counted(*args: Any) -> AccessToken:
        calls.append("finish")
        return finish(*args)

    server._finish = counted  # type: ignore[method-assign,assignment]
    return calls


@dataclass(frozen=True)
class UpstreamRow:
    spec: str
    outer: str  # "same": the outer middleware has the inner guard's server; "other": another API
    headers: Callable[[LocalIssuer], Headers]
    expect: Expect
    checks: Mapping[str, int]  # signature checks by the inner and the outer server


UPSTREAM_ROWS = [
    UpstreamRow(
        "same server upstream -> the inner guard reuses the token (one signature check)",
        "same",
        lambda i: bearer(i.mint("read", sub="alice")),
        Expect(200, body=token_of("alice", "read")),
        {"inner": 1},
    ),
    UpstreamRow(
        "same server upstream -> the inner guard still applies its scopes (403, one check)",
        "same",
        lambda i: bearer(i.mint("write")),
        Expect(403, "insufficient_scope", scope="read"),
        {"inner": 1},
    ),
    UpstreamRow(
        "another API's server upstream -> the inner guard verifies again",
        "other",
        lambda i: bearer(i.mint("read", sub="alice", audience=[OTHER_API, AUDIENCE])),
        Expect(200, body=token_of("alice", "read")),
        {"inner": 1, "outer": 1},
    ),
    UpstreamRow(
        "another API's token accepted upstream -> verified again, 401 audience mismatch",
        "other",
        lambda i: bearer(i.mint("read", audience=OTHER_API)),
        Expect(401, "invalid_token", says="audience mismatch"),
        {"inner": 1, "outer": 1},
    ),
]


@pytest.mark.parametrize("row", UPSTREAM_ROWS, ids=[row.spec for row in UPSTREAM_ROWS])
def test_a_token_verified_upstream_is_reused_only_by_its_own_server(
    row: UpstreamRow, issuer: LocalIssuer
) -> None:
    headers = row.headers(issuer)
    outcomes = {}
    for name in ADAPTERS:
        inner = make_server(issuer, token_cache_size=0)
        if row.outer == "same":
            outer, counts = inner, {"inner": counting(inner)}
        else:
            outer = make_server(issuer, audience=OTHER_API, token_cache_size=0)
            counts = {"inner": counting(inner), "outer": counting(outer)}
        answer = send(name, wrapped(name, inner, outer), "/read", headers)
        outcomes[name] = {**answer, "checks": {k: len(v) for k, v in counts.items()}}
    _, reference = assert_identical(outcomes)
    check(reference, row.expect, "/read")
    assert reference["checks"] == row.checks


# -- websocket handshakes ----------------------------------------------------------------------


async def ws_from_scope(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_json(describe(websocket.scope.get("auth")))
    await websocket.close()


def ws_asgi(server: ResourceServer) -> Any:
    app = Starlette(routes=[WebSocketRoute("/ws", ws_from_scope)])
    return bg_asgi.BearerAuthMiddleware(app, server=server, rules=[Rule("/ws", scopes=["read"])])


def ws_starlette(server: ResourceServer) -> Any:
    protect = Protect(server)

    @protect("read")
    async def endpoint(websocket: WebSocket) -> None:
        await ws_from_scope(websocket)

    return Starlette(routes=[WebSocketRoute("/ws", endpoint)])


def ws_fastapi(server: ResourceServer) -> Any:
    auth = BearerAuth(server)
    app = FastAPI()

    @app.websocket("/ws")
    async def endpoint(
        websocket: FastAPIWebSocket,
        token: Annotated[AccessToken, Security(auth, scopes=["read"])],
    ) -> None:
        await ws_from_scope(websocket)

    return app


WS_BUILDERS = {"asgi": ws_asgi, "starlette": ws_starlette, "fastapi": ws_fastapi}


async def handshake(app: Any, headers: Headers, *, denial_extension: bool) -> Any:
    """Drive one websocket handshake as an ASGI server would, and say how it ended.

    Not through the TestClient: its ``websocket_connect`` waits forever for an app that
    returns without answering the handshake; here that is the outcome "no answer".
    """
    scope = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "scheme": "ws",
        "path": "/ws",
        "raw_path": b"/ws",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver")]
        + [(k.lower().encode(), v.encode("latin-1")) for k, v in headers],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        "subprotocols": [],
        "extensions": {"websocket.http.response": {}} if denial_extension else {},
    }
    sent: list[dict[str, Any]] = []
    connected = False

    async def receive() -> dict[str, Any]:
        nonlocal connected
        if not connected:
            connected = True
            return {"type": "websocket.connect"}
        return {"type": "websocket.disconnect", "code": 1000}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    with anyio.fail_after(5):
        await app(scope, receive, send)
    if not sent:
        return ("no answer",)
    first = sent[0]
    if first["type"] == "websocket.accept":
        texts = [m for m in sent if m["type"] == "websocket.send"]
        return ("accepted", json.loads(texts[0]["text"]))
    if first["type"] == "websocket.close":
        return ("closed", first.get("code"), first.get("reason"))
    if first["type"] == "websocket.http.response.start":
        got = {k.decode().lower(): v.decode() for k, v in first["headers"]}
        body = b"".join(m.get("body", b"") for m in sent[1:])
        return (
            "denied",
            first["status"],
            got.get("www-authenticate"),
            got.get("retry-after"),
            json.loads(body),
        )
    return ("unexpected", first["type"])


@dataclass(frozen=True)
class WsRow:
    spec: str
    headers: Callable[[LocalIssuer], Headers]
    expect: Any  # the whole outcome
    denial_extension: bool = True
    known: Mapping[str, str] = field(default_factory=dict)


WS_ROWS = [
    WsRow(
        "websocket with a valid token -> accepted, the token reaches the endpoint",
        lambda i: bearer(i.mint("read", sub="alice")),
        ("accepted", token_of("alice", "read")),
    ),
    WsRow(
        "websocket without a token -> HTTP 401 denial response",
        lambda i: [],
        (
            "denied",
            401,
            REALM + ', scope="read"' + METADATA,
            None,
            {"error": "invalid_request", "error_description": "bearer token required"},
        ),
    ),
    WsRow(
        "websocket with a tampered token -> HTTP 401 invalid_token denial",
        lambda i: bearer(i.tampered(i.mint("read"))),
        (
            "denied",
            401,
            f'{REALM}, error="invalid_token", error_description="signature verification failed"'
            + ', scope="read"'
            + METADATA,
            None,
            {"error": "invalid_token", "error_description": "signature verification failed"},
        ),
    ),
    WsRow(
        "websocket with a token lacking the scope -> HTTP 403 denial, scope=read",
        lambda i: bearer(i.mint("write")),
        (
            "denied",
            403,
            f'{REALM}, error="insufficient_scope", error_description="token lacks the scopes:'
            f' read", scope="read"' + METADATA,
            None,
            {
                "error": "insufficient_scope",
                "error_description": "token lacks the scopes: read",
                "scope": "read",
            },
        ),
    ),
    WsRow(
        "websocket without a token, server without the denial extension -> close 1008",
        lambda i: [],
        ("closed", 1008, "bearer token required"),
        denial_extension=False,
    ),
    WsRow(
        "websocket with a valid token, server without the denial extension -> accepted",
        lambda i: bearer(i.mint("read", sub="alice")),
        ("accepted", token_of("alice", "read")),
        denial_extension=False,
    ),
]


@pytest.mark.parametrize("row", WS_ROWS, ids=[row.spec for row in WS_ROWS])
def test_websocket_handshakes_are_answered_alike(row: WsRow, issuer: LocalIssuer) -> None:
    headers = row.headers(issuer)
    outcomes = {}
    for name in WEBSOCKET_ADAPTERS:
        app = WS_BUILDERS[name](make_server(issuer))
        outcomes[name] = anyio.run(
            functools.partial(handshake, app, headers, denial_extension=row.denial_extension)
        )
    _, reference = assert_identical(outcomes, row.known)
    assert reference == row.expect
    settle_known(outcomes, reference, row.known)


def test_the_werkzeug_client_joins_repeated_authorization_headers_as_wsgi_servers_do() -> None:
    """The premise of the "two Authorization headers" row for the WSGI adapters."""
    seen: list[Any] = []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        seen.append(environ.get("HTTP_AUTHORIZATION"))
        start_response("204 No Content", [])
        return [b""]

    WerkzeugClient(app).get("/", headers=[("Authorization", "Bearer a"), ("Authorization", "b")])
    assert seen == ["Bearer a, b"]
