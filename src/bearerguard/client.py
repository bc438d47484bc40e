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
from urllib.parse import quote_plus

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
        request.headers["Authorization"] = f"Bearer {token.value}"
        response = yield request
        if _rejected(response):
            self._forget(token)
            if isinstance(request.stream, BYTE_STREAMS):  # a body we can send again
                request.headers["Authorization"] = f"Bearer {self._get_sync().value}"
                yield request

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        token = await self._get_async()
        request.headers["Authorization"] = f"Bearer {token.value}"
        response = yield request
        if _rejected(response):
            self._forget(token)
            if isinstance(request.stream, BYTE_STREAMS):
                request.headers["Authorization"] = f"Bearer {(await self._get_async()).value}"
                yield request

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
        response = yield httpx.Request(
            "POST",
            self.token_endpoint,
            headers={**headers, "Authorization": self._authorization},
            data=form,
        )
        return self._parse(response)

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
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            detail = f"token_type {token_type!r} is not Bearer"
            raise TokenRequestError("invalid_response", detail, status)
        lifetime = _lifetime(body.get("expires_in")) or DEFAULT_LIFETIME
        refresh_at = self.clock() + lifetime - min(self.margin, lifetime / 10)
        return _Token(value, refresh_at, body)

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
