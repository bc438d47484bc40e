"""Fault injection over real HTTP on 127.0.0.1: what a user sees when the issuer misbehaves.

The issuer stand-in (``tests/faults.py``) refuses connections, hangs, answers 500, truncated or
non-JSON bodies, a JWKS of malformed keys or no keys, a discovery document naming another
issuer, or trickles bytes. For each fault, both example apps (FastAPI in-process through
httpx.ASGITransport, Flask through its test client) and the ResourceServer's two faces must:

- with keys cached: keep serving them (200) up to ``max_stale`` past their TTL, then 503;
- with nothing cached: answer 503 + Retry-After + {"error": "temporarily_unavailable"} within
  the fetch timeout plus a margin (never hang, never 500);
- ask the issuer no more often than the policy allows while it is down: with keys cached,
  a refresh every ``refresh_retry`` (30 s); with none, backing off from 1 s to 5 s;
- recover (200) once the issuer is healthy again, without a restart: within the outage
  pace (5 s) when nothing usable is cached.

Time is faked (an injected clock on the key sources) except where wall time is the point.
"""

from __future__ import annotations

import concurrent.futures
import logging
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from faults import (
    ERROR_500,
    FAILING_MODES,
    FLIPPED_ISSUER,
    HANG,
    HEALTHY,
    JWKS_STAGE_MODES,
    MALFORMED_KEYS,
    MIXED_KEYS,
    NO_KEYS,
    NOT_JSON,
    REFUSE,
    TRICKLE,
    TRICKLE_HEADERS,
    TRUNCATED,
    AppClient,
    FakeClock,
    FaultyIssuer,
    Reply,
    example_client,
    tune,
)

from bearerguard import AccessToken, InvalidToken, IssuerUnavailable, ResourceServer
from bearerguard.testing import LocalIssuer, SigningKey

KINDS = ["fastapi", "flask"]
FACES = ["sync", "async"]
FETCH_TIMEOUT = 0.3  # seconds, while the issuer hangs or trickles; the default is 5
HEALTHY_TIMEOUT = 5.0  # otherwise: a loaded machine must not turn a healthy fetch into a fault
MARGIN = 1.0  # seconds of slack on top of what the timeout allows
REFRESH_RETRY = 30.0  # the default refresh_retry: a failed refresh with keys cached
OUTAGE_MAX = 5.0  # the default outage_retry_max: retries with nothing usable cached
TTL = 600.0  # the default jwks_ttl
MAX_STALE = 3600.0  # the default max_stale
READ = "read:products"

# (mode, only): every failing mode everywhere, then faults that hit only the JWKS (discovery
# answers fine, the second request fails).
COLD_CASES = [(mode, None) for mode in FAILING_MODES] + [
    (mode, "jwks") for mode in (HANG, ERROR_500, TRUNCATED, NOT_JSON)
]
# A discovery issuer flip goes unnoticed while the JWKS URL is known (it is only discovered
# again after a failure): it is covered cold. The slow faults (every fetch waits out the
# deadline) run once per kind of wait where they repeat: trickled headers only cold, the
# trickled body stale through the apps, a hang stale through the apps and in the cooldown count.
STALE_MODES = [m for m in FAILING_MODES if m not in (FLIPPED_ISSUER, TRICKLE_HEADERS)]
COOLDOWN_MODES = [m for m in FAILING_MODES if m not in (TRICKLE, TRICKLE_HEADERS)]
RS_STALE_MODES = [m for m in STALE_MODES if m not in (HANG, TRICKLE)]


def case_id(case: tuple[str, str | None]) -> str:
    mode, only = case
    return mode if only is None else f"{mode}-{only}-only"


SLOW_MODES = frozenset({HANG, TRICKLE, TRICKLE_HEADERS})  # the client must give up


def time_bound(mode: str) -> float:
    """How long a cold start may take: one timeout, two when bytes trickle, else no wait."""
    if mode in SLOW_MODES:
        return (1 if mode == HANG else 2) * FETCH_TIMEOUT + MARGIN
    return MARGIN


def break_issuer(
    faulty: FaultyIssuer, server: ResourceServer, mode: str, only: str | None = None
) -> None:
    """Switch the fault on, with a short fetch timeout where the client has to wait it out."""
    tune(server, timeout=FETCH_TIMEOUT if mode in SLOW_MODES else HEALTHY_TIMEOUT)
    faulty.set_mode(mode, only=only)


def heal_issuer(faulty: FaultyIssuer, server: ResourceServer) -> None:
    tune(server, timeout=HEALTHY_TIMEOUT)
    faulty.set_mode(HEALTHY)


def expected_requests(mode: str, only: str | None, attempts: int) -> tuple[int, int]:
    """(discovery, jwks) requests the stand-in sees for ``attempts`` cold fetch attempts.

    (With a slow fault a loaded machine may give up before the second request: compare with
    ``<=`` there.)
    """
    if mode == REFUSE:
        return 0, 0
    if mode in JWKS_STAGE_MODES or only == "jwks":
        return attempts, attempts
    return attempts, 0


@pytest.fixture
def faulty() -> Iterator[FaultyIssuer]:
    with FaultyIssuer(trickle_interval=0.05, header_padding=40) as issuer:
        yield issuer


@pytest.fixture(params=KINDS)
def api(request: pytest.FixtureRequest, faulty: FaultyIssuer) -> Iterator[AppClient]:
    with example_client(request.param, faulty) as client:
        yield client


def assert_503(reply: Reply, *, wait: float = OUTAGE_MAX) -> int:
    """A 503 with the usual body and a Retry-After of at most ``wait``; returns it."""
    assert reply.status == 503, (reply.status, reply.body)
    assert reply.headers["www-authenticate"].startswith("Bearer")
    retry_after = int(reply.headers["retry-after"])
    assert 1 <= retry_after <= wait
    body = reply.json()
    assert body["error"] == "temporarily_unavailable"
    assert isinstance(body["error_description"], str)
    assert body["error_description"]
    return retry_after


def assert_invalid_token(reply: Reply) -> None:
    assert reply.status == 401, (reply.status, reply.body)
    assert 'error="invalid_token"' in reply.headers["www-authenticate"]
    assert reply.json()["error"] == "invalid_token"


def assert_requests(faulty: FaultyIssuer, mode: str, only: str | None, attempts: int) -> None:
    seen = (faulty.count("discovery"), faulty.count("jwks"))
    expected = expected_requests(mode, only, attempts)
    if mode in SLOW_MODES:
        assert seen[0] == expected[0]
        assert seen[1] <= expected[1]
    else:
        assert seen == expected


STRANGER = SigningKey.generate("ES384")


def stranger_token(faulty: FaultyIssuer) -> str:
    """A token from the right issuer signed by a key it never published."""
    return faulty.mint(READ, key=STRANGER)


# -- the example apps ---------------------------------------------------------------------------


@pytest.mark.parametrize("case", COLD_CASES, ids=case_id)
def test_cold_start_with_a_failing_issuer_is_a_prompt_503(
    api: AppClient,
    faulty: FaultyIssuer,
    case: tuple[str, str | None],
) -> None:
    mode, only = case
    break_issuer(faulty, api.server, mode, only)
    started = time.monotonic()
    reply = api.get("/products", faulty.mint(READ))
    elapsed = time.monotonic() - started
    assert_503(reply)
    assert elapsed < time_bound(mode), f"{elapsed:.2f}s to answer"
    assert_requests(faulty, mode, only, 1)
    # Public routes never need the issuer.
    assert api.get("/health", faulty.mint(READ)).status == 200


@pytest.mark.parametrize("mode", STALE_MODES)
def test_cached_keys_serve_through_an_outage_up_to_max_stale_then_recover(
    api: AppClient, faulty: FaultyIssuer, mode: str
) -> None:
    clock = FakeClock()
    tune(api.server, clock=clock)
    (source,) = api.server.key_sources
    assert api.get("/products", faulty.mint(READ)).status == 200
    fetches = source.cache.fetches
    faulty.reset_counts()
    break_issuer(faulty, api.server, mode)

    clock.advance(TTL + 1)  # the keys are stale: one refresh, it fails, they keep serving
    assert api.get("/products", faulty.mint(READ)).status == 200
    # An unknown kid while keys are cached: one refetch (the kid might be new), which fails,
    # so it is the token's fault; the next one within the cooldown asks nobody.
    assert_invalid_token(api.get("/products", stranger_token(faulty)))
    assert_invalid_token(api.get("/products", stranger_token(faulty)))
    assert source.cache.fetches - fetches == 2
    clock.advance(MAX_STALE - 3)  # two seconds before the stale window closes: a refresh
    assert api.get("/whoami", faulty.mint()).status == 200
    clock.advance(2)  # the window has closed; the last try was 2 s ago: 503, no fetch
    wait = assert_503(api.get("/products", faulty.mint(READ)))
    assert source.cache.fetches - fetches == 3
    assert faulty.count("all") <= 3 * 2

    heal_issuer(faulty, api.server)
    asked = faulty.count("all")
    assert assert_503(api.get("/products", faulty.mint(READ))) == wait  # no fetch yet
    assert faulty.count("all") == asked
    clock.advance(wait)  # what Retry-After said, and no more than the outage pace
    assert api.get("/products", faulty.mint(READ)).status == 200  # no restart needed
    assert source.cache.fetches - fetches == 4


@pytest.mark.parametrize("mode", COOLDOWN_MODES)
def test_a_down_issuer_with_nothing_cached_is_asked_with_backoff_then_recovery(
    api: AppClient, faulty: FaultyIssuer, mode: str
) -> None:
    clock = FakeClock()
    tune(api.server, clock=clock)
    (source,) = api.server.key_sources
    break_issuer(faulty, api.server, mode)
    for _ in range(60):  # a request every second for a minute
        assert_503(api.get("/products", faulty.mint(READ)))
        clock.advance(1)
    # Tries at 0, +1, +3, +7 (waits of 1, 2, 4 s), then every 5 s: 12, 17, ..., 57.
    assert source.cache.fetches == 4 + 10
    assert_requests(faulty, mode, None, 14)

    heal_issuer(faulty, api.server)  # at +60; the next try is due at +62
    wait = assert_503(api.get("/products", faulty.mint(READ)))
    assert wait == 2
    clock.advance(wait)
    assert api.get("/products", faulty.mint(READ)).status == 200
    assert source.cache.fetches == 15


def test_a_concurrent_cold_start_against_a_hanging_issuer_fetches_once(
    api: AppClient, faulty: FaultyIssuer
) -> None:
    break_issuer(faulty, api.server, HANG)
    tokens = [faulty.mint(READ) for _ in range(8)]
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(len(tokens)) as pool:
        replies = list(pool.map(lambda t: api.get("/products", t), tokens))
    elapsed = time.monotonic() - started
    for reply in replies:
        assert_503(reply)
    assert elapsed < time_bound(HANG)
    assert faulty.count("discovery") == 1


def test_a_flipped_discovery_issuer_is_a_503_and_says_why_in_the_log(
    api: AppClient, faulty: FaultyIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    faulty.set_mode(FLIPPED_ISSUER)
    with caplog.at_level(logging.WARNING, logger="bearerguard"):
        assert_503(api.get("/products", faulty.mint(READ)))
    messages = [r.getMessage() for r in caplog.records if r.name == "bearerguard"]
    assert any(
        "issuer does not equal the configured issuer" in m and faulty.url in m for m in messages
    ), messages
    assert all(r.levelno >= logging.WARNING for r in caplog.records if r.name == "bearerguard")


def test_malformed_keys_beside_good_ones_are_skipped(api: AppClient, faulty: FaultyIssuer) -> None:
    faulty.set_mode(MIXED_KEYS)
    assert api.get("/products", faulty.mint(READ)).status == 200
    # The real key republished as encryption-only / for another algorithm: never used.
    kid = faulty.issuer.current_key.kid
    for unusable in ("enc-" + kid, "ops-" + kid, "alg-" + kid):
        assert_invalid_token(api.get("/products", faulty.mint(READ, header={"kid": unusable})))


@pytest.mark.parametrize("mode", [MALFORMED_KEYS, NO_KEYS])
def test_a_jwks_without_usable_keys_never_replaces_cached_ones(
    api: AppClient, faulty: FaultyIssuer, mode: str
) -> None:
    clock = FakeClock()
    tune(api.server, clock=clock)
    assert api.get("/products", faulty.mint(READ)).status == 200
    faulty.set_mode(mode)
    clock.advance(TTL + 1)
    assert api.get("/products", faulty.mint(READ)).status == 200
    assert api.server.key_sources[0].cache.last_error == "JWKS holds no usable signing key"


def test_an_issuer_on_a_port_nothing_listens_on_is_a_prompt_503(faulty: FaultyIssuer) -> None:
    url = faulty.closed_port_url
    issuer = LocalIssuer(url, audience=faulty.audience)
    for kind in KINDS:
        with example_client(kind, faulty, url=url) as api:
            started = time.monotonic()
            assert_503(api.get("/products", issuer.mint(READ)))
            assert time.monotonic() - started < MARGIN


# -- the ResourceServer's two faces -------------------------------------------------------------


def resource_server(faulty: FaultyIssuer, clock: FakeClock, **kwargs: float) -> ResourceServer:
    faulty.issuer.clock = clock  # tokens are minted on the fake clock too
    kwargs.setdefault("fetch_timeout", HEALTHY_TIMEOUT)
    return ResourceServer(faulty.url, faulty.audience, require_typ=True, clock=clock, **kwargs)


async def authenticate(server: ResourceServer, face: str, token: str) -> AccessToken:
    if face == "sync":
        return server.authenticate("Bearer " + token)
    return await server.authenticate_async("Bearer " + token)


@pytest.mark.anyio
@pytest.mark.parametrize("face", FACES)
@pytest.mark.parametrize("case", [(m, None) for m in FAILING_MODES], ids=case_id)
async def test_resource_server_cold_start_with_a_failing_issuer(
    faulty: FaultyIssuer, face: str, case: tuple[str, str | None]
) -> None:
    mode, only = case
    server = resource_server(faulty, FakeClock(), refetch_cooldown=12)
    break_issuer(faulty, server, mode, only)
    started = time.monotonic()
    with pytest.raises(IssuerUnavailable) as caught:
        await authenticate(server, face, faulty.mint(READ))
    assert time.monotonic() - started < time_bound(mode)
    assert caught.value.status_code == 503
    assert caught.value.retry_after == 1  # nothing cached: the first retry comes after 1 s
    assert caught.value.headers["Retry-After"] == "1"
    assert caught.value.to_dict()["error"] == "temporarily_unavailable"
    assert server.key_sources[0].cache.last_error
    assert_requests(faulty, mode, only, 1)


@pytest.mark.anyio
@pytest.mark.parametrize("face", FACES)
@pytest.mark.parametrize("mode", RS_STALE_MODES)
async def test_resource_server_stale_keys_cooldown_and_recovery(
    faulty: FaultyIssuer, face: str, mode: str
) -> None:
    clock = FakeClock()
    server = resource_server(
        faulty, clock, refresh_retry=25, refetch_cooldown=25, max_stale=100, jwks_ttl=60
    )
    (source,) = server.key_sources
    assert (await authenticate(server, face, faulty.mint(READ))).scopes == {READ}
    break_issuer(faulty, server, mode)
    clock.advance(60)  # stale from here on: 100 s of requests, one every 4 s
    for _ in range(25):
        token = await authenticate(server, face, faulty.mint(READ))
        assert token.issuer == faulty.url
        with pytest.raises(InvalidToken):
            await authenticate(server, face, stranger_token(faulty))
        clock.advance(4)
    # The first fetch; then at +0, +28, +56 and +84 a refresh and an unknown-kid refetch.
    assert source.cache.fetches == 1 + 8
    # The stale window has closed: nothing usable, so the outage pace applies at once.
    with pytest.raises(IssuerUnavailable) as caught:
        await authenticate(server, face, faulty.mint(READ))
    assert source.cache.fetches == 1 + 9
    assert source.cache.keys is None  # the failed try dropped the stale keys
    assert caught.value.retry_after == 5  # nine failures in a row: the 5 s ceiling

    heal_issuer(faulty, server)
    clock.advance(5)
    assert (await authenticate(server, face, faulty.mint(READ))).scopes == {READ}
    assert source.cache.last_error is None


@pytest.mark.anyio
@pytest.mark.parametrize("face", FACES)
async def test_resource_server_faults_only_at_the_jwks_after_discovery(
    faulty: FaultyIssuer, face: str
) -> None:
    """The JWKS URL stays known across refreshes; after a failure it is discovered again."""
    clock = FakeClock()
    server = resource_server(faulty, clock, refresh_retry=10)
    await authenticate(server, face, faulty.mint(READ))
    assert (faulty.count("discovery"), faulty.count("jwks")) == (1, 1)
    faulty.set_mode(ERROR_500, only="jwks")
    clock.advance(TTL)
    await authenticate(server, face, faulty.mint(READ))  # stale keys serve
    assert (faulty.count("discovery"), faulty.count("jwks")) == (1, 2)
    faulty.set_mode(HEALTHY)
    clock.advance(10)
    await authenticate(server, face, faulty.mint(READ))
    assert (faulty.count("discovery"), faulty.count("jwks")) == (2, 3)


# -- the stand-in itself ------------------------------------------------------------------------


def test_the_stand_in_releases_hanging_handlers_on_stop() -> None:
    before = set(threading.enumerate())
    issuer = FaultyIssuer().start()
    issuer.set_mode(HANG)
    clients = []
    for _ in range(3):
        sock = socket.create_connection(("127.0.0.1", issuer.port), timeout=5)
        sock.sendall(b"GET /oidc/jwks HTTP/1.1\r\nHost: x\r\n\r\n")
        clients.append(sock)
    deadline = time.monotonic() + 5
    while issuer.count("jwks") < 3 and time.monotonic() < deadline:
        time.sleep(0.01)  # waiting for three real connections to arrive
    assert issuer.count("jwks") == 3
    started = time.monotonic()
    issuer.stop()
    assert time.monotonic() - started < 2
    for sock in clients:
        assert sock.recv(100) == b""  # closed without an answer
        sock.close()
    assert set(threading.enumerate()) <= before


def test_the_stand_in_refuses_then_serves_again_on_the_same_port(faulty: FaultyIssuer) -> None:
    url = faulty.url
    faulty.set_mode(REFUSE)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", faulty.port), timeout=1).close()
    faulty.set_mode(HEALTHY)
    assert faulty.url == url
    server = ResourceServer(faulty.url, faulty.audience, require_typ=True)
    assert server.authenticate("Bearer " + faulty.mint(READ)).scopes == {READ}
    assert faulty.requests == ["/oidc/.well-known/openid-configuration", "/oidc/jwks"]
