"""The public names of bearerguard: adding or removing one is a deliberate API change."""

from __future__ import annotations

import bearerguard


def test_all_is_pinned() -> None:
    assert sorted(bearerguard.__all__) == [
        "AccessToken",
        "AuthError",
        "ConfigurationError",
        "DEFAULT_ALGORITHMS",
        "InsufficientScope",
        "InvalidRequest",
        "InvalidToken",
        "IssuerUnavailable",
        "MissingToken",
        "Reason",
        "ResourceServer",
        "WarmUpError",
        "require_scopes",
    ]


def test_every_exported_name_exists_and_belongs_to_the_package() -> None:
    for name in bearerguard.__all__:
        member = getattr(bearerguard, name)
        module = getattr(member, "__module__", "bearerguard")
        assert module.startswith("bearerguard"), name


def test_exported_errors() -> None:
    auth_errors = ["MissingToken", "InvalidRequest", "InvalidToken", "InsufficientScope"]
    auth_errors.append("IssuerUnavailable")
    for name in auth_errors:
        assert issubclass(getattr(bearerguard, name), bearerguard.AuthError), name
    assert not issubclass(bearerguard.ConfigurationError, bearerguard.AuthError)
