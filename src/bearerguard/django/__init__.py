"""Django and Django REST framework: settings, a deny-by-default middleware, per-view scopes.

In ``settings.py``::

    INSTALLED_APPS = [..., "bearerguard.django"]  # checks BEARERGUARD at start-up
    MIDDLEWARE = [..., "bearerguard.django.middleware.BearerGuardMiddleware"]
    BEARERGUARD = {
        "ISSUER": "https://tenant.logto.app/oidc",
        "AUDIENCE": "https://shopping.api",
        "REQUIRE_TYP": True,
        "PUBLIC": ["/health"],  # the middleware denies by default; these need no token
    }

Any other ``ResourceServer`` argument goes in uppercased (``"LEEWAY": 5``, ``"DPOP":
"allowed"``); ``"RULES"`` takes ``bearerguard.rules.Rule`` objects, ``"PROTECT_ALL": False``
leaves the middleware out of the way (per-view protection only); ``"SERVER"`` takes a
``ResourceServer`` built elsewhere instead of ``ISSUER``, ``AUDIENCE`` and the rest. The
verified token is ``request.auth``, ``request.user`` a ``TokenUser`` (no database, no
``django.contrib.auth``).
Per view: ``@require_scopes("read:products")`` for functions, ``ScopesRequiredMixin`` for
class-based views; DRF: ``bearerguard.django.drf``.
"""

from __future__ import annotations

from .conf import get_server, server_from_settings
from .views import ScopesRequiredMixin, TokenUser, current_token, require_scopes

__all__ = [
    "ScopesRequiredMixin",
    "TokenUser",
    "current_token",
    "get_server",
    "require_scopes",
    "server_from_settings",
]
