"""The shopping API on Django REST framework, protected by bearerguard.

No database and no django.contrib.auth: the catalogue is in memory and request.user is the
token's. Configure with AUTH_ISSUER and AUTH_AUDIENCE (and the DPoP settings the other
examples read: AUTH_DPOP, AUTH_DPOP_NONCE, AUTH_DPOP_NONCE_SECRET, AUTH_REPLAY_STORE).
"""

from __future__ import annotations

import os
import secrets

from bearerguard.dpop import dpop_settings

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or secrets.token_urlsafe(32)
DEBUG = False
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]").split(",")
ROOT_URLCONF = "shop.urls"
WSGI_APPLICATION = "shop.wsgi.application"
USE_TZ = True
DATABASES: dict[str, object] = {}
INSTALLED_APPS = ["rest_framework", "bearerguard.django"]
MIDDLEWARE = ["bearerguard.django.middleware.BearerGuardMiddleware"]

try:  # Prometheus metrics at GET /metrics when prometheus-client is installed
    from bearerguard.prometheus import PrometheusObserver
except ImportError:
    _observer = None
else:
    _observer = PrometheusObserver()

BEARERGUARD = {
    "ISSUER": os.environ.get("AUTH_ISSUER", "http://127.0.0.1:3001/oidc"),
    "AUDIENCE": os.environ.get("AUTH_AUDIENCE", "https://shopping.api"),
    "REQUIRE_TYP": True,  # RFC 9068 "at+jwt" access tokens, as Logto issues
    "OBSERVER": _observer,
    # Deny by default: every path needs a valid token unless listed here; each view's
    # permission class then adds its scopes.
    "PUBLIC": ["/health", "/metrics"],
    **{key.upper(): value for key, value in dpop_settings(os.environ).items()},
}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["bearerguard.django.drf.BearerAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": [],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "UNAUTHENTICATED_USER": None,
    "EXCEPTION_HANDLER": "bearerguard.django.drf.exception_handler",
}
