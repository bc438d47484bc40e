"""The shopping API on FastAPI, protected by bearerguard.

Run: .venv/bin/python -m uvicorn --app-dir examples/fastapi_app main:app --port 8000
Configure with AUTH_ISSUER (e.g. https://<tenant>.logto.app/oidc) and AUTH_AUDIENCE.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import FastAPI, HTTPException, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, StrictFloat, StrictInt

from bearerguard import AccessToken, ResourceServer, WarmUpError
from bearerguard.asgi import BearerAuthMiddleware
from bearerguard.dpop import dpop_settings
from bearerguard.fastapi import BearerAuth

ISSUER = os.environ.get("AUTH_ISSUER", "http://127.0.0.1:3001/oidc")
AUDIENCE = os.environ.get("AUTH_AUDIENCE", "https://shopping.api")

try:  # Prometheus metrics at GET /metrics when prometheus-client is installed
    from bearerguard.prometheus import PrometheusObserver, exposition
except ImportError:
    observer, exposition = None, None
else:
    observer = PrometheusObserver()

# DPoP (RFC 9449): AUTH_DPOP off (default) / allowed / required; AUTH_DPOP_NONCE on to ask
# for server nonces (replicas given one AUTH_DPOP_NONCE_SECRET accept each other's);
# AUTH_REPLAY_STORE memory (default) or redis://host:port/db, shared by replicas.
server = ResourceServer(
    ISSUER, AUDIENCE, require_typ=True, observer=observer, **dpop_settings(os.environ)
)
auth = BearerAuth(
    server,
    scopes={"read:products": "Read the product catalogue", "write:products": "Change products"},
)
Read = Annotated[AccessToken, Security(auth, scopes=["read:products"])]
Write = Annotated[AccessToken, Security(auth, scopes=["write:products"])]
Authenticated = Annotated[AccessToken, Security(auth)]


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # Fetch the issuer's keys before the first request. An issuer that is briefly down only
    # costs a warning: requests then fetch keys themselves (503 until it answers).
    try:
        await server.warm_up_async()
    except WarmUpError as exc:
        logging.getLogger("shopping").warning("starting without signing keys: %s", exc)
    yield


app = FastAPI(title="Shopping API", version="1.0", lifespan=lifespan)


@app.exception_handler(RequestValidationError)
async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming what is wrong, without echoing the client's input back (FastAPI's default
    handler does, and fails on input it cannot encode)."""
    detail = [{"loc": e["loc"], "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
    return JSONResponse({"detail": detail}, status_code=422)


# Deny by default: every route needs a valid token unless listed here. The Security
# dependencies then add each route's scopes and document them in /docs.
app.add_middleware(
    BearerAuthMiddleware,
    server=server,
    public=["/health", "/metrics", "/docs", "/docs/oauth2-redirect", "/openapi.json", "/redoc"],
)


class NewProduct(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    price: StrictInt | StrictFloat = Field(ge=0, le=1_000_000_000)


class Product(NewProduct):
    id: int


class Store:
    """Products in memory, safe to use from several threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[int, Product] = {}
        self._next = 1
        for name, price in (("Espresso beans", 14.5), ("Milk frother", 39.0)):
            self.add(NewProduct(name=name, price=price))

    def all(self) -> list[Product]:
        with self._lock:
            return list(self._items.values())

    def get(self, product_id: int) -> Product | None:
        with self._lock:
            return self._items.get(product_id)

    def add(self, new: NewProduct) -> Product:
        with self._lock:
            product = Product(id=self._next, **new.model_dump())
            self._items[product.id] = product
            self._next += 1
            return product

    def delete(self, product_id: int) -> bool:
        with self._lock:
            return self._items.pop(product_id, None) is not None


store = Store()


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}


if exposition is not None:

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        body, content_type = exposition()
        return Response(body, media_type=content_type)


@app.get("/products")
def list_products(token: Read) -> list[Product]:
    return store.all()


@app.get("/products/{product_id}")
def get_product(product_id: int, token: Read) -> Product:
    product = store.get(product_id)
    if product is None:
        raise HTTPException(404, "product not found")
    return product


@app.post("/products", status_code=201)
def create_product(new: NewProduct, token: Write) -> Product:
    return store.add(new)


@app.delete("/products/{product_id}", status_code=204)
def delete_product(product_id: int, token: Write) -> Response:
    if not store.delete(product_id):
        raise HTTPException(404, "product not found")
    return Response(status_code=204)


@app.get("/whoami")
def whoami(token: Authenticated) -> Response:
    body = {"sub": token.sub, "client_id": token.client_id, "scopes": sorted(token.scopes)}
    # json.dumps escapes what UTF-8 cannot carry (a signed claim may hold a lone surrogate).
    return Response(json.dumps(body), media_type="application/json")
