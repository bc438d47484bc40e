"""The apps bench/throughput.py serves: the same tiny endpoint, protected or not.

Chosen by environment: BENCH_APP (starlette | fastapi | flask), BENCH_PROTECT (0 | 1),
AUTH_ISSUER and AUTH_AUDIENCE (as in the examples).
"""

import os
from typing import Any

from bearerguard import ResourceServer

KIND = os.environ.get("BENCH_APP", "starlette")
PROTECT = os.environ.get("BENCH_PROTECT", "1") == "1"
PRODUCTS = [{"id": 1, "name": "Espresso beans", "price": 14.5}]


def _server() -> ResourceServer:
    return ResourceServer(
        os.environ.get("AUTH_ISSUER", "http://127.0.0.1:3001/oidc"),
        os.environ.get("AUTH_AUDIENCE", "https://shopping.api"),
        require_typ=True,
    )


def _starlette() -> Any:
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from bearerguard.asgi import BearerAuthMiddleware
    from bearerguard.rules import Rule

    async def products(request: Any) -> JSONResponse:
        return JSONResponse(PRODUCTS)

    app = Starlette(routes=[Route("/products", products)])
    if PROTECT:
        rules = [Rule("/products", scopes=["read:products"])]
        return BearerAuthMiddleware(app, _server(), rules=rules)
    return app


def _fastapi() -> Any:
    from typing import Annotated

    from fastapi import FastAPI, Security

    from bearerguard import AccessToken
    from bearerguard.fastapi import BearerAuth

    app = FastAPI()
    if PROTECT:
        auth = BearerAuth(_server())

        @app.get("/products")
        async def products(
            token: Annotated[AccessToken, Security(auth, scopes=["read:products"])],
        ) -> list[dict[str, Any]]:
            return PRODUCTS

    else:

        @app.get("/products")
        async def products_open() -> list[dict[str, Any]]:
            return PRODUCTS

    return app


def _flask() -> Any:
    from flask import Flask, jsonify

    app = Flask(__name__)
    if PROTECT:
        from bearerguard.flask import BearerGuard

        guard = BearerGuard(app, server=_server())

        @app.get("/products")
        @guard.require("read:products")
        def products() -> Any:
            return jsonify(PRODUCTS)

    else:

        @app.get("/products")
        def products_open() -> Any:
            return jsonify(PRODUCTS)

    return app


app = {"starlette": _starlette, "fastapi": _fastapi, "flask": _flask}[KIND]()
