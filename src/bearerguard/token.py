"""AccessToken: what a verified JWT access token tells the API."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from .errors import InsufficientScope

__all__ = ["AccessToken", "FrozenDict", "FrozenList", "require_scopes"]

LOGTO_ORGANIZATION_AUDIENCE = "urn:logto:organization:"


def _refuse(self: Any, *args: Any, **kwargs: Any) -> Any:
    raise TypeError("access token claims are read-only")


class FrozenDict(dict[str, Any]):
    """A JSON object inside the claims: a ``dict`` (so ``==`` and ``json.dumps`` work as
    before) that refuses every change. Verified tokens are cached and shared between
    requests: a nested value one request changed would be seen by the next.

    (``dict.__setitem__(d, ...)`` and C code such as ``heapq`` on a ``FrozenList`` still get
    through: read-only against mistakes, not against deliberate abuse.)
    """

    __slots__ = ()
    __init__ = __setitem__ = __delitem__ = __ior__ = _refuse
    clear = pop = popitem = setdefault = update = _refuse

    def __copy__(self) -> dict[str, Any]:
        return dict(self)

    def __reduce__(self) -> Any:
        return (dict, (dict(self),))


class FrozenList(list[Any]):
    """A JSON array inside the claims: a ``list`` that refuses every change."""

    __slots__ = ()
    __init__ = __setitem__ = __delitem__ = __iadd__ = __imul__ = _refuse
    append = extend = insert = pop = remove = clear = sort = reverse = _refuse

    def __copy__(self) -> list[Any]:
        return list(self)

    def __reduce__(self) -> Any:
        return (list, (list(self),))


def _frozen(kind: type, items: Any) -> Any:
    # Built without calling __init__, which refuses: filled once, through the base class.
    if kind is dict:
        new: Any = dict.__new__(FrozenDict)
        dict.update(new, items)
    else:
        new = list.__new__(FrozenList)
        list.extend(new, items)
    return new


def freeze(value: Any) -> Any:
    """``value`` with every JSON object and array in it made read-only.

    Iterative, so a deeply nested claim (the JSON decoder accepts hundreds of levels) costs
    no recursion; a container met again while inside it (only possible in hand-built
    claims) is left as it is.
    """
    kind = type(value)
    if kind is not dict and kind is not list:
        return value
    flat = value.values() if kind is dict else value
    if not any(type(c) is dict or type(c) is list for c in flat):  # the usual "aud" list
        return _frozen(kind, value)
    done: dict[int, Any] = {}
    open_: set[int] = set()
    stack: list[Any] = [value]
    while stack:
        node = stack[-1]
        key = id(node)
        children = node.values() if type(node) is dict else node
        if key not in open_:
            open_.add(key)
            stack.extend(
                c
                for c in children
                if (type(c) is dict or type(c) is list) and id(c) not in done and id(c) not in open_
            )
            continue
        stack.pop()
        if key in done:
            continue

        def swap(c: Any) -> Any:
            return done.get(id(c), c) if type(c) is dict or type(c) is list else c

        if type(node) is dict:
            done[key] = _frozen(dict, {k: swap(v) for k, v in node.items()})
        else:
            done[key] = _frozen(list, [swap(v) for v in node])
    return done[id(value)]


class AccessToken:
    """A verified access token. ``claims`` is the whole, read-only payload.

    Immutable. Only what verification computes is stored; ``sub``, ``client_id``, ``issuer``
    and ``organization_id`` are read from the claims when asked for (building a token is on
    every cache miss, reading them is not).
    """

    __slots__ = ("_server", "audience", "claims", "expires_at", "jkt", "scopes")

    claims: Mapping[str, Any]
    _server: object  # the ResourceServer that verified it; None when built by hand
    scopes: frozenset[str]
    audience: tuple[str, ...]
    expires_at: float
    #: RFC 9449: the thumbprint of the key this token is bound to (``cnf.jkt``), "" when
    #: ``cnf.jkt`` is there but not a string (bound to nothing usable), None when unbound.
    jkt: str | None

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
        merged = {k: freeze(v) for k, v in (claims or {}).items()}
        named = {"sub": sub, "client_id": client_id, "iss": issuer}
        named["organization_id"] = organization_id
        merged.update({k: v for k, v in named.items() if v is not None})
        init = object.__setattr__
        init(self, "claims", MappingProxyType(merged))
        init(self, "scopes", frozenset(scopes))
        init(self, "audience", tuple(audience))
        init(self, "expires_at", float(expires_at))
        init(self, "jkt", _jkt(merged))
        init(self, "_server", None)

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
        server: object = None,
    ) -> AccessToken:
        """Build from claims that verification has already checked.

        ``claims`` is not copied, but its JSON objects and arrays are frozen in place.
        ``server`` is the ``ResourceServer`` that verified it (see ``ResourceServer.reuse``).
        """
        for name, value in claims.items():
            kind = type(value)
            if kind is dict or kind is list:
                claims[name] = freeze(value)
        token = _new(cls)
        # The slots' own setters: the override of __setattr__ stays shut for everyone else.
        _set_claims(token, MappingProxyType(claims))
        _set_scopes(token, scopes)
        _set_audience(token, audience)
        _set_expires_at(token, float(expires_at))
        _set_jkt(token, _jkt(claims) if "cnf" in claims else None)
        _set_server(token, server)
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
_set_server = AccessToken.__dict__["_server"].__set__
_set_jkt = AccessToken.__dict__["jkt"].__set__


def _jkt(claims: Mapping[str, Any]) -> str | None:
    cnf = claims.get("cnf")
    if cnf is None:
        return None
    jkt = cnf.get("jkt") if isinstance(cnf, Mapping) else None
    if jkt is None and isinstance(cnf, Mapping) and "jkt" not in cnf:
        return None  # another confirmation method (mTLS's x5t#S256): not DPoP
    return jkt if isinstance(jkt, str) else ""


def require_scopes(
    token: AccessToken, scopes: str | Iterable[str], *, any_of: bool = False
) -> None:
    """Raise ``InsufficientScope`` unless ``token`` holds ``scopes`` (all, or ``any_of``).

    ``scopes`` may be one space-delimited string (``"read:products write:products"``).
    """
    required = tuple(scopes.split()) if isinstance(scopes, str) else tuple(scopes)
    if not token.has_scopes(*required, any_of=any_of):
        raise InsufficientScope(required, any_of=any_of)
