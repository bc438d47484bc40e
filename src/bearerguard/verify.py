"""The verification rules: pure functions of (token, key, options, now). No I/O, no clock.

The JWS layer (``parse``, ``check_header``, ``check_signature``) is kept apart from the JWT
claims layer (``check_claims``), as in PyJWT; ``ResourceServer`` runs them in that order with
the key lookup in between.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PublicKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from .errors import ConfigurationError, InvalidToken
from .keys import HASHES, VerificationKey
from .token import AccessToken

__all__ = [
    "DEFAULT_ALGORITHMS",
    "ParsedToken",
    "VerifyOptions",
    "check_claims",
    "check_header",
    "check_signature",
    "parse",
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
_B64URL = re.compile(r"[A-Za-z0-9_-]*")


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


def _b64decode(segment: str) -> bytes:
    if not _B64URL.fullmatch(segment) or len(segment) % 4 == 1:
        raise InvalidToken("token is not valid base64url")
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise InvalidToken("token is not valid base64url") from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise InvalidToken("duplicate member name in token JSON")
    return obj


def _reject_constant(name: str) -> Any:
    raise InvalidToken("token JSON is not valid")


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(
            data.decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            parse_constant=_reject_constant,
        )
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise InvalidToken(f"token {what} is not valid JSON") from None
    if not isinstance(obj, dict):
        raise InvalidToken(f"token {what} is not a JSON object")
    return obj


def parse(token: str) -> ParsedToken:
    """Split a compact JWS into its decoded header, payload and signature."""
    parts = token.split(".")
    if len(parts) != 3:
        raise InvalidToken("token must have three segments")
    h, p, s = parts
    if not s:
        raise InvalidToken("token is not signed")
    header = _json_object(_b64decode(h), "header")
    payload = _json_object(_b64decode(p), "payload")
    return ParsedToken(header, payload, f"{h}.{p}".encode("ascii"), _b64decode(s))


def check_header(header: Mapping[str, Any], options: VerifyOptions) -> str:
    """Apply the JOSE header rules; return the algorithm."""
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in options.algorithms:
        raise InvalidToken("signing algorithm not allowed")
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
            raise InvalidToken("token type must be at+jwt")
    elif not isinstance(typ, str):
        raise InvalidToken("token type is not valid")
    else:
        allowed = ACCESS_TOKEN_TYPES if options.require_typ else PLAIN_TYPES
        if typ.lower() not in allowed:
            raise InvalidToken(
                "token type must be at+jwt" if options.require_typ else "token type not accepted"
            )
    return alg


def check_signature(parsed: ParsedToken, alg: str, key: VerificationKey) -> None:
    """Verify the signature with ``key``, whose type and curve must fit ``alg``."""
    if alg not in key.algorithms:
        raise InvalidToken("signing key does not fit the token's algorithm")
    sig, data, public = parsed.signature, parsed.signing_input, key.public_key
    try:
        if isinstance(public, ec.EllipticCurvePublicKey):
            size = (public.curve.key_size + 7) // 8
            if len(sig) != 2 * size:
                raise InvalidSignature
            r = int.from_bytes(sig[:size], "big")
            s = int.from_bytes(sig[size:], "big")
            public.verify(encode_dss_signature(r, s), data, ec.ECDSA(HASHES[alg]()))
        elif isinstance(public, rsa.RSAPublicKey):
            hash_alg = HASHES[alg]()
            pad: padding.AsymmetricPadding
            if alg.startswith("PS"):
                pad = padding.PSS(mgf=padding.MGF1(hash_alg), salt_length=hash_alg.digest_size)
            else:
                pad = padding.PKCS1v15()
            public.verify(sig, data, pad, hash_alg)
        elif isinstance(public, (Ed25519PublicKey, Ed448PublicKey)):
            public.verify(sig, data)
        else:  # pragma: no cover - keys.py only builds the types above
            raise InvalidSignature
    except InvalidSignature:
        raise InvalidToken("signature verification failed") from None


def _numeric_date(payload: Mapping[str, Any], name: str) -> float | None:
    value = payload.get(name)
    if value is None and name not in payload:
        return None
    # bool is an int subclass: exclude it explicitly; strings are never NumericDates.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidToken(f"{name} must be a number")
    result = float(value) if isinstance(value, float) or abs(value) < 2**53 else math.inf
    if not math.isfinite(result):
        raise InvalidToken(f"{name} must be a finite number")
    return result


def _scopes(payload: Mapping[str, Any], claims: tuple[str, ...]) -> frozenset[str]:
    found: set[str] = set()
    for name in claims:
        value = payload.get(name)
        if value is None:
            continue
        if isinstance(value, str):
            found.update(value.split())
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            found.update(value)
        else:
            raise InvalidToken(f"{name} claim must be a string or a list of strings")
    return frozenset(found)


def check_issuer(payload: Mapping[str, Any], options: VerifyOptions) -> str:
    """``iss`` must equal a configured issuer exactly."""
    iss = payload.get("iss")
    if not isinstance(iss, str):
        raise InvalidToken("issuer missing" if iss is None else "issuer must be a string")
    if iss not in options.issuers:
        raise InvalidToken("issuer mismatch")
    return iss


def check_claims(payload: dict[str, Any], options: VerifyOptions, now: float) -> AccessToken:
    """Apply the JWT claims rules (RFC 7519, RFC 9068) to a signature-checked payload."""
    check_issuer(payload, options)
    aud = payload.get("aud")
    if isinstance(aud, str):
        audience: tuple[str, ...] = (aud,)
    elif isinstance(aud, list) and aud and all(isinstance(a, str) for a in aud):
        audience = tuple(aud)
    elif aud is None:
        raise InvalidToken("audience missing")
    else:
        raise InvalidToken("audience must be a string or a list of strings")
    if options.audiences.isdisjoint(audience):
        raise InvalidToken("audience mismatch")

    exp = _numeric_date(payload, "exp")
    if exp is None:
        raise InvalidToken("expiry (exp) missing")
    if now >= exp + options.leeway:
        raise InvalidToken("token expired")
    nbf = _numeric_date(payload, "nbf")
    if nbf is not None and now + options.leeway < nbf:
        raise InvalidToken("token not yet valid")
    iat = _numeric_date(payload, "iat")
    if iat is not None and now + options.leeway < iat:
        raise InvalidToken("token issued in the future")

    for name in options.required_claims:
        if payload.get(name) is None:
            raise InvalidToken(f"{name} claim missing")
    for name in ("sub", "client_id", "jti", "organization_id"):
        if name in payload and not isinstance(payload[name], str):
            raise InvalidToken(f"{name} must be a string")
    return AccessToken.from_claims(payload, _scopes(payload, options.scope_claims), audience)
