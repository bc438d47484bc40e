"""Per-view protection for Django: a decorator for functions, a mixin for classes, and what
both and the middleware share (the request's view of itself, the error response)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar, cast

from asgiref.sync import iscoroutinefunction
from django.http import HttpRequest, HttpResponse

from ..claims import NO_PARAMS, ClaimRule
from ..errors import AuthError
from ..request import RequestView
from ..rules import Requirement
from ..token import AccessToken

__all__ = ["ScopesRequiredMixin", "TokenUser", "current_token", "require_scopes"]

F = TypeVar("F", bound=Callable[..., Any])


class _NoPermissions:
    """Django's permission questions, which templates and ``permission_required`` ask of any
    ``request.user``: always no. Its permissions live in its database; a token's are its
    scopes (``require_scopes``)."""

    def has_perm(self, perm: str, obj: object = None) -> bool:
        return False

    def has_perms(self, perm_list: Iterable[str], obj: object = None) -> bool:
        return False

    def has_module_perms(self, app_label: str) -> bool:
        return False


class TokenUser(_NoPermissions):
    """``request.user`` for a verified token: authenticated, no database row behind it."""

    is_authenticated = True
    is_anonymous = False
    is_active = True
    is_staff = False
    is_superuser = False

    def __init__(self, token: AccessToken) -> None:
        self.token = token

    @property
    def pk(self) -> str | None:
        return self.token.sub

    id = pk

    @property
    def username(self) -> str:
        return self.token.sub or self.token.client_id or ""

    def get_username(self) -> str:
        return self.username

    def __str__(self) -> str:
        return self.username


class NoTokenUser(_NoPermissions):
    """``request.user`` where no token was needed or given."""

    is_authenticated = False
    is_anonymous = True
    is_active = False
    is_staff = False
    is_superuser = False
    pk = id = None
    username = ""

    def get_username(self) -> str:
        return ""

    def __str__(self) -> str:
        return "AnonymousUser"


NO_TOKEN_USER = NoTokenUser()


def request_view(request: HttpRequest, path_params: Mapping[str, Any] = NO_PARAMS) -> RequestView:
    """What a Django request carries for ``ResourceServer.authorize``."""
    meta = request.META
    header = meta.get("HTTP_AUTHORIZATION")
    dpop = meta.get("HTTP_DPOP")  # a WSGI server joins several with ", ": refused as such
    return RequestView(
        request.method or "GET",
        [] if header is None else [header],
        # get_host() checks ALLOWED_HOSTS: a Host the site does not serve is Django's 400.
        url=lambda: f"{request.scheme}://{request.get_host()}{request.path}",
        path_params=path_params,
        upstream=getattr(request, "auth", None),
        dpop=[] if dpop is None else [dpop],
    )


def error_response(exc: AuthError) -> HttpResponse:
    """The RFC 6750 response for ``exc``: status, ``WWW-Authenticate``, JSON body."""
    return HttpResponse(exc.to_json(), status=exc.status_code, headers=exc.response_headers())


def store(request: HttpRequest, token: AccessToken | None) -> None:
    request.auth = token
    request.user = TokenUser(token) if token is not None else NO_TOKEN_USER


def _reply(response: HttpResponse, view: RequestView) -> HttpResponse:
    if view.reply:  # a fresh DPoP-Nonce
        for name, value in view.reply.items():
            response[name] = value
    return response


def current_token(request: HttpRequest) -> AccessToken:
    """The verified token of ``request``; RuntimeError where none was verified."""
    token = getattr(request, "auth", None)
    if not isinstance(token, AccessToken):
        raise RuntimeError("no verified access token: this view is not protected by bearerguard")
    return token


def require_scopes(
    *scopes: str,
    any_of: bool = False,
    optional: bool = False,
    claims: Iterable[ClaimRule] = (),
    dpop: bool = False,
) -> Callable[[F], F]:
    """``@require_scopes("read:products")``: a valid token holding the scopes (all of them;
    ``any_of=True``: one); ``@require_scopes()``: any valid token. Sync and async views alike
    (async ones never block the event loop). A token the middleware verified is reused."""
    required = tuple(s for scope in scopes for s in scope.split())
    requirement = Requirement(
        scopes=required, any_of=any_of, optional=optional, claims=tuple(claims), dpop=dpop
    )

    def decorate(view_func: F) -> F:
        if iscoroutinefunction(view_func):

            @functools.wraps(view_func)
            async def async_view(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
                from .conf import get_server

                server = get_server()
                view = request_view(request, kwargs or NO_PARAMS)
                try:
                    token = await server.authorize_async(view, requirement)
                except AuthError as exc:
                    return error_response(exc)
                store(request, token)
                return _reply(await view_func(request, *args, **kwargs), view)

            return cast(F, async_view)

        @functools.wraps(view_func)
        def sync_view(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
            from .conf import get_server

            server = get_server()
            view = request_view(request, kwargs or NO_PARAMS)
            try:
                token = server.authorize(view, requirement)
            except AuthError as exc:
                return error_response(exc)
            store(request, token)
            return _reply(view_func(request, *args, **kwargs), view)

        return cast(F, sync_view)

    return decorate


class ScopesRequiredMixin:
    """For class-based views: ``required_scopes = ["read:products"]`` (``any_of_scopes =
    True``: one is enough), checked in ``dispatch`` before the handler runs."""

    required_scopes: Iterable[str] = ()
    any_of_scopes: bool = False

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        from .conf import get_server

        server = get_server()
        requirement = Requirement(scopes=tuple(self.required_scopes), any_of=self.any_of_scopes)
        view = request_view(request, kwargs)
        try:
            token = server.authorize(view, requirement)
        except AuthError as exc:
            return error_response(exc)
        store(request, token)
        return _reply(super().dispatch(request, *args, **kwargs), view)  # type: ignore[misc]
