"""JWKS documents -> KeySet, and the key-caching policy as plain state (no I/O, no clock).

``KeyCache`` owns every decision (``lookup``: a key, an AuthError, or "fetch now";
``after_fetch``: the answer once fetched); ``fetch.py`` does the fetching it asks for and
reports back (``started`` / ``succeeded`` / ``failed``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PublicKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from .errors import InvalidToken, IssuerUnavailable, Reason

__all__ = ["HASHES", "CachePolicy", "KeyCache", "KeySet", "VerificationKey"]

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | Ed25519PublicKey | Ed448PublicKey

HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "ES256": hashes.SHA256,
    "ES384": hashes.SHA384,
    "ES512": hashes.SHA512,
    "RS256": hashes.SHA256,
    "RS384": hashes.SHA384,
    "RS512": hashes.SHA512,
    "PS256": hashes.SHA256,
    "PS384": hashes.SHA384,
    "PS512": hashes.SHA512,
}
_EC_ALG = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
_RSA_ALGS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
MIN_RSA_BITS = 2048
MAX_KEYS = 100
_CACHE_MAX_AGE = re.compile(r"(?:^|[,\s])(s-maxage|max-age)\s*=\s*\"?(\d{1,10})\"?", re.I)


class JWKSError(ValueError):
    """A JWKS document that cannot be used at all."""


Verifier = Callable[[bytes, bytes], None]  # (signature, signing input); raises on mismatch


def _der_frames(size: int) -> tuple[tuple[bytes, bytes], ...]:
    """DER framing for an ECDSA (r, s) whose halves are ``size`` bytes, neither starting 0x00.

    Indexed by (r's top bit) + 2 * (s's top bit): a set top bit needs a 0x00 pad byte to keep
    the INTEGER positive. Returns (SEQUENCE + INTEGER header for r, INTEGER header for s).
    """
    frames = []
    for pad_r, pad_s in ((0, 0), (1, 0), (0, 1), (1, 1)):
        body = (2 + size + pad_r) + (2 + size + pad_s)
        length = bytes([body]) if body < 0x80 else bytes([0x81, body])
        head = b"\x30" + length + bytes([0x02, size + pad_r]) + b"\x00" * pad_r
        frames.append((head, bytes([0x02, size + pad_s]) + b"\x00" * pad_s))
    return tuple(frames)


def _verifier(public: PublicKey, alg: str) -> Verifier:
    """A verify function with key, algorithm, hash and padding fixed once, at key load.

    ECDSA signatures arrive as fixed-size r||s (RFC 7518 3.4); any other length, including a
    DER-encoded signature, fails before cryptography is asked.
    """
    if isinstance(public, ec.EllipticCurvePublicKey):
        size = (public.curve.key_size + 7) // 8
        ecdsa = ec.ECDSA(HASHES[alg]())
        verify_ec = public.verify
        frames = _der_frames(size)

        def check_ec(sig: bytes, data: bytes) -> None:
            if len(sig) != 2 * size:
                raise InvalidSignature
            r0, s0 = sig[0], sig[size]
            if r0 and s0:
                # cryptography wants DER. When neither half starts with a zero byte, r||s is
                # DER with fixed framing (the halves are already minimal), a few concatenations
                # instead of two big ints and an encoder call.
                head, mid = frames[(r0 > 0x7F) + 2 * (s0 > 0x7F)]
                der = head + sig[:size] + mid + sig[size:]
            else:
                r = int.from_bytes(sig[:size], "big")
                der = encode_dss_signature(r, int.from_bytes(sig[size:], "big"))
            verify_ec(der, data, ecdsa)

        return check_ec
    if isinstance(public, rsa.RSAPublicKey):
        hash_alg = HASHES[alg]()
        pad: padding.AsymmetricPadding = (
            padding.PSS(mgf=padding.MGF1(hash_alg), salt_length=hash_alg.digest_size)
            if alg.startswith("PS")
            else padding.PKCS1v15()
        )
        verify_rsa = public.verify
        return lambda sig, data: verify_rsa(sig, data, pad, hash_alg)
    return public.verify


@dataclass(frozen=True)
class VerificationKey:
    """One usable public key: its kid, the algorithms it may verify, one verifier for each."""

    kid: str | None
    algorithms: frozenset[str]
    public_key: PublicKey
    verifiers: Mapping[str, Verifier] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def build(
        cls, kid: str | None, algorithms: frozenset[str], public: PublicKey
    ) -> VerificationKey:
        return cls(kid, algorithms, public, {alg: _verifier(public, alg) for alg in algorithms})

    def merged(self, other: VerificationKey) -> VerificationKey:
        """One kid published for two keys (an RSA and an EC key, say): each algorithm is
        verified with the key that fits it; where both fit, the first published wins."""
        verifiers = {**other.verifiers, **self.verifiers}
        return VerificationKey(self.kid, frozenset(verifiers), self.public_key, verifiers)


def _key_algorithms(jwk: Mapping[str, Any], public: PublicKey) -> frozenset[str]:
    if isinstance(public, ec.EllipticCurvePublicKey):
        fits = {_EC_ALG[jwk["crv"]]} if jwk.get("crv") in _EC_ALG else set()
    elif isinstance(public, rsa.RSAPublicKey):
        fits = set(_RSA_ALGS) if public.key_size >= MIN_RSA_BITS else set()
    else:
        fits = {"EdDSA"}
    alg = jwk.get("alg")
    if alg is not None:
        # A JWK that names its algorithm is used for that algorithm only (a non-string: never).
        fits &= {alg} if isinstance(alg, str) else set()
    return frozenset(fits)


def load_jwk(jwk: Any) -> VerificationKey | None:
    """Build a VerificationKey from one JWK, or None when it is unusable for signatures."""
    if not isinstance(jwk, dict):
        return None
    kid = jwk.get("kid")
    if kid is not None and not isinstance(kid, str):
        return None
    if jwk.get("use", "sig") != "sig":
        return None
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        return None
    kty = jwk.get("kty")
    try:
        # A JWKS must hold public keys; never load a private or symmetric one.
        public_jwk = {k: v for k, v in jwk.items() if k not in ("d", "p", "q", "dp", "dq", "qi")}
        public: Any
        if kty == "EC":
            public = ECAlgorithm.from_jwk(public_jwk)
        elif kty == "RSA":
            public = RSAAlgorithm.from_jwk(public_jwk)
        elif kty == "OKP" and jwk.get("crv") in ("Ed25519", "Ed448"):
            public = OKPAlgorithm.from_jwk(public_jwk)
        else:
            return None
    except Exception:
        return None
    if not isinstance(public, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey)) and not isinstance(
        public, (Ed25519PublicKey, Ed448PublicKey)
    ):
        return None
    algorithms = _key_algorithms(jwk, public)
    if not algorithms:
        return None
    return VerificationKey.build(kid, algorithms, public)


class KeySet:
    """The usable signing keys of one JWKS, indexed by kid."""

    def __init__(self, keys: Iterable[VerificationKey]) -> None:
        self.keys = tuple(keys)
        by_kid: dict[str, VerificationKey] = {}
        for key in self.keys:
            if key.kid is not None:
                known = by_kid.get(key.kid)
                by_kid[key.kid] = key if known is None else known.merged(key)
        self._by_kid = by_kid

    @classmethod
    def from_jwks(cls, document: bytes | str | Mapping[str, Any]) -> KeySet:
        """Parse a JWKS document; malformed keys are skipped, a malformed document raises."""
        if isinstance(document, (bytes, str)):
            try:
                document = json.loads(document)
            except (ValueError, RecursionError):
                raise JWKSError("JWKS is not valid JSON") from None
        if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
            raise JWKSError("JWKS has no 'keys' list")
        raw = document["keys"]
        if len(raw) > MAX_KEYS:
            raise JWKSError(f"JWKS holds more than {MAX_KEYS} keys")
        keys = [k for k in map(load_jwk, raw) if k is not None]
        if not keys:
            raise JWKSError("JWKS holds no usable signing key")
        return cls(keys)

    def find(self, kid: str | None) -> VerificationKey | None:
        """The key for ``kid``; without a kid, the only key when there is exactly one."""
        if kid is None:
            return self.keys[0] if len(self.keys) == 1 else None
        return self._by_kid.get(kid)

    def __len__(self) -> int:
        return len(self.keys)


def cache_max_age(cache_control: str | None) -> float | None:
    """The lifetime a Cache-Control header grants, or None when it says nothing usable."""
    if not cache_control:
        return None
    lowered = cache_control.lower()
    if "no-store" in lowered or "no-cache" in lowered:
        return 0.0
    ages = {m.group(1).lower(): int(m.group(2)) for m in _CACHE_MAX_AGE.finditer(cache_control)}
    if "s-maxage" in ages:
        return float(ages["s-maxage"])
    if "max-age" in ages:
        return float(ages["max-age"])
    return None


@dataclass(frozen=True)
class CachePolicy:
    """How long keys live and how often the issuer may be asked again. Seconds.

    - ``cooldown``: an unknown kid triggers a refetch at most once per this (a flood of
      random kids costs the issuer one JWKS fetch per ``cooldown``; a rotated-in key is
      found within it).
    - ``refresh_retry``: while usable keys are cached, a failed refresh is retried after this.
    - ``outage_retry`` .. ``outage_retry_max``: with no usable keys every request fails
      anyway, so a failed fetch is retried soon: after ``outage_retry``, doubling on each
      failure, never more than ``outage_retry_max`` apart (counted from the last attempt's
      start, so a hanging issuer is asked again as soon as the attempt gives up).
    """

    default_ttl: float = 600.0
    min_ttl: float = 60.0
    max_ttl: float = 86400.0
    cooldown: float = 5.0
    max_stale: float = 3600.0
    refresh_retry: float = 30.0
    outage_retry: float = 1.0
    outage_retry_max: float = 5.0

    def ttl(self, header_max_age: float | None) -> float:
        if header_max_age is None:
            return self.default_ttl
        return min(max(header_max_age, self.min_ttl), self.max_ttl)

    def outage_backoff(self, failures: int) -> float:
        """The wait after the ``failures``-th failed fetch in a row with no usable keys."""
        first = min(self.outage_retry, self.outage_retry_max)
        # 2.0 ** 1024 overflows; 2.0 ** 1023 is past any real outage_retry_max / outage_retry.
        return min(first * 2.0 ** min(failures - 1, 1023), self.outage_retry_max)


def _found(keys: KeySet, kid: str | None) -> VerificationKey:
    key = keys.find(kid)
    if key is None:
        raise InvalidToken(
            "unknown signing key" if kid is not None else "token has no kid",
            reason=Reason.UNKNOWN_KID,
        )
    return key


class Action(Enum):
    USE = "use"  # the keys in hand answer the question
    FETCH = "fetch"  # ask the issuer now
    UNKNOWN_KID = "unknown_kid"  # keys are usable, the kid is not there, and we may not ask yet
    UNAVAILABLE = "unavailable"  # no usable keys and we may not ask again yet


class KeyCache:
    """The caching state machine for one key source (see ``CachePolicy`` for the numbers).

    - Fresh keys (younger than their TTL) answer directly.
    - An unknown kid triggers a refetch at most once per ``cooldown``, whatever happened
      before (a failed refresh included); routine refreshes do not start that cooldown, so a
      key rotated in right after one is still found.
    - A failed fetch keeps stale keys serving for up to ``max_stale`` past their TTL; the
      routine refresh is retried after ``refresh_retry``. With no usable keys left, retries
      back off from ``outage_retry`` to ``outage_retry_max``.
    """

    def __init__(self, policy: CachePolicy) -> None:
        self.policy = policy
        self.keys: KeySet | None = None
        self.etag: str | None = None
        self.expires_at = 0.0
        self.kid_refetch_at = -float("inf")  # when an unknown kid may next trigger a fetch
        self.retry_at = -float("inf")  # after a failure: when the issuer may be asked again
        self.last_error: str | None = None
        self.failures = 0  # failed fetches in a row
        self.fetches = 0
        self._started_at = 0.0

    def lookup(self, kid: str | None, now: float) -> VerificationKey | None:
        """The key for ``kid``, or None meaning "fetch now"; else the AuthError to answer.

        Raises InvalidToken (usable keys lack the kid and the issuer may not be asked yet) or
        IssuerUnavailable (no usable keys and no fetch allowed yet).
        """
        # The hot path: fresh keys holding the kid answer without the full plan.
        keys = self.keys
        if keys is not None and now < self.expires_at:
            key = keys.find(kid)
            if key is not None:
                return key
        action = self.plan(kid, now)
        if action is Action.FETCH:
            return None
        keys = self.keys
        if action is Action.UNAVAILABLE or keys is None:
            raise IssuerUnavailable(retry_after=self.retry_after(now))
        return _found(keys, kid)

    def after_fetch(self, kid: str | None, now: float, fetched: bool) -> VerificationKey:
        """The answer once a fetch was made and reported (``fetched``: it succeeded).

        Never "fetch again": keys just fetched answer even when their TTL is zero; after a
        failure, keys still usable (fresh or within ``max_stale``) answer, else
        IssuerUnavailable. A kid those keys lack is InvalidToken.
        """
        keys = self.keys
        if keys is not None and (fetched or now < self.expires_at or self.usable_stale(now)):
            return _found(keys, kid)
        raise IssuerUnavailable(retry_after=self.retry_after(now))

    def plan(self, kid: str | None, now: float) -> Action:
        keys = self.keys
        if keys is not None and now < self.expires_at:
            if keys.find(kid) is not None:
                return Action.USE
            return Action.FETCH if now >= self.kid_refetch_at else Action.UNKNOWN_KID
        if now >= self.retry_at:
            return Action.FETCH
        if keys is not None and self.usable_stale(now):
            if keys.find(kid) is not None:
                return Action.USE
            return Action.FETCH if now >= self.kid_refetch_at else Action.UNKNOWN_KID
        # Nothing usable (stale keys may have just run out): the outage pace applies.
        return Action.FETCH if now >= self._outage_retry_at() else Action.UNAVAILABLE

    def _outage_retry_at(self) -> float:
        return self._started_at + self.policy.outage_backoff(max(self.failures, 1))

    def usable_stale(self, now: float) -> bool:
        """Whether cached keys may still answer: fresh, or stale within ``max_stale``."""
        return self.keys is not None and now < self.expires_at + self.policy.max_stale

    def started(self, kid: str | None, now: float, *, routine: bool = False) -> None:
        """A fetch is starting; one for a kid the usable keys lack starts the cooldown.

        A ``routine`` fetch (a warm-up: no token asked for it) never starts the cooldown.
        """
        self.fetches += 1
        self._started_at = now
        if routine:
            return
        if self.keys is not None and self.usable_stale(now) and self.keys.find(kid) is None:
            self.kid_refetch_at = now + self.policy.cooldown

    def succeeded(
        self, keys: KeySet | None, max_age: float | None, etag: str | None, now: float
    ) -> None:
        """Record fresh keys; ``keys`` None means 304 Not Modified (the old keys stay)."""
        if keys is not None:
            self.keys = keys
        self.etag = etag
        self.expires_at = now + self.policy.ttl(max_age)
        self.retry_at = -float("inf")
        self.last_error = None
        self.failures = 0

    def failed(self, reason: str, now: float) -> None:
        """Record a failed fetch; good keys are never wiped by it."""
        self.failures += 1
        self.last_error = reason
        if self.keys is not None and not self.usable_stale(now):
            self.keys = None
            self.etag = None
        if self.keys is not None:
            self.retry_at = now + self.policy.refresh_retry
        else:
            self.retry_at = self._outage_retry_at()

    def retry_after(self, now: float) -> int:
        """Whole seconds until the issuer will be asked again (for ``Retry-After``)."""
        retry_at = self.retry_at
        if not self.usable_stale(now):
            retry_at = min(retry_at, self._outage_retry_at())
        return max(1, int(retry_at - now + 0.999))
