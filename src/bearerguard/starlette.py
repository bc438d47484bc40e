"""Per-endpoint protection for Starlette: ``@protect("read:products")`` beside the route.

Works on sync and async function endpoints and on ``HTTPEndpoint`` methods; the Request is
found by type, not by parameter name. The verified token is ``request.auth``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

from starlette.requests import HTTPConnection
from starlette.responses import Response

from .asgi import TokenUser, authorization_header
from .errors import AuthError
from .server import ResourceServer
from .token import AccessToken

__all__ = ["Protect", "error_response"]

F = TypeVar("F", bound=Callable[..., Any])


def error_response(exc: AuthError) -> Response:
    """The Starlette response for ``exc``: status, WWW-Authenticate, Retry-After, JSON body."""
    return Response(exc.to_json(), exc.status_code, exc.response_headers())


def _connection(args: Sequence[Any], kwargs: dict[str, Any]) -> HTTPConnection:
    for value in (*args, *kwargs.values()):
        if isinstance(value, HTTPConnection):
            return value
    raise TypeError("a protected endpoint must receive a starlette Request")


def _accept(conn: HTTPConnection, token: AccessToken) -> None:
    conn.scope["auth"] = token
    conn.scope["user"] = TokenUser(token)


class Protect:
    """``protect = Protect(server)``; then ``@protect()`` or ``@protect("read:products")``.

    ``@protect("a", "b")`` needs both scopes; ``@protect("a", "b", any_of=True)`` either.
    A token already verified by ``BearerAuthMiddleware`` with the same server is reused, not
    verified again; one verified by another server (another API) is verified again.
    """

    def __init__(self, server: ResourceServer) -> None:
        self.server = server

    def __call__(self, *scopes: str, any_of: bool = False) -> Callable[[F], F]:
        server = self.server
        required = tuple(s for scope in scopes for s in scope.split())

        def authenticate_sync(conn: HTTPConnection) -> AccessToken:
            token = server.reuse(conn.scope.get("auth"))
            if token is None:
                header = authorization_header(conn.scope["headers"])
                token = server.authenticate(header)
            server.check_scopes(token, required, any_of=any_of)
            return token

        async def authenticate_async(conn: HTTPConnection) -> AccessToken:
            token = server.reuse(conn.scope.get("auth"))
            if token is None:
                header = authorization_header(conn.scope["headers"])
                token = await server.authenticate_async(header)
            server.check_scopes(token, required, any_of=any_of)
            return token

        def decorate(endpoint: F) -> F:
            server.check_face("async" if inspect.iscoroutinefunction(endpoint) else "sync")
            if inspect.iscoroutinefunction(endpoint):

                @functools.wraps(endpoint)
                async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                    conn = _connection(args, kwargs)
                    try:
                        _accept(conn, await authenticate_async(conn))
                    except AuthError as exc:
                        return error_response(server.with_realm(exc))
                    return await endpoint(*args, **kwargs)

                return cast(F, async_wrapper)

            @functools.wraps(endpoint)
            def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
                # Starlette runs sync endpoints in a thread pool: blocking key I/O is fine here.
                conn = _connection(args, kwargs)
                try:
                    _accept(conn, authenticate_sync(conn))
                except AuthError as exc:
                    return error_response(server.with_realm(exc))
                return endpoint(*args, **kwargs)

            return cast(F, sync_wrapper)

        return decorate
