"""KeySource.warm_up / warm_up_async and ready(), against real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

import httpx
import pytest
from faults import (
    ERROR_500,
    HANG,
    NOT_JSON,
    REFUSE,
    TRICKLE_HEADERS,
    FakeClock,
    FaultyIssuer,
)

from bearerguard import ConfigurationError, IssuerUnavailable, ResourceServer
from bearerguard.fetch import KeySource, WarmUpError
from bearerguard.testing import LocalIssuer

if TYPE_CHECKING:
    from conftest import StubIssuer

pytestmark = pytest.mark.anyio

AUDIENCE = "https://shopping.api"


@pytest.fixture(params=["sync", "async"])
def face(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def faulty(clock: FakeClock) -> Iterator[FaultyIssuer]:
    with FaultyIssuer(audience=AUDIENCE, clock=clock) as issuer:
        yield issuer


async def warm_up(source: KeySource, face: str) -> None:
    if face == "sync":
        source.warm_up()
    else:
        await source.warm_up_async()


async def authenticate(server: ResourceServer, face: str, token: str) -> str | None:
    if face == "sync":
        return server.authenticate(f"Bearer {token}").sub
    return (await server.authenticate_async(f"Bearer {token}")).sub


def only_source(server: ResourceServer) -> KeySource:
    (source,) = server.key_sources
    return source


async def test_warm_up_makes_ready_and_the_first_token_needs_no_fetch(face: str) -> None:
    issuer = LocalIssuer(audience=AUDIENCE)
    with issuer.serve():
        server = issuer.resource_server(AUDIENCE, transport=None)
        source = only_source(server)
        assert not source.ready()
        await warm_up(source, face)
        assert source.ready()
        assert issuer.requests == ["/oidc/.well-known/openid-configuration", "/oidc/jwks"]
        assert source.cache.fetches == 1
        assert await authenticate(server, face, issuer.mint()) == "test-client"
        assert len(issuer.requests) == 2  # no further fetch


async def test_warm_up_with_a_fixed_jwks_uri_skips_discovery(face: str) -> None:
    issuer = LocalIssuer(audience=AUDIENCE)
    with issuer.serve() as url:
        server = ResourceServer(url, AUDIENCE, jwks_uri=url + "/jwks")
        source = only_source(server)
        await warm_up(source, face)
        assert source.ready()
        assert issuer.requests == ["/oidc/jwks"]
        assert await authenticate(server, face, issuer.mint()) == "test-client"
        assert issuer.requests == ["/oidc/jwks"]


@pytest.mark.parametrize(
    ("mode", "only", "failing", "reason"),
    [
        (REFUSE, None, "/.well-known/openid-configuration", "ConnectError"),
        (ERROR_500, None, "/.well-known/openid-configuration", "HTTP 500"),
        (ERROR_500, "jwks", "/jwks", "JWKS endpoint answered HTTP 500"),
        (NOT_JSON, None, "/.well-known/openid-configuration", "not valid JSON"),
        (NOT_JSON, "jwks", "/jwks", "JWKS is not valid JSON"),
        (HANG, None, "/.well-known/openid-configuration", "ReadTimeout"),
        (HANG, "jwks", "/jwks", "ReadTimeout"),
        (TRICKLE_HEADERS, None, "/.well-known/openid-configuration", "took too long"),
    ],
)
async def test_a_failed_warm_up_names_the_url_and_leaves_the_source_not_ready(
    face: str, faulty: FaultyIssuer, mode: str, only: str | None, failing: str, reason: str
) -> None:
    # Short timeouts keep the hangs short; a hang at the JWKS gets a roomier one, so that the
    # discovery before it finishes well within the whole fetch's bound (twice the timeout)
    # even on a busy machine, and the failure is the JWKS's, as the row says.
    timeout = 1.0 if (mode, only) == (HANG, "jwks") else 0.2
    server = ResourceServer(faulty.url, AUDIENCE, fetch_timeout=timeout, clock=faulty.clock)
    source = only_source(server)
    faulty.set_mode(mode, only=only)  # type: ignore[arg-type]
    with pytest.raises(WarmUpError) as info:
        await warm_up(source, face)
    url = faulty.url + failing
    assert info.value.url == url
    assert info.value.issuer == faulty.url
    assert url in str(info.value)
    assert reason in str(info.value)
    assert reason in info.value.reason
    assert not source.ready()
    # Recorded like any failed fetch: the next request waits for the outage backoff.
    assert (source.cache.fetches, source.cache.failures) == (1, 1)
    assert source.cache.last_error == info.value.reason
    with pytest.raises(IssuerUnavailable) as unavailable:
        await authenticate(server, face, faulty.mint())
    assert unavailable.value.retry_after == 1
    assert source.cache.fetches == 1


async def test_a_failed_warm_up_of_a_fixed_jwks_uri_names_it(
    face: str, faulty: FaultyIssuer
) -> None:
    jwks_uri = faulty.url + "/jwks"
    server = ResourceServer(faulty.url, AUDIENCE, jwks_uri=jwks_uri, fetch_timeout=0.5)
    faulty.set_mode(ERROR_500)
    with pytest.raises(WarmUpError, match=jwks_uri) as info:
        await warm_up(only_source(server), face)
    assert info.value.url == jwks_uri
    assert faulty.count("discovery") == 0


async def test_warm_up_then_an_outage_stays_ready_until_max_stale(
    face: str, faulty: FaultyIssuer, clock: FakeClock
) -> None:
    server = ResourceServer(
        faulty.url, AUDIENCE, jwks_ttl=600, max_stale=1000, fetch_timeout=0.5, clock=clock
    )
    source = only_source(server)
    start = clock.now
    await warm_up(source, face)
    faulty.set_mode(REFUSE)
    clock.advance(600)  # stale: the refresh fails, the stale keys keep answering
    assert await authenticate(server, face, faulty.mint()) == "test-client"
    assert source.cache.failures == 1
    assert source.ready()
    assert source.ready(start + 600 + 999)
    clock.now = start + 600 + 999
    assert source.ready()
    clock.advance(1)
    assert not source.ready()
    assert source.ready(start)  # ``now`` overrides the clock
    with pytest.raises(IssuerUnavailable):
        await authenticate(server, face, faulty.mint())
    assert not source.ready()
    # A warm-up once the issuer is back makes the source ready again.
    faulty.set_mode("healthy")
    await warm_up(source, face)
    assert source.ready()


async def test_a_second_warm_up_revalidates_without_starting_the_kid_cooldown(
    face: str, faulty: FaultyIssuer
) -> None:
    server = ResourceServer(faulty.url, AUDIENCE, clock=faulty.clock)
    source = only_source(server)
    faulty.rotate()  # two keys published: a warm-up asks for no particular kid
    await warm_up(source, face)
    await warm_up(source, face)
    assert faulty.count("discovery") == 1  # the jwks_uri is remembered
    assert faulty.count("jwks") == 2
    new = faulty.rotate()  # rotated in right after the warm-up
    assert await authenticate(server, face, faulty.mint(key=new)) == "test-client"
    assert faulty.count("jwks") == 3


async def test_warm_up_on_a_face_the_transport_cannot_serve_is_a_configuration_error(
    face: str,
) -> None:
    class SyncOnly(httpx.BaseTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            raise AssertionError("never asked")

    class AsyncOnly(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            raise AssertionError("never asked")

    transport = AsyncOnly() if face == "sync" else SyncOnly()
    server = ResourceServer("https://issuer.test", AUDIENCE, transport=transport)
    source = only_source(server)
    with pytest.raises(ConfigurationError):
        await warm_up(source, face)
    assert source.cache.fetches == 0


def test_a_warm_up_joins_a_fetch_already_in_flight(stub_issuer: StubIssuer) -> None:
    entered, release, held = stub_issuer.held_jwks()
    server = stub_issuer.resource_server(transport=held)
    request = threading.Thread(target=server.authenticate, args=(f"Bearer {stub_issuer.mint()}",))
    request.start()
    assert entered.wait(10)
    # Not a clock: lets the warm-up below start waiting for the request's fetch.
    timer = threading.Timer(0.05, release.set)
    timer.start()
    try:
        only_source(server).warm_up()
    finally:
        release.set()
        timer.join(10)
        request.join(10)
    assert only_source(server).ready()
    assert stub_issuer.jwks_fetches == 1


async def test_an_async_warm_up_joins_a_fetch_already_in_flight(stub_issuer: StubIssuer) -> None:
    entered, release, held = stub_issuer.held_jwks_async()
    server = stub_issuer.resource_server(transport=held)
    source = only_source(server)
    request = asyncio.create_task(server.authenticate_async(f"Bearer {stub_issuer.mint()}"))
    await entered.wait()
    warm = asyncio.create_task(source.warm_up_async())
    await asyncio.sleep(0)  # the warm-up now waits for the lock
    release.set()
    await asyncio.wait_for(asyncio.gather(request, warm), 10)
    assert source.ready()
    assert stub_issuer.jwks_fetches == 1


# -- the ResourceServer faces --------------------------------------------------------------------


def test_the_server_warms_up_every_issuer_and_reports_the_first_failure() -> None:
    """Two issuers, one down: the healthy one is warmed up anyway, ready() stays False."""
    up = LocalIssuer("https://up.test/oidc", audience="https://api.test")
    down = LocalIssuer("https://down.test/oidc", audience="https://api.test")
    transports = {"up.test": up.transport(), "down.test": down.transport()}

    def route(request: httpx.Request) -> httpx.Response:
        if request.url.host == "down.test":
            raise httpx.ConnectError("refused", request=request)
        return transports["up.test"].handle_request(request)

    server = ResourceServer(
        [up.issuer, down.issuer], "https://api.test", transport=httpx.MockTransport(route)
    )
    assert not server.ready()
    with pytest.raises(WarmUpError, match=r"down\.test"):
        server.warm_up()
    assert not server.ready()
    assert server.key_sources[0].ready()
    with pytest.raises(WarmUpError, match=r"down\.test"):
        asyncio.run(server.warm_up_async())
    token = up.mint("read")
    assert server.authenticate(f"Bearer {token}").issuer == up.issuer
