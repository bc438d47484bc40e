"""Shared fixtures: an injected clock and an in-memory issuer that can be broken on purpose."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import anyio
import httpx
import pytest
from clocks import FakeClock

from bearerguard.testing import LocalIssuer

START = 1_700_000_000.0


class StubIssuer(LocalIssuer):
    """A LocalIssuer whose discovery and JWKS endpoints a test can break, slow down and inspect.

    Every request that reaches the transport is recorded in ``requests`` (its path) and in
    ``seen`` (the whole ``httpx.Request``), even when the issuer is ``down``.
    """

    def __init__(self, clock: Callable[[], float], **kwargs: Any) -> None:
        super().__init__(clock=clock, **kwargs)
        self.down = False  # every request fails with a connection error
        self.status: dict[str, int] = {}  # path -> forced status code
        self.jwks_headers: dict[str, str] = {}
        self.jwks_body: bytes | None = None  # replaces the JWKS document when set
        self.etag: str | None = None  # served with the JWKS; If-None-Match -> 304
        self.metadata_override: dict[str, Any] = {}
        self.gate: Callable[[], None] | None = None  # called (in the transport) before answering
        self.seen: list[httpx.Request] = []

    @property
    def base_path(self) -> str:
        return httpx.URL(self.issuer).path.rstrip("/")

    @property
    def jwks_path(self) -> str:
        return self.base_path + "/jwks"

    @property
    def discovery_path(self) -> str:
        return self.base_path + "/.well-known/openid-configuration"

    @property
    def fallback_path(self) -> str:
        return self.base_path + "/.well-known/oauth-authorization-server"

    @property
    def jwks_fetches(self) -> int:
        return self.requests.count(self.jwks_path)

    @property
    def discovery_fetches(self) -> int:
        return sum(".well-known" in path for path in self.requests)

    def metadata(self) -> dict[str, Any]:
        return {**super().metadata(), **self.metadata_override}

    def held_jwks(self) -> tuple[threading.Event, threading.Event, httpx.MockTransport]:
        """(entered, release, transport): JWKS requests through ``transport`` set ``entered``
        and wait (10 s at most) for ``release``, so a test can pile callers up behind one."""
        entered, release = threading.Event(), threading.Event()

        def held(request: httpx.Request) -> httpx.Response:
            if request.url.path == self.jwks_path:
                entered.set()
                release.wait(10)
            return self.handle(request)

        return entered, release, httpx.MockTransport(held)

    def held_jwks_async(self) -> tuple[anyio.Event, anyio.Event, httpx.MockTransport]:
        """``held_jwks`` for the async face (call it inside the event loop): the JWKS request
        awaits ``release`` instead of blocking a thread."""
        entered, release = anyio.Event(), anyio.Event()

        async def held(request: httpx.Request) -> httpx.Response:
            if request.url.path == self.jwks_path:
                entered.set()
                await release.wait()
            return self.handle(request)

        return entered, release, httpx.MockTransport(held)

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        with self._lock:
            self.requests.append(path)
            self.seen.append(request)
        if self.gate is not None:
            self.gate()
        if self.down:
            raise httpx.ConnectError("issuer is down", request=request)
        if path in self.status:
            return httpx.Response(self.status[path], json={"error": "forced"})
        if path == self.jwks_path:
            headers = dict(self.jwks_headers)
            if self.etag is not None:
                headers["ETag"] = self.etag
                if request.headers.get("If-None-Match") == self.etag:
                    return httpx.Response(304, headers=headers)
            body = self.jwks_body
            if body is None:
                body = json.dumps(self.jwks()).encode()
            headers.setdefault("Content-Type", "application/json")
            return httpx.Response(200, headers=headers, content=body)
        if path in (self.discovery_path, self.fallback_path):
            return httpx.Response(200, json=self.metadata())
        return httpx.Response(404, json={"error": "not found"})

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def stub_issuer(fake_clock: FakeClock) -> StubIssuer:
    """ES384 issuer https://issuer.test/oidc for audience https://api.test, on the fake clock."""
    return StubIssuer(fake_clock)
