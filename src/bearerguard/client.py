"""Client credentials for services calling a protected API: an ``httpx.Auth``, sync and async.

::

    auth = ClientCredentialsAuth(
        issuer="https://tenant.logto.app/oidc",  # or token_endpoint=...
        client_id="...", client_secret="...",
        resource="https://shopping.api", scope=["read:products"],
    )
    with httpx.Client(auth=auth) as client:
        client.get("https://api.example/products")

The token is fetched once (HTTP Basic, RFC 6749 section 4.4, RFC 8707 ``resource``) and reused
until shortly before it expires; concurrent requests share one refresh. An API answering 401
``invalid_token`` gets one retry with a fresh token. As in ``fetch.py``, the token request is
written once as a generator that the sync and the async face drive.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import threading
import time
import weakref
from collections.abc import AsyncGenerator, Callable, Generator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote_plus, urlsplit

import httpx

from .clients import BYTE_STREAMS, httpx2
from .errors import ConfigurationError
from .fetch import (
    USER_AGENT,
    Fetched,
    FetchError,
    Unreachable,
    async_client,
    check_url,
    discover,
    metadata_url,
    run_async,
    run_bounded,
    run_sync,
    sync_client,
)
from .signing import DPoPKey

__all__ = ["ClientCredentialsAuth", "TokenRequestError", "fetch_token"]

DEFAULT_LIFETIME = 300.0  # when the token endpoint names no expires_in
_INVALID_TOKEN = re.compile(r"""\berror\s*=\s*"?invalid_token\b""", re.IGNORECASE)
if TYPE_CHECKING:
    from .clients import AsyncClient, SyncClient, Transport


class TokenRequestError(Exception):
    """The token endpoint refused (or could not be asked for) a token.

    ``error`` is the OAuth error code the endpoint sent (``invalid_client``, ``invalid_target``,
    ...) or, when it sent none: ``invalid_response`` (not a usable token response),
    ``discovery_failed`` (no token endpoint found for the issuer) or ``request_failed``
    (the endpoint could not be reached). ``status_code`` is the HTTP status, when there was one.
    """

    def __init__(self, error: str, description: str = "", status_code: int | None = None) -> None:
        self.error = error
        self.description = description
        self.status_code = status_code
        status = f" (HTTP {status_code})" if status_code is not None else ""
        super().__init__(f"{error}: {description}{status}" if description else error + status)


@dataclass(frozen=True)
class _Token:
    value: str
    refresh_at: float  # by the auth's clock
    response: dict[str, Any]
    scheme: str = "Bearer"  # "DPoP" for a DPoP-bound token


def _basic(client_id: str, client_secret: str) -> str:
    """HTTP Basic credentials, id and secret form-urlencoded first (RFC 6749 section 2.3.1)."""
    raw = f"{quote_plus(client_id)}:{quote_plus(client_secret)}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        return None


def _lifetime(value: Any) -> float | None:
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        return None
    return float(value)


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def _error_of(response: Fetched) -> str | None:
    body = _json(response.body) if response.body else None
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, str) else None


def _asks_nonce(response: Any) -> bool:
    """A 401 whose DPoP challenge asks for a nonce (RFC 9449 section 9)."""
    return response.status_code == 401 and any(
        "use_dpop_nonce" in v for v in response.headers.get_list("www-authenticate")
    )


def _rejected(response: httpx.Response) -> bool:
    """A 401 whose Bearer challenge says the token is no good (RFC 6750 section 3.1)."""
    return response.status_code == 401 and any(
        _INVALID_TOKEN.search(v) for v in response.headers.get_list("www-authenticate")
    )


if TYPE_CHECKING or httpx2 is None:
    _Auth = httpx.Auth
else:

    class _Auth(httpx.Auth, httpx2.Auth):
        """Both packages' ``Auth``: each client checks for its own."""


class ClientCredentialsAuth(_Auth):
    """An ``httpx.Auth`` adding a client-credentials access token to every request (an
    ``httpx2.Auth`` too when httpx2 is installed, e.g. for the MCP SDK's client).

    Give ``token_endpoint``, or ``issuer`` to find it by discovery (OIDC, then RFC 8414).
    ``scope`` is a space-delimited string or a list. The token is refreshed ``margin``
    seconds before it expires (at most a tenth of its lifetime). Token requests go through
    ``http_client`` / ``async_http_client`` if given, else a short-lived client using
    ``transport``.
    """

    def __init__(
        self,
        *,
        client_id: str,
        client_secret: str,
        token_endpoint: str | None = None,
        issuer: str | None = None,
        resource: str | None = None,
        scope: str | Sequence[str] | None = None,
        margin: float = 60.0,
        timeout: float = 10.0,
        transport: Transport | None = None,
        http_client: SyncClient | None = None,
        async_http_client: AsyncClient | None = None,
        dpop_key: DPoPKey | bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if (token_endpoint is None) == (issuer is None):
            raise ConfigurationError("give either token_endpoint or issuer (for discovery)")
        if not client_id or not client_secret:
            raise ConfigurationError("client_id and client_secret must be non-empty")
        if not margin >= 0 or not timeout > 0:
            raise ConfigurationError("margin must be >= 0 and timeout > 0 (seconds)")
        self.issuer = check_url(issuer, "issuer") if issuer is not None else None
        self.token_endpoint = (
            check_url(token_endpoint, "token_endpoint") if token_endpoint is not None else None
        )
        self.client_id = client_id
        self.resource = resource
        self.scope = scope if scope is None or isinstance(scope, str) else " ".join(scope)
        self.margin = margin
        self.timeout = timeout
        self.transport = transport
        self.http_client = http_client
        self.async_http_client = async_http_client
        self.clock = clock
        self._authorization = _basic(client_id, client_secret)
        #: The DPoP key (RFC 9449) tokens are bound to, or None for Bearer tokens.
        self.dpop_key = DPoPKey.generate() if dpop_key is True else (dpop_key or None)
        self._nonces: dict[str, str] = {}  # the last DPoP-Nonce each origin sent
        self._token: _Token | None = None
        self._lock = threading.Lock()
        self._async_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )

    def __repr__(self) -> str:
        where = self.token_endpoint or self.issuer
        return f"ClientCredentialsAuth(client_id={self.client_id!r}, at={where!r})"

    # -- the faces httpx drives -------------------------------------------------------------------

    def sync_auth_flow(
        self, request: httpx.Request
    ) -> Generator[httpx.Request, httpx.Response, None]:
        token = self._get_sync()
        response = yield self._authorize(request, token)
        retry = self._retry(request, response, token)
        if retry == "token":
            response = yield self._authorize(request, self._get_sync())
        elif retry == "nonce":
            response = yield self._authorize(request, token)
        self._remember_nonce(request, response)

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        token = await self._get_async()
        response = yield self._authorize(request, token)
        retry = self._retry(request, response, token)
        if retry == "token":
            response = yield self._authorize(request, await self._get_async())
        elif retry == "nonce":
            response = yield self._authorize(request, token)
        self._remember_nonce(request, response)

    def _authorize(self, request: Any, token: _Token) -> Any:
        """``request`` with the token, and with a fresh proof for a DPoP-bound one."""
        request.headers["Authorization"] = f"{token.scheme} {token.value}"
        if token.scheme == "DPoP" and self.dpop_key is not None:
            url = str(request.url)
            request.headers["DPoP"] = self.dpop_key.proof(
                request.method, url, access_token=token.value, nonce=self._nonces.get(_origin(url))
            )
        return request

    def _retry(self, request: Any, response: Any, token: _Token) -> str | None:
        """Once: "nonce" when the API asks for a DPoP nonce, "token" when it refuses the
        token (a new one is fetched); only for a body that can be sent again."""
        again = isinstance(request.stream, BYTE_STREAMS)  # a streamed body cannot be resent
        if self._remember_nonce(request, response) and _asks_nonce(response):
            return "nonce" if again else None
        if _rejected(response):
            self._forget(token)  # the next request fetches a new one either way
            return "token" if again else None
        return None

    def _remember_nonce(self, request: Any, response: Any) -> bool:
        nonce = response.headers.get("dpop-nonce")
        if self.dpop_key is None or not nonce:
            return False
        self._nonces[_origin(str(request.url))] = nonce
        return True

    def get_token(self) -> str:
        """A valid access token (cached or freshly fetched), for callers outside httpx."""
        return self._get_sync().value

    async def aget_token(self) -> str:
        """The async twin of ``get_token``."""
        return (await self._get_async()).value

    # -- the token cache ------------------------------------------------------------------------

    def _cached(self) -> _Token | None:
        token = self._token
        return token if token is not None and self.clock() < token.refresh_at else None

    def _forget(self, token: _Token) -> None:
        if self._token is token:
            self._token = None

    def _get_sync(self) -> _Token:
        token = self._cached()
        if token is not None:
            return token
        with self._lock:  # one refresh in flight across threads
            token = self._cached()
            if token is None:
                token = self._token = self._run_sync()
            return token

    async def _get_async(self) -> _Token:
        token = self._cached()
        if token is not None:
            return token
        loop = asyncio.get_running_loop()
        lock = self._async_locks.get(loop)
        if lock is None:
            lock = self._async_locks[loop] = asyncio.Lock()
        async with lock:  # one refresh in flight across tasks
            token = self._cached()
            if token is None:
                token = self._token = await self._run_async()
            return token

    # -- the token request, written once ----------------------------------------------------------

    def _flow(self) -> Generator[httpx.Request, Fetched, _Token]:
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        if self.token_endpoint is None:
            assert self.issuer is not None
            try:
                metadata = yield from discover(self.issuer, headers, {})
                self.token_endpoint = metadata_url(metadata, "token_endpoint")
            except Unreachable:
                raise
            except FetchError as exc:
                raise TokenRequestError("discovery_failed", str(exc)) from None
        form = {"grant_type": "client_credentials"}
        if self.resource:
            form["resource"] = self.resource
        if self.scope:
            form["scope"] = self.scope
        headers = {**headers, "Authorization": self._authorization}
        response = yield self._token_request(headers, form)
        nonce = response.headers.get("dpop-nonce")
        if self.dpop_key is not None and nonce and _error_of(response) == "use_dpop_nonce":
            self._nonces[_origin(self.token_endpoint)] = nonce
            response = yield self._token_request(headers, form)  # once, with its nonce
        return self._parse(response)

    def _token_request(self, headers: dict[str, str], form: dict[str, str]) -> httpx.Request:
        assert self.token_endpoint is not None
        if self.dpop_key is not None:  # RFC 9449 section 5: the token is bound to this key
            nonce = self._nonces.get(_origin(self.token_endpoint))
            headers = {
                **headers,
                "DPoP": self.dpop_key.proof("POST", self.token_endpoint, nonce=nonce),
            }
        return httpx.Request("POST", self.token_endpoint, headers=headers, data=form)

    def _parse(self, response: Fetched) -> _Token:
        body = _json(response.body)
        status = response.status_code
        if status != 200:
            if isinstance(body, dict) and isinstance(body.get("error"), str):
                description = body.get("error_description")
                raise TokenRequestError(
                    body["error"], description if isinstance(description, str) else "", status
                )
            raise TokenRequestError("invalid_response", "the token endpoint refused", status)
        if not isinstance(body, dict):
            raise TokenRequestError("invalid_response", "the token response is not JSON", status)
        value = body.get("access_token")
        if not isinstance(value, str) or not value:
            raise TokenRequestError("invalid_response", "the response has no access_token", status)
        token_type = body.get("token_type")
        kind = token_type.lower() if isinstance(token_type, str) else None
        expected = "dpop" if self.dpop_key is not None else "bearer"
        if kind != expected and not (kind == "bearer" and expected == "dpop"):
            detail = (
                f"token_type {token_type!r} is not {'DPoP' if expected == 'dpop' else 'Bearer'}"
            )
            raise TokenRequestError("invalid_response", detail, status)
        lifetime = _lifetime(body.get("expires_in")) or DEFAULT_LIFETIME
        refresh_at = self.clock() + lifetime - min(self.margin, lifetime / 10)
        # An issuer without DPoP answers Bearer to a request with a proof: used as Bearer.
        return _Token(value, refresh_at, body, "DPoP" if kind == "dpop" else "Bearer")

    # -- driving it (fetch.py's drivers: bounded bodies, one error type) --------------------------

    def _run_sync(self) -> _Token:
        """``_request_sync`` within two timeouts, as the async face and the key fetches.

        httpx's sync timeouts bound each read only: an endpoint trickling its headers a byte at
        a time would otherwise hold the request (and every thread behind the lock) for ever.
        """
        try:
            return run_bounded(self._request_sync, 2 * self.timeout, what="the token request")
        except Unreachable as exc:
            raise TokenRequestError("request_failed", str(exc)) from None

    def _request_sync(self) -> _Token:
        deadline = time.monotonic() + 2 * self.timeout  # discovery + token request
        if self.http_client is not None:
            return run_sync(self._flow(), self.http_client, deadline=deadline)
        with sync_client(self.timeout, self.transport) as client:
            return run_sync(self._flow(), client, deadline=deadline)

    async def _run_async(self) -> _Token:
        try:
            return await asyncio.wait_for(self._request_async(), 2 * self.timeout)
        except Unreachable as exc:
            raise TokenRequestError("request_failed", str(exc)) from None
        except asyncio.TimeoutError:
            raise TokenRequestError("request_failed", "the token request took too long") from None

    async def _request_async(self) -> _Token:
        if self.async_http_client is not None:
            return await run_async(self._flow(), self.async_http_client)
        async with async_client(self.timeout, self.transport) as client:
            return await run_async(self._flow(), client)


def fetch_token(
    *,
    client_id: str,
    client_secret: str,
    token_endpoint: str | None = None,
    issuer: str | None = None,
    resource: str | None = None,
    scope: str | Sequence[str] | None = None,
    timeout: float = 10.0,
    transport: httpx.BaseTransport | None = None,
) -> dict[str, Any]:
    """Request one token; return the token response (``access_token``, ``expires_in``, ...)."""
    auth = ClientCredentialsAuth(
        client_id=client_id,
        client_secret=client_secret,
        token_endpoint=token_endpoint,
        issuer=issuer,
        resource=resource,
        scope=scope,
        timeout=timeout,
        transport=transport,
    )
    return dict(auth._get_sync().response)
