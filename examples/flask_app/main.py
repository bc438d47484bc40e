"""The shopping API on Flask, protected by bearerguard.

Run (the config file fetches the signing keys at start-up):
    .venv/bin/python -m gunicorn -c examples/flask_app/gunicorn.conf.py \
        --chdir examples/flask_app -b 127.0.0.1:8000 main:app
Configure with AUTH_ISSUER (e.g. https://<tenant>.logto.app/oidc) and AUTH_AUDIENCE.
"""

from __future__ import annotations

import json
import math
import os
import threading
from typing import Any

from flask import Flask, abort, request
from werkzeug.exceptions import HTTPException

from bearerguard.dpop import dpop_settings
from bearerguard.flask import BearerGuard, current_token

try:  # Prometheus metrics at GET /metrics when prometheus-client is installed (under
    # gunicorn's several workers, set PROMETHEUS_MULTIPROC_DIR: see gunicorn.conf.py)
    from bearerguard.prometheus import PrometheusObserver, exposition
except ImportError:
    observer, exposition = None, None
else:
    observer = PrometheusObserver()

app = Flask(__name__)
app.config.update(
    BEARERGUARD_ISSUER=os.environ.get("AUTH_ISSUER", "http://127.0.0.1:3001/oidc"),
    BEARERGUARD_AUDIENCE=os.environ.get("AUTH_AUDIENCE", "https://shopping.api"),
    BEARERGUARD_REQUIRE_TYP=True,  # RFC 9068 "at+jwt" access tokens, as Logto issues
    BEARERGUARD_OBSERVER=observer,
    # DPoP from AUTH_DPOP, AUTH_DPOP_NONCE, AUTH_DPOP_NONCE_SECRET, AUTH_REPLAY_STORE
    **{f"BEARERGUARD_{k.upper()}": v for k, v in dpop_settings(os.environ).items()},
)
# Deny by default: every route needs a valid token unless listed here;
# @guard.require then adds each route's scopes.
guard = BearerGuard(app, protect_all=True, public=["/health", "/metrics"])


@app.errorhandler(HTTPException)
def http_error(exc: HTTPException) -> Any:
    """404, 405, ... as JSON, like FastAPI's {"detail": ...}."""
    response = exc.get_response()
    response.set_data(json.dumps({"detail": exc.description}))
    response.content_type = "application/json"
    return response


class Store:
    """Products in memory, safe to use from several threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[int, dict[str, Any]] = {}
        self._next = 1
        for name, price in (("Espresso beans", 14.5), ("Milk frother", 39.0)):
            self.add(name, price)

    def all(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(p) for p in self._items.values()]

    def get(self, product_id: int) -> dict[str, Any] | None:
        with self._lock:
            product = self._items.get(product_id)
            return dict(product) if product else None

    def add(self, name: str, price: float) -> dict[str, Any]:
        with self._lock:
            product = {"name": name, "price": price, "id": self._next}
            self._items[self._next] = product
            self._next += 1
            return dict(product)

    def delete(self, product_id: int) -> bool:
        with self._lock:
            return self._items.pop(product_id, None) is not None


store = Store()


MAX_PRICE = 1_000_000_000


def new_product(body: Any) -> tuple[str, float]:
    """Validate {"name": non-empty str, "price": number >= 0}, or answer 422."""
    if not isinstance(body, dict):
        abort(422, "body must be a JSON object")
    name, price = body.get("name"), body.get("price")
    if not isinstance(name, str) or not 1 <= len(name) <= 200:
        abort(422, "name must be a string of 1 to 200 characters")
    if isinstance(price, bool) or not isinstance(price, (int, float)):
        abort(422, "price must be a number")
    # An int can be too large for a float (math.isfinite would raise): cap it first.
    if not 0 <= price <= MAX_PRICE or not math.isfinite(price):
        abort(422, f"price must be a number from 0 to {MAX_PRICE}")
    return name, price


@app.get("/health")
def health() -> Any:
    return {"status": "ok"}


if exposition is not None:

    @app.get("/metrics")
    def metrics() -> Any:
        body, content_type = exposition()
        return body, 200, {"Content-Type": content_type}


@app.get("/products")
@guard.require("read:products")
def list_products() -> Any:
    return store.all()


@app.get("/products/<int:product_id>")
@guard.require("read:products")
def get_product(product_id: int) -> Any:
    return store.get(product_id) or abort(404, "product not found")


@app.post("/products")
@guard.require("write:products")
def create_product() -> Any:
    name, price = new_product(request.get_json(silent=True))
    return store.add(name, price), 201


@app.delete("/products/<int:product_id>")
@guard.require("write:products")
def delete_product(product_id: int) -> Any:
    if not store.delete(product_id):
        abort(404, "product not found")
    return "", 204


@app.get("/whoami")
@guard.require()
def whoami() -> Any:
    token = current_token()
    return {"sub": token.sub, "client_id": token.client_id, "scopes": sorted(token.scopes)}
