"""DPoP (RFC 9449): sender-constrained access tokens, checked at the resource server.

A DPoP-bound token carries ``cnf.jkt``, the RFC 7638 thumbprint of the client's public key,
and works only with a fresh proof: a JWT the client signs with that key for one request
(``htm``, ``htu``), once (``jti``), recently (``iat``), for this token (``ath``). This module is
the checking, with no I/O; the replay store (``replay.py``) is asked by the server's faces.

``ResourceServer(dpop="allowed")`` accepts both schemes, ``dpop="required"`` only DPoP; with
``dpop_nonce=True`` proofs must carry a nonce the server issued (section 9), stateless: an
HMAC of a time step, so every replica given the same ``dpop_nonce_secret`` accepts every
replica's nonce.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import re
import secrets
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigurationError, InvalidDPoPProof, InvalidToken, Reason, UseDPoPNonce
from .keys import VerificationKey, load_jwk
from .replay import MemoryReplayStore, ReplayStore
from .signing import DPoPKey, b64url, thumbprint
from .token import AccessToken
from .verify import check_signature, segment_bytes, segment_json, split

__all__ = [
    "DEFAULT_DPOP_ALGORITHMS",
    "DPoPKey",
    "DPoPMode",
    "DPoPSettings",
    "NonceSource",
    "Proof",
    "ProofCheck",
    "access_token_hash",
    "check_proof",
    "dpop_settings",
    "normalize_url",
    "thumbprint",
    "verify_proof",
]

DEFAULT_DPOP_ALGORITHMS = ("ES256", "ES384", "EdDSA", "RS256", "PS256")
_ASYMMETRIC = frozenset({*DEFAULT_DPOP_ALGORITHMS, "ES512", "RS384", "RS512", "PS384", "PS512"})
_PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
_MAX_JTI = 256
MAX_PROOF = 8192  # a proof with an RSA-4096 jwk is under 2 KB
MAX_HTU = 2048
_PERCENT = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_DEFAULT_PORTS = {"http": 80, "https": 443}


class DPoPMode(str, Enum):
    """Which schemes a server accepts: ``off`` (Bearer only, the default), ``allowed`` (both)
    or ``required`` (DPoP only)."""

    OFF = "off"
    ALLOWED = "allowed"
    REQUIRED = "required"

    def __str__(self) -> str:
        return self.value


def access_token_hash(token: str) -> str:
    """``ath``: base64url(SHA-256(the ASCII access token))."""
    return b64url(hashlib.sha256(token.encode("ascii")).digest())


def _normal_percent(match: re.Match[str]) -> str:
    char = chr(int(match.group(1), 16))
    return char if char in _UNRESERVED else "%" + match.group(1).upper()


def _alg_names(algorithms: frozenset[str]) -> str:
    """The algorithms, space-separated: the defaults in their order, then any others sorted."""
    named = [a for a in DEFAULT_DPOP_ALGORITHMS if a in algorithms]
    return " ".join(named + sorted(algorithms - set(named)))


def _remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4."""
    out: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if len(out) > 1:
                out.pop()
        elif segment != ".":
            out.append(segment)
    result = "/".join(out)
    if path.endswith(("/.", "/..")):
        result += "/"
    return result if result.startswith("/") else "/" + result


@functools.lru_cache(maxsize=1024)
def normalize_url(url: str) -> str:
    """A URL without query and fragment, normalized as RFC 3986 sections 6.2.2 and 6.2.3 say:
    scheme and host lowercased, percent-encodings uppercased (unreserved ones decoded), dot
    segments removed, the default port dropped, an empty path made "/". ValueError when it
    is no absolute http(s) URL."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError("not an absolute http(s) URL")
    if parts.username is not None or parts.password is not None:
        raise ValueError("a URL with userinfo")
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    port = parts.port  # ValueError for a port that is no number or out of range
    netloc = host if port is None or port == _DEFAULT_PORTS[scheme] else f"{host}:{port}"
    path = _remove_dot_segments(_PERCENT.sub(_normal_percent, parts.path or "/"))
    return f"{scheme}://{netloc}{path}"


class NonceSource:
    """Stateless server nonces: ``<step><HMAC(secret, step)>`` for time steps of ``lifetime``
    seconds. A nonce is accepted during its own step and the next; a request whose nonce is
    in its last step is sent a fresh one."""

    def __init__(self, secret: bytes | str | None = None, *, lifetime: float = 300.0) -> None:
        if secret is None:
            secret = secrets.token_bytes(32)  # this process's own: replicas need a shared one
        self._secret = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
        if len(self._secret) < 16:
            raise ConfigurationError("dpop_nonce_secret must be at least 16 bytes")
        if not lifetime >= 10:
            raise ConfigurationError("the nonce lifetime must be at least 10 seconds")
        self.lifetime = float(lifetime)

    def _mac(self, step: int) -> bytes:
        return hmac.new(self._secret, struct.pack(">Q", step), hashlib.sha256).digest()[:16]

    def current(self, now: float) -> str:
        step = int(now // self.lifetime)
        return b64url(struct.pack(">Q", step) + self._mac(step))

    def check(self, nonce: Any, now: float) -> bool | None:
        """None: not a nonce of ours, or expired; True: valid and current; False: valid but
        in its last step (send a fresh one)."""
        if not isinstance(nonce, str) or len(nonce) != 32 or not nonce.isascii():
            return None
        try:
            raw = base64.urlsafe_b64decode(nonce + "==")
        except ValueError:
            return None
        if len(raw) != 24:
            return None
        step: int = struct.unpack(">Q", raw[:8])[0]
        current = int(now // self.lifetime)
        if step not in (current, current - 1) or not hmac.compare_digest(raw[8:], self._mac(step)):
            return None
        return step == current


@dataclass(frozen=True)
class DPoPSettings:
    """A server's DPoP configuration (see ``ResourceServer``'s ``dpop*`` arguments)."""

    mode: DPoPMode
    algorithms: frozenset[str]
    max_age: float
    max_future: float
    nonces: NonceSource | None
    replay: ReplayStore
    origins: frozenset[str] = frozenset()  # htu's origin must be one: not the Host header

    @classmethod
    def build(
        cls,
        mode: str | DPoPMode,
        algorithms: Iterable[str],
        max_age: float,
        max_future: float,
        nonce: bool,
        nonce_secret: bytes | str | None,
        replay: ReplayStore | None,
        origins: Iterable[str] = (),
    ) -> DPoPSettings:
        try:
            mode = DPoPMode(mode)
        except ValueError:
            raise ConfigurationError("dpop must be 'off', 'allowed' or 'required'") from None
        algs = frozenset([algorithms] if isinstance(algorithms, str) else algorithms)
        if not algs or algs - _ASYMMETRIC:
            raise ConfigurationError(
                f"dpop_algorithms takes asymmetric JWS algorithms: {sorted(_ASYMMETRIC)}"
            )
        if not 0 < max_age <= 3600 or not 0 <= max_future <= 300:
            raise ConfigurationError(
                "need 0 < dpop_max_age <= 3600 and 0 <= dpop_max_future <= 300"
            )
        if replay is not None and not isinstance(replay, ReplayStore):
            raise ConfigurationError("dpop_replay_store must have add() and add_async()")
        allowed = set()
        for origin in [origins] if isinstance(origins, str) else origins:
            try:
                normal = normalize_url(origin)
            except ValueError:
                raise ConfigurationError(
                    f"dpop_origins takes http(s) origins: {origin!r}"
                ) from None
            if normal.count("/") != 3 or not normal.endswith("/"):
                raise ConfigurationError(f"dpop_origins takes origins, without a path: {origin!r}")
            allowed.add(normal[:-1])
        return cls(
            mode,
            algs,
            float(max_age),
            float(max_future),
            NonceSource(nonce_secret) if nonce else None,
            replay if replay is not None else MemoryReplayStore(),
            frozenset(allowed),
        )

    @property
    def schemes(self) -> tuple[str, ...]:
        if self.mode is DPoPMode.REQUIRED:
            return ("DPoP",)
        if self.mode is DPoPMode.ALLOWED:
            return ("DPoP", "Bearer")
        return ("Bearer",)

    @property
    def algs(self) -> str:
        return _alg_names(self.algorithms)


@dataclass(frozen=True)
class ProofCheck:
    """A proof that passed every check but the replay store: the key to add, for how long,
    and a fresh nonce to send back (or None)."""

    replay_key: str
    ttl: float
    fresh_nonce: str | None


def _refuse(description: str, reason: Reason = Reason.INVALID_DPOP_PROOF) -> InvalidDPoPProof:
    return InvalidDPoPProof(description, reason=reason)


@dataclass(frozen=True)
class Proof:
    """A proof whose signature, members, method, URL and time checked out."""

    claims: dict[str, Any]
    jkt: str  # the RFC 7638 thumbprint of its key
    htu: str  # normalized

    def replay_key(self) -> str:
        """What makes it one proof: its key's jti, for this method and URL (hashed); one
        client cannot use up another's jti."""
        material = f"{self.jkt}\x00{self.claims['jti']}\x00{self.claims['htm']}\x00{self.htu}"
        return hashlib.sha256(material.encode("ascii")).hexdigest()

    def lifetime(self, now: float, max_age: float) -> float:
        """How long it must be remembered: until it is too old to be accepted, plus 1 s."""
        return max(1.0, float(self.claims["iat"]) + max_age - now) + 1.0


# A client signs every proof with one key, so its proofs share a header segment: decoded,
# checked and turned into a key once (bounded; starts over when full).
_headers: dict[str, tuple[str, VerificationKey, str]] = {}


def _header(header: dict[str, Any]) -> tuple[str, VerificationKey, str]:
    """(alg, key, jkt) from a proof's JOSE header; InvalidDPoPProof if it is not one."""
    if header.get("typ") != "dpop+jwt":
        raise _refuse('the DPoP proof\'s typ must be "dpop+jwt"')
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in _ASYMMETRIC:
        raise _refuse(f"the DPoP proof's alg must be one of: {' '.join(DEFAULT_DPOP_ALGORITHMS)}")
    jwk = header.get("jwk")
    if not isinstance(jwk, dict):
        raise _refuse("the DPoP proof has no jwk header")
    if any(member in jwk for member in _PRIVATE_MEMBERS):
        raise _refuse("the DPoP proof's jwk must be a public key")
    key = load_jwk({k: v for k, v in jwk.items() if k not in ("use", "key_ops")})
    if key is None:
        raise _refuse("the DPoP proof's jwk is not a usable public key")
    try:
        jkt = thumbprint(jwk)
    except ValueError:
        raise _refuse("the DPoP proof's jwk has no thumbprint") from None
    return alg, key, jkt


def verify_proof(
    proofs: Sequence[str],
    *,
    method: str,
    url: str,
    algorithms: frozenset[str],
    max_age: float,
    max_future: float,
    now: float,
    max_length: int = 8192,
    origins: frozenset[str] = frozenset(),
) -> Proof:
    """The checks of RFC 9449 section 4.3 that need no access token: for resource servers
    (``check_proof`` adds ath, the key binding and the nonce) and for a token endpoint.

    With ``origins`` (normalized ``scheme://host[:port]``), htu's origin must be one of them
    and only the path is compared with ``url``: the Host a request carries is the client's
    to choose, the API's own names are not."""
    if len(proofs) != 1:
        raise _refuse("exactly one DPoP header is required")
    proof = proofs[0].strip()
    if not proof or len(proof) > min(max_length, MAX_PROOF) or "," in proof:
        raise _refuse("the DPoP header must hold one JWT")
    try:
        h, p, s = split(proof)
        claims = segment_json(p, "payload")
        signature = segment_bytes(s)
        known = _headers.get(h)
        if known is None:
            known = _header(segment_json(h, "header"))
            if len(_headers) >= 512:
                _headers.clear()
            _headers[h] = known
    except InvalidToken:
        raise _refuse("the DPoP proof is not a well-formed JWT") from None
    alg, key, jkt = known
    if alg not in algorithms:
        shown = _alg_names(algorithms) or "none"
        raise _refuse(f"the DPoP proof's alg must be one of: {shown}")
    try:
        check_signature(signature, f"{h}.{p}".encode(), alg, key)
    except InvalidToken:
        raise _refuse("the DPoP proof's signature does not verify with its jwk") from None
    for name in ("jti", "htm", "htu"):
        if not isinstance(claims.get(name), str) or not claims[name]:
            raise _refuse(f"the DPoP proof needs {name}")
        if not claims[name].isascii():  # a URI, a method, an identifier: never anything else
            raise _refuse(f"the DPoP proof's {name} must be ASCII")
    if len(claims["jti"]) > _MAX_JTI:
        raise _refuse("the DPoP proof's jti is too long")
    if len(claims["htu"]) > MAX_HTU:
        raise _refuse("the DPoP proof's htu is too long")
    iat = claims.get("iat")
    if type(iat) not in (int, float) or iat != iat:
        raise _refuse("the DPoP proof needs iat (a number)")
    assert isinstance(iat, (int, float))
    if claims["htm"] != method.upper():
        raise _refuse("the DPoP proof is for another method (htm)")
    try:
        htu = normalize_url(claims["htu"])
        expected = normalize_url(url)
    except ValueError:
        raise _refuse("the DPoP proof's htu is not an http(s) URL") from None
    if origins:
        origin = htu[: htu.index("/", htu.index("//") + 2)]
        if origin not in origins:
            raise _refuse("the DPoP proof is for another URL (htu)")
        expected = origin + expected[expected.index("/", expected.index("//") + 2) :]
    if htu != expected:
        raise _refuse("the DPoP proof is for another URL (htu)")
    if iat < now - max_age:
        raise _refuse("the DPoP proof is too old (iat)")
    if iat > now + max_future:
        raise _refuse("the DPoP proof is from the future (iat)")
    return Proof(claims, jkt, htu)


def check_proof(
    proofs: Sequence[str],
    *,
    method: str,
    url: str,
    raw_token: str,
    token: AccessToken,
    settings: DPoPSettings,
    now: float,
    max_length: int = 8192,
) -> ProofCheck:
    """Every check of RFC 9449 section 4.3 for a request with ``Authorization: DPoP
    <raw_token>`` (``token``, verified) and these ``DPoP`` header values."""
    proof = verify_proof(
        proofs,
        method=method,
        url=url,
        algorithms=settings.algorithms,
        max_age=settings.max_age,
        max_future=settings.max_future,
        now=now,
        max_length=max_length,
        origins=settings.origins,
    )
    claims, jkt = proof.claims, proof.jkt
    ath = claims.get("ath")
    if (
        not isinstance(ath, str)
        or not ath.isascii()
        or not hmac.compare_digest(ath, access_token_hash(raw_token))
    ):
        raise _refuse("the DPoP proof is for another access token (ath)")
    if not token.jkt or not hmac.compare_digest(token.jkt, jkt):
        raise InvalidToken(
            "the access token is bound to another key (cnf.jkt)", reason=Reason.DPOP_BINDING
        )
    fresh = None
    if settings.nonces is not None:
        state = settings.nonces.check(claims.get("nonce"), now)
        if state is None:
            raise UseDPoPNonce(settings.nonces.current(now))
        if state is False:
            fresh = settings.nonces.current(now)
    return ProofCheck(proof.replay_key(), proof.lifetime(now, settings.max_age), fresh)


def dpop_settings(environ: Mapping[str, str], prefix: str = "AUTH_") -> dict[str, Any]:
    """``ResourceServer`` DPoP arguments from the environment, as the examples read them:
    ``AUTH_DPOP`` (``off``, ``allowed``, ``required``), ``AUTH_DPOP_NONCE`` (``on``/``off``),
    ``AUTH_DPOP_NONCE_SECRET`` (shared by replicas; unset: a random one per process) and
    ``AUTH_REPLAY_STORE`` (``memory``, or ``redis://host:port/db``). Empty with DPoP off."""
    from .replay import replay_store_from_url

    mode = environ.get(prefix + "DPOP", "off").strip().lower() or "off"
    if mode == "off":
        return {}
    nonce = environ.get(prefix + "DPOP_NONCE", "off").strip().lower()
    if nonce not in ("on", "off"):
        raise ConfigurationError(f"{prefix}DPOP_NONCE must be 'on' or 'off', not {nonce!r}")
    settings: dict[str, Any] = {"dpop": mode, "dpop_nonce": nonce == "on"}
    secret = environ.get(prefix + "DPOP_NONCE_SECRET")
    if nonce == "on" and secret:
        settings["dpop_nonce_secret"] = secret
    store = environ.get(prefix + "REPLAY_STORE", "memory").strip()
    settings["dpop_replay_store"] = replay_store_from_url(store)
    return settings
