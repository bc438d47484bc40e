"""FastAPI security dependencies that verify the token and publish OAuth2 client credentials.

``auth = BearerAuth(server, scopes={"read:products": "Read the catalogue"})``, then
``token: AccessToken = Security(auth, scopes=["read:products"])`` on a route. ``/docs`` shows
an Authorize button (client credentials, with the issuer's discovered token endpoint) and
each route's scopes.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from fastapi.openapi.models import OAuthFlowClientCredentials, OAuthFlows
from fastapi.openapi.models import SecurityBase as SecurityBaseModel
from fastapi.security import OAuth2, SecurityScopes
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response
from starlette.websockets import WebSocket

from .asgi import request_view, send_error, store
from .claims import ClaimRule
from .errors import AuthError
from .fetch import (
    log,
    metadata_url,
)
from .rules import Requirement
from .server import ResourceServer
from .starlette import error_response
from .token import AccessToken

__all__ = ["BearerAuth", "add_exception_handler"]

_HANDLERS_KEY = "starlette.exception_handlers"


async def _handle(request: Request, exc: Exception) -> Response | None:
    """The RFC 6750 response; a realm-less error (``require_scopes``) gets the realm of the
    server that verified the request's token. A websocket handshake is denied as the
    middleware denies it (an HTTP response where the server can send one, else close 1008)."""
    assert isinstance(exc, AuthError)
    if exc.realm is None:
        token = request.scope.get("auth")
        if isinstance(token, AccessToken) and isinstance(token._server, ResourceServer):
            token._server.with_realm(exc)
    conn: HTTPConnection = request
    if isinstance(conn, WebSocket):
        await send_error(exc, conn.scope, conn.send)
        return None
    return error_response(exc)


def add_exception_handler(app: Any) -> None:
    """Render AuthError raised anywhere in ``app`` as an RFC 6750 response.

    ``BearerAuth`` installs the same handler on its first request; call this as well when
    routes without it raise AuthError (e.g. ``require_scopes`` behind the middleware alone).
    """
    app.add_exception_handler(AuthError, _handle)


def _discover_token_url(server: ResourceServer) -> str:
    """The first issuer's ``token_endpoint`` (OIDC discovery / RFC 8414).

    Metadata already fetched for the keys is used as is; otherwise it is fetched now, within
    two fetch timeouts. When that fails, a warning is logged and ``<issuer>/token`` (Logto's)
    is returned: the docs are worth serving even when the issuer is down.
    """
    source = server.key_sources[0]
    guess = source.issuer.rstrip("/") + "/token"
    try:
        return metadata_url(source.discover_sync(), "token_endpoint")
    except Exception as exc:  # whatever the issuer or the client did: only the docs suffer
        log.warning(
            "bearerguard: cannot discover the token endpoint of %s (%s); OpenAPI shows %s",
            source.issuer,
            exc,
            guess,
        )
        return guess


def _route_scopes(app: object, server: ResourceServer) -> Iterator[str]:
    """The scopes ``app``'s routes ask of this server through ``Security(auth, scopes=...)``,
    for the RFC 9728 document (known before any of those routes is called)."""
    routes = list(getattr(app, "routes", ()))
    while routes:
        route = routes.pop()
        routes.extend(getattr(route, "routes", ()))  # mounted routers and sub-apps
        dependants = [getattr(route, "dependant", None)]
        while dependants:
            dependant = dependants.pop()
            if dependant is None:
                continue
            dependants.extend(dependant.dependencies)
            call = dependant.call
            if isinstance(call, BearerAuth) and call.server is server:
                # Newer FastAPI names them own_oauth_scopes, older releases security_scopes.
                found = getattr(dependant, "own_oauth_scopes", None)
                if found is None:
                    found = getattr(dependant, "security_scopes", None)
                yield from found or ()


class _TokenUrl:
    """The flow's tokenUrl, discovered once, on first read; shared by ``any_of()`` clones."""

    def __init__(self, server: ResourceServer, flow: OAuthFlowClientCredentials) -> None:
        self.server = server
        self.flow = flow
        self.resolved = False
        self.lock = threading.Lock()

    def resolve(self) -> None:
        with self.lock:
            if not self.resolved:
                self.flow.tokenUrl = _discover_token_url(self.server)
                self.resolved = True


class BearerAuth(OAuth2):
    """A FastAPI dependency returning the verified ``AccessToken``.

    Use it with ``Security(auth, scopes=[...])`` (all of them needed) or with
    ``Security(auth.any_of(), scopes=[...])`` (one is enough); ``Depends(auth)`` needs only a
    valid token. Errors are rendered by bearerguard, never as ``{"detail": ...}``: those of
    the dependency, and ``AuthError`` raised in the route body (``require_scopes``), too.

    The OpenAPI tokenUrl is ``token_url`` if given, else the issuer's discovered
    ``token_endpoint``, looked up once, when FastAPI first builds the document
    (``app.openapi()``; at most two fetch timeouts, and none when the keys were fetched).
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
        server.check_face("async")  # FastAPI runs this dependency on the event loop
        flow = OAuthFlowClientCredentials(tokenUrl=token_url or "", scopes=dict(scopes or {}))
        # No I/O here (the app is being imported): the endpoint is discovered on first read.
        self._token_url = None if token_url else _TokenUrl(server, flow)
        flows = OAuthFlows(clientCredentials=flow)
        super().__init__(
            flows=flows,
            scheme_name=scheme_name,
            description=description or "OAuth 2.0 client credentials (bearer JWT access token)",
            auto_error=False,
        )
        self.server = server
        server.declare_scopes(scopes or ())
        server.add_scope_source("fastapi", lambda app: _route_scopes(app, server))
        self.require_any = False
        self.is_optional = False
        self.dpop_only = False
        self.claim_rules: tuple[ClaimRule, ...] = ()
        self._requirements: dict[tuple[str, ...], Requirement] = {}  # one per route's scopes

    @property
    def model(self) -> SecurityBaseModel:
        """The OpenAPI security scheme; reading it first resolves the tokenUrl."""
        pending = self._token_url
        if pending is not None and not pending.resolved:
            pending.resolve()
        return self._model

    @model.setter
    def model(self, value: SecurityBaseModel) -> None:
        self._model = value

    def any_of(self) -> BearerAuth:
        """The same scheme, satisfied by any one of the route's scopes."""
        return self._clone(require_any=True)

    def optional(self) -> BearerAuth:
        """The same scheme, giving ``None`` to a request without bearer credentials (bearer
        credentials that are there must still be valid): ``token: AccessToken | None =
        Security(auth.optional())``."""
        return self._clone(is_optional=True)

    def dpop(self) -> BearerAuth:
        """The same scheme taking DPoP-bound tokens with their proofs only (RFC 9449), on a
        server with ``dpop="allowed"``: ``Security(auth.dpop(), scopes=[...])``."""
        self.server.check_requirements([Requirement(dpop=True)])
        return self._clone(dpop_only=True)

    def with_claims(self, *rules: ClaimRule) -> BearerAuth:
        """The same scheme with claim rules (``bearerguard.claims``) that see the route's
        path parameters: ``Security(auth.with_claims(claim_matches_path("organization_id",
        "org")), scopes=[...])``."""
        if not all(isinstance(r, ClaimRule) for r in rules):
            raise TypeError("with_claims() takes ClaimRule objects (see bearerguard.claims)")
        return self._clone(claim_rules=self.claim_rules + rules)

    def _clone(self, **changes: Any) -> BearerAuth:
        clone = copy.copy(self)
        clone.__dict__.update(changes, _requirements={})
        return clone

    async def __call__(  # type: ignore[override]
        self, request: HTTPConnection, security_scopes: SecurityScopes
    ) -> AccessToken | None:
        # FastAPI renders unknown exceptions as 500 and HTTPException as {"detail": ...}. This
        # scope entry holds the ExceptionMiddleware's own handler table (one dict for the app,
        # read when an exception reaches it), so ours goes in on the first request, before
        # anything can fail: AuthError renders from the dependency and from the route body
        # alike, on every request. A handler the app registered for AuthError is kept.
        handlers = request.scope.get(_HANDLERS_KEY)
        if handlers and isinstance(handlers[0], dict) and AuthError not in handlers[0]:
            handlers[0][AuthError] = _handle
        scopes = tuple(security_scopes.scopes)
        requirement = self._requirements.get(scopes)
        if requirement is None:
            self.server.declare_scopes(scopes)
            requirement = self._requirements[scopes] = Requirement(
                scopes=scopes,
                any_of=self.require_any,
                optional=self.is_optional,
                claims=self.claim_rules,
                dpop=self.dpop_only,
            )
        token = await self.server.authorize_async(request_view(request.scope), requirement)
        store(request.scope, token)  # request.auth and request.user, as the middleware does
        return token
