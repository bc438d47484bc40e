"""AccessToken: what a verified JWT access token tells the API."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .errors import InsufficientScope

__all__ = ["AccessToken", "require_scopes"]

LOGTO_ORGANIZATION_AUDIENCE = "urn:logto:organization:"


@dataclass(frozen=True, eq=False)
class AccessToken:
    """A verified access token. ``claims`` is the whole, read-only payload."""

    sub: str | None
    client_id: str | None
    scopes: frozenset[str]
    audience: tuple[str, ...]
    issuer: str
    expires_at: float
    claims: Mapping[str, Any] = field(repr=False)
    organization_id: str | None = None

    @classmethod
    def from_claims(
        cls, claims: dict[str, Any], scopes: frozenset[str], audience: tuple[str, ...]
    ) -> AccessToken:
        """Build from claims that verification has already checked."""
        org = claims.get("organization_id")
        if not isinstance(org, str):
            org = next(
                (
                    aud[len(LOGTO_ORGANIZATION_AUDIENCE) :]
                    for aud in audience
                    if aud.startswith(LOGTO_ORGANIZATION_AUDIENCE)
                ),
                None,
            )
        sub = claims.get("sub")
        client_id = claims.get("client_id")
        return cls(
            sub=sub if isinstance(sub, str) else None,
            client_id=client_id if isinstance(client_id, str) else None,
            scopes=scopes,
            audience=audience,
            issuer=claims["iss"],
            expires_at=float(claims["exp"]),
            claims=MappingProxyType(claims),
            organization_id=org or None,
        )

    def has_scopes(self, *scopes: str, any_of: bool = False) -> bool:
        """True when the token holds every scope (or, with ``any_of``, at least one)."""
        if any_of:
            return not scopes or any(s in self.scopes for s in scopes)
        return all(s in self.scopes for s in scopes)


def require_scopes(
    token: AccessToken, scopes: str | Iterable[str], *, any_of: bool = False
) -> None:
    """Raise ``InsufficientScope`` unless ``token`` holds ``scopes`` (all, or ``any_of``).

    ``scopes`` may be one space-delimited string (``"read:products write:products"``).
    """
    required = tuple(scopes.split()) if isinstance(scopes, str) else tuple(scopes)
    if not token.has_scopes(*required, any_of=any_of):
        raise InsufficientScope(required, any_of=any_of)
