"""A local token issuer for tests: real keys, real tokens, no external service.

Registered as a pytest plugin (``pytest11``): the ``local_issuer`` fixture gives each test a
fresh ``LocalIssuer``. Point a ``ResourceServer`` at it with no network
(``issuer.resource_server(...)``, an httpx transport) or over a real loopback port
(``with issuer.serve() as url: ...``).
"""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt

from .server import ResourceServer
from .signing import SigningKey, b64url, generate_key, public_jwk, thumbprint

__all__ = [
    "LocalIssuer",
    "SigningKey",
    "generate_key",
    "local_issuer",
    "public_jwk",
    "thumbprint",
]


class LocalIssuer:
    """An in-memory OAuth 2.0 issuer that mints RFC 9068 access tokens the way Logto does."""

    def __init__(
        self,
        issuer: str = "https://issuer.test/oidc",
        *,
        audience: str = "https://api.test",
        alg: str = "ES384",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.clock = clock
        self.keys: list[SigningKey] = [SigningKey.generate(alg)]
        self.requests: list[str] = []  # paths fetched through transport() or serve()
        self._lock = threading.Lock()

    @property
    def current_key(self) -> SigningKey:
        return self.keys[-1]

    def rotate(self, alg: str | None = None, *, keep_previous: bool = True) -> SigningKey:
        """Add a new current key; the previous one stays published unless told otherwise."""
        key = SigningKey.generate(alg or self.current_key.alg)
        self.keys = [*self.keys[-1:], key] if keep_previous else [key]
        return key

    # -- documents ------------------------------------------------------------------------------

    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.jwk for k in self.keys]}

    def metadata(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "jwks_uri": self.issuer + "/jwks",
            "token_endpoint": self.issuer + "/token",
            "grant_types_supported": ["client_credentials"],
            "id_token_signing_alg_values_supported": sorted({k.alg for k in self.keys}),
        }

    # -- tokens ---------------------------------------------------------------------------------

    def claims(
        self,
        *,
        scopes: str | Sequence[str] | None = None,
        audience: str | Sequence[str] | None = None,
        client_id: str = "test-client",
        sub: str | None = None,
        expires_in: float = 3600,
        **extra: Any,
    ) -> dict[str, Any]:
        """The claims Logto puts in a client-credentials token; ``extra`` adds or overrides."""
        now = int(self.clock())
        claims: dict[str, Any] = {
            "jti": uuid.uuid4().hex,
            "sub": sub or client_id,
            "iat": now,
            "exp": now + int(expires_in),
            "client_id": client_id,
            "iss": self.issuer,
            "aud": audience if isinstance(audience, str) else list(audience or [self.audience]),
        }
        if isinstance(claims["aud"], list) and len(claims["aud"]) == 1:
            claims["aud"] = claims["aud"][0]
        if scopes:
            claims["scope"] = scopes if isinstance(scopes, str) else " ".join(scopes)
        claims.update(extra)
        return {k: v for k, v in claims.items() if v is not None}

    def mint(
        self,
        scopes: str | Sequence[str] | None = None,
        *,
        key: SigningKey | None = None,
        header: Mapping[str, Any] | None = None,
        claims: Mapping[str, Any] | None = None,
        **claim_args: Any,
    ) -> str:
        """A signed access token. ``header`` and ``claims`` override what is generated."""
        key = key or self.current_key
        payload = self.claims(scopes=scopes, **claim_args)
        payload.update(claims or {})
        headers = {"typ": "at+jwt", "kid": key.kid, **(header or {})}
        alg = headers.pop("alg", key.alg)
        return jwt.encode(payload, key.private_key, algorithm=alg, headers=headers)

    def expired(self, scopes: str | Sequence[str] | None = None, **claim_args: Any) -> str:
        """A token that expired an hour ago."""
        now = int(self.clock())
        return self.mint(scopes, claims={"iat": now - 7200, "exp": now - 3600}, **claim_args)

    @staticmethod
    def tampered(token: str) -> str:
        """``token`` with one payload claim changed and the signature kept: must fail."""
        header, payload, signature = token.split(".")
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        claims["scope"] = "admin " + str(claims.get("scope", ""))
        return f"{header}.{b64url(json.dumps(claims).encode())}.{signature}"

    # -- serving --------------------------------------------------------------------------------

    def _answer(self, path: str) -> tuple[int, dict[str, Any] | None]:
        with self._lock:
            self.requests.append(path)
        base = httpx.URL(self.issuer).path.rstrip("/")
        if path in (
            base + "/.well-known/openid-configuration",
            base + "/.well-known/oauth-authorization-server",
        ):
            return 200, self.metadata()
        if path == base + "/jwks":
            return 200, self.jwks()
        return 404, None

    def transport(self) -> httpx.MockTransport:
        """An httpx transport (sync and async) serving discovery and the JWKS in memory."""

        def handler(request: httpx.Request) -> httpx.Response:
            status, body = self._answer(request.url.path)
            return httpx.Response(status, json=body if body is not None else {"error": "not found"})

        return httpx.MockTransport(handler)

    def resource_server(
        self, audience: str | Sequence[str] | None = None, **kwargs: Any
    ) -> ResourceServer:
        """A ResourceServer trusting this issuer, fetching keys through ``transport()``."""
        kwargs.setdefault("transport", self.transport())
        kwargs.setdefault("require_typ", True)
        kwargs.setdefault("clock", self.clock)
        return ResourceServer(self.issuer, audience or self.audience, **kwargs)

    @contextlib.contextmanager
    def serve(self, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
        """Serve discovery and the JWKS over real HTTP; yields the issuer URL.

        While serving, ``self.issuer`` is ``http://host:port/<path of the configured issuer>``.
        """
        path = httpx.URL(self.issuer).path.rstrip("/")
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, body = owner._answer(self.path)
                data = json.dumps(body if body is not None else {"error": "not found"}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer((host, port), Handler)
        server.daemon_threads = True
        # A short poll interval: shutdown() waits for it, and the default 0.5 s slows every test.
        thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        original = self.issuer
        self.issuer = f"http://{host}:{server.server_address[1]}{path}"
        try:
            yield self.issuer
        finally:
            self.issuer = original
            server.shutdown()
            server.server_close()
            thread.join(5)


try:  # the fixture exists where pytest is installed; the classes work without it
    import pytest
except ImportError:  # pragma: no cover
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    @pytest.fixture
    def local_issuer() -> LocalIssuer:
        """A fresh LocalIssuer (ES384, issuer https://issuer.test/oidc, audience https://api.test)."""
        return LocalIssuer()
