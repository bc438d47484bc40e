"""Django REST framework: an authentication class and permission classes for scopes.

    REST_FRAMEWORK = {
        "DEFAULT_AUTHENTICATION_CLASSES": ["bearerguard.django.drf.BearerAuthentication"],
        "UNAUTHENTICATED_USER": None,  # no django.contrib.auth needed
        "EXCEPTION_HANDLER": "bearerguard.django.drf.exception_handler",
    }

    class Products(APIView):
        permission_classes = [ScopesByMethod.of({"GET": "read:products", "POST": "write:products"})]

DRF renders errors as ``{"detail": ...}``; bearerguard's keep their RFC 6750 body
(``{"error", "error_description"}``), status and ``WWW-Authenticate`` (with ``scope=`` and
``resource_metadata=``), as every other adapter answers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from rest_framework.authentication import BaseAuthentication
from rest_framework.exceptions import APIException
from rest_framework.permissions import BasePermission

from ..claims import ClaimRule
from ..errors import AuthError, IssuerUnavailable, MissingToken, Reason
from ..metadata import scopes_in_order
from ..rules import Requirement
from ..token import AccessToken
from .conf import declare_scopes, get_server
from .views import TokenUser, error_response, request_view

__all__ = [
    "BearerAuthFailed",
    "BearerAuthentication",
    "HasScopes",
    "ScopesByMethod",
    "exception_handler",
]


class BearerAuthFailed(APIException):
    """An ``AuthError`` as DRF answers it: same status, body and headers."""

    def __init__(self, error: AuthError) -> None:
        super().__init__(detail=error.to_dict())
        self.error = error
        self.status_code = error.status_code
        self.auth_header = error.www_authenticate  # DRF's handler sends it as WWW-Authenticate
        if isinstance(error, IssuerUnavailable):
            self.wait = error.retry_after  # ... and this as Retry-After


def exception_handler(exc: Exception, context: Any) -> Any:
    """``REST_FRAMEWORK["EXCEPTION_HANDLER"]``: bearerguard's refusals answered exactly as
    every other adapter answers them (``Cache-Control: no-store`` and the same JSON bytes
    included); everything else as DRF's own handler does. Without it DRF still sends the
    status, ``WWW-Authenticate``, ``Retry-After`` and the RFC 6750 members."""
    if isinstance(exc, BearerAuthFailed):
        return error_response(exc.error)
    from rest_framework.views import exception_handler as drf_handler

    return drf_handler(exc, context)


def _view_scopes(request: Any) -> tuple[str, ...]:
    """The scopes the view's bearerguard permission classes ask of this request."""
    view = (getattr(request, "parser_context", None) or {}).get("view")
    if view is None:
        return ()
    groups = [
        permission.requirement(request, view).scopes
        for permission in view.get_permissions()
        if isinstance(permission, HasScopes)
    ]
    return scopes_in_order(groups)


def _drf_request_view(request: Any) -> Any:
    django_request = request._request
    view = request_view(django_request)
    token = getattr(django_request, "auth", None)  # verified by the middleware, if it ran
    view.upstream = token if isinstance(token, AccessToken) else None
    return view


class BearerAuthentication(BaseAuthentication):
    """``(TokenUser, AccessToken)`` for a request with a valid token; None without bearer
    credentials (a permission class then answers 401 with the challenge); the RFC 6750 error
    for credentials that are there but bad."""

    def authenticate(self, request: Any) -> tuple[TokenUser, AccessToken] | None:
        server = get_server()
        try:
            token = server.authorize(_drf_request_view(request), Requirement(optional=True))
        except AuthError as exc:
            if exc.reason is not Reason.CLAIM_RULE:
                # Every challenge names the route's scopes: the view's permission classes know
                # them, authentication runs before they do.
                exc.scope = exc.scope or _view_scopes(request)
            raise BearerAuthFailed(exc) from None
        return None if token is None else (TokenUser(token), token)

    def authenticate_header(self, request: Any) -> str:
        """The bare challenge: DRF answers ``NotAuthenticated`` with 401 and this."""
        return get_server().with_realm(MissingToken()).www_authenticate


class HasScopes(BasePermission):
    """A valid token with the view's scopes: ``required_scopes`` on the view (all of them;
    ``any_of_scopes = True``: one), or ``HasScopes.of("read:products")``. No token: 401 with
    the challenge; too few scopes: 403 ``insufficient_scope`` naming them all."""

    scopes: tuple[str, ...] | None = None
    any_of = False
    optional = False
    claims: tuple[ClaimRule, ...] = ()

    @classmethod
    def of(
        cls,
        *scopes: str,
        any_of: bool = False,
        optional: bool = False,
        claims: Iterable[ClaimRule] = (),
    ) -> type[HasScopes]:
        """A permission class for these scopes (``optional=True``: a request without bearer
        credentials goes on with ``request.auth`` None; ``claims``: claim rules, which see
        the view's URL kwargs)."""
        required = tuple(s for scope in scopes for s in scope.split())
        declare_scopes(required)
        members = {"scopes": required, "any_of": any_of, "optional": optional}
        return type(f"HasScopes{required!r}", (cls,), {**members, "claims": tuple(claims)})

    def requirement(self, request: Any, view: Any) -> Requirement:
        scopes = self.scopes
        if scopes is None:
            scopes = tuple(getattr(view, "required_scopes", ()))
        any_of = self.any_of or bool(getattr(view, "any_of_scopes", False))
        return Requirement(scopes=scopes, any_of=any_of, optional=self.optional, claims=self.claims)

    def has_permission(self, request: Any, view: Any) -> bool:
        server = get_server()
        checked = _drf_request_view(request)
        checked.path_params = getattr(view, "kwargs", None) or checked.path_params
        if isinstance(request.auth, AccessToken):
            checked.upstream = request.auth  # BearerAuthentication's: reused, not re-verified
        try:
            server.authorize(checked, self.requirement(request, view))
        except AuthError as exc:
            raise BearerAuthFailed(exc) from None
        return True


class ScopesByMethod(HasScopes):
    """Scopes per HTTP method: ``ScopesByMethod.of({"GET": "read:products", "POST":
    "write:products", "DELETE": "write:products"})``; a method not listed needs a valid token
    only (HEAD is GET's)."""

    by_method: Mapping[str, tuple[str, ...]] = {}

    @classmethod
    def of(  # type: ignore[override]
        cls, table: Mapping[str, str | Iterable[str]], *, any_of: bool = False
    ) -> type[HasScopes]:
        by_method = {
            method.upper(): tuple(s.split()) if isinstance(s, str) else tuple(s)
            for method, s in table.items()
        }
        declare_scopes(s for required in by_method.values() for s in required)
        return type("ScopesByMethod", (cls,), {"by_method": by_method, "any_of": any_of})

    def requirement(self, request: Any, view: Any) -> Requirement:
        method = request.method.upper()
        scopes = self.by_method.get("GET" if method == "HEAD" else method, ())
        return Requirement(scopes=scopes, any_of=self.any_of)
