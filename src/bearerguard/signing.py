"""Signing keys for the issuers bearerguard ships (the dev issuer, tests' LocalIssuer).

RFC 7638 thumbprint kids and public JWKs shaped as Logto publishes them.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

__all__ = [
    "DPoPKey",
    "PrivateKey",
    "SigningKey",
    "b64url",
    "generate_key",
    "public_jwk",
    "thumbprint",
]


def b64url(data: bytes) -> str:
    """Unpadded base64url (RFC 7515 section 2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
_CURVES: dict[str, ec.EllipticCurve] = {
    "ES256": ec.SECP256R1(),
    "ES384": ec.SECP384R1(),
    "ES512": ec.SECP521R1(),
}


def generate_key(alg: str = "ES384") -> PrivateKey:
    """A fresh private key for ``alg`` (RSA keys are 2048 bits: fast enough for tests)."""
    if alg in _CURVES:
        return ec.generate_private_key(_CURVES[alg])
    if alg.startswith(("RS", "PS")):
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if alg == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"unsupported algorithm {alg!r}")


def public_jwk(key: PrivateKey) -> dict[str, Any]:
    """The public JWK of ``key`` (no kid, alg or use)."""
    public = key.public_key()
    if isinstance(public, ec.EllipticCurvePublicKey):
        return json.loads(ECAlgorithm.to_jwk(public))  # type: ignore[no-any-return]
    if isinstance(public, rsa.RSAPublicKey):
        return json.loads(RSAAlgorithm.to_jwk(public))  # type: ignore[no-any-return]
    return json.loads(OKPAlgorithm.to_jwk(public))  # type: ignore[no-any-return]


_THUMBPRINT_MEMBERS = {
    "EC": ("crv", "kty", "x", "y"),
    "RSA": ("e", "kty", "n"),
    "OKP": ("crv", "kty", "x"),
}


def thumbprint(jwk: Mapping[str, Any]) -> str:
    """The RFC 7638 JWK thumbprint (SHA-256, base64url): Logto's kids, DPoP's ``cnf.jkt``.

    Its required members, sorted, no whitespace; ValueError for a JWK that has none.
    """
    required = _THUMBPRINT_MEMBERS.get(jwk.get("kty"))  # type: ignore[arg-type]
    if required is None or not all(isinstance(jwk.get(m), str) for m in required):
        raise ValueError("the JWK has no RFC 7638 thumbprint")
    members = {name: jwk[name] for name in required}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    return b64url(hashlib.sha256(canonical).digest())


@dataclass
class SigningKey:
    """A private key with its kid and algorithm, and the JWK it publishes."""

    alg: str
    private_key: PrivateKey
    kid: str
    jwk: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def generate(cls, alg: str = "ES384", kid: str | None = None) -> SigningKey:
        key = generate_key(alg)
        jwk = public_jwk(key)
        kid = kid or thumbprint(jwk)
        jwk.update({"kid": kid, "use": "sig"})
        if not alg.startswith(("RS", "PS")):  # as Logto: RSA JWKs carry no alg
            jwk["alg"] = alg
        return cls(alg, key, kid, jwk)


class DPoPKey:
    """A client's DPoP key (RFC 9449): makes the proofs a bound token needs.

    ``DPoPKey.generate("ES256")``; ``jkt`` is what the issuer puts in ``cnf.jkt``;
    ``proof("GET", url, access_token=token)`` is one proof, a fresh ``jti`` each time.
    """

    def __init__(self, private_key: PrivateKey, alg: str) -> None:
        self.private_key = private_key
        self.alg = alg
        self.jwk = public_jwk(private_key)
        self.jkt = thumbprint(self.jwk)

    @classmethod
    def generate(cls, alg: str = "ES256") -> DPoPKey:
        return cls(generate_key(alg), alg)

    def proof(
        self,
        method: str,
        url: str,
        *,
        access_token: str | None = None,
        nonce: str | None = None,
        iat: float | None = None,
        claims: Mapping[str, Any] | None = None,
        header: Mapping[str, Any] | None = None,
    ) -> str:
        """A proof for one request: ``htm``, ``htu`` (``url`` without query and fragment),
        ``iat`` (now, in whole seconds), a random ``jti``, ``ath`` for ``access_token``,
        ``nonce`` if given. ``claims`` and ``header`` override what is generated (tests make
        bad proofs so)."""
        import secrets
        import time

        import jwt

        payload: dict[str, Any] = {
            "jti": secrets.token_urlsafe(16),
            "htm": method.upper(),
            "htu": url.split("#", 1)[0].split("?", 1)[0],
            "iat": int(time.time()) if iat is None else iat,
        }
        if access_token is not None:
            digest = hashlib.sha256(access_token.encode("ascii")).digest()
            payload["ath"] = b64url(digest)
        if nonce is not None:
            payload["nonce"] = nonce
        payload.update(claims or {})
        headers = {"typ": "dpop+jwt", "jwk": self.jwk, **(header or {})}
        alg = headers.pop("alg", self.alg)
        return jwt.encode(
            {k: v for k, v in payload.items() if v is not None},
            self.private_key,
            algorithm=alg,
            headers=headers,
        )

    def __repr__(self) -> str:
        return f"DPoPKey(alg={self.alg!r}, jkt={self.jkt!r})"
