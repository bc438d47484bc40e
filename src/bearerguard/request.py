"""The one authorization step under every adapter.

An adapter extracts what the request carries into a ``RequestView`` and calls
``ResourceServer.authorize(view, requirement)`` (or ``authorize_async``); it gets the
``AccessToken`` to store (``None`` on a public route, or on an optional one without bearer
credentials), or an ``AuthError`` carrying every challenge parameter, ready to render.

The step is written once, as the functions here, with no I/O: ``begin`` decides what it can
without keys (public, a token verified upstream by the same server, no credentials), the
face verifies the header (the only place that may fetch keys), and ``settle`` checks the
route's scopes and claim rules. The sync and async faces in ``server.py`` are the same three
calls, so they cannot drift.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .claims import NO_PARAMS
from .errors import InsufficientScope, InvalidRequest, Reason
from .rules import Requirement
from .token import AccessToken

if TYPE_CHECKING:
    from .server import ResourceServer

__all__ = ["ANONYMOUS", "Anonymous", "RequestView", "begin", "settle"]


class RequestView:
    """What a request carries that authorization looks at.

    ``authorization``: every ``Authorization`` header value, as received (several are a
    400). ``upstream``: whatever an earlier guard stored on the request (``scope["auth"]``,
    the WSGI environ), reused only if this server verified it. ``path_params``: the route's
    parameters, for claim rules. ``url``: the request URL, a string or a function computing
    it (adapters pass a function: most requests never need it).
    """

    __slots__ = ("_url", "authorization", "dpop", "method", "path_params", "reply", "upstream")

    def __init__(
        self,
        method: str,
        authorization: Sequence[str],
        *,
        url: str | Callable[[], str] = "",
        path_params: Mapping[str, Any] = NO_PARAMS,
        upstream: object = None,
        dpop: Sequence[str] = (),
    ) -> None:
        self.method = method
        self.authorization = authorization
        self._url = url
        self.path_params = path_params
        self.upstream = upstream
        self.dpop = dpop  # every DPoP header value (RFC 9449)
        #: Headers for the response once authorized (a fresh DPoP-Nonce), or None.
        self.reply: dict[str, str] | None = None

    @property
    def url(self) -> str:
        url = self._url
        if not isinstance(url, str):
            url = self._url = url()
        return url

    def __repr__(self) -> str:  # never the credentials
        return f"RequestView({self.method!r}, {len(self.authorization)} authorization value(s))"


class Anonymous:
    """``begin``'s answer for a request that goes on without a token."""


ANONYMOUS = Anonymous()


def begin(
    server: ResourceServer, view: RequestView, requirement: Requirement
) -> AccessToken | Anonymous | str | None:
    """Everything decided before verification: ANONYMOUS, a reusable token, or the header
    value to verify (``None``: there is none, which verification answers 401)."""
    if requirement.public:
        return ANONYMOUS
    token = server.reuse(view.upstream)
    if token is not None:
        return token
    values = view.authorization
    header = values[0] if values else None
    # A WSGI server joins repeated headers with ", " (RFC 9110 section 5.3): "Bearer a, Bearer
    # b" is several headers there, so it is here too (token68 has no comma).
    attempt = _DPOP_OR_BEARER if server.dpop is not None else _BEARER
    if len(values) > 1 or (header is not None and "," in header and _bearer(header, attempt)):
        raise InvalidRequest("several authorization headers")
    if requirement.optional and not _bearer(header, attempt):
        return ANONYMOUS  # no bearer credentials (none, or another scheme, e.g. an API key)
    return header


# A bearer attempt, however mangled ("Bearer\tx", "Bearer,x", "Basic a, Bearer b"): such a
# header is never "no bearer credentials" on an optional route; parsing then answers it.
_BEARER = re.compile(r"(?:^|,)\s*bearer(?:\s|,|$)", re.IGNORECASE)
_DPOP_OR_BEARER = re.compile(r"(?:^|,)\s*(?:bearer|dpop)(?:\s|,|$)", re.IGNORECASE)


def _bearer(header: str | None, attempt: re.Pattern[str] = _BEARER) -> bool:
    return header is not None and attempt.search(header) is not None


def settle(token: AccessToken, view: RequestView, requirement: Requirement) -> AccessToken:
    """The route's scopes (all, or one with ``any_of``) and claim rules, group by group."""
    held = token.scopes
    for group in requirement.groups():
        scopes = group.scopes
        if scopes and not (
            not held.isdisjoint(scopes) if group.any_of else held.issuperset(scopes)
        ):
            raise InsufficientScope(scopes, any_of=group.any_of)
        for rule in group.claims:
            if not rule.holds(token, view.path_params):
                raise InsufficientScope(
                    description=f"token fails a claim rule: {rule.description}",
                    reason=Reason.CLAIM_RULE,
                )
    return token
