"""Per-endpoint protection for Starlette: ``@protect("read:products")`` beside the route.

Works on sync and async function endpoints and on ``HTTPEndpoint`` methods; the Request is
found by type, not by parameter name. The verified token is ``request.auth``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar, cast

from starlette.requests import HTTPConnection, Request
from starlette.responses import Response
from starlette.websockets import WebSocket

from .asgi import request_view, send_error, store
from .claims import ClaimRule
from .errors import AuthError, ConfigurationError
from .metadata import respond
from .request import RequestView
from .rules import Requirement
from .server import ResourceServer

__all__ = ["Protect", "error_response", "metadata_endpoint"]

F = TypeVar("F", bound=Callable[..., Any])


def error_response(exc: AuthError) -> Response:
    """The Starlette response for ``exc``: status, WWW-Authenticate, Retry-After, JSON body."""
    return Response(exc.to_json(), exc.status_code, exc.response_headers())


def _connection(args: Sequence[Any], kwargs: dict[str, Any]) -> HTTPConnection:
    for value in (*args, *kwargs.values()):
        if isinstance(value, HTTPConnection):
            return value
    raise TypeError("a protected endpoint must receive a starlette Request")


def _replied(result: Any, view: RequestView) -> Any:
    """The endpoint's response, with what authorization has to say (a fresh DPoP-Nonce)."""
    if view.reply and isinstance(result, Response):
        result.headers.update(view.reply)
    return result


def metadata_endpoint(server: ResourceServer) -> Callable[[Request], Awaitable[Response]]:
    """The RFC 9728 document as an endpoint, for apps without ``BearerAuthMiddleware``:
    ``app.add_route(server.metadata_path, metadata_endpoint(server),
    methods=["GET", "HEAD", "OPTIONS"], include_in_schema=False)``."""
    if server.metadata_path is None:
        raise ConfigurationError("this server publishes no metadata (resource_metadata=False?)")

    async def metadata(request: Request) -> Response:
        document = server.metadata(request.scope.get("app"))
        assert document is not None
        status, headers, body = respond(request.method, document)
        return Response(body, status, dict(headers))

    return metadata


class Protect:
    """``protect = Protect(server)``; then ``@protect()`` or ``@protect("read:products")``.

    ``@protect("a", "b")`` needs both scopes; ``@protect("a", "b", any_of=True)`` either;
    ``optional=True`` runs the endpoint with ``request.auth`` None when the request has no
    bearer credentials; ``claims=[...]`` adds claim rules (``bearerguard.claims``) that see
    ``request.path_params``; ``dpop=True`` takes DPoP-bound tokens with their proofs only
    (RFC 9449, on a server with ``dpop="allowed"``). A token already verified by
    ``BearerAuthMiddleware`` with the same server is reused, not verified again; one verified
    by another server (another API) is verified again.
    """

    def __init__(self, server: ResourceServer) -> None:
        self.server = server

    def __call__(
        self,
        *scopes: str,
        any_of: bool = False,
        optional: bool = False,
        claims: Iterable[ClaimRule] = (),
        dpop: bool = False,
    ) -> Callable[[F], F]:
        server = self.server
        required = tuple(s for scope in scopes for s in scope.split())
        requirement = Requirement(
            scopes=required, any_of=any_of, optional=optional, claims=tuple(claims), dpop=dpop
        )
        server.check_requirements([requirement])
        server.declare_scopes(required)

        def decorate(endpoint: F) -> F:
            if inspect.iscoroutinefunction(endpoint):
                server.check_face("async")

                @functools.wraps(endpoint)
                async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                    conn = _connection(args, kwargs)
                    view = request_view(conn.scope)
                    try:
                        token = await server.authorize_async(view, requirement)
                    except AuthError as exc:
                        if isinstance(conn, WebSocket):  # Starlette ignores what it returns
                            await send_error(exc, conn.scope, conn.send)
                            return None
                        return error_response(exc)
                    store(conn.scope, token)
                    return _replied(await endpoint(*args, **kwargs), view)

                return cast(F, async_wrapper)

            server.check_face("sync")

            @functools.wraps(endpoint)
            def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
                # Starlette runs sync endpoints in a thread pool: blocking key I/O is fine here.
                conn = _connection(args, kwargs)
                view = request_view(conn.scope)
                try:
                    token = server.authorize(view, requirement)
                except AuthError as exc:
                    return error_response(exc)
                store(conn.scope, token)
                return _replied(endpoint(*args, **kwargs), view)

            return cast(F, sync_wrapper)

        return decorate
