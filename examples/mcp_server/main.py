"""The shopping catalogue as an MCP server (the official `mcp` SDK), protected by bearerguard.

Run: .venv/bin/python -m uvicorn --app-dir examples/mcp_server main:app --host 127.0.0.1 --port 8003
Configure with AUTH_ISSUER and AUTH_AUDIENCE: this server's own MCP URL, the resource indicator
its tokens are issued for (http://127.0.0.1:8003/mcp in development, https://<host>/mcp live).
"""

from __future__ import annotations

import os
import threading
from typing import Any
from urllib.parse import urlsplit

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from pydantic import BaseModel, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from bearerguard import ResourceServer
from bearerguard.mcp import MCPGuard, current_token

ISSUER = os.environ.get("AUTH_ISSUER", "http://127.0.0.1:3001/oidc")
AUDIENCE = os.environ.get("AUTH_AUDIENCE", "http://127.0.0.1:8003/mcp")
READ, WRITE = "read:products", "write:products"

try:  # Prometheus metrics at GET /metrics when prometheus-client is installed
    from bearerguard.prometheus import PrometheusObserver, exposition
except ImportError:
    observer, exposition = None, None
else:
    observer = PrometheusObserver()

# The audience is the MCP endpoint's URL, so the RFC 9728 document is served at
# /.well-known/oauth-protected-resource/mcp with resource = AUDIENCE (MCP authorization spec).
server = ResourceServer(ISSUER, AUDIENCE, require_typ=True, observer=observer)


class Product(BaseModel):
    id: int
    name: str
    price: float


class Store:
    """Products in memory, safe to use from several threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[int, Product] = {}
        self._next = 1
        for name, price in (("Espresso beans", 14.5), ("Milk frother", 39.0)):
            self.add(name, price)

    def all(self) -> list[Product]:
        with self._lock:
            return list(self._items.values())

    def get(self, product_id: int) -> Product | None:
        with self._lock:
            return self._items.get(product_id)

    def add(self, name: str, price: float) -> Product:
        with self._lock:
            product = Product(id=self._next, name=name, price=price)
            self._items[product.id] = product
            self._next += 1
            return product

    def delete(self, product_id: int) -> bool:
        with self._lock:
            return self._items.pop(product_id, None) is not None


store = Store()
mcp = MCPServer("Shopping", instructions="The shop's product catalogue.")


@mcp.tool()
def list_products() -> list[Product]:
    """Every product in the catalogue."""
    return store.all()


@mcp.tool()
def get_product(id: int) -> Product:
    """One product by its id."""
    product = store.get(id)
    if product is None:
        raise ValueError("product not found")
    return product


@mcp.tool()
def add_product(
    name: str = Field(min_length=1, max_length=200),
    price: float = Field(ge=0, le=1_000_000_000),
) -> Product:
    """Add a product; returns it with its new id."""
    return store.add(name, price)


@mcp.tool()
def delete_product(id: int) -> dict[str, int]:
    """Delete a product by its id."""
    if not store.delete(id):
        raise ValueError("product not found")
    return {"deleted": id}


@mcp.tool()
def whoami(ctx: Context) -> dict[str, Any]:
    """Who is calling: the token's subject, client and scopes."""
    token = current_token(ctx)
    return {"sub": token.sub, "client_id": token.client_id, "scopes": sorted(token.scopes)}


@mcp.custom_route("/health", methods=["GET"])
async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


if exposition is not None:

    @mcp.custom_route("/metrics", methods=["GET"])
    async def metrics(request: Request) -> Response:
        body, content_type = exposition()
        return Response(body, media_type=content_type)


# The SDK checks Host and Origin against DNS rebinding: allow this server's own name.
where = urlsplit(AUDIENCE)
security = TransportSecuritySettings(
    allowed_hosts=[where.netloc], allowed_origins=[f"{where.scheme}://{where.netloc}"]
)
app = MCPGuard(
    mcp.streamable_http_app(stateless_http=True, json_response=True, transport_security=security),
    server=server,
    public=["/health", "/metrics"],
    tools={
        "list_products": READ,
        "get_product": READ,
        "add_product": WRITE,
        "delete_product": WRITE,
        # whoami: any valid token
    },
)
