"""A Django URLconf for the tests: the parity routes as plain views behind the middleware, as
function views with @require_scopes, a class-based view with the mixin, and DRF views."""

from __future__ import annotations

import json
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path
from django.views import View
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from bearerguard.claims import claim_contains, claim_matches_path
from bearerguard.django import ScopesRequiredMixin, current_token, require_scopes
from bearerguard.django.drf import HasScopes, ScopesByMethod

ADMIN_RULE = claim_contains("roles", "admin")
ORG_RULE = claim_matches_path("organization_id", "org")


def describe(token: Any) -> dict[str, Any]:
    return {
        "sub": None if token is None else token.sub,
        "scopes": [] if token is None else sorted(token.scopes),
        "anonymous": token is None,
    }


def plain(request: HttpRequest, **_: Any) -> JsonResponse:
    return JsonResponse(describe(getattr(request, "auth", None)))


async def plain_async(request: HttpRequest, **_: Any) -> JsonResponse:
    return JsonResponse(describe(getattr(request, "auth", None)))


def user(request: HttpRequest) -> JsonResponse:
    """What ``request.user`` says of the caller."""
    who = request.user
    return JsonResponse(
        {
            "authenticated": who.is_authenticated,
            "anonymous": who.is_anonymous,
            "username": who.username,
            "get_username": who.get_username(),
            "str": str(who),
            "pk": who.pk,
            # what templates' {{ perms }} and permission_required ask of any request.user
            "perms": [
                who.has_perm("shop.add_product"),
                who.has_perms(["shop.add_product"]),
                who.has_module_perms("shop"),
            ],
        }
    )


def holder(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"sub": current_token(request).sub})


def api(scopes: type[HasScopes]) -> Any:
    class Endpoint(APIView):
        permission_classes = (scopes,)

        def get(self, request: Request, **_: Any) -> Response:
            return Response(describe(request.auth))

    return Endpoint.as_view()


class Mixed(ScopesRequiredMixin, View):
    required_scopes = ("read",)

    def get(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse(json.dumps(describe(request.auth)), content_type="application/json")


class Authenticated(APIView):
    permission_classes = (IsAuthenticated,)

    def get(self, request: Request) -> Response:
        return Response(describe(request.auth))


class ByMethod(APIView):
    permission_classes = (ScopesByMethod.of({"GET": "read", "POST": "write"}),)

    def get(self, request: Request) -> Response:
        return Response(describe(request.auth))

    def post(self, request: Request) -> Response:
        return Response(describe(request.auth), status=201)


urlpatterns = [
    # behind the middleware, with the parity matrix's rules
    *(path(p.lstrip("/"), plain) for p in ("/read", "/both", "/either", "/optional", "/admin")),
    path("async/read", plain_async),
    # per view
    path("fn/read", require_scopes("read")(plain)),
    path("fn/both", require_scopes("read", "write")(plain)),
    path("fn/either", require_scopes("read", "audit", any_of=True)(plain)),
    path("fn/optional", require_scopes("read", optional=True)(plain)),
    path("fn/admin", require_scopes(claims=[ADMIN_RULE])(plain)),
    path("fn/orgs/<str:org>/reports", require_scopes("read", claims=[ORG_RULE])(plain)),
    path("fn/async", require_scopes("read")(plain_async)),
    path("fn/async/orgs/<str:org>/reports", require_scopes("read", claims=[ORG_RULE])(plain_async)),
    path("fn/user", require_scopes(optional=True)(user)),
    path("fn/holder", require_scopes()(holder)),
    path("holder", holder),  # protected by nothing when PROTECT_ALL is False
    path("cbv/read", Mixed.as_view()),
    # DRF
    path("drf/read", api(HasScopes.of("read"))),
    path("drf/both", api(HasScopes.of("read", "write"))),
    path("drf/either", api(HasScopes.of("read", "audit", any_of=True))),
    path("drf/optional", api(HasScopes.of("read", optional=True))),
    path("drf/admin", api(HasScopes.of(claims=[ADMIN_RULE]))),
    path("drf/orgs/<str:org>/reports", api(HasScopes.of("read", claims=[ORG_RULE]))),
    path("drf/authenticated", Authenticated.as_view()),
    path("drf/by-method", ByMethod.as_view()),
]
