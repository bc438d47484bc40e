"""The AuthError family: each error knows its HTTP status, RFC 6750 code and challenge."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from enum import Enum
from typing import Any, ClassVar

__all__ = [
    "AuthError",
    "ConfigurationError",
    "InsufficientScope",
    "InvalidDPoPProof",
    "InvalidRequest",
    "InvalidToken",
    "IssuerUnavailable",
    "MissingToken",
    "Reason",
    "ReplayStoreUnavailable",
    "UseDPoPNonce",
]


# Characters allowed inside error_description and scope values (RFC 6750 section 3).
_UNSAFE = re.compile(r"[^\x20\x21\x23-\x5b\x5d-\x7e]")


def _quote(value: str) -> str:
    """A quoted-string with every character outside RFC 6750's safe set replaced by ``?``."""
    return '"' + _UNSAFE.sub("?", value) + '"'


def render_challenge(scheme: str, params: Mapping[str, str]) -> str:
    """``Bearer realm="api", error="invalid_token", ...`` (RFC 9110 section 11.6.1)."""
    if not params:
        return scheme
    return scheme + " " + ", ".join(f"{name}={_quote(value)}" for name, value in params.items())


class Reason(str, Enum):
    """Why a request was refused: one stable, machine-readable word for logs and metrics.

    The README's table lists each with its status and RFC 6750 ``error``; responses keep
    their ``error`` and ``error_description`` and do not show it.
    """

    MISSING_TOKEN = "missing_token"  # noqa: S105 (a reason, no secret): no header, or another scheme
    MALFORMED_HEADER = "malformed_header"  # not "Bearer <token68>", or several headers
    MALFORMED_REQUEST = "malformed_request"  # a path with control characters
    TOKEN_TOO_LARGE = "token_too_large"  # noqa: S105
    MALFORMED_TOKEN = "malformed_token"  # noqa: S105 (not a JWT we can read, bad claim types)
    UNSUPPORTED_ALG = "unsupported_alg"  # alg not allowed
    WRONG_TYP = "wrong_typ"
    UNKNOWN_KID = "unknown_kid"  # no published key for this kid (and algorithm)
    BAD_SIGNATURE = "bad_signature"
    ISSUER_MISMATCH = "issuer_mismatch"
    AUDIENCE_MISMATCH = "audience_mismatch"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"  # nbf or iat in the future
    MISSING_CLAIM = "missing_claim"
    CLAIM_RULE = "claim_rule"  # a claim rule failed: the server's (401) or the route's (403)
    INSUFFICIENT_SCOPE = "insufficient_scope"
    ISSUER_UNAVAILABLE = "issuer_unavailable"
    # RFC 9449 (DPoP)
    INVALID_DPOP_PROOF = "invalid_dpop_proof"  # the proof fails a check of section 4.3
    DPOP_REPLAY = "dpop_replay"  # a proof (its jti) seen before
    USE_DPOP_NONCE = "use_dpop_nonce"  # no nonce, or a stale one, where nonces are on
    DPOP_BINDING = "dpop_binding"  # token and scheme disagree, or the proof's key is not cnf.jkt
    REPLAY_STORE_UNAVAILABLE = "replay_store_unavailable"  # Redis unreachable: fail closed

    def __str__(self) -> str:
        return self.value


class ConfigurationError(ValueError):
    """The library was configured in a way that cannot be safely used."""


class AuthError(Exception):
    """A request was not authenticated or not authorised.

    Every subclass renders itself: ``status_code``, ``www_authenticate``, ``headers``
    and ``to_json()`` are all an adapter needs.
    """

    status_code: ClassVar[int] = 401
    error: ClassVar[str | None] = None
    default_description: ClassVar[str] = "authentication failed"
    default_reason: ClassVar[Reason] = Reason.MALFORMED_TOKEN

    def __init__(
        self,
        description: str | None = None,
        *,
        realm: str | None = None,
        reason: Reason | None = None,
    ) -> None:
        self.description = description or self.default_description
        self.realm = realm
        self.reason = reason or self.default_reason
        # RFC 9728 section 5.1: where a client finds this resource's metadata (401 and 403).
        self.resource_metadata: str | None = None
        # The route's scopes, all in one challenge (401 and 403), so a client can ask for a
        # token that will do at once (the MCP authorization spec asks for exactly this).
        self.scope: tuple[str, ...] = ()
        # The schemes this API accepts, each challenged (RFC 9449 section 7.1); the error's
        # own parameters go on ``scheme``'s challenge, the one the request used.
        self.schemes: tuple[str, ...] = ("Bearer",)
        self.scheme = "Bearer"
        self.dpop_algs: str | None = None
        self.extra_headers: dict[str, str] = {}
        super().__init__(self.description)

    def challenge_params(self) -> dict[str, str]:
        """The auth-params of the ``WWW-Authenticate`` challenge, realm first."""
        params: dict[str, str] = {}
        if self.realm is not None:
            params["realm"] = self.realm
        if self.error is not None:
            params["error"] = self.error
            params["error_description"] = self.description
        return params

    def _with_metadata(self, params: dict[str, str]) -> dict[str, str]:
        if self.status_code in (401, 403):
            if self.scope and "scope" not in params:
                params["scope"] = " ".join(self.scope)
            if self.resource_metadata is not None:
                params["resource_metadata"] = self.resource_metadata
        return params

    @property
    def www_authenticate(self) -> str:
        """The ``WWW-Authenticate`` header value (RFC 6750 section 3, RFC 9728 section 5.1;
        with DPoP, RFC 9449 section 7.1: one challenge per accepted scheme)."""
        own = self._with_metadata(self.challenge_params())
        if self.schemes == ("Bearer",) and self.scheme == "Bearer":
            return render_challenge("Bearer", own)
        challenges = []
        for scheme in sorted(self.schemes, key=lambda s: s != self.scheme):  # the error's first
            if scheme == self.scheme:
                params = dict(own)
            else:
                params = {"realm": self.realm} if self.realm is not None else {}
                params = self._with_metadata(params)
            if scheme == "DPoP" and self.dpop_algs:
                params["algs"] = self.dpop_algs
            challenges.append(render_challenge(scheme, params))
        return ", ".join(challenges)

    @property
    def headers(self) -> dict[str, str]:
        """Every response header this error needs."""
        return {"WWW-Authenticate": self.www_authenticate, **self.extra_headers}

    def response_headers(self) -> dict[str, str]:
        """All headers of the error response: ``headers`` plus content type and no-store."""
        return {
            "Content-Type": "application/json",
            "Cache-Control": "no-store",
            **self.headers,
        }

    @property
    def json_error(self) -> str:
        return self.error or "invalid_token"

    def to_dict(self) -> dict[str, Any]:
        return {"error": self.json_error, "error_description": self.description}

    def to_json(self) -> str:
        """The response body: ``{"error": ..., "error_description": ...}``."""
        return json.dumps(self.to_dict())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.description!r})"


class MissingToken(AuthError):
    """No bearer credentials at all: 401 with a bare challenge (RFC 6750 section 3.1)."""

    status_code = 401
    error = None
    default_description = "bearer token required"
    default_reason = Reason.MISSING_TOKEN

    @property
    def json_error(self) -> str:
        return "invalid_request"


class InvalidRequest(AuthError):
    """A malformed Authorization header: 400 invalid_request."""

    status_code = 400
    error = "invalid_request"
    default_description = "malformed authorization header"
    default_reason = Reason.MALFORMED_HEADER


class InvalidToken(AuthError):
    """The token is expired, forged, malformed or not meant for this API: 401 invalid_token."""

    status_code = 401
    error = "invalid_token"
    default_description = "invalid token"


class InsufficientScope(AuthError):
    """A valid token lacks the scopes (or fails a claim rule) the route requires: 403
    insufficient_scope, with ``scope="..."`` naming the scopes when there are any."""

    status_code = 403
    error = "insufficient_scope"
    default_description = "insufficient scope"
    default_reason = Reason.INSUFFICIENT_SCOPE

    def __init__(
        self,
        required: tuple[str, ...] | list[str] = (),
        description: str | None = None,
        *,
        any_of: bool = False,
        realm: str | None = None,
        reason: Reason | None = None,
    ) -> None:
        self.required = tuple(required)
        self.any_of = any_of
        if description is None:
            kind = "one of the scopes" if any_of else "the scopes"
            description = f"token lacks {kind}: {' '.join(self.required)}"
        super().__init__(description, realm=realm, reason=reason)
        self.scope = self.required  # a failed claim rule names no scope to ask for

    def challenge_params(self) -> dict[str, str]:
        params = super().challenge_params()
        if self.scope:
            params["scope"] = " ".join(self.scope)
        return params

    def to_dict(self) -> dict[str, Any]:
        body = super().to_dict()
        if self.scope:
            body["scope"] = " ".join(self.scope)
        return body


class IssuerUnavailable(AuthError):
    """No usable signing keys: the issuer cannot be reached and nothing is cached. 503."""

    status_code = 503
    error = None
    default_description = "the token issuer is unavailable; try again later"
    default_reason = Reason.ISSUER_UNAVAILABLE

    def __init__(
        self, description: str | None = None, *, retry_after: int = 30, realm: str | None = None
    ) -> None:
        super().__init__(description, realm=realm)
        self.retry_after = max(1, int(retry_after))

    @property
    def headers(self) -> dict[str, str]:
        return {**super().headers, "Retry-After": str(self.retry_after)}

    @property
    def json_error(self) -> str:
        return "temporarily_unavailable"


class InvalidDPoPProof(AuthError):
    """The DPoP proof fails a check of RFC 9449 section 4.3, or was used before: 401
    ``invalid_dpop_proof`` on the DPoP challenge (never 400, section 7.1)."""

    status_code = 401
    error = "invalid_dpop_proof"
    default_description = "invalid DPoP proof"
    default_reason = Reason.INVALID_DPOP_PROOF

    def __init__(self, description: str | None = None, *, reason: Reason | None = None) -> None:
        super().__init__(description, reason=reason)
        self.scheme = "DPoP"


class UseDPoPNonce(AuthError):
    """The proof lacks the server's current nonce (RFC 9449 section 9): 401
    ``use_dpop_nonce`` with the nonce to use in ``DPoP-Nonce``."""

    status_code = 401
    error = "use_dpop_nonce"
    default_description = "the DPoP proof must carry the server's nonce"
    default_reason = Reason.USE_DPOP_NONCE

    def __init__(self, nonce: str, description: str | None = None) -> None:
        super().__init__(description)
        self.scheme = "DPoP"
        self.extra_headers["DPoP-Nonce"] = nonce


class ReplayStoreUnavailable(IssuerUnavailable):
    """The DPoP replay store (Redis) cannot be asked: 503, failing closed (a proof is
    never accepted unchecked)."""

    default_description = "the DPoP replay store is unavailable; try again later"
    default_reason = Reason.REPLAY_STORE_UNAVAILABLE

    def __init__(self, description: str | None = None, *, retry_after: int = 5) -> None:
        super().__init__(description, retry_after=retry_after)
        self.reason = Reason.REPLAY_STORE_UNAVAILABLE
