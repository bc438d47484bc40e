"""AccessToken: what a verified JWT access token tells the API."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from .errors import InsufficientScope

__all__ = ["AccessToken", "require_scopes"]

LOGTO_ORGANIZATION_AUDIENCE = "urn:logto:organization:"


class AccessToken:
    """A verified access token. ``claims`` is the whole, read-only payload.

    Immutable. Only what verification computes is stored; ``sub``, ``client_id``, ``issuer``
    and ``organization_id`` are read from the claims when asked for (building a token is on
    every cache miss, reading them is not).
    """

    __slots__ = ("audience", "claims", "expires_at", "scopes")

    claims: Mapping[str, Any]
    scopes: frozenset[str]
    audience: tuple[str, ...]
    expires_at: float

    def __init__(
        self,
        *,
        sub: str | None = None,
        client_id: str | None = None,
        scopes: Iterable[str] = (),
        audience: Iterable[str] = (),
        issuer: str | None = None,
        expires_at: float = 0.0,
        claims: Mapping[str, Any] | None = None,
        organization_id: str | None = None,
    ) -> None:
        """Build a token by hand (e.g. for a test's dependency override); the named values
        go into ``claims``."""
        merged = dict(claims or {})
        named = {"sub": sub, "client_id": client_id, "iss": issuer}
        named["organization_id"] = organization_id
        merged.update({k: v for k, v in named.items() if v is not None})
        init = object.__setattr__
        init(self, "claims", MappingProxyType(merged))
        init(self, "scopes", frozenset(scopes))
        init(self, "audience", tuple(audience))
        init(self, "expires_at", float(expires_at))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"AccessToken is immutable: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"AccessToken is immutable: cannot delete {name!r}")

    @classmethod
    def from_claims(
        cls,
        claims: dict[str, Any],
        scopes: frozenset[str],
        audience: tuple[str, ...],
        expires_at: float,
    ) -> AccessToken:
        """Build from claims that verification has already checked (``claims`` is not copied)."""
        token = _new(cls)
        # The slots' own setters: the override of __setattr__ stays shut for everyone else.
        _set_claims(token, MappingProxyType(claims))
        _set_scopes(token, scopes)
        _set_audience(token, audience)
        _set_expires_at(token, float(expires_at))
        return token

    def _string(self, name: str) -> str | None:
        value = self.claims.get(name)
        return value if isinstance(value, str) else None

    @property
    def sub(self) -> str | None:
        return self._string("sub")

    @property
    def client_id(self) -> str | None:
        return self._string("client_id")

    @property
    def issuer(self) -> str:
        return self._string("iss") or ""

    @property
    def organization_id(self) -> str | None:
        """Logto organization tokens: the ``organization_id`` claim, or the id in an
        ``urn:logto:organization:<id>`` audience. None for other tokens."""
        org = self._string("organization_id")
        if org:
            return org
        for aud in self.audience:
            if aud.startswith(LOGTO_ORGANIZATION_AUDIENCE) and len(aud) > len(
                LOGTO_ORGANIZATION_AUDIENCE
            ):
                return aud[len(LOGTO_ORGANIZATION_AUDIENCE) :]
        return None

    def __repr__(self) -> str:
        return (
            f"AccessToken(sub={self.sub!r}, client_id={self.client_id!r}, "
            f"scopes={sorted(self.scopes)!r}, audience={self.audience!r}, "
            f"issuer={self.issuer!r}, expires_at={self.expires_at!r}, "
            f"organization_id={self.organization_id!r})"
        )

    def has_scopes(self, *scopes: str, any_of: bool = False) -> bool:
        """True when the token holds every scope (or, with ``any_of``, at least one)."""
        if any_of:
            return not scopes or any(s in self.scopes for s in scopes)
        return all(s in self.scopes for s in scopes)


_new = object.__new__
_set_claims = AccessToken.__dict__["claims"].__set__
_set_scopes = AccessToken.__dict__["scopes"].__set__
_set_audience = AccessToken.__dict__["audience"].__set__
_set_expires_at = AccessToken.__dict__["expires_at"].__set__


def require_scopes(
    token: AccessToken, scopes: str | Iterable[str], *, any_of: bool = False
) -> None:
    """Raise ``InsufficientScope`` unless ``token`` holds ``scopes`` (all, or ``any_of``).

    ``scopes`` may be one space-delimited string (``"read:products write:products"``).
    """
    required = tuple(scopes.split()) if isinstance(scopes, str) else tuple(scopes)
    if not token.has_scopes(*required, any_of=any_of):
        raise InsufficientScope(required, any_of=any_of)
