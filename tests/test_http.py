"""Discovery and JWKS over real HTTP on 127.0.0.1, and issuers that never answer."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from bearerguard import IssuerUnavailable, ResourceServer
from bearerguard.testing import LocalIssuer

AUDIENCE = "https://api.test"
FETCH_TIMEOUT = 0.5
# Discovery and JWKS together stay within two fetch timeouts; the margin is for slow machines.
BOUND = 2 * FETCH_TIMEOUT + 1.0


def bearer(token: str) -> str:
    return f"Bearer {token}"


@contextlib.contextmanager
def misbehaving_server(trickle: bool) -> Iterator[str]:
    """A TCP server on 127.0.0.1 that accepts connections and then never finishes an answer.

    ``trickle=False``: it never sends a byte. ``trickle=True``: it sends response headers
    promising a large body, then one byte every 0.1 s. Yields an issuer URL on it; the server
    thread and every connection are closed on exit.
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.05)
    port = listener.getsockname()[1]
    stop = threading.Event()
    connections: list[socket.socket] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            connections.append(connection)
            if not trickle:
                continue
            try:
                connection.recv(65536)
                connection.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 1000000\r\n\r\n"
                )
                while not stop.wait(0.1):
                    connection.sendall(b" ")
            except OSError:
                continue  # the client gave up and closed the connection

    thread = threading.Thread(target=serve, name="misbehaving-issuer")
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}/oidc"
    finally:
        stop.set()
        thread.join(5)
        for connection in connections:
            connection.close()
        listener.close()
        assert not thread.is_alive()


# -- a well-behaved issuer over real HTTP --------------------------------------------------------


def test_authenticate_fetches_keys_over_http() -> None:
    issuer = LocalIssuer(audience=AUDIENCE)
    with issuer.serve() as url:
        server = ResourceServer(url, AUDIENCE, require_typ=True, fetch_timeout=5)
        access = server.authenticate(bearer(issuer.mint("read:products")))
        assert access.issuer == url
        assert access.scopes == {"read:products"}
        server.authenticate(bearer(issuer.mint()))
    assert issuer.requests == ["/oidc/.well-known/openid-configuration", "/oidc/jwks"]


@pytest.mark.anyio
async def test_authenticate_async_fetches_keys_over_http() -> None:
    issuer = LocalIssuer(audience=AUDIENCE)
    with issuer.serve() as url:
        server = ResourceServer(url, AUDIENCE, require_typ=True, fetch_timeout=5)
        access = await server.authenticate_async(bearer(issuer.mint("read:products")))
        assert access.issuer == url
        assert access.scopes == {"read:products"}
        await server.authenticate_async(bearer(issuer.mint()))
    assert issuer.requests == ["/oidc/.well-known/openid-configuration", "/oidc/jwks"]


def test_cached_keys_need_no_network() -> None:
    issuer = LocalIssuer(audience=AUDIENCE)
    with issuer.serve() as url:
        server = ResourceServer(url, AUDIENCE, fetch_timeout=FETCH_TIMEOUT)
        server.authenticate(bearer(issuer.mint()))
        later = issuer.mint("read:products")
    # The issuer is gone; the cached keys verify a token never seen before.
    assert server.authenticate(bearer(later)).scopes == {"read:products"}


def test_injected_clients_are_used_for_both_faces() -> None:
    issuer = LocalIssuer(audience=AUDIENCE)
    seen: list[str] = []

    def record(request: httpx.Request) -> None:
        seen.append(f"sync {request.url.path}")

    async def record_async(request: httpx.Request) -> None:
        seen.append(f"async {request.url.path}")

    with (
        issuer.serve() as url,
        httpx.Client(event_hooks={"request": [record]}, timeout=5) as client,
    ):
        async_client = httpx.AsyncClient(event_hooks={"request": [record_async]}, timeout=5)
        server = ResourceServer(url, AUDIENCE, http_client=client, async_http_client=async_client)
        server.authenticate(bearer(issuer.mint()))
        assert seen == ["sync /oidc/.well-known/openid-configuration", "sync /oidc/jwks"]

        async def run() -> None:
            other = ResourceServer(url, AUDIENCE, async_http_client=async_client)
            await other.authenticate_async(bearer(issuer.mint()))
            await async_client.aclose()

        asyncio.run(run())
    assert seen[2:] == ["async /oidc/.well-known/openid-configuration", "async /oidc/jwks"]


# -- issuers that do not answer ------------------------------------------------------------------


@pytest.mark.parametrize("trickle", [False, True], ids=["silent", "trickling"])
def test_a_hanging_issuer_is_unavailable_not_a_hang(trickle: bool) -> None:
    with misbehaving_server(trickle) as url:
        server = ResourceServer(url, AUDIENCE, fetch_timeout=FETCH_TIMEOUT)
        token = LocalIssuer(url, audience=AUDIENCE).mint()
        started = time.monotonic()
        with pytest.raises(IssuerUnavailable) as info:
            server.authenticate(bearer(token))
        elapsed = time.monotonic() - started
    assert elapsed < BOUND
    assert info.value.status_code == 503
    assert info.value.retry_after >= 1


@pytest.mark.anyio
@pytest.mark.parametrize("trickle", [False, True], ids=["silent", "trickling"])
async def test_a_hanging_issuer_is_unavailable_not_a_hang_async(trickle: bool) -> None:
    with misbehaving_server(trickle) as url:
        server = ResourceServer(url, AUDIENCE, fetch_timeout=FETCH_TIMEOUT)
        token = LocalIssuer(url, audience=AUDIENCE).mint()
        started = time.monotonic()
        with pytest.raises(IssuerUnavailable):
            await server.authenticate_async(bearer(token))
        elapsed = time.monotonic() - started
    assert elapsed < BOUND


def test_a_refused_connection_is_unavailable() -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    url = f"http://127.0.0.1:{port}/oidc"
    server = ResourceServer(url, AUDIENCE, fetch_timeout=FETCH_TIMEOUT)
    started = time.monotonic()
    with pytest.raises(IssuerUnavailable):
        server.authenticate(bearer(LocalIssuer(url, audience=AUDIENCE).mint()))
    assert time.monotonic() - started < BOUND


def test_fetch_timeout_applies_to_an_injected_client_without_one() -> None:
    with misbehaving_server(trickle=False) as url, httpx.Client(timeout=None) as client:  # noqa: S113 - the point
        server = ResourceServer(url, AUDIENCE, fetch_timeout=FETCH_TIMEOUT, http_client=client)
        token = LocalIssuer(url, audience=AUDIENCE).mint()
        started = time.monotonic()
        with pytest.raises(IssuerUnavailable):
            server.authenticate(bearer(token))
        assert time.monotonic() - started < BOUND


# -- redirects -----------------------------------------------------------------------------------


@contextlib.contextmanager
def redirecting_issuer(target: str) -> Iterator[tuple[str, list[str]]]:
    """An issuer on 127.0.0.1 whose discovery is honest but whose JWKS answers 302 to ``target``.

    Yields the issuer URL and the list of paths it was asked for.
    """
    asked: list[str] = []
    base: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            if self.path == "/oidc/.well-known/openid-configuration":
                body = json.dumps({"issuer": base[0], "jwks_uri": base[0] + "/jwks"}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            self.send_response(302)
            self.send_header("Location", target)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    base.append(f"http://127.0.0.1:{server.server_address[1]}/oidc")
    try:
        yield base[0], asked
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.mark.parametrize("face", ["sync", "async"])
def test_a_redirected_jwks_is_a_failed_fetch_even_with_a_following_client(face: str) -> None:
    # The redirect target is a real JWKS holding the token's key: following it would succeed,
    # so a 503 here proves the redirect was refused, not that the target was broken.
    keys = LocalIssuer(audience=AUDIENCE)
    with keys.serve() as target_issuer, redirecting_issuer(target_issuer + "/jwks") as (url, asked):
        minted = keys.mint(claims={"iss": url})  # for the redirecting issuer, the target's key
        if face == "sync":
            with httpx.Client(follow_redirects=True, timeout=5) as client:
                server = ResourceServer(url, AUDIENCE, http_client=client)
                with pytest.raises(IssuerUnavailable):
                    server.authenticate(bearer(minted))
        else:

            async def run() -> None:
                async with httpx.AsyncClient(follow_redirects=True, timeout=5) as client:
                    server = ResourceServer(url, AUDIENCE, async_http_client=client)
                    with pytest.raises(IssuerUnavailable):
                        await server.authenticate_async(bearer(minted))

            asyncio.run(run())
    assert asked == ["/oidc/.well-known/openid-configuration", "/oidc/jwks"]
    assert keys.requests == []  # the redirect target was never asked
