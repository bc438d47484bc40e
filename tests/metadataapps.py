"""The apps tests/test_metadata_http.py runs under real servers, one factory per adapter.

Every app trusts the issuer in METADATA_ISSUER and has a public ``/health``. The resource
identifiers are constants here, so the tests compare the served documents with exactly what
was configured. uvicorn runs the ASGI factories (``--factory``), gunicorn the WSGI ones.
"""

import os
from collections.abc import Callable, Iterable
from typing import Annotated, Any

from flask import Flask
from pathapps import health, orders
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bearerguard import AccessToken, ResourceServer
from bearerguard.asgi import BearerAuthMiddleware
from bearerguard.flask import BearerGuard
from bearerguard.rules import Rule
from bearerguard.starlette import Protect, metadata_endpoint
from bearerguard.wsgi import BearerAuthMiddleware as WSGIBearerAuthMiddleware

# The resource identifiers (RFC 9728 section 1.2) and the audiences of the tokens.
ORDERS = "https://orders.api"  # ASGI middleware: resource defaults to the first audience
ORDERS_LEGACY = "https://orders-legacy.api"
PARTNER_ISSUER = "https://login.partner.example/oidc"  # a second authorization server
MCP = "https://api.example.com/v1/mcp"  # FastAPI + middleware: a resource with a path
MCP_AUDIENCE = "api://mcp"  # ... given with resource=, the audience being no URL
SHOP = "https://shop.api"  # FastAPI, the one documented line, no middleware
CATALOGUE = "https://catalogue.api/"  # Starlette metadata_endpoint: a terminating slash
ITEMS = "https://items.example/api/v2"  # WSGI middleware: a resource with a path
REPORTS = "https://reports.api"  # Flask extension
QUIET = "https://quiet.api"  # resource_metadata=False
GATEWAY_AUDIENCE = "https://orders.internal"  # resource_metadata=<explicit URL>
GATEWAY_URL = "https://gateway.example/orders/.well-known/oauth-protected-resource"

ORDER_RULES = [
    Rule("/orders", methods=["GET"], scopes="orders:read"),
    Rule("/orders", methods=["POST"], scopes="orders:write"),
]


def issuer() -> str:
    return os.environ["METADATA_ISSUER"]


def _middleware_app(server: ResourceServer, rules: Iterable[Rule] = ORDER_RULES) -> Starlette:
    """Starlette, deny by default: /health public, /orders with ``rules``."""
    return Starlette(
        routes=[Route("/health", health), Route("/orders", orders, methods=["GET", "POST"])],
        middleware=[
            Middleware(BearerAuthMiddleware, server=server, public=["/health"], rules=rules)
        ],
    )


# -- ASGI ------------------------------------------------------------------------------------------


def starlette_middleware() -> Starlette:
    """The ASGI middleware with every optional member set, two authorization servers, and a
    rule (needing a scope) over the well-known path."""
    server = ResourceServer(
        [issuer(), PARTNER_ISSUER],
        [ORDERS, ORDERS_LEGACY],
        require_typ=True,
        scopes_supported=["orders:audit"],
        resource_name="Orders API",
        resource_documentation="https://docs.orders.example/api",
        resource_policy_uri="https://orders.example/policy",
        resource_tos_uri="https://orders.example/terms",
    )
    # A rule over the well-known path changes nothing: the document is answered before any rule.
    return _middleware_app(server, [*ORDER_RULES, Rule("/.well-known/*", scopes="orders:admin")])


def quiet_middleware() -> Starlette:
    """The ASGI middleware with ``resource_metadata=False``."""
    server = ResourceServer(issuer(), QUIET, require_typ=True, resource_metadata=False)
    return _middleware_app(server)


def gateway_middleware() -> Starlette:
    """The ASGI middleware behind a gateway: the document's URL given explicitly; no scopes
    and an empty resource_name (zero values, left out of the document)."""
    server = ResourceServer(
        issuer(),
        GATEWAY_AUDIENCE,
        require_typ=True,
        resource_metadata=GATEWAY_URL,
        resource_name="",
    )
    return _middleware_app(server, rules=[])


def _fastapi_routes(
    app: Any, server: ResourceServer, prefix: str, main: str, admin: str, documented: list[str]
) -> None:
    """GET ``prefix + /tools`` needs ``main``, GET ``prefix + /admin`` needs ``admin``;
    ``BearerAuth(scopes=...)`` documents the scopes of ``documented``."""
    from fastapi import Security

    from bearerguard.fastapi import BearerAuth

    auth = BearerAuth(server, scopes={scope: f"The {scope} scope" for scope in documented})
    Main = Annotated[AccessToken, Security(auth, scopes=[main])]
    Admin = Annotated[AccessToken, Security(auth, scopes=[admin])]

    @app.get("/health")
    async def fastapi_health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(prefix + "/tools")
    async def tools(token: Main) -> dict[str, str]:
        return {"handler": "tools"}

    @app.get(prefix + "/admin")
    async def admin(token: Admin) -> dict[str, str]:
        return {"handler": "admin"}


def fastapi_middleware() -> Any:
    """FastAPI behind the ASGI middleware; the resource has a path (/v1/mcp)."""
    from fastapi import FastAPI

    server = ResourceServer(issuer(), MCP_AUDIENCE, require_typ=True, resource=MCP)
    app = FastAPI()
    _fastapi_routes(app, server, "/v1/mcp", "mcp:tools", "mcp:admin", ["mcp:tools", "mcp:admin"])
    app.add_middleware(BearerAuthMiddleware, server=server, public=["/health"])
    return app


def fastapi_one_line() -> Any:
    """FastAPI without the middleware: the document through the one documented line."""
    from fastapi import FastAPI

    server = ResourceServer(issuer(), SHOP, require_typ=True)
    app = FastAPI()
    # shop:admin only on its route, not in BearerAuth(scopes=...)
    _fastapi_routes(app, server, "", "shop:read", "shop:admin", ["shop:read"])
    app.add_route(
        server.metadata_path,
        metadata_endpoint(server),
        methods=["GET", "HEAD", "OPTIONS"],
        include_in_schema=False,
    )
    return app


def starlette_endpoint() -> Starlette:
    """Starlette without the middleware: ``metadata_endpoint`` and ``@protect`` routes."""
    server = ResourceServer(issuer(), CATALOGUE, require_typ=True)
    protect = Protect(server)

    @protect("catalogue:read")
    async def catalogue(request: Request) -> JSONResponse:
        return JSONResponse({"handler": "catalogue"})

    @protect("catalogue:write")
    async def change_catalogue(request: Request) -> JSONResponse:
        return JSONResponse({"handler": "change_catalogue"})

    assert server.metadata_path is not None
    return Starlette(
        routes=[
            Route("/health", health),
            Route("/catalogue", catalogue, methods=["GET"]),
            Route("/catalogue/change", change_catalogue, methods=["POST"]),
            Route(
                server.metadata_path,
                metadata_endpoint(server),
                methods=["GET", "HEAD", "OPTIONS"],
                include_in_schema=False,
            ),
        ]
    )


# -- WSGI ------------------------------------------------------------------------------------------


def _json_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    body = b'{"handler": "wsgi"}'
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


def wsgi_middleware() -> Any:
    """A plain WSGI app behind the WSGI middleware; the resource has a path (/api/v2)."""
    server = ResourceServer(issuer(), ITEMS, require_typ=True)
    rules = [
        Rule("/api/v2/items", methods=["GET"], scopes="items:read"),
        Rule("/api/v2/items", methods=["POST"], scopes="items:write"),
    ]
    return WSGIBearerAuthMiddleware(_json_app, server=server, public=["/health"], rules=rules)


def _flask_app(name: str) -> Flask:
    app = Flask(name)

    @app.get("/health")
    def flask_health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def flask_guard() -> Flask:
    """BearerGuard(protect_all=True): scopes from a rule and from @guard.require."""
    app = _flask_app("metadataapps_flask_guard")
    server = ResourceServer(
        issuer(),
        REPORTS,
        require_typ=True,
        resource_name="Reports API",
        resource_documentation="https://docs.reports.example/",
    )
    rules = [Rule("/reports", methods=["POST"], scopes="reports:write")]
    guard = BearerGuard(app, server=server, protect_all=True, public=["/health"], rules=rules)

    @app.route("/reports", methods=["GET", "POST"])
    @guard.require("reports:read")
    def reports() -> dict[str, str]:
        return {"handler": "reports"}

    return app


def quiet_flask() -> Flask:
    """BearerGuard without protect_all, ``resource_metadata=False``."""
    app = _flask_app("metadataapps_quiet_flask")
    server = ResourceServer(issuer(), QUIET, require_typ=True, resource_metadata=False)
    guard = BearerGuard(app, server=server)

    @app.get("/orders")
    @guard.require("orders:read")
    def quiet_orders() -> dict[str, str]:
        return {"handler": "orders"}

    return app
