"""FastAPI security dependencies that verify the token and publish OAuth2 client credentials.

``auth = BearerAuth(server, scopes={"read:products": "Read the catalogue"})``, then
``token: AccessToken = Security(auth, scopes=["read:products"])`` on a route. ``/docs`` shows
an Authorize button (client credentials) and each route's scopes.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from fastapi.openapi.models import OAuthFlowClientCredentials, OAuthFlows
from fastapi.security import OAuth2, SecurityScopes
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response

from .asgi import authorization_header
from .errors import AuthError
from .server import ResourceServer
from .starlette import error_response
from .token import AccessToken

__all__ = ["BearerAuth", "add_exception_handler"]

_HANDLERS_KEY = "starlette.exception_handlers"


async def _handle(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, AuthError)
    return error_response(exc)


def add_exception_handler(app: Any) -> None:
    """Render AuthError raised anywhere in ``app`` as an RFC 6750 response."""
    app.add_exception_handler(AuthError, _handle)


class BearerAuth(OAuth2):
    """A FastAPI dependency returning the verified ``AccessToken``.

    Use it with ``Security(auth, scopes=[...])`` (all of them needed) or with
    ``Security(auth.any_of(), scopes=[...])`` (one is enough); ``Depends(auth)`` needs only a
    valid token. Errors are rendered by bearerguard, never as ``{"detail": ...}``.
    """

    def __init__(
        self,
        server: ResourceServer,
        *,
        token_url: str | None = None,
        scopes: Mapping[str, str] | None = None,
        scheme_name: str = "OAuth2ClientCredentials",
        description: str | None = None,
    ) -> None:
        if token_url is None:  # Logto and most issuers: <issuer>/token
            token_url = server.issuers[0].rstrip("/") + "/token"
        flows = OAuthFlows(
            clientCredentials=OAuthFlowClientCredentials(
                tokenUrl=token_url, scopes=dict(scopes or {})
            )
        )
        super().__init__(
            flows=flows,
            scheme_name=scheme_name,
            description=description or "OAuth 2.0 client credentials (bearer JWT access token)",
            auto_error=False,
        )
        self.server = server
        self.require_any = False

    def any_of(self) -> BearerAuth:
        """The same scheme, satisfied by any one of the route's scopes."""
        clone = copy.copy(self)
        clone.require_any = True
        return clone

    async def __call__(  # type: ignore[override]
        self, request: HTTPConnection, security_scopes: SecurityScopes
    ) -> AccessToken:
        try:
            token = request.scope.get("auth")
            if not isinstance(token, AccessToken):  # not already verified by the middleware
                header = authorization_header(request.scope["headers"])
                token = await self.server.authenticate_async(header)
            self.server.check_scopes(token, security_scopes.scopes, any_of=self.require_any)
        except AuthError as exc:
            self._ensure_handler(request)
            raise self.server.with_realm(exc) from None
        request.scope["auth"] = token
        return token

    @staticmethod
    def _ensure_handler(request: HTTPConnection) -> None:
        # FastAPI renders unknown exceptions as 500 and HTTPException as {"detail": ...}.
        # Starlette looks exception handlers up per request in this scope entry, so adding
        # ours here makes the error render correctly even if the app never registered it.
        handlers = request.scope.get(_HANDLERS_KEY)
        if handlers and isinstance(handlers[0], dict):
            handlers[0].setdefault(AuthError, _handle)
