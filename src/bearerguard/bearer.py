"""Parsing the Authorization header (RFC 6750 section 2.1): the token, or an AuthError."""

from __future__ import annotations

import re

from .errors import AuthError, InvalidRequest, InvalidToken, MissingToken, Reason

__all__ = ["credentials", "parse_authorization", "scheme_of", "undecodable"]

# token68 (RFC 9110 section 11.2): 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
TOKEN68 = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_SCHEME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def split_scheme(authorization: str) -> tuple[str, str]:
    """Split ``"<scheme> <credentials>"``; raise ValueError when there is no valid scheme."""
    scheme, sep, rest = authorization.partition(" ")
    if not _SCHEME.fullmatch(scheme):
        raise ValueError("malformed authorization header")
    return scheme, rest.lstrip(" ") if sep else ""


def parse_authorization(authorization: str | None, *, max_length: int) -> str:
    """Return the bearer token in ``authorization``.

    Raises ``MissingToken`` for an absent header or another scheme, ``InvalidRequest`` for a
    malformed one (empty, several credentials, characters outside token68) and
    ``InvalidToken`` for a token longer than ``max_length``.
    """
    token = credentials(authorization, max_length=max_length)
    if not TOKEN68.fullmatch(token):
        raise InvalidRequest(_NOT_TOKEN68)
    return token


def credentials(
    authorization: str | None, *, max_length: int, schemes: frozenset[str] = frozenset({"bearer"})
) -> str:
    """``parse_authorization`` minus the token68 check on the common ``Bearer <token>`` form.

    For the verifier's miss path: its decoder accepts only base64url, a subset of token68, so
    the regex need run only for a token that failed to decode, through ``undecodable``.
    ``schemes``: the lowercase schemes taken (``dpop`` too where DPoP is on).
    """
    if authorization is None or authorization.strip() == "":
        raise MissingToken()
    usual = authorization.startswith("Bearer ") and " " not in authorization[7:]
    if usual:
        token = authorization[7:]
    elif authorization.startswith("DPoP ") and "dpop" in schemes and " " not in authorization[5:]:
        token, usual = authorization[5:], True  # RFC 9449's spelling, as common as Bearer's
    else:
        try:
            scheme, token = split_scheme(authorization.strip(" \t"))
        except ValueError:
            raise InvalidRequest("malformed authorization header") from None
        if scheme.lower() not in schemes:
            raise MissingToken()
    if not token:
        raise InvalidRequest("bearer token is empty")
    if len(token) > max_length:
        raise InvalidToken("token too large", reason=Reason.TOKEN_TOO_LARGE)
    if not usual and not TOKEN68.fullmatch(token):
        raise InvalidRequest(_NOT_TOKEN68)
    return token


def scheme_of(authorization: str) -> str:
    """The lowercase scheme of a header that ``credentials`` accepted."""
    return authorization.strip(" \t").partition(" ")[0].lower()


def undecodable(token: str, error: InvalidToken) -> AuthError:
    """The error for a token that ``credentials`` returned and that failed to decode.

    RFC 6750 section 3.1: credentials that are not even token68 make a malformed request
    (400 invalid_request); a token68 value that is no JWT is an invalid token (401).
    """
    return InvalidRequest(_NOT_TOKEN68) if not TOKEN68.fullmatch(token) else error


_NOT_TOKEN68 = "bearer credentials must be a single token68 value"
