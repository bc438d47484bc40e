"""The apps tests/test_paths.py runs under real servers (uvicorn, gunicorn), one factory each.

Each factory builds its ResourceServer from PATHAPPS_ISSUER and PATHAPPS_AUDIENCE. Every app
carries a ``Seen`` shim outside the bearerguard check that copies what the server handed the
app (method, path, raw path, root path) into ``x-seen-*`` response headers, on denials too, so
a test can assert on what the server actually received. Handlers answer JSON naming
themselves, so a 200 from a handler is told apart from anything else.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import quote

from flask import Flask, request
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from bearerguard import ResourceServer
from bearerguard.asgi import BearerAuthMiddleware
from bearerguard.flask import BearerGuard
from bearerguard.rules import Rule
from bearerguard.wsgi import BearerAuthMiddleware as WSGIBearerAuthMiddleware

ORDER_RULES = [
    Rule("/orders", methods=["POST"], scopes="write:orders"),
    Rule("/orders", methods=["GET"], scopes="read:orders"),
    Rule("/orders/{id}", methods=["DELETE"], scopes="admin"),
]
PRODUCT_RULES = [
    Rule("/products", methods=["POST"], scopes="write:products"),
    Rule("/admin/*", scopes="admin"),
]


def resource_server() -> ResourceServer:
    return ResourceServer(
        os.environ["PATHAPPS_ISSUER"], os.environ["PATHAPPS_AUDIENCE"], require_typ=True
    )


def _text(value: str) -> str:
    return quote(value, safe="/")


# -- ASGI ------------------------------------------------------------------------------------------


class Seen:
    """ASGI: ``x-seen-method``, ``-path``, ``-raw-path``, ``-root-path`` on every response."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw_path = scope.get("raw_path")
        seen = [
            (b"x-seen-method", scope["method"].encode("latin-1")),
            (b"x-seen-path", _text(scope["path"]).encode()),
            (b"x-seen-raw-path", raw_path if raw_path is not None else b"<none>"),
            (b"x-seen-root-path", _text(scope.get("root_path", "")).encode()),
        ]

        async def send_seen(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *seen]}
            await send(message)

        await self.app(scope, receive, send_seen)


def _asgi_answer(request: Request, handler: str) -> JSONResponse:
    return JSONResponse(
        {
            "handler": handler,
            "method": request.method,
            "path": request.url.path,
            "root_path": request.scope.get("root_path", ""),
        }
    )


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def orders(request: Request) -> JSONResponse:
    return _asgi_answer(request, "orders")


class OrderItem:
    """An ASGI endpoint taking every method, in any case, as apps built on raw ASGI may."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        body = {
            "handler": "order_item",
            "method": scope["method"],
            "id": scope["path_params"]["id"],
        }
        await JSONResponse(body)(scope, receive, send)


def guarded_starlette() -> Starlette:
    """Starlette: /health public, /orders (GET read, POST write), /orders/{id} (DELETE admin)."""
    return Starlette(
        routes=[
            Route("/health", health),
            Route("/orders", orders, methods=["GET", "POST"]),
            Route("/orders/{id}", OrderItem()),
        ],
        middleware=[
            Middleware(Seen),
            Middleware(
                BearerAuthMiddleware,
                server=resource_server(),
                public=["/health"],
                rules=ORDER_RULES,
            ),
        ],
    )


def mounted_starlette() -> Starlette:
    """The guarded app mounted at /v1 inside an outer Starlette app."""
    return Starlette(routes=[Mount("/v1", app=guarded_starlette())])


def fastapi_root_path() -> Any:
    """FastAPI(root_path="/api") guarding /orders, with /health, /docs, /openapi.json public."""
    import warnings

    from fastapi import FastAPI

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # root_path= is deprecated in new FastAPI, still honoured
        app = FastAPI(root_path="/api")

    @app.get("/health")
    async def fastapi_health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/orders")
    async def list_orders(request: Request) -> Any:
        return _asgi_answer(request, "orders")

    @app.post("/orders")
    async def create_order(request: Request) -> Any:
        return _asgi_answer(request, "orders")

    app.add_middleware(
        BearerAuthMiddleware,
        server=resource_server(),
        public=["/health", "/docs", "/openapi.json"],
        rules=ORDER_RULES[:2],
    )
    app.add_middleware(Seen)  # added last: outermost, sees the scope bearerguard sees
    return app


# -- WSGI ------------------------------------------------------------------------------------------


class SeenWSGI:
    """WSGI: ``X-Seen-Method``, ``-Path`` (PATH_INFO), ``-Raw-Path`` (RAW_URI) on every response."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        seen = [
            ("X-Seen-Method", str(environ.get("REQUEST_METHOD", ""))),
            ("X-Seen-Path", _text(str(environ.get("PATH_INFO", "")))),
            ("X-Seen-Raw-Path", str(environ.get("RAW_URI", "<none>"))),
        ]

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            return start_response(status, [*headers, *seen], exc_info)

        return self.app(environ, start)


def _flask_app(name: str) -> Flask:
    app = Flask(name)

    def answer(handler: str) -> dict[str, str]:
        return {
            "handler": handler,
            "method": request.method,
            "path": request.path,
            "path_info": request.environ.get("PATH_INFO", ""),
        }

    @app.get("/health")
    def flask_health() -> dict[str, str]:
        return {"status": "ok"}

    @app.route("/products", methods=["GET", "POST"])
    def products() -> dict[str, str]:
        return answer("products")

    @app.get("/admin/users")
    def admin_users() -> dict[str, str]:
        return answer("admin_users")

    return app


def flask_middleware() -> Flask:
    """Flask with the WSGI BearerAuthMiddleware in front of its wsgi_app."""
    app = _flask_app("pathapps_flask_middleware")
    app.wsgi_app = WSGIBearerAuthMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, server=resource_server(), public=["/health"], rules=PRODUCT_RULES
    )
    app.wsgi_app = SeenWSGI(app.wsgi_app)  # type: ignore[method-assign]
    return app


def flask_guard() -> Flask:
    """Flask with BearerGuard(protect_all=True) and the same public path and rules."""
    app = _flask_app("pathapps_flask_guard")
    BearerGuard(
        app, server=resource_server(), protect_all=True, public=["/health"], rules=PRODUCT_RULES
    )
    app.wsgi_app = SeenWSGI(app.wsgi_app)  # type: ignore[method-assign]
    return app
