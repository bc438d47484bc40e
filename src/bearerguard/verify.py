"""The verification rules: pure functions of (token, key, options, now). No I/O, no clock.

The JWS layer (``parse``, ``check_header``, ``check_signature``) is kept apart from the JWT
claims layer (``check_claims``), as in PyJWT; ``ResourceServer`` runs them in that order with
the key lookup in between.
"""

from __future__ import annotations

import binascii
import functools
import json
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature

from .errors import ConfigurationError, InvalidToken, Reason
from .keys import VerificationKey
from .token import AccessToken

__all__ = [
    "DEFAULT_ALGORITHMS",
    "ParsedToken",
    "VerifyOptions",
    "check_claims",
    "check_header",
    "check_signature",
    "decode_segment",
    "decode_signature",
    "parse",
    "split",
]

DEFAULT_ALGORITHMS: tuple[str, ...] = (
    "ES256",
    "ES384",
    "ES512",
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "EdDSA",
)
SUPPORTED_ALGORITHMS = frozenset(DEFAULT_ALGORITHMS)
ACCESS_TOKEN_TYPES = frozenset({"at+jwt", "application/at+jwt"})
PLAIN_TYPES = frozenset({"jwt", "application/jwt"}) | ACCESS_TOKEN_TYPES
RFC9068_REQUIRED = ("sub", "client_id", "iat", "jti")
# Header parameters whose meaning we understand; anything in "crit" outside this set is fatal.
_UNDERSTOOD_CRIT: frozenset[str] = frozenset()


@dataclass(frozen=True)
class VerifyOptions:
    """Validated settings for one resource server (built by ``ResourceServer``)."""

    issuers: frozenset[str]
    audiences: frozenset[str]
    algorithms: frozenset[str]
    leeway: float
    require_typ: bool
    scope_claims: tuple[str, ...]
    required_claims: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.issuers or not all(isinstance(i, str) and i for i in self.issuers):
            raise ConfigurationError("issuer must be a non-empty string or list of strings")
        if not self.audiences or not all(isinstance(a, str) and a for a in self.audiences):
            raise ConfigurationError("audience must be a non-empty string or list of strings")
        bad = set(self.algorithms) - SUPPORTED_ALGORITHMS
        if bad or not self.algorithms:
            raise ConfigurationError(
                f"unsupported algorithms {sorted(bad)}: choose from {sorted(SUPPORTED_ALGORITHMS)}"
                " (none and HS* are never accepted)"
            )
        if not (0 <= self.leeway <= 300):
            raise ConfigurationError("leeway must be between 0 and 300 seconds")
        if not self.scope_claims:
            raise ConfigurationError("scope_claims must name at least one claim")


@dataclass(frozen=True)
class ParsedToken:
    """A compact JWS split and decoded once."""

    header: dict[str, Any]
    payload: dict[str, Any]
    signing_input: bytes
    signature: bytes


if sys.version_info >= (3, 11):
    # A partial, not a def: one Python frame fewer per segment on the hot path.
    _a2b: Callable[[str], bytes] = functools.partial(binascii.a2b_base64, strict_mode=True)

else:  # pragma: no cover - Python 3.10 has no strict mode: check the alphabet first
    _BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")

    def _a2b(data: str) -> bytes:
        if not _BASE64.fullmatch(data) or len(data) % 4:
            raise binascii.Error("invalid base64")
        return binascii.a2b_base64(data)


_PADDING = ("", "", "==", "=")  # by len % 4; a remainder of 1 is never valid base64
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
# The last character of a segment whose length is 2 (or 3) mod 4 carries 2 (or 4) bits of
# data and 4 (or 2) bits that must be zero (RFC 4648 section 3.5). Only that canonical
# spelling is accepted: otherwise one signature could be written 16 ways.
_CANONICAL_LAST: tuple[frozenset[str], ...] = (
    frozenset(),
    frozenset(),
    frozenset(_ALPHABET[::16]),
    frozenset(_ALPHABET[::4]),
)


def _b64decode(segment: str) -> bytes:
    """Unpadded, canonical base64url text to bytes (RFC 7515 section 2)."""
    # Callers have excluded "+", "/" and "=", so after the swap strict base64 accepts exactly
    # the unpadded base64url alphabet (and is ~3x faster than base64.urlsafe_b64decode).
    rest = len(segment) & 3
    if rest and segment[-1] not in _CANONICAL_LAST[rest]:  # also every remainder of 1
        raise InvalidToken("token is not valid base64url")
    try:
        return _a2b(segment.replace("-", "+").replace("_", "/") + _PADDING[rest])
    except (binascii.Error, ValueError):
        raise InvalidToken("token is not valid base64url") from None


def _base64url_only(segment: str) -> str:
    if not segment.isascii() or "+" in segment or "/" in segment or "=" in segment:
        raise InvalidToken("token is not valid base64url")
    return segment


def decode_signature(segment: str) -> bytes:
    """A signature segment as bytes: unpadded, canonical base64url only."""
    return _b64decode(_base64url_only(segment))


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise InvalidToken("duplicate member name in token JSON")
    return obj


def _reject_constant(name: str) -> Any:
    raise InvalidToken("token JSON is not valid")


# One decoder, built once: json.loads(..., object_pairs_hook=...) builds a new one per call.
_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)


_SCAN: Callable[[str, int], tuple[Any, int]] = _DECODER.scan_once  # type: ignore[attr-defined]


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        text = data.decode("utf-8")
        # The C scanner alone, as decode() would call it, minus decode()'s two whitespace
        # regexes (~1 µs a token). Anything but one value filling the text (whitespace around
        # it, trailing data, nothing at all) goes to the full decoder, which decides.
        try:
            obj, end = _SCAN(text, 0)
        except StopIteration:
            end = -1
        if end != len(text):
            obj = _DECODER.decode(text)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise InvalidToken(f"token {what} is not valid JSON") from None
    if not isinstance(obj, dict):
        raise InvalidToken(f"token {what} is not a JSON object")
    return obj


def split(token: str) -> tuple[str, str, str]:
    """The three segments of a compact JWS, each checked to be base64url text."""
    if not token.isascii() or "+" in token or "/" in token or "=" in token:
        raise InvalidToken("token is not valid base64url")
    # partition finds each "." with a fast search; split(".") steps through every character.
    header, dot1, rest = token.partition(".")
    if not dot1:
        # Logto (and most issuers) hand out an opaque token when none was asked for a
        # resource: say so, the usual first-day mistake.
        raise InvalidToken("token is not a JWT (opaque); request it with a resource indicator")
    payload, dot2, signature = rest.partition(".")
    if not dot2 or "." in signature:
        raise InvalidToken("token must have three segments")
    if not signature:
        raise InvalidToken("token is not signed")
    return header, payload, signature


def decode_segment(segment: str, what: str) -> dict[str, Any]:
    """A header or payload segment as a JSON object (duplicate names rejected)."""
    return _json_object(_b64decode(_base64url_only(segment)), what)


def segment_json(segment: str, what: str) -> dict[str, Any]:
    """``decode_segment`` for a segment from ``split()``, which has checked the alphabet."""
    return _json_object(_b64decode(segment), what)


#: ``decode_signature`` for a segment from ``split()``.
segment_bytes = _b64decode


def parse(token: str) -> ParsedToken:
    """Split a compact JWS into its decoded header, payload and signature."""
    h, p, s = split(token)
    header = segment_json(h, "header")
    payload = segment_json(p, "payload")
    return ParsedToken(header, payload, f"{h}.{p}".encode("ascii"), _b64decode(s))


def check_header(header: Mapping[str, Any], options: VerifyOptions) -> str:
    """Apply the JOSE header rules; return the algorithm."""
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in options.algorithms:
        raise InvalidToken("signing algorithm not allowed", reason=Reason.UNSUPPORTED_ALG)
    if "crit" in header:
        crit = header["crit"]
        if (
            not isinstance(crit, list)
            or not crit
            or any(not isinstance(c, str) or c not in _UNDERSTOOD_CRIT for c in crit)
        ):
            raise InvalidToken("unsupported critical header parameter")
    if header.get("b64", True) is not True:
        raise InvalidToken("unencoded payload (b64) is not supported")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise InvalidToken("kid must be a string")
    typ = header.get("typ")
    if typ is None:
        if options.require_typ:
            raise InvalidToken("token type must be at+jwt", reason=Reason.WRONG_TYP)
    elif not isinstance(typ, str):
        raise InvalidToken("token type is not valid", reason=Reason.WRONG_TYP)
    else:
        allowed = ACCESS_TOKEN_TYPES if options.require_typ else PLAIN_TYPES
        if typ.lower() not in allowed:
            raise InvalidToken(
                "token type must be at+jwt" if options.require_typ else "token type not accepted",
                reason=Reason.WRONG_TYP,
            )
    return alg


def check_signature(signature: bytes, signing_input: bytes, alg: str, key: VerificationKey) -> None:
    """Verify ``signature`` over ``signing_input`` with ``key``, which must fit ``alg``."""
    verifier = key.verifiers.get(alg)
    if verifier is None:
        raise InvalidToken(
            "signing key does not fit the token's algorithm", reason=Reason.UNKNOWN_KID
        )
    try:
        verifier(signature, signing_input)
    except InvalidSignature:
        raise InvalidToken("signature verification failed", reason=Reason.BAD_SIGNATURE) from None


_MAX_SAFE = 2**53
_STRING_CLAIMS = ("sub", "client_id", "jti", "organization_id")


def _numeric_date(value: Any, name: str) -> float:
    """A JSON number, finite (RFC 7519 NumericDate); never a string or a boolean."""
    kind = type(value)  # exact type: bool is an int subclass and must not pass
    if kind is int:
        if -_MAX_SAFE < value < _MAX_SAFE:
            return value  # type: ignore[no-any-return]
    elif kind is float:
        if value - value == 0.0:  # false for inf and nan (json reads 1e400 as inf)
            return value  # type: ignore[no-any-return]
    else:
        raise InvalidToken(f"{name} must be a number")
    raise InvalidToken(f"{name} must be a finite number")


def _split_scope(value: str) -> frozenset[str]:
    """RFC 6749 section 3.3: scope tokens are separated by spaces (%x20), nothing else.

    A tab or another Unicode space is part of a (strange) scope token, never a separator.
    """
    scopes = frozenset(value.split(" "))
    return scopes - _EMPTY if "" in scopes else scopes


_EMPTY = frozenset({""})


def _scopes(payload: Mapping[str, Any], claims: tuple[str, ...]) -> frozenset[str]:
    if len(claims) == 1:  # the usual case: one space-delimited "scope" string
        value = payload.get(claims[0])
        if type(value) is str:
            return _split_scope(value)
    found: set[str] = set()
    for name in claims:
        value = payload.get(name)
        if value is None:
            continue
        if isinstance(value, str):
            found.update(_split_scope(value))
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            found.update(value)
        else:
            raise InvalidToken(f"{name} claim must be a string or a list of strings")
    return frozenset(found)


def check_issuer(payload: Mapping[str, Any], options: VerifyOptions) -> str:
    """``iss`` must equal a configured issuer exactly."""
    iss = payload.get("iss")
    if not isinstance(iss, str):
        if iss is None:
            raise InvalidToken("issuer missing", reason=Reason.MISSING_CLAIM)
        raise InvalidToken("issuer must be a string")
    if iss not in options.issuers:
        raise InvalidToken("issuer mismatch", reason=Reason.ISSUER_MISMATCH)
    return iss


def check_claims(
    payload: dict[str, Any], options: VerifyOptions, now: float, *, server: object = None
) -> AccessToken:
    """Apply the JWT claims rules (RFC 7519, RFC 9068) to a signature-checked payload.

    ``server`` is recorded on the token as the server that verified it.
    """
    check_issuer(payload, options)
    aud = payload.get("aud")
    if isinstance(aud, str):
        audience: tuple[str, ...] = (aud,)
    elif isinstance(aud, list) and aud and all(isinstance(a, str) for a in aud):
        audience = tuple(aud)
    elif aud is None:
        raise InvalidToken("audience missing", reason=Reason.MISSING_CLAIM)
    else:
        raise InvalidToken("audience must be a string or a list of strings")
    if options.audiences.isdisjoint(audience):
        raise InvalidToken("audience mismatch", reason=Reason.AUDIENCE_MISMATCH)

    if "exp" not in payload:
        raise InvalidToken("expiry (exp) missing", reason=Reason.MISSING_CLAIM)
    leeway = options.leeway
    exp = _numeric_date(payload["exp"], "exp")
    if now >= exp + leeway:
        raise InvalidToken("token expired", reason=Reason.EXPIRED)
    if "nbf" in payload and now + leeway < _numeric_date(payload["nbf"], "nbf"):
        raise InvalidToken("token not yet valid", reason=Reason.NOT_YET_VALID)
    if "iat" in payload and now + leeway < _numeric_date(payload["iat"], "iat"):
        raise InvalidToken("token issued in the future", reason=Reason.NOT_YET_VALID)

    for name in options.required_claims:
        if payload.get(name) is None:
            raise InvalidToken(f"{name} claim missing", reason=Reason.MISSING_CLAIM)
    for name in _STRING_CLAIMS:
        if name in payload and not isinstance(payload[name], str):
            raise InvalidToken(f"{name} must be a string")
    scopes = _scopes(payload, options.scope_claims)
    return AccessToken.from_claims(payload, scopes, audience, exp, server)
