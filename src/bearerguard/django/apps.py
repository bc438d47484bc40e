"""``"bearerguard.django"`` in ``INSTALLED_APPS``: a system check of ``BEARERGUARD``, so that
``manage.py check`` (and every ``runserver``/``migrate``) reports a bad issuer URL or an empty
audience before any request."""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.core import checks

from ..errors import ConfigurationError


class BearerGuardConfig(AppConfig):
    name = "bearerguard.django"
    label = "bearerguard"
    verbose_name = "bearerguard"

    def ready(self) -> None:
        checks.register(check_settings, checks.Tags.security)


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    from .conf import current

    try:
        current()
    except ConfigurationError as exc:
        return [
            checks.Error(
                f"BEARERGUARD: {exc}",
                hint="See bearerguard.django for the settings it takes.",
                id="bearerguard.E001",
            )
        ]
    return []
