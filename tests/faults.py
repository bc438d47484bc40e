"""A misbehaving issuer over real HTTP on 127.0.0.1, for fault-injection tests.

``FaultyIssuer`` serves OIDC discovery and a JWKS for the keys of a ``LocalIssuer`` and can be
switched at runtime into a fault mode (see ``MODES``)::

    with FaultyIssuer(audience="https://shopping.api") as issuer:
        server = ResourceServer(issuer.url, issuer.audience, fetch_timeout=0.5)
        issuer.set_mode("hang")                   # every path hangs
        issuer.set_mode("error_500", only="jwks")  # discovery works, the JWKS answers 500
        issuer.count("discovery"), issuer.count("jwks")

Hanging and trickling handlers are released when the mode changes and on ``stop()``, which
joins every handler thread: nothing outlives the ``with`` block.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import json
import socket
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any, Literal
from urllib.parse import urlsplit

import httpx
import pytest
from anyio.from_thread import start_blocking_portal

from bearerguard import ResourceServer
from bearerguard.testing import LocalIssuer, SigningKey

__all__ = [
    "EXAMPLES",
    "FAILING_MODES",
    "JWKS_STAGE_MODES",
    "MALFORMED_JWKS_KEYS",
    "MODES",
    "AppClient",
    "FakeClock",
    "FaultyIssuer",
    "Reply",
    "example_client",
    "example_server",
    "imported_example",
    "tune",
]

HEALTHY = "healthy"
REFUSE = "refuse"  # the listening socket is closed: connections are refused
HANG = "hang"  # the request is read, no answer ever comes
ERROR_500 = "error_500"  # HTTP 500 with a JSON error body
TRUNCATED = "truncated"  # Content-Length larger than the body, then the connection closes
NOT_JSON = "not_json"  # 200 with an HTML body
MALFORMED_KEYS = "malformed_keys"  # a JWKS whose every key is malformed or unusable
MIXED_KEYS = "mixed_keys"  # the good keys with malformed ones around them
NO_KEYS = "no_keys"  # {"keys": []}
FLIPPED_ISSUER = "flipped_issuer"  # discovery names another issuer
TRICKLE = "trickle"  # headers at once, then the body one byte at a time, slowly
TRICKLE_HEADERS = "trickle_headers"  # the response headers themselves one byte at a time

MODES = (
    HEALTHY,
    REFUSE,
    HANG,
    ERROR_500,
    TRUNCATED,
    NOT_JSON,
    MALFORMED_KEYS,
    MIXED_KEYS,
    NO_KEYS,
    FLIPPED_ISSUER,
    TRICKLE,
    TRICKLE_HEADERS,
)
# Modes in which no usable keys can be had from the issuer.
FAILING_MODES = tuple(m for m in MODES if m not in (HEALTHY, MIXED_KEYS))
# Modes that only make sense for one document.
JWKS_STAGE_MODES = frozenset({MALFORMED_KEYS, MIXED_KEYS, NO_KEYS})
_DISCOVERY_ONLY = frozenset({FLIPPED_ISSUER})

Only = Literal["discovery", "jwks"] | None

# JWK-shaped things no verifier may use (public keys are added per issuer below).
MALFORMED_JWKS_KEYS: list[Any] = [
    None,
    42,
    "a string",
    [],
    {},
    {"kty": "EC"},
    {"kty": "EC", "crv": "P-384", "x": "!!not base64!!", "y": "AA", "kid": "bad-ec"},
    {"kty": "EC", "crv": "P-384", "x": "AAAA", "y": "AAAA", "kid": "not-on-curve"},
    {"kty": "EC", "crv": "secp256k1", "x": "AAAA", "y": "AAAA", "kid": "odd-curve"},
    {"kty": "RSA", "n": "AQAB", "e": "AQAB", "kid": "tiny-rsa"},
    {"kty": "RSA", "n": 12345, "e": "AQAB", "kid": "rsa-int-n"},
    {"kty": "oct", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQ", "kid": "hmac"},
    {"kty": "OKP", "crv": "X25519", "x": "AAAA", "kid": "x25519"},
    {"kty": "OKP", "crv": "Ed25519", "kid": "no-x"},
    {"kty": "EC", "crv": "P-384", "x": "AAAA", "y": "AAAA", "kid": 7},
]


def _unusable_variants(jwk: dict[str, Any]) -> list[dict[str, Any]]:
    """The issuer's real key dressed up so that it must not be used."""
    return [
        {**jwk, "use": "enc", "kid": "enc-" + jwk["kid"]},
        {**jwk, "key_ops": ["encrypt"], "kid": "ops-" + jwk["kid"]},
        {**jwk, "alg": "RS256", "kid": "alg-" + jwk["kid"]},
        {**jwk, "kid": ["not", "a", "string"]},
    ]


class FakeClock:
    """An injectable wall clock that only moves when told to."""

    def __init__(self, start: float | None = None) -> None:
        # Whole seconds: sums of whole seconds stay exact, so "cooldown apart" is exact too.
        self.now = float(int(time.time())) if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


class _Server(ThreadingHTTPServer):
    daemon_threads = False  # handler threads are joined by server_close()
    block_on_close = True


class FaultyIssuer:
    """An OIDC issuer stand-in on 127.0.0.1 whose behaviour can be switched at runtime."""

    def __init__(
        self,
        *,
        audience: str = "https://shopping.api",
        alg: str = "ES384",
        path: str = "/oidc",
        trickle_interval: float = 0.1,
        header_padding: int = 4000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.audience = audience
        self.alg = alg
        self.path = path.rstrip("/")
        self.trickle_interval = trickle_interval
        self.header_padding = header_padding  # bytes of header trickled in TRICKLE_HEADERS
        self.clock = clock
        self.mode = HEALTHY
        self.only: Only = None
        self.requests: list[str] = []
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self.local: LocalIssuer | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> FaultyIssuer:
        self._listen(0)
        self.local = LocalIssuer(self.url, audience=self.audience, alg=self.alg, clock=self.clock)
        return self

    def stop(self) -> None:
        self._release.set()
        self._close_listener()

    def __enter__(self) -> FaultyIssuer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _listen(self, port: int) -> None:
        server = _Server(("127.0.0.1", port), self._handler_class())
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def _close_listener(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()  # joins every handler thread (hangs are released first)
        if thread is not None:
            thread.join(5)

    @property
    def url(self) -> str:
        """The issuer identifier (what tokens carry in ``iss``)."""
        return f"http://127.0.0.1:{self.port}{self.path}"

    @property
    def closed_port_url(self) -> str:
        """An issuer URL on a loopback port nothing listens on."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        return f"http://127.0.0.1:{port}{self.path}"

    # -- control --------------------------------------------------------------------------------

    def set_mode(self, mode: str, *, only: Only = None) -> None:
        """Switch behaviour; ``only`` limits the fault to discovery or to the JWKS."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}")
        if only not in (None, "discovery", "jwks"):
            raise ValueError(f"only must be None, 'discovery' or 'jwks', not {only!r}")
        # Whatever hangs now is let go (the client has given up on it anyway).
        self._release.set()
        self._release = threading.Event()
        if mode == REFUSE:
            self._close_listener()
        elif self._server is None:
            self._listen(self.port)  # the same port again: the issuer URL does not change
        self.mode, self.only = mode, only

    def count(self, kind: Literal["discovery", "jwks", "all"] = "all") -> int:
        with self._lock:
            if kind == "all":
                return sum(self._counts.values())
            return self._counts[kind]

    def reset_counts(self) -> None:
        with self._lock:
            self._counts.clear()
            self.requests.clear()

    # -- tokens ---------------------------------------------------------------------------------

    @property
    def issuer(self) -> LocalIssuer:
        assert self.local is not None, "start() the FaultyIssuer first"
        return self.local

    def mint(self, scopes: str | None = None, **kwargs: Any) -> str:
        return self.issuer.mint(scopes, **kwargs)

    def rotate(self) -> SigningKey:
        return self.issuer.rotate()

    # -- documents ------------------------------------------------------------------------------

    def discovery_document(self, *, flipped: bool = False) -> dict[str, Any]:
        metadata = self.issuer.metadata()
        if flipped:
            metadata["issuer"] = f"http://127.0.0.1:{self.port}/someone-else"
        return metadata

    def jwks_document(self, mode: str) -> dict[str, Any]:
        good = [k.jwk for k in self.issuer.keys]
        if mode == NO_KEYS:
            return {"keys": []}
        bad = MALFORMED_JWKS_KEYS + [v for jwk in good for v in _unusable_variants(jwk)]
        if mode == MALFORMED_KEYS:
            return {"keys": bad}
        if mode == MIXED_KEYS:
            return {"keys": bad[: len(bad) // 2] + good + bad[len(bad) // 2 :]}
        return {"keys": good}

    def _kind(self, path: str) -> str | None:
        if path in (
            self.path + "/.well-known/openid-configuration",
            self.path + "/.well-known/oauth-authorization-server",
            "/.well-known/oauth-authorization-server" + self.path,
        ):
            return "discovery"
        if path == self.path + "/jwks":
            return "jwks"
        return None

    def _effective_mode(self, kind: str | None) -> str:
        mode, only = self.mode, self.only
        if only is not None and kind != only:
            return HEALTHY
        if mode in JWKS_STAGE_MODES and kind != "jwks":
            return HEALTHY
        if mode in _DISCOVERY_ONLY and kind != "discovery":
            return HEALTHY
        return mode

    # -- the HTTP side --------------------------------------------------------------------------

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 10  # a client that never sends its request cannot pin a thread

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                path = urlsplit(self.path).path
                kind = owner._kind(path)
                with owner._lock:
                    owner.requests.append(path)
                    owner._counts[kind or "other"] += 1
                    mode = owner._effective_mode(kind)
                    release = owner._release
                try:
                    owner._respond(self, kind, mode, release)
                except OSError:  # the client gave up (timeouts close the socket)
                    self.close_connection = True

        return Handler

    def _respond(
        self,
        handler: BaseHTTPRequestHandler,
        kind: str | None,
        mode: str,
        release: threading.Event,
    ) -> None:
        if mode == HANG:
            release.wait(60)
            handler.close_connection = True
            return
        if kind is None:
            return self._send(handler, 404, b'{"error":"not found"}')
        if mode == ERROR_500:
            return self._send(handler, 500, b'{"error":"server_error"}')
        if mode == NOT_JSON:
            return self._send(handler, 200, b"<html><body>Bad gateway</body></html>", "text/html")
        if kind == "discovery":
            document = self.discovery_document(flipped=mode == FLIPPED_ISSUER)
        else:
            document = self.jwks_document(mode)
        body = json.dumps(document).encode()
        if mode == TRUNCATED:
            handler.send_response(200)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(body) + 100))
            handler.end_headers()
            handler.wfile.write(body[: len(body) // 2])
            handler.wfile.flush()
            handler.close_connection = True
            return None
        if mode == TRICKLE:
            handler.send_response(200)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.flush()
            self._trickle(handler, body, release)
            return None
        if mode == TRICKLE_HEADERS:
            # Every byte arrives well within the read timeout; the headers never end.
            handler.wfile.write(b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n")
            handler.wfile.flush()
            pad = b"X-Padding: " + b"x" * self.header_padding + b"\r\n"
            if self._trickle(handler, pad, release):
                handler.wfile.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
            return None
        return self._send(handler, 200, body)

    def _trickle(
        self, handler: BaseHTTPRequestHandler, data: bytes, release: threading.Event
    ) -> bool:
        """Send ``data`` a byte per ``trickle_interval``; False when released first."""
        handler.close_connection = True
        for i in range(len(data)):
            if release.wait(self.trickle_interval):
                return False
            handler.wfile.write(data[i : i + 1])
            handler.wfile.flush()
        return True

    @staticmethod
    def _send(
        handler: BaseHTTPRequestHandler,
        status: int,
        body: bytes,
        content_type: str = "application/json",
    ) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)


# -- the example apps, in-process ---------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = {
    "fastapi": ROOT / "examples" / "fastapi_app" / "main.py",
    "flask": ROOT / "examples" / "flask_app" / "main.py",
}


@contextlib.contextmanager
def imported_example(kind: str, issuer_url: str, audience: str) -> Iterator[ModuleType]:
    """Import ``examples/<kind>_app/main.py`` afresh, under a unique name, with AUTH_* set."""
    path = EXAMPLES[kind]
    if not path.exists():
        pytest.skip(f"{path.relative_to(ROOT)} does not exist yet")
    name = f"bearerguard_faults_{kind}_{uuid.uuid4().hex}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AUTH_ISSUER", issuer_url)
        patch.setenv("AUTH_AUDIENCE", audience)
        patch.syspath_prepend(str(path.parent))  # as uvicorn --app-dir / gunicorn --chdir do
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        patch.setitem(sys.modules, name, module)  # pydantic and Flask look modules up by name
        spec.loader.exec_module(module)
        yield module


def example_server(module: ModuleType) -> ResourceServer:
    """The one ResourceServer an example module verifies tokens with."""
    server = getattr(module, "server", None)
    if isinstance(server, ResourceServer):
        return server
    extensions = getattr(getattr(module, "app", None), "extensions", {})
    server = extensions.get("bearerguard")
    if isinstance(server, ResourceServer):
        return server
    raise AssertionError(f"no ResourceServer found in {module.__name__}")


def tune(
    server: ResourceServer,
    *,
    timeout: float | None = None,
    clock: Callable[[], float] | None = None,
    **policy: float,
) -> ResourceServer:
    """Adjust a running server's key sources in place (everything that holds it sees it).

    ``policy`` takes CachePolicy fields: ``cooldown``, ``max_stale``, ``default_ttl``, ...
    The token cache keeps its own clock: use a fresh token per request when time is faked.
    """
    for source in server.key_sources:
        if timeout is not None:
            source.timeout = timeout
        if clock is not None:
            source.clock = clock
        if policy:
            source.cache.policy = dataclasses.replace(source.cache.policy, **policy)
    return server


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # names lower-cased
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class AppClient:
    """One example app behind a uniform, blocking ``request``.

    FastAPI runs on an event loop in a portal thread (httpx.ASGITransport); Flask through its
    test client. Header values are latin-1 text, as HTTP carries them.
    """

    def __init__(self, kind: str, module: ModuleType) -> None:
        self.kind = kind
        self.module = module
        self.app = module.app
        self.server = example_server(module)
        self._stack = contextlib.ExitStack()
        if kind == "fastapi":
            self._portal = self._stack.enter_context(start_blocking_portal("asyncio"))
            self._client = httpx.AsyncClient(
                transport=httpx.ASGITransport(app=self.app), base_url="http://testserver"
            )
            self._stack.callback(self._portal.call, self._client.aclose)

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> AppClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        json: Any = None,
        content: bytes | None = None,
    ) -> Reply:
        headers = dict(headers or {})
        if self.kind == "fastapi":
            raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
            send = functools.partial(
                self._client.request, method, path, headers=raw, json=json, content=content
            )
            response = self._portal.call(send)
            return Reply(
                response.status_code,
                {k.lower(): v for k, v in response.headers.items()},
                response.content,
            )
        extra: dict[str, Any] = {"json": json} if json is not None else {"data": content}
        # A test client per request: they are not meant to be shared across threads.
        flask_response = self.app.test_client().open(path, method=method, headers=headers, **extra)
        return Reply(
            flask_response.status_code,
            {k.lower(): v for k, v in flask_response.headers.items()},
            flask_response.get_data(),
        )

    def get(self, path: str, token: str | None = None) -> Reply:
        return self.request("GET", path, headers=bearer(token))


def bearer(token: str | None) -> dict[str, str]:
    return {} if token is None else {"Authorization": f"Bearer {token}"}


@contextlib.contextmanager
def example_client(
    kind: str, issuer: FaultyIssuer, *, url: str | None = None
) -> Iterator[AppClient]:
    """A fresh import of example ``kind`` trusting ``issuer`` (or ``url``), in an AppClient."""
    with (
        imported_example(kind, url or issuer.url, issuer.audience) as module,
        AppClient(kind, module) as client,
    ):
        yield client
