"""DevIssuer: a Logto-shaped OAuth 2.0 issuer for development, served as a Starlette app.

Endpoints under the issuer's path (``/oidc`` by default): discovery (OIDC and RFC 8414),
``/jwks`` and ``/token`` (client_credentials only). For development only: it refuses to
listen on anything but loopback unless told otherwise.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
import jwt
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from ..dpop import DEFAULT_DPOP_ALGORITHMS, verify_proof
from ..errors import ConfigurationError, InvalidDPoPProof, render_challenge
from ..fetch import is_loopback
from ..replay import MemoryReplayStore
from ..signing import SigningKey
from .config import IssuerConfig, load_config
from .grant import Grant, OAuthError, grant, token_request
from .keystore import KeyStore

if TYPE_CHECKING:
    import uvicorn

__all__ = ["DEFAULT_ISSUER", "DevIssuer", "bind", "create_app", "issuer_url"]

DEFAULT_ISSUER = "http://127.0.0.1:3001/oidc"
MAX_BODY = 64 * 1024
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
JWKS_CACHE_CONTROL = "no-cache, max-age=0, must-revalidate"  # what Logto sends
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def issuer_url(host: str, port: int, path: str = "/oidc") -> str:
    """``http://host:port/oidc``, with IPv6 hosts in brackets."""
    host = host.strip("[]")
    return f"http://{f'[{host}]' if ':' in host else host}:{port}{path}"


def bind(host: str, port: int, *, insecure_public: bool = False) -> socket.socket:
    """A listening socket; only loopback addresses unless ``insecure_public``."""
    host = host.strip("[]")
    if not insecure_public and not is_loopback(host):
        raise ConfigurationError(
            f"refusing to listen on {host!r}: the dev issuer is for development only and "
            "listens on loopback (127.0.0.1, ::1, localhost); --insecure-public overrides this"
        )
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family)


def _loopback_origin(origin: str) -> bool:
    parts = urlsplit(origin)
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return False
    return (
        parts.scheme in ("http", "https")
        and not (parts.path or parts.query or parts.fragment or parts.username)
        and is_loopback(parts.hostname)
    )


async def _read_body(request: Request) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY:
        raise OAuthError("invalid_request", f"request body larger than {MAX_BODY} bytes", 413)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise OAuthError("invalid_request", f"request body larger than {MAX_BODY} bytes", 413)
    return bytes(body)


class DevIssuer:
    """A development OAuth 2.0 issuer minting RFC 9068 access tokens the way Logto does.

    ``config`` defaults to the built-in config (= examples/issuer.toml), ``keys`` to fresh
    in-memory keys. Without an explicit ``issuer``, ``serve()`` adopts the address it binds.
    The instance is an ASGI app.
    """

    def __init__(
        self,
        config: IssuerConfig | None = None,
        *,
        issuer: str | None = None,
        keys: KeyStore | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config if config is not None else load_config()
        self._fixed_issuer = issuer is not None
        self.issuer = (issuer or DEFAULT_ISSUER).rstrip("/")
        parts = urlsplit(self.issuer)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
            raise ConfigurationError(f"issuer must be an http(s) URL: {self.issuer!r}")
        self.keys = keys if keys is not None else KeyStore()
        self.clock = clock
        self._proofs = MemoryReplayStore(clock=clock)  # DPoP proofs seen at the token endpoint
        self.app = self._routes(parts.path)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)

    @property
    def token_endpoint(self) -> str:
        return self.issuer + "/token"

    @property
    def jwks_uri(self) -> str:
        return self.issuer + "/jwks"

    def metadata(self) -> dict[str, Any]:
        """The discovery document (RFC 8414 / OIDC Discovery)."""
        return {
            "issuer": self.issuer,
            # RFC 8414 requires it, and OAuth clients (the MCP SDK's among them) refuse
            # metadata without it; it answers that only client credentials are served here.
            "authorization_endpoint": self.issuer + "/auth",
            "jwks_uri": self.jwks_uri,
            "token_endpoint": self.token_endpoint,
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "scopes_supported": sorted({s for r in self.config.resources for s in r.scopes}),
            "response_types_supported": [],
            "dpop_signing_alg_values_supported": list(DEFAULT_DPOP_ALGORITHMS),
        }

    def issue(
        self, client_id: str, resource: str | None = None, scope: str | Sequence[str] = ()
    ) -> dict[str, Any]:
        """The token response the endpoint would give ``client_id`` (no secret needed)."""
        app = self.config.app(client_id)
        if app is None:
            raise OAuthError("invalid_client", f"unknown app {client_id!r}", 401)
        form = {"scope": scope if isinstance(scope, str) else " ".join(scope)}
        if resource is not None:
            form["resource"] = resource
        return self._mint(grant(self.config, app, form))

    def rotate_key(self, alg: str | None = None) -> SigningKey:
        """A new current signing key; the previous ones stay in the JWKS."""
        return self.keys.rotate(alg)

    def transport(self) -> httpx.ASGITransport:
        """An httpx transport (AsyncClient only) reaching this issuer in-process."""
        return httpx.ASGITransport(app=self)

    @contextlib.contextmanager
    def serve(
        self, host: str = "127.0.0.1", port: int = 0, *, insecure_public: bool = False
    ) -> Iterator[str]:
        """Serve over real HTTP from a background thread; yields the issuer URL, then stops."""
        server = self._server("warning")
        sock = bind(host, port, insecure_public=insecure_public)
        original = self.issuer
        if not self._fixed_issuer:
            self.issuer = issuer_url(host, sock.getsockname()[1], urlsplit(original).path)
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="bearerguard-dev-issuer"
        )
        thread.daemon = True
        try:
            thread.start()
            deadline = time.monotonic() + 10
            while not server.started:
                if not thread.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError("the dev issuer did not start")
                time.sleep(0.005)
            yield self.issuer
        finally:
            server.should_exit = True
            thread.join(10)
            sock.close()
            self.issuer = original

    def run(self, sock: socket.socket, *, log_level: str = "info") -> bool:
        """Serve on ``sock`` in the foreground until interrupted; False if it failed to start."""
        server = self._server(log_level, log_config=True)
        server.run(sockets=[sock])
        return bool(server.started)

    # -- internals --------------------------------------------------------------------------------

    def _server(self, log_level: str, *, log_config: bool = False) -> uvicorn.Server:
        try:
            import uvicorn
        except ImportError:
            raise ConfigurationError(
                "serving the dev issuer needs uvicorn: pip install 'bearerguard[devissuer]'"
            ) from None
        kwargs: dict[str, Any] = {} if log_config else {"log_config": None}
        config = uvicorn.Config(
            self, lifespan="off", log_level=log_level, server_header=False, **kwargs
        )
        return uvicorn.Server(config)

    def _dpop_key(self, proofs: list[str]) -> str | None:
        """RFC 9449 section 5: with a DPoP proof the token is bound to its key (the jkt);
        a proof that fails a check is ``invalid_dpop_proof``."""
        if not proofs:
            return None
        try:
            proof = verify_proof(
                proofs,
                method="POST",
                url=self.token_endpoint,
                algorithms=frozenset(DEFAULT_DPOP_ALGORITHMS),
                max_age=60,
                max_future=5,
                now=self.clock(),
            )
        except InvalidDPoPProof as exc:
            raise OAuthError("invalid_dpop_proof", exc.description) from None
        if not self._proofs.add(proof.replay_key(), proof.lifetime(self.clock(), 60)):
            raise OAuthError("invalid_dpop_proof", "the DPoP proof was used before")
        return proof.jkt

    def _mint(self, grant: Grant, jkt: str | None = None) -> dict[str, Any]:
        now = int(self.clock())
        ttl = grant.resource.ttl
        key = self.keys.current
        scope = " ".join(grant.scopes)
        claims: dict[str, Any] = {
            "jti": secrets.token_urlsafe(16),
            "sub": grant.app.id,
            "iat": now,
            "exp": now + ttl,
        }
        if scope:
            claims["scope"] = scope
        claims.update(client_id=grant.app.id, iss=self.issuer, aud=grant.resource.indicator)
        if jkt is not None:
            claims["cnf"] = {"jkt": jkt}
        token = jwt.encode(
            claims, key.private_key, algorithm=key.alg, headers={"typ": "at+jwt", "kid": key.kid}
        )
        response: dict[str, Any] = {
            "access_token": token,
            "expires_in": ttl,
            "token_type": "DPoP" if jkt is not None else "Bearer",
        }
        if scope:
            response["scope"] = scope
        return response

    def _routes(self, base: str) -> Starlette:
        base = base.rstrip("/")
        discovery = ["/.well-known/openid-configuration", "/.well-known/oauth-authorization-server"]
        paths = [base + p for p in discovery]
        if base:  # RFC 8414 section 3.1: also the path-inserted form
            paths.append(f"/.well-known/oauth-authorization-server{base}")
        routes = [Route(p, self._metadata, methods=["GET"]) for p in paths]
        routes.append(Route(base + "/jwks", self._jwks, methods=["GET"]))
        routes.append(Route(base + "/auth", self._authorize, methods=["GET", "POST"]))
        routes.append(Route(base + "/token", self._token, methods=["POST", "OPTIONS"]))
        return Starlette(routes=routes)

    async def _metadata(self, request: Request) -> Response:
        return JSONResponse(self.metadata(), headers={"Cache-Control": "no-cache"})

    async def _authorize(self, request: Request) -> Response:
        body = {
            "error": "unsupported_response_type",
            "error_description": "the dev issuer serves machine-to-machine apps only: use the "
            "client_credentials grant at the token endpoint",
        }
        return JSONResponse(body, status_code=400)

    async def _jwks(self, request: Request) -> Response:
        body = json.dumps(self.keys.jwks()).encode()
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        headers = {"Cache-Control": JWKS_CACHE_CONTROL, "ETag": etag}
        if etag in request.headers.get("if-none-match", ""):
            return Response(status_code=304, headers=headers)
        return Response(body, media_type="application/json", headers=headers)

    async def _token(self, request: Request) -> Response:
        origin = request.headers.get("origin")
        cors = {"Access-Control-Allow-Origin": origin, "Vary": "Origin"} if origin else {}
        if origin is not None and not _loopback_origin(origin):
            return self._error(
                OAuthError("invalid_request", "cross-origin requests only from loopback", 403)
            )
        if request.method == "OPTIONS":
            return self._preflight(request, cors)
        try:
            authorization = request.headers.getlist("authorization")
            if len(authorization) > 1:
                raise OAuthError("invalid_request", "several Authorization headers")
            body = await _read_body(request)
            decided = token_request(
                self.config,
                authorization=authorization[0] if authorization else None,
                content_type=request.headers.get("content-type"),
                body=body,
            )
            jkt = self._dpop_key(request.headers.getlist("dpop"))
            response: Response = JSONResponse(self._mint(decided, jkt), headers=NO_STORE)
        except OAuthError as exc:
            response = self._error(exc)
        response.headers.update(cors)
        return response

    def _preflight(self, request: Request, cors: dict[str, str]) -> Response:
        if not cors:  # a plain OPTIONS request
            return Response(status_code=204, headers={"Allow": "POST, OPTIONS"})
        if request.headers.get("access-control-request-method") != "POST":
            return Response(status_code=403)
        # Any header a loopback page asks for (Swagger UI adds X-Requested-With, Accept).
        asked = request.headers.get("access-control-request-headers", "")
        names = {n.lower(): n for n in ("Authorization", "Content-Type", "DPoP")}
        for name in (n.strip() for n in asked.split(",")):
            if _HEADER_NAME.fullmatch(name):
                names.setdefault(name.lower(), name)
        headers = {
            **cors,
            "Access-Control-Allow-Methods": "POST",
            "Access-Control-Allow-Headers": ", ".join(names.values()),
            "Access-Control-Max-Age": "600",
        }
        return Response(status_code=204, headers=headers)

    def _error(self, exc: OAuthError) -> Response:
        headers = dict(NO_STORE)
        if exc.status_code == 401:
            headers["WWW-Authenticate"] = render_challenge("Basic", {"realm": self.issuer})
        return JSONResponse(exc.to_dict(), status_code=exc.status_code, headers=headers)


def create_app(
    config: IssuerConfig | None = None,
    *,
    issuer: str | None = None,
    keys: KeyStore | None = None,
    clock: Callable[[], float] = time.time,
) -> Starlette:
    """The dev issuer's Starlette app (see ``DevIssuer`` for the arguments)."""
    return DevIssuer(config, issuer=issuer, keys=keys, clock=clock).app
