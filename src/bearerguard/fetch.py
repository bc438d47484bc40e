"""The only I/O: discovery (OIDC / RFC 8414) and JWKS retrieval over httpx.

The fetch is written once as a generator that yields ``httpx.Request``s and receives
``Fetched`` responses (the shape of httpx's ``Auth.auth_flow``); ``KeySource`` drives it from a
sync face (threads, ``httpx.Client``) and an async face (asyncio, ``httpx.AsyncClient``), both
feeding the one ``KeyCache`` policy in ``keys.py``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import json
import logging
import ssl
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import httpx

from .clients import (
    ASYNC_TRANSPORTS,
    HTTP_ERRORS,
    SYNC_TRANSPORTS,
    headers_of,
    module_of,
    native,
)
from .errors import ConfigurationError
from .keys import JWKSError, KeyCache, KeySet, VerificationKey, cache_max_age
from .observe import FetchResult as Outcome
from .observe import Reporter

__all__ = ["KeySource", "WarmUpError", "check_url", "is_loopback"]

log = logging.getLogger("bearerguard")

MAX_DOCUMENT_BYTES = 512 * 1024
USER_AGENT = "bearerguard"
if TYPE_CHECKING:
    from .clients import AsyncClient, SyncClient, Transport


class FetchError(Exception):
    """The issuer could not give us usable keys. The message is for logs, never for clients."""


class WarmUpError(Exception):
    """``KeySource.warm_up`` could not fetch usable keys: the issuer is down, slow or broken.

    A transient outage, not a configuration mistake: retry, or start anyway (requests then
    fetch keys themselves, and fail 503 while the issuer stays unreachable). ``url`` is the
    discovery URL or ``jwks_uri`` that failed, ``reason`` what went wrong; both are in the
    message, which is for logs, never for clients.
    """

    def __init__(self, issuer: str, url: str, reason: str) -> None:
        self.issuer = issuer
        self.url = url
        self.reason = reason
        where = "" if url in reason else f" at {url}"
        super().__init__(f"cannot fetch the signing keys of {issuer}{where}: {reason}")


@dataclass(frozen=True)
class Fetched:
    status_code: int
    headers: httpx.Headers
    body: bytes


@dataclass(frozen=True)
class FetchResult:
    keys: KeySet | None  # None: 304 Not Modified
    max_age: float | None
    etag: str | None


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str, what: str) -> str:
    """Require https, or http on a loopback host (for development)."""
    try:
        parts = urlsplit(url)
        httpx.URL(url)
    except (ValueError, httpx.InvalidURL):
        raise ConfigurationError(f"{what} is not a valid URL: {url!r}") from None
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and is_loopback(parts.hostname):
        return url
    raise ConfigurationError(f"{what} must be an https:// URL (http:// only on loopback): {url!r}")


def _printable(value: str | None) -> str:
    """A value for a log line: escaped, and at most 64 characters of it."""
    return repr(value if value is None else value[:64])


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def discovery_urls(issuer: str) -> list[str]:
    """OIDC discovery first, then RFC 8414 (path inserted, then appended as Logto serves it)."""
    base = issuer.rstrip("/")
    parts = urlsplit(base)
    urls = [base + "/.well-known/openid-configuration"]
    if parts.path:
        root = f"{parts.scheme}://{parts.netloc}"
        urls.append(f"{root}/.well-known/oauth-authorization-server{parts.path}")
    urls.append(base + "/.well-known/oauth-authorization-server")
    return urls


def _json(body: bytes, what: str) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise FetchError(f"{what} is not valid JSON") from None


class Unreachable(FetchError):
    """The request itself failed: connection, timeout, or a body too large or too slow."""


T = TypeVar("T")
_ssl_context: ssl.SSLContext | None = None


def _verify() -> ssl.SSLContext:
    # Building an SSL context (loading the CA bundle) costs tens of ms; clients we create for
    # a fetch share one.
    global _ssl_context
    if _ssl_context is None:
        _ssl_context = httpx.create_ssl_context()
    return _ssl_context


def discover(
    issuer: str, headers: dict[str, str], extensions: dict[str, Any]
) -> Generator[httpx.Request, Fetched, dict[str, Any]]:
    """The issuer's metadata: OIDC discovery, then RFC 8414; its ``issuer`` must match exactly."""
    metadata = None
    for url in discovery_urls(issuer):
        response = yield httpx.Request("GET", url, headers=headers, extensions=extensions)
        if response.status_code == 200:
            metadata = _json(response.body, "discovery document")
            break
        if not 400 <= response.status_code < 500:
            raise FetchError(f"discovery at {url} answered HTTP {response.status_code}")
    if not isinstance(metadata, dict):
        raise FetchError(f"no discovery document found for {issuer}")
    if metadata.get("issuer") != issuer:
        raise FetchError(
            "the discovery document's issuer does not equal the configured issuer "
            f"{issuer!r}: check the issuer setting"
        )
    return metadata


def metadata_url(metadata: dict[str, Any], name: str) -> str:
    """A URL member of issuer metadata, https (or http on loopback) only."""
    value = metadata.get(name)
    if not isinstance(value, str):
        raise FetchError(f"the discovery document has no {name}")
    try:
        return check_url(value, name)
    except ConfigurationError as exc:
        raise FetchError(str(exc)) from None


def sync_client(timeout: float, transport: Transport | None) -> SyncClient:
    """A short-lived client for one fetch (of the transport's package, httpx or httpx2);
    ConfigurationError for an async-only transport."""
    if transport is not None and not isinstance(transport, SYNC_TRANSPORTS):
        raise ConfigurationError("the transport is async-only: it needs an httpx.AsyncClient")
    client: SyncClient = module_of(transport).Client(
        timeout=timeout, transport=transport, verify=_verify()
    )
    return client


def async_client(timeout: float, transport: Transport | None) -> AsyncClient:
    if transport is not None and not isinstance(transport, ASYNC_TRANSPORTS):
        raise ConfigurationError("the transport is sync-only: it needs an httpx.Client")
    client: AsyncClient = module_of(transport).AsyncClient(
        timeout=timeout, transport=transport, verify=_verify()
    )
    return client


def traced(
    flow: Generator[httpx.Request, Fetched, T], urls: list[str]
) -> Generator[httpx.Request, Fetched, T]:
    """``flow``, appending the URL of each request it yields to ``urls``."""
    try:
        request = next(flow)
        while True:
            urls.append(str(request.url))
            fetched = yield request
            request = flow.send(fetched)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
    finally:
        flow.close()


def run_sync(
    flow: Generator[httpx.Request, Fetched, T],
    client: SyncClient,
    *,
    deadline: float,
    max_bytes: int = MAX_DOCUMENT_BYTES,
) -> T:
    """Drive ``flow`` with a sync client: send what it yields, hand back what came."""
    try:
        request = next(flow)
        while True:
            fetched = send_sync(client, request, deadline=deadline, max_bytes=max_bytes)
            try:
                request = flow.send(fetched)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
    finally:
        flow.close()


async def run_async(
    flow: Generator[httpx.Request, Fetched, T],
    client: AsyncClient,
    *,
    max_bytes: int = MAX_DOCUMENT_BYTES,
) -> T:
    """The async twin of ``run_sync`` (callers bound the whole run with a timeout)."""
    try:
        request = next(flow)
        while True:
            fetched = await send_async(client, request, max_bytes=max_bytes)
            try:
                request = flow.send(fetched)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
    finally:
        flow.close()


def send_sync(
    client: SyncClient, request: httpx.Request, *, deadline: float, max_bytes: int
) -> Fetched:
    try:
        # Never follow a redirect, whatever the client's own setting: a 3xx could lead off the
        # checked https/loopback URL, so it is a failed fetch.
        outgoing = native(module_of(client), request)
        response = client.send(outgoing, stream=True, follow_redirects=False)
        try:
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    raise Unreachable(f"{request.url} answered more than {max_bytes} B")
                if time.monotonic() > deadline:
                    raise Unreachable(f"{request.url} took too long")
        finally:
            response.close()
    except HTTP_ERRORS as exc:
        raise Unreachable(f"{request.url}: {type(exc).__name__}: {exc}") from None
    return Fetched(response.status_code, headers_of(response), bytes(body))


async def send_async(client: AsyncClient, request: httpx.Request, *, max_bytes: int) -> Fetched:
    try:
        outgoing = native(module_of(client), request)
        response = await client.send(outgoing, stream=True, follow_redirects=False)
        try:
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    raise Unreachable(f"{request.url} answered more than {max_bytes} B")
        finally:
            await response.aclose()
    except HTTP_ERRORS as exc:
        raise Unreachable(f"{request.url}: {type(exc).__name__}: {exc}") from None
    return Fetched(response.status_code, headers_of(response), bytes(body))


def run_bounded(fn: Callable[[], T], seconds: float, *, what: str = "the fetch") -> T:
    """``fn()``, waiting at most ``seconds`` for it; ``Unreachable("<what> took too long")`` after.

    httpx's sync timeouts bound each read, not the whole exchange: a server trickling its
    response headers a byte at a time would hold a sync request for ever. So ``fn`` runs in a
    short-lived daemon thread, left to finish (or fail) on its own when given up on; whatever it
    raises is raised here.
    """
    outcome: list[T | BaseException] = []

    def work() -> None:
        try:
            outcome.append(fn())
        except BaseException as exc:  # handed to the waiting caller below
            outcome.append(exc)

    worker = threading.Thread(target=work, name="bearerguard-fetch", daemon=True)
    worker.start()
    worker.join(seconds)
    if not outcome:
        raise Unreachable(f"{what} took too long")
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


class KeySource:
    """Keys of one issuer (or one fixed ``jwks_uri``): a KeyCache plus the I/O that feeds it."""

    def __init__(
        self,
        *,
        issuer: str,
        jwks_uri: str | None,
        cache: KeyCache,
        timeout: float,
        clock: Callable[[], float],
        http_client: SyncClient | None = None,
        async_http_client: AsyncClient | None = None,
        transport: Transport | None = None,
    ) -> None:
        self.issuer = issuer
        self.fixed_jwks_uri = jwks_uri
        self.jwks_uri = jwks_uri
        self.metadata: dict[str, Any] | None = None  # the last discovery document, if any
        self.cache = cache
        self.timeout = timeout
        self.clock = clock
        self.http_client = http_client
        self.async_http_client = async_http_client
        self.transport = transport
        self.reporter: Reporter | None = None  # set by the ResourceServer's observer
        self._health = "new"  # then "ok", "stale" (failing, cached keys serve), "unavailable"
        # Single flight across threads, tasks and event loops alike: the fetch in flight is a
        # Future every other caller waits on; the lock is held only to look at or swap it.
        self._guard = threading.Lock()
        self._inflight: concurrent.futures.Future[str | None] | None = None

    def serves(self, face: str) -> bool:
        """Whether keys can be fetched from the ``"sync"`` or the ``"async"`` face."""
        if self.transport is None:
            return True
        if face == "sync":
            return self.http_client is not None or isinstance(self.transport, SYNC_TRANSPORTS)
        return self.async_http_client is not None or isinstance(self.transport, ASYNC_TRANSPORTS)

    def check_face(self, face: str) -> None:
        """ConfigurationError unless ``serves(face)``: e.g. an ASGI transport on the sync face."""
        if not self.serves(face):
            other = "async" if face == "sync" else "sync"
            client = (
                "http_client=httpx.Client(...)"
                if face == "sync"
                else ("async_http_client=httpx.AsyncClient(...)")
            )
            raise ConfigurationError(
                f"the transport {type(self.transport).__name__} is {other}-only, so keys cannot "
                f"be fetched from {face} code; pass a transport that serves both or {client}"
            )

    # -- the shared, I/O-free parts ---------------------------------------------------------

    def _options(self) -> tuple[dict[str, str], dict[str, Any]]:
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        # fetch_timeout applies per request even to an injected client that has none.
        return headers, {"timeout": httpx.Timeout(self.timeout).as_dict()}

    def _discovery(self) -> Generator[httpx.Request, Fetched, dict[str, Any]]:
        metadata = yield from discover(self.issuer, *self._options())
        self.metadata = metadata  # e.g. for the token_endpoint shown in OpenAPI docs
        return metadata

    def _flow(self) -> Generator[httpx.Request, Fetched, FetchResult]:
        headers, extensions = self._options()
        if self.jwks_uri is None:
            metadata = yield from self._discovery()
            self.jwks_uri = metadata_url(metadata, "jwks_uri")
        jwks_headers = dict(headers)
        if self.cache.etag and self.cache.keys is not None:
            jwks_headers["If-None-Match"] = self.cache.etag
        response = yield httpx.Request(
            "GET", self.jwks_uri, headers=jwks_headers, extensions=extensions
        )
        max_age = cache_max_age(response.headers.get("Cache-Control"))
        if response.status_code == 304 and self.cache.keys is not None:
            return FetchResult(None, max_age, self.cache.etag)
        if response.status_code != 200:
            raise FetchError(f"JWKS endpoint answered HTTP {response.status_code}")
        try:
            keys = KeySet.from_jwks(response.body)
        except JWKSError as exc:
            raise FetchError(str(exc)) from None
        return FetchResult(keys, max_age, response.headers.get("ETag"))

    def _after_fetch(
        self, result: FetchResult | None, error: str | None, now: float, began: float
    ) -> None:
        if self.reporter is not None:
            outcome = (
                Outcome.FAILURE
                if result is None
                else Outcome.NOT_MODIFIED
                if result.keys is None
                else Outcome.SUCCESS
            )
            self.reporter.key_fetch(self.issuer, outcome, time.perf_counter() - began)
        if result is not None:
            before = self.cache.keys
            self.cache.succeeded(result.keys, result.max_age, result.etag, now)
            if result.keys is not None and before is not None:
                new = [k.kid for k in result.keys.keys if before.find(k.kid) is None]
                if new:
                    shown = ", ".join(_printable(kid) for kid in new[:5])
                    more = f" (+{len(new) - 5} more)" if len(new) > 5 else ""
                    log.info(
                        "bearerguard: new signing keys from %s: %s%s", self.issuer, shown, more
                    )
            self._state("ok", None)
            return
        assert error is not None
        self.cache.failed(error, now)
        self._state("stale" if self.cache.keys is not None else "unavailable", error)
        if self.fixed_jwks_uri is None:
            self.jwks_uri = None  # discover again next time: the issuer may have moved its keys

    def _state(self, state: str, error: str | None) -> None:
        """Log issuer trouble once per change of state (a flood of failed fetches or of bad
        tokens makes no flood of warnings); each failed fetch is still a DEBUG line."""
        with self._guard:  # two fetches ending at once (a waiter took over) log one change
            was, self._health = self._health, state
        if state == was:
            if error is not None:
                log.debug("bearerguard: refresh from %s failed again: %s", self.issuer, error)
            return
        if state == "ok":
            if was != "new":
                log.info("bearerguard: signing keys of %s fetched again", self.issuer)
        elif state == "stale":
            log.warning(
                "bearerguard: cannot refresh signing keys from %s: %s; cached keys keep serving",
                self.issuer,
                error,
            )
        else:
            log.warning(
                "bearerguard: cannot refresh signing keys from %s: %s; no usable keys, requests "
                "are answered 503 until it recovers",
                self.issuer,
                error,
            )

    def _deadline(self) -> float:
        # Discovery and JWKS together stay within two timeouts, however slowly bytes trickle.
        return time.monotonic() + 2 * self.timeout

    def ready(self, now: float | None = None) -> bool:
        """Whether usable keys are cached (fresh, or stale within ``max_stale``); no I/O.

        For a readiness probe: false until the first successful fetch (``warm_up``), and again
        once the keys outlive ``max_stale`` with the issuer unreachable.
        """
        return self.cache.usable_stale(self.clock() if now is None else now)

    def _warm_up_error(self, error: str, urls: list[str]) -> WarmUpError:
        url = urls[-1] if urls else self.fixed_jwks_uri or discovery_urls(self.issuer)[0]
        return WarmUpError(self.issuer, url, error)

    def _flight(self) -> tuple[concurrent.futures.Future[str | None], bool]:
        """(the fetch in flight, False) to wait for, or (a new one, True) to run and finish."""
        with self._guard:
            if self._inflight is not None:
                return self._inflight, False
            flight: concurrent.futures.Future[str | None] = concurrent.futures.Future()
            self._inflight = flight
            return flight, True

    def _landed(self, flight: concurrent.futures.Future[str | None], error: str | None) -> None:
        """The fetch this caller ran is over: its error (or None) to everyone waiting."""
        with self._guard:
            if self._inflight is flight:  # not if a waiter gave up on it and took over
                self._inflight = None
        if not flight.done():
            flight.set_result(error)

    def _abandon(self, flight: concurrent.futures.Future[str | None]) -> None:
        """A waiter gave up on ``flight`` (it outlived every fetch's bound): the next caller
        leads a fetch of its own instead of waiting on it again."""
        with self._guard:
            if self._inflight is flight:
                self._inflight = None

    def _wait_bound(self) -> float:
        # A fetch gives up after two timeouts; a waiter gives up a little later and takes
        # over, so a leader that can never finish (its event loop blocked) holds nobody.
        return 2 * self.timeout + 1

    # -- the sync face ------------------------------------------------------------------------

    def get_key(self, kid: str | None) -> VerificationKey:
        key = self.cache.lookup(kid, self.clock())
        if key is not None:
            return key
        self.check_face("sync")
        # On an event loop's own thread (a sync call inside async code) waiting could block
        # the very loop a leading async fetch needs: such a caller fetches on its own.
        alone = _on_event_loop()
        while True:
            flight, lead = (None, True) if alone else self._flight()
            if not lead:
                assert flight is not None
                try:
                    flight.result(self._wait_bound())
                except concurrent.futures.TimeoutError:
                    self._abandon(flight)
                key = self.cache.lookup(kid, self.clock())
                if key is not None:
                    return key
                continue  # the policy allows a fetch of our own (for another kid, say)
            error: str | None = "interrupted"
            try:
                now = self.clock()
                key = self.cache.lookup(kid, now)  # one may have landed just before
                if key is not None:
                    error = None
                    return key
                error, now = self._fetch_sync(kid, now, [])
            finally:
                if flight is not None:
                    self._landed(flight, error)
            return self.cache.after_fetch(kid, now, fetched=error is None)

    def warm_up(self) -> None:
        """Fetch discovery (unless the jwks_uri is known) and the JWKS now, e.g. at start-up.

        The same single-flight fetch as a request's (one in flight is waited for, and only
        repeated if it failed), bounded by twice the fetch timeout and recorded by the cache
        the same way. Raises ``WarmUpError`` (naming the URL that failed) when no usable keys
        could be fetched; ConfigurationError when the sync face cannot fetch at all (an
        async-only transport).
        """
        self.check_face("sync")
        alone = _on_event_loop()
        flight, lead = (None, True) if alone else self._flight()
        for _ in range(2):  # one in flight, then perhaps one started meanwhile
            if lead:
                break
            assert flight is not None
            try:
                if flight.result(self._wait_bound()) is None:
                    return  # one was in flight and it worked: its keys are new enough
            except concurrent.futures.TimeoutError:
                self._abandon(flight)
            flight, lead = self._flight()
        if not lead:
            raise self._warm_up_error(self.cache.last_error or "took too long", [])
        urls: list[str] = []
        error: str | None = "interrupted"
        try:
            error, _ = self._fetch_sync(None, self.clock(), urls, routine=True)
        finally:
            if flight is not None:
                self._landed(flight, error)
        if error is not None:
            raise self._warm_up_error(error, urls) from None

    def _fetch_sync(
        self, kid: str | None, now: float, urls: list[str], *, routine: bool = False
    ) -> tuple[str | None, float]:
        """One fetch (this caller leads it), reported to the cache: (its error or None, the
        time after).

        ``urls`` collects the URLs requested, the last one being where a failure happened.
        """
        self.cache.started(kid, now, routine=routine)
        result, error, began = None, None, time.perf_counter()
        try:
            result = self._run_sync_bounded(urls)
        except FetchError as exc:
            error = str(exc)
        now = self.clock()
        self._after_fetch(result, error, now, began)
        return error, now

    def _run_sync_bounded(self, urls: list[str]) -> FetchResult:
        """``_run_sync`` within two timeouts, however slowly the issuer answers.

        Fetches are rare (at most one per cooldown), so ``run_bounded``'s thread costs nothing
        that matters.
        """
        return run_bounded(lambda: self._run_sync(urls), 2 * self.timeout, what="fetching keys")

    def discover_sync(self) -> dict[str, Any]:
        """The issuer's metadata: the document discovered for the keys if there was one, else
        fetched now with this source's client, within two timeouts (FetchError otherwise)."""
        if self.metadata is not None:
            return self.metadata
        flow = self._discovery()
        return run_bounded(lambda: self._drive_sync(flow), 2 * self.timeout, what="discovery")

    def _drive_sync(self, flow: Generator[httpx.Request, Fetched, T]) -> T:
        deadline = self._deadline()
        if self.http_client is not None:
            return run_sync(flow, self.http_client, deadline=deadline)
        try:
            client = sync_client(self.timeout, self.transport)
        except ConfigurationError as exc:  # e.g. an ASGITransport on the sync face
            raise FetchError(str(exc)) from None
        with client:
            return run_sync(flow, client, deadline=deadline)

    def _run_sync(self, urls: list[str]) -> FetchResult:
        return self._drive_sync(traced(self._flow(), urls))

    # -- the async face -----------------------------------------------------------------------

    async def get_key_async(self, kid: str | None) -> VerificationKey:
        key = self.cache.lookup(kid, self.clock())
        if key is not None:
            return key
        self.check_face("async")
        while True:
            flight, lead = self._flight()
            if not lead:
                await self._wait(flight)
                key = self.cache.lookup(kid, self.clock())
                if key is not None:
                    return key
                continue
            error: str | None = "interrupted"
            try:
                now = self.clock()
                key = self.cache.lookup(kid, now)
                if key is not None:
                    error = None
                    return key
                error, now = await self._fetch_async(kid, now, [])
            finally:
                self._landed(flight, error)
            return self.cache.after_fetch(kid, now, fetched=error is None)

    async def warm_up_async(self) -> None:
        """The async twin of ``warm_up``: the fetch never blocks the event loop."""
        self.check_face("async")
        flight, lead = self._flight()
        if not lead:
            if await self._wait(flight) is None:
                return
            flight, lead = self._flight()
            if not lead:
                if await self._wait(flight) is None:
                    return
                raise self._warm_up_error(self.cache.last_error or "took too long", [])
        urls: list[str] = []
        error: str | None = "interrupted"
        try:
            error, _ = await self._fetch_async(None, self.clock(), urls, routine=True)
        finally:
            self._landed(flight, error)
        if error is not None:
            raise self._warm_up_error(error, urls) from None

    async def _wait(self, flight: concurrent.futures.Future[str | None]) -> str | None:
        """Another caller's fetch (from any thread or event loop), awaited without blocking
        this loop: its error, or None. Shielded: a waiter that is cancelled (its client gone)
        must not cancel the fetch everyone shares."""
        try:
            return await asyncio.wait_for(
                asyncio.shield(asyncio.wrap_future(flight)), self._wait_bound()
            )
        except asyncio.TimeoutError:
            self._abandon(flight)
            return "took too long"

    async def _fetch_async(
        self, kid: str | None, now: float, urls: list[str], *, routine: bool = False
    ) -> tuple[str | None, float]:
        """The async twin of ``_fetch_sync``."""
        self.cache.started(kid, now, routine=routine)
        result, error, began = None, None, time.perf_counter()
        try:
            result = await asyncio.wait_for(self._run_async(urls), 2 * self.timeout)
        except FetchError as exc:
            error = str(exc)
        except asyncio.TimeoutError:
            error = "fetching keys took too long"
        now = self.clock()
        self._after_fetch(result, error, now, began)
        return error, now

    async def _run_async(self, urls: list[str]) -> FetchResult:
        if self.async_http_client is not None:
            return await run_async(traced(self._flow(), urls), self.async_http_client)
        try:
            client = async_client(self.timeout, self.transport)
        except ConfigurationError as exc:
            raise FetchError(str(exc)) from None
        async with client:
            return await run_async(traced(self._flow(), urls), client)
