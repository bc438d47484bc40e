"""``BearerGuardMiddleware``: deny by default for a whole Django site, as the ASGI and WSGI
middleware do; sync and async alike (Django picks the face its handler needs)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponse

from ..errors import AuthError
from ..metadata import respond
from .conf import current
from .views import _reply, error_response, request_view, store

__all__ = ["BearerGuardMiddleware"]


class BearerGuardMiddleware:
    """Every request needs a valid token unless ``BEARERGUARD["PUBLIC"]`` or a public rule
    covers its path (``request.path_info``); ``RULES`` add scopes per path and method. The
    RFC 9728 document is served, public. With ``"PROTECT_ALL": False`` it only serves the
    document and leaves protection to the views."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.settings = current()
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self.__acall__(request)
        early = self._metadata(request)
        if early is not None:
            return early
        if not self.settings.protect_all:
            return self.get_response(request)
        view = request_view(request)
        try:
            requirement = self.settings.rules.requirement(view.method, request.path_info)
            token = self.settings.server.authorize(view, requirement)
        except AuthError as exc:
            return error_response(self.settings.server.with_realm(exc))
        store(request, token)
        return _reply(self.get_response(request), view)

    async def __acall__(self, request: HttpRequest) -> HttpResponse:
        early = self._metadata(request)
        if early is not None:
            return early
        respond_async: Callable[[HttpRequest], Awaitable[HttpResponse]] = self.get_response
        if not self.settings.protect_all:
            return await respond_async(request)
        view = request_view(request)
        try:
            requirement = self.settings.rules.requirement(view.method, request.path_info)
            token = await self.settings.server.authorize_async(view, requirement)
        except AuthError as exc:
            return error_response(self.settings.server.with_realm(exc))
        store(request, token)
        return _reply(await respond_async(request), view)

    def _metadata(self, request: HttpRequest) -> HttpResponse | None:
        server = self.settings.server
        if server.metadata_path is None or request.path_info != server.metadata_path:
            return None
        metadata = server.metadata()
        assert metadata is not None
        status, headers, body = respond(request.method or "GET", metadata)
        response = HttpResponse(body, status=status)
        for name, value in headers:
            response[name] = value
        return response
