"""The HTTP client packages bearerguard drives: httpx, and httpx2 when installed.

httpx2 is httpx's successor (Starlette, FastAPI and the MCP SDK moved to it): the same API in
a new package, whose classes are unrelated to httpx's. bearerguard builds its requests with
httpx (its runtime dependency) and hands them to whichever kind of client or transport the
app passes in, translated at the edge; nothing else needs to know.
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING, Any

import httpx

httpx2: ModuleType | None
try:
    import httpx2
except ImportError:  # optional: only apps that use it have it
    httpx2 = None

if TYPE_CHECKING:
    from typing import TypeAlias

    import httpx2 as _httpx2

    SyncClient: TypeAlias = httpx.Client | _httpx2.Client
    AsyncClient: TypeAlias = httpx.AsyncClient | _httpx2.AsyncClient
    Transport: TypeAlias = (
        httpx.BaseTransport
        | httpx.AsyncBaseTransport
        | _httpx2.BaseTransport
        | _httpx2.AsyncBaseTransport
    )

__all__ = [
    "ASYNC_CLIENTS",
    "ASYNC_TRANSPORTS",
    "BYTE_STREAMS",
    "HTTP_ERRORS",
    "SYNC_CLIENTS",
    "SYNC_TRANSPORTS",
    "headers_of",
    "module_of",
    "native",
]

MODULES: tuple[ModuleType, ...] = (httpx,) if httpx2 is None else (httpx, httpx2)
SYNC_CLIENTS: tuple[type, ...] = tuple(m.Client for m in MODULES)
ASYNC_CLIENTS: tuple[type, ...] = tuple(m.AsyncClient for m in MODULES)
SYNC_TRANSPORTS: tuple[type, ...] = tuple(m.BaseTransport for m in MODULES)
ASYNC_TRANSPORTS: tuple[type, ...] = tuple(m.AsyncBaseTransport for m in MODULES)
HTTP_ERRORS: tuple[type[Exception], ...] = tuple(m.HTTPError for m in MODULES)
BYTE_STREAMS: tuple[type, ...] = tuple(m.ByteStream for m in MODULES)


def module_of(thing: object) -> ModuleType:
    """``httpx2`` for an httpx2 client, transport, request or response; else ``httpx``."""
    if httpx2 is not None and type(thing).__module__.split(".", 1)[0] == "httpx2":
        return httpx2
    return httpx


def native(module: ModuleType, request: httpx.Request) -> Any:
    """``request`` as ``module`` builds requests (itself, for httpx)."""
    if module is httpx:
        return request
    content = request.read()
    return module.Request(
        request.method,
        str(request.url),
        headers=request.headers.multi_items(),
        content=content or None,
        extensions=request.extensions,
    )


def headers_of(response: Any) -> httpx.Headers:
    """A response's headers as ``httpx.Headers``, whichever package answered."""
    headers = response.headers
    if isinstance(headers, httpx.Headers):
        return headers
    return httpx.Headers(headers.multi_items())
