"""The shop's routes: the same contract as the FastAPI and Flask examples."""

from __future__ import annotations

import json
import math
import threading
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from rest_framework.exceptions import APIException, ParseError
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from bearerguard.django.drf import HasScopes, ScopesByMethod

READ, WRITE = "read:products", "write:products"
MAX_PRICE = 1_000_000_000


class Store:
    """Products in memory, safe to use from several threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[int, dict[str, Any]] = {}
        self._next = 1
        for name, price in (("Espresso beans", 14.5), ("Milk frother", 39.0)):
            self.add(name, price)

    def all(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(p) for p in self._items.values()]

    def get(self, product_id: int) -> dict[str, Any] | None:
        with self._lock:
            product = self._items.get(product_id)
            return dict(product) if product else None

    def add(self, name: str, price: float) -> dict[str, Any]:
        with self._lock:
            product = {"name": name, "price": price, "id": self._next}
            self._items[self._next] = product
            self._next += 1
            return dict(product)

    def delete(self, product_id: int) -> bool:
        with self._lock:
            return self._items.pop(product_id, None) is not None


store = Store()


class Unprocessable(APIException):
    status_code = 422


class NotFound(APIException):
    status_code = 404
    default_detail = "product not found"


def new_product(body: Any) -> tuple[str, float]:
    """Validate {"name": non-empty str, "price": number >= 0}, or answer 422."""
    if not isinstance(body, dict):
        raise Unprocessable("body must be a JSON object")
    name, price = body.get("name"), body.get("price")
    if not isinstance(name, str) or not 1 <= len(name) <= 200:
        raise Unprocessable("name must be a string of 1 to 200 characters")
    if isinstance(price, bool) or not isinstance(price, (int, float)):
        raise Unprocessable("price must be a number")
    if not 0 <= price <= MAX_PRICE or not math.isfinite(price):
        raise Unprocessable(f"price must be a number from 0 to {MAX_PRICE}")
    return name, price


def health(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


def metrics(request: HttpRequest) -> HttpResponse:
    try:
        from bearerguard.prometheus import exposition
    except ImportError:
        return JsonResponse({"detail": "prometheus-client is not installed"}, status=404)
    body, content_type = exposition()
    return HttpResponse(body, content_type=content_type)


class Products(APIView):
    permission_classes = (ScopesByMethod.of({"GET": READ, "POST": WRITE}),)

    def get(self, request: Request) -> Response:
        return Response(store.all())

    def post(self, request: Request) -> Response:
        try:
            body = request.data
        except ParseError:
            raise Unprocessable("body must be JSON") from None
        name, price = new_product(body)
        return Response(store.add(name, price), status=201)


class Product(APIView):
    permission_classes = (ScopesByMethod.of({"GET": READ, "DELETE": WRITE}),)

    def get(self, request: Request, product_id: int) -> Response:
        product = store.get(product_id)
        if product is None:
            raise NotFound()
        return Response(product)

    def delete(self, request: Request, product_id: int) -> Response:
        if not store.delete(product_id):
            raise NotFound()
        return Response(status=204)


class WhoAmI(APIView):
    permission_classes = (HasScopes.of(),)  # any valid token

    def get(self, request: Request) -> HttpResponse:
        token = request.auth
        body = {"sub": token.sub, "client_id": token.client_id, "scopes": sorted(token.scopes)}
        # json.dumps escapes what UTF-8 cannot carry (a signed claim may hold a lone surrogate).
        return HttpResponse(json.dumps(body), content_type="application/json")
