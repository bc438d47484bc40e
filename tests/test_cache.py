"""The JWKS cache and the verified-token cache, driven by an injected clock (no sleeping)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import threading
import time
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import httpx
import pytest

import bearerguard.server
from bearerguard import AccessToken, InvalidToken, IssuerUnavailable, ResourceServer
from bearerguard.keys import CachePolicy, KeyCache, KeySet
from bearerguard.signing import SigningKey

if TYPE_CHECKING:
    from conftest import FakeClock, StubIssuer


def bearer(token: str) -> str:
    return f"Bearer {token}"


def with_kid(token: str, kid: str) -> str:
    """``token`` with its header's kid replaced (the signature no longer matters)."""
    header = json.dumps({"alg": "ES384", "typ": "at+jwt", "kid": kid}).encode()
    segment = base64.urlsafe_b64encode(header).rstrip(b"=").decode()
    return segment + token[token.index(".") :]


def fresh(issuer: StubIssuer, server: ResourceServer, **kwargs: Any) -> AccessToken:
    """Verify a newly minted token (never a verified-token cache hit)."""
    return server.authenticate(bearer(issuer.mint(**kwargs)))


# -- keys are fetched once and kept for their lifetime --------------------------------------------


def test_keys_are_fetched_once_then_served(stub_issuer: StubIssuer) -> None:
    server = stub_issuer.resource_server()
    for _ in range(5):
        fresh(stub_issuer, server)
    assert stub_issuer.discovery_fetches == 1
    assert stub_issuer.jwks_fetches == 1


@pytest.mark.anyio
async def test_both_faces_share_one_key_cache(stub_issuer: StubIssuer) -> None:
    server = stub_issuer.resource_server()
    fresh(stub_issuer, server)
    await server.authenticate_async(bearer(stub_issuer.mint()))
    assert stub_issuer.jwks_fetches == 1


def test_keys_are_refetched_after_their_ttl(stub_issuer: StubIssuer, fake_clock: FakeClock) -> None:
    server = stub_issuer.resource_server(jwks_ttl=600)
    fresh(stub_issuer, server)
    fake_clock.advance(599)
    fresh(stub_issuer, server)
    assert stub_issuer.jwks_fetches == 1
    fake_clock.advance(1)
    fresh(stub_issuer, server)
    assert stub_issuer.jwks_fetches == 2
    assert stub_issuer.discovery_fetches == 1  # the jwks_uri is remembered


@pytest.mark.parametrize(
    ("cache_control", "lifetime"),
    [
        ("public, max-age=120", 120),
        ("s-maxage=200, max-age=100", 200),
        ("max-age=5", 45),  # below jwks_min_ttl
        ("no-cache, max-age=0, must-revalidate", 45),  # what Logto sends
        ("no-store", 45),
        ("max-age=999999", 3000),  # above jwks_max_ttl
        ("private", 600),  # no lifetime given: jwks_ttl
    ],
)
def test_cache_control_max_age_is_honoured_within_bounds(
    stub_issuer: StubIssuer, fake_clock: FakeClock, cache_control: str, lifetime: int
) -> None:
    stub_issuer.jwks_headers["Cache-Control"] = cache_control
    server = stub_issuer.resource_server(jwks_min_ttl=45, jwks_ttl=600, jwks_max_ttl=3000)
    fresh(stub_issuer, server)
    fake_clock.advance(lifetime - 1)
    fresh(stub_issuer, server)
    assert stub_issuer.jwks_fetches == 1
    fake_clock.advance(1)
    fresh(stub_issuer, server)
    assert stub_issuer.jwks_fetches == 2


def test_etag_revalidation_keeps_the_keys(stub_issuer: StubIssuer, fake_clock: FakeClock) -> None:
    stub_issuer.etag = '"v1"'
    server = stub_issuer.resource_server(jwks_ttl=600)
    fresh(stub_issuer, server)
    first = [r for r in stub_issuer.seen if r.url.path == stub_issuer.jwks_path]
    assert "If-None-Match" not in first[0].headers
    fake_clock.advance(600)
    assert fresh(stub_issuer, server).sub == "test-client"  # answered 304: old keys serve
    revalidations = [r for r in stub_issuer.seen if r.url.path == stub_issuer.jwks_path]
    assert len(revalidations) == 2
    assert revalidations[1].headers["If-None-Match"] == '"v1"'
    # The 304 renewed the keys' lifetime.
    fake_clock.advance(599)
    fresh(stub_issuer, server)
    assert stub_issuer.jwks_fetches == 2
    fake_clock.advance(1)
    fresh(stub_issuer, server)
    assert stub_issuer.jwks_fetches == 3


# -- unknown kids, rotation and the refetch cooldown ----------------------------------------------


def test_a_flood_of_random_kids_refetches_at_most_once_per_cooldown(
    stub_issuer: StubIssuer, fake_clock: FakeClock
) -> None:
    server = stub_issuer.resource_server(refetch_cooldown=30)
    token = stub_issuer.mint()
    server.authenticate(bearer(token))
    rng = random.Random(2)
    for _ in range(1000):
        fake_clock.advance(0.01)  # ten seconds of flood in all
        with pytest.raises(InvalidToken, match="unknown signing key"):
            server.authenticate(bearer(with_kid(token, f"{rng.getrandbits(64):016x}")))
    assert stub_issuer.jwks_fetches == 2  # the first fetch and one refetch
    fresh(stub_issuer, server)  # real tokens keep working, without a fetch
    assert stub_issuer.jwks_fetches == 2
    fake_clock.advance(30)
    with pytest.raises(InvalidToken):
        server.authenticate(bearer(with_kid(token, "another-random-kid")))
    assert stub_issuer.jwks_fetches == 3  # the cooldown has passed: one more


@pytest.mark.anyio
async def test_a_concurrent_flood_of_random_kids_refetches_once(stub_issuer: StubIssuer) -> None:
    server = stub_issuer.resource_server()
    token = stub_issuer.mint()
    await server.authenticate_async(bearer(token))
    failures: list[type[Exception]] = []

    async def attack(kid: str) -> None:
        try:
            await server.authenticate_async(bearer(with_kid(token, kid)))
        except InvalidToken as exc:
            failures.append(type(exc))

    async with anyio.create_task_group() as tg:
        for i in range(300):
            tg.start_soon(attack, f"random-{i}")
    assert failures == [InvalidToken] * 300
    assert stub_issuer.jwks_fetches == 2


def test_a_key_rotated_in_is_fetched_once_then_served(
    stub_issuer: StubIssuer, fake_clock: FakeClock
) -> None:
    server = stub_issuer.resource_server()
    old = stub_issuer.current_key
    fresh(stub_issuer, server)
    new = stub_issuer.rotate()  # the old key stays published
    fake_clock.advance(1)
    assert fresh(stub_issuer, server, key=new).sub == "test-client"
    assert stub_issuer.jwks_fetches == 2
    fresh(stub_issuer, server, key=new)
    fresh(stub_issuer, server, key=new)
    assert stub_issuer.jwks_fetches == 2
    assert fresh(stub_issuer, server, key=old).sub == "test-client"  # still published
    assert stub_issuer.jwks_fetches == 2


def test_a_key_removed_from_the_jwks_stops_verifying_after_a_refresh(
    stub_issuer: StubIssuer, fake_clock: FakeClock
) -> None:
    server = stub_issuer.resource_server(jwks_ttl=600)
    old = stub_issuer.current_key
    fresh(stub_issuer, server)
    stub_issuer.rotate(keep_previous=False)
    fresh(stub_issuer, server, key=old)  # keys still fresh: the old key serves
    fake_clock.advance(600)
    fresh(stub_issuer, server)  # routine refresh: the old key is gone
    with pytest.raises(InvalidToken, match="unknown signing key"):
        fresh(stub_issuer, server, key=old)


def test_a_routine_refresh_does_not_start_the_cooldown(
    stub_issuer: StubIssuer, fake_clock: FakeClock
) -> None:
    server = stub_issuer.resource_server(jwks_ttl=600, refetch_cooldown=30)
    fresh(stub_issuer, server)
    fake_clock.advance(600)
    fresh(stub_issuer, server)  # a routine (max-age) refresh
    assert stub_issuer.jwks_fetches == 2
    stub_issuer.rotate()  # Logto rotates right after it
    fake_clock.advance(1)
    assert fresh(stub_issuer, server).sub == "test-client"  # the first token with the new kid
    assert stub_issuer.jwks_fetches == 3


def test_an_unknown_kid_refetch_starts_the_cooldown(
    stub_issuer: StubIssuer, fake_clock: FakeClock
) -> None:
    server = stub_issuer.resource_server(refetch_cooldown=30)
    token = stub_issuer.mint()
    server.authenticate(bearer(token))
    with pytest.raises(InvalidToken):
        server.authenticate(bearer(with_kid(token, "nope")))
    assert stub_issuer.jwks_fetches == 2
    stub_issuer.rotate()
    fake_clock.advance(29)
    with pytest.raises(InvalidToken, match="unknown signing key"):
        fresh(stub_issuer, server)  # inside the cooldown: not asked again
    assert stub_issuer.jwks_fetches == 2
    fake_clock.advance(1)
    assert fresh(stub_issuer, server).sub == "test-client"
    assert stub_issuer.jwks_fetches == 3


def test_a_key_rotated_in_right_after_a_stray_kid_is_usable_within_5_seconds(
    stub_issuer: StubIssuer, fake_clock: FakeClock
) -> None:
    """The defaults: one random-kid token cannot shut a rotated-in key out for long."""
    server = stub_issuer.resource_server()
    token = stub_issuer.mint()
    server.authenticate(bearer(token))
    with pytest.raises(InvalidToken):
        server.authenticate(bearer(with_kid(token, "random")))  # starts the 5 s cooldown
    stub_issuer.rotate()
    fake_clock.advance(0.5)
    first_token_at = fake_clock.now
    while True:
        try:
            fresh(stub_issuer, server)
            break
        except InvalidToken:
            fake_clock.advance(0.5)
    assert fake_clock.now - first_token_at <= 5
    assert stub_issuer.jwks_fetches == 3


def test_a_key_rotated_in_after_a_failed_refresh_is_usable_within_5_seconds(
    stub_issuer: StubIssuer, fake_clock: FakeClock
) -> None:
    """A failed refresh (issuer briefly down, keys stale) delays routine refreshes by 30 s,
    but not the first token of a newly published key."""
    server = stub_issuer.resource_server(jwks_ttl=600)
    fresh(stub_issuer, server)
    stub_issuer.down = True
    fake_clock.advance(600)
    fresh(stub_issuer, server)  # the refresh fails; stale keys serve
    stub_issuer.down = False
    stub_issuer.rotate()
    fake_clock.advance(1)
    assert fresh(stub_issuer, server).sub == "test-client"  # fetched at once


def test_random_kids_cost_the_issuer_one_fetch_per_5_seconds(
    stub_issuer: StubIssuer, fake_clock: FakeClock
) -> None:
    server = stub_issuer.resource_server()
    token = stub_issuer.mint()
    server.authenticate(bearer(token))
    rng = random.Random(5)
    for _ in range(600):  # one random kid every 0.1 s for a minute
        with pytest.raises(InvalidToken, match="unknown signing key"):
            server.authenticate(bearer(with_kid(token, f"{rng.getrandbits(64):016x}")))
        fake_clock.advance(0.1)
    assert stub_issuer.jwks_fetches == 1 + 12  # the first fetch, then at 0, 5, ..., 55 s


# -- when the issuer is down -----------------------------------------------------------------------


def test_stale_keys_serve_while_the_issuer_is_down_until_max_stale(
    stub_issuer: StubIssuer, fake_clock: FakeClock
) -> None:
    server = stub_issuer.resource_server(jwks_ttl=600, max_stale=1000, refetch_cooldown=30)
    start = fake_clock.now
    fresh(stub_issuer, server)
    stub_issuer.down = True
    attempts = len(stub_issuer.requests)

    fake_clock.advance(600)  # the keys are stale: one attempt, which fails
    assert fresh(stub_issuer, server).sub == "test-client"
    assert len(stub_issuer.requests) == attempts + 1
    fake_clock.advance(29)  # inside the cooldown: stale keys, no attempt
    fresh(stub_issuer, server)
    assert len(stub_issuer.requests) == attempts + 1
    fake_clock.advance(1)  # cooldown over: one more attempt, still stale keys
    fresh(stub_issuer, server)
    assert len(stub_issuer.requests) == attempts + 2

    fake_clock.now = start + 600 + 1000 - 1  # 1 s before the keys are too stale
    fresh(stub_issuer, server)
    assert len(stub_issuer.requests) == attempts + 3
    fake_clock.advance(1)
    with pytest.raises(IssuerUnavailable) as info:
        fresh(stub_issuer, server)
    assert info.value.status_code == 503
    assert 1 <= info.value.retry_after <= 30


def test_cold_and_down_is_issuer_unavailable_with_retry_after(
    stub_issuer: StubIssuer, fake_clock: FakeClock
) -> None:
    stub_issuer.down = True
    server = stub_issuer.resource_server()
    with pytest.raises(IssuerUnavailable) as info:
        fresh(stub_issuer, server)
    assert info.value.status_code == 503
    assert info.value.retry_after == 1  # nothing cached: the first retry comes after 1 s
    assert info.value.headers["Retry-After"] == "1"
    assert json.loads(info.value.to_json())["error"] == "temporarily_unavailable"


def test_with_nothing_cached_retries_back_off_from_1_to_5_seconds(
    stub_issuer: StubIssuer, fake_clock: FakeClock
) -> None:
    stub_issuer.down = True
    server = stub_issuer.resource_server()
    start = fake_clock.now
    tried_at: list[float] = []
    waits: list[int] = []
    while fake_clock.now < start + 30:
        before = len(stub_issuer.requests)
        with pytest.raises(IssuerUnavailable) as info:
            fresh(stub_issuer, server)
        if len(stub_issuer.requests) > before:
            tried_at.append(fake_clock.now - start)
            waits.append(info.value.retry_after)
        fake_clock.advance(0.25)
    assert tried_at == [0, 1, 3, 7, 12, 17, 22, 27]
    assert waits == [1, 2, 4, 5, 5, 5, 5, 5]  # Retry-After says the real wait
    # Within the backoff nothing is asked, and Retry-After counts down to the next try.
    fake_clock.now = start + 29
    with pytest.raises(IssuerUnavailable) as info:
        fresh(stub_issuer, server)
    assert info.value.retry_after == 3
    assert len(stub_issuer.requests) == 8


def test_a_hanging_try_does_not_push_the_next_one_back(
    stub_issuer: StubIssuer, fake_clock: FakeClock
) -> None:
    """The backoff counts from the start of a try: one that hung for its whole deadline is
    followed by the next as soon as a request comes."""
    stub_issuer.down = True
    server = stub_issuer.resource_server()
    for _ in range(4):  # waits of 1, 2, 4, then 5 s
        with pytest.raises(IssuerUnavailable):
            fresh(stub_issuer, server)
        fake_clock.advance(5)
    (source,) = server.key_sources
    source.cache.started(None, fake_clock.now)  # a try that then hangs for 10 s
    fake_clock.advance(10)
    source.cache.failed("took too long", fake_clock.now)
    assert source.cache.retry_after(fake_clock.now) == 1
    before = len(stub_issuer.requests)
    with pytest.raises(IssuerUnavailable):
        fresh(stub_issuer, server)
    assert len(stub_issuer.requests) == before + 1


def test_no_more_fetches_than_the_refresh_retry_allows_while_keys_are_cached(
    stub_issuer: StubIssuer, fake_clock: FakeClock
) -> None:
    server = stub_issuer.resource_server(jwks_ttl=600)
    fresh(stub_issuer, server)
    stub_issuer.down = True
    fake_clock.advance(600)
    asked = len(stub_issuer.requests)
    for _ in range(50):  # 50 s of requests with stale keys: one try, then one 30 s later
        fresh(stub_issuer, server)
        fake_clock.advance(1)
    assert len(stub_issuer.requests) - asked == 2


@pytest.mark.anyio
async def test_cold_and_down_async(stub_issuer: StubIssuer) -> None:
    stub_issuer.down = True
    server = stub_issuer.resource_server()
    for _ in range(20):
        with pytest.raises(IssuerUnavailable):
            await server.authenticate_async(bearer(stub_issuer.mint()))
    assert len(stub_issuer.requests) == 1


def test_recovery_once_the_issuer_is_back(stub_issuer: StubIssuer, fake_clock: FakeClock) -> None:
    stub_issuer.down = True
    server = stub_issuer.resource_server()
    with pytest.raises(IssuerUnavailable) as info:
        fresh(stub_issuer, server)
    stub_issuer.down = False
    fake_clock.advance(info.value.retry_after)
    assert fresh(stub_issuer, server).sub == "test-client"
    assert stub_issuer.jwks_fetches == 1


@pytest.mark.parametrize("stale", [False, True])
def test_an_unknown_kid_while_down_with_keys_cached_is_an_invalid_token(
    stub_issuer: StubIssuer, fake_clock: FakeClock, stale: bool
) -> None:
    server = stub_issuer.resource_server(jwks_ttl=600)
    token = stub_issuer.mint()
    server.authenticate(bearer(token))
    stub_issuer.down = True
    if stale:
        fake_clock.advance(600)
    for kid in ("unknown-1", "unknown-2"):
        with pytest.raises(InvalidToken, match="unknown signing key"):
            server.authenticate(bearer(with_kid(token, kid)))
    assert fresh(stub_issuer, server).sub == "test-client"


def test_an_unknown_kid_may_ask_again_one_cooldown_after_its_failed_try_while_stale_keys_serve(
    stub_issuer: StubIssuer, fake_clock: FakeClock
) -> None:
    """After a failed refresh the routine retry waits refresh_retry (30 s), but a token with a
    new kid may have the issuer asked again as soon as refetch_cooldown (5 s) has passed."""
    server = stub_issuer.resource_server(jwks_ttl=600)
    token = stub_issuer.mint()
    server.authenticate(bearer(token))
    stub_issuer.down = True
    fake_clock.advance(600)
    fresh(stub_issuer, server)  # the refresh fails: stale keys serve, the next try in 30 s
    fake_clock.advance(1)
    with pytest.raises(InvalidToken, match="unknown signing key"):
        server.authenticate(bearer(with_kid(token, "stray")))  # a try, which fails too
    asked = len(stub_issuer.requests)
    stub_issuer.down = False
    new = stub_issuer.rotate()
    fake_clock.advance(4.5)
    with pytest.raises(InvalidToken, match="unknown signing key"):
        fresh(stub_issuer, server, key=new)  # inside the cooldown: not asked
    assert len(stub_issuer.requests) == asked
    fake_clock.advance(0.5)  # 5 s to the second after the stray kid's try
    assert fresh(stub_issuer, server, key=new).sub == "test-client"  # asked at once


def test_a_wall_clock_stepping_back_after_the_keys_were_dropped_is_a_503_not_a_crash(
    stub_issuer: StubIssuer, fake_clock: FakeClock
) -> None:
    """The default clock is the wall clock, which can step back (NTP). Keys dropped when
    max_stale ran out stay dropped at a time before their expiry, and Retry-After counts to
    the next try on the clock as it now reads."""
    server = stub_issuer.resource_server(jwks_ttl=600, max_stale=0)
    fresh(stub_issuer, server)
    stub_issuer.down = True
    fake_clock.advance(600)
    dropped_at = fake_clock.now
    with pytest.raises(IssuerUnavailable):
        fresh(stub_issuer, server)  # the refresh fails and the keys are dropped
    fake_clock.now = dropped_at - 2  # stepped back before the keys' expiry
    with pytest.raises(IssuerUnavailable) as info:
        fresh(stub_issuer, server)
    assert info.value.retry_after == 3  # the next try is 1 s after the failed one
    fake_clock.now = dropped_at + 1  # that try is due; the clock steps back while it runs

    def step_back() -> None:
        fake_clock.now = dropped_at - 2

    stub_issuer.gate = step_back
    with pytest.raises(IssuerUnavailable) as info:
        fresh(stub_issuer, server)
    assert info.value.retry_after == 5  # 2 s after that try began, counted from 3 s before it


# -- broken documents ------------------------------------------------------------------------------

BROKEN_JWKS = {
    "not-json": b"<html>oops</html>",
    "not-utf8": b"\xff\xfe\x00",
    "json-array": b"[]",
    "no-keys": b'{"issuer": "x"}',
    "keys-not-a-list": b'{"keys": {"kty": "EC"}}',
    "empty-keys": b'{"keys": []}',
    "all-keys-malformed": json.dumps(
        {
            "keys": [
                {"kty": "EC", "crv": "P-384", "x": "AAAA", "y": "AAAA", "kid": "off-curve"},
                {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
                {"kty": "RSA", "n": "AQAB", "e": "AQAB", "kid": "tiny"},
                {"kty": "OKP", "crv": "X25519", "x": "AAAA", "kid": "x25519"},
                {"kty": "EC", "kid": 7},
                "string",
                42,
                None,
            ]
        }
    ).encode(),
    "deeply-nested": b'{"keys": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
}


@pytest.mark.parametrize("body", BROKEN_JWKS.values(), ids=BROKEN_JWKS.keys())
def test_an_unusable_jwks_is_a_fetch_failure(stub_issuer: StubIssuer, body: bytes) -> None:
    stub_issuer.jwks_body = body
    server = stub_issuer.resource_server()
    with pytest.raises(IssuerUnavailable):
        fresh(stub_issuer, server)


@pytest.mark.parametrize("body", BROKEN_JWKS.values(), ids=BROKEN_JWKS.keys())
def test_an_unusable_jwks_does_not_wipe_cached_keys(
    stub_issuer: StubIssuer, fake_clock: FakeClock, body: bytes
) -> None:
    server = stub_issuer.resource_server(jwks_ttl=600)
    fresh(stub_issuer, server)
    stub_issuer.jwks_body = body
    fake_clock.advance(600)
    assert fresh(stub_issuer, server).sub == "test-client"
    assert stub_issuer.jwks_fetches == 2


def test_malformed_keys_are_skipped(stub_issuer: StubIssuer) -> None:
    good = stub_issuer.current_key.jwk
    broken = json.loads(BROKEN_JWKS["all-keys-malformed"])["keys"]
    stub_issuer.jwks_body = json.dumps({"keys": [*broken, good]}).encode()
    server = stub_issuer.resource_server()
    assert fresh(stub_issuer, server).sub == "test-client"


@pytest.mark.parametrize("alg", [["ES384"], {"ES384": True}, 384])
def test_a_jwk_whose_alg_is_not_a_string_is_skipped(stub_issuer: StubIssuer, alg: Any) -> None:
    real = stub_issuer.current_key.jwk
    stub_issuer.jwks_body = json.dumps({"keys": [{**real, "alg": alg}]}).encode()
    with pytest.raises(IssuerUnavailable):
        fresh(stub_issuer, stub_issuer.resource_server())
    stub_issuer.jwks_body = json.dumps(
        {"keys": [{**real, "alg": alg, "kid": "odd"}, real]}
    ).encode()
    assert fresh(stub_issuer, stub_issuer.resource_server()).sub == "test-client"


@pytest.mark.parametrize("status", [500, 503, 404, 401])
def test_a_jwks_error_status_is_a_fetch_failure(stub_issuer: StubIssuer, status: int) -> None:
    stub_issuer.status[stub_issuer.jwks_path] = status
    with pytest.raises(IssuerUnavailable):
        fresh(stub_issuer, stub_issuer.resource_server())


def test_an_oversized_jwks_is_rejected(stub_issuer: StubIssuer) -> None:
    stub_issuer.jwks_body = json.dumps(
        {**stub_issuer.jwks(), "padding": "x" * (1024 * 1024)}
    ).encode()
    with pytest.raises(IssuerUnavailable):
        fresh(stub_issuer, stub_issuer.resource_server())
    # A large but reasonable document is fine.
    stub_issuer.jwks_body = json.dumps({**stub_issuer.jwks(), "padding": "x" * 100_000}).encode()
    assert fresh(stub_issuer, stub_issuer.resource_server()).sub == "test-client"


def test_a_jwks_with_more_than_100_keys_is_rejected(stub_issuer: StubIssuer) -> None:
    real = stub_issuer.current_key.jwk
    decoys = [{**real, "kid": f"decoy-{i}"} for i in range(100)]
    stub_issuer.jwks_body = json.dumps({"keys": [*decoys, real]}).encode()
    with pytest.raises(IssuerUnavailable):
        fresh(stub_issuer, stub_issuer.resource_server())
    stub_issuer.jwks_body = json.dumps({"keys": [*decoys[:99], real]}).encode()
    assert fresh(stub_issuer, stub_issuer.resource_server()).sub == "test-client"


def test_private_members_of_a_published_jwk_are_never_loaded(stub_issuer: StubIssuer) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec
    from jwt.algorithms import ECAlgorithm

    from bearerguard.keys import KeySet

    # An issuer misconfigured to publish its private key: only the public half is ever used.
    leaked = json.loads(ECAlgorithm.to_jwk(stub_issuer.current_key.private_key))
    assert "d" in leaked
    leaked["kid"] = stub_issuer.current_key.kid
    (key,) = KeySet.from_jwks({"keys": [leaked]}).keys
    assert isinstance(key.public_key, ec.EllipticCurvePublicKey)
    stub_issuer.jwks_body = json.dumps({"keys": [leaked]}).encode()
    assert fresh(stub_issuer, stub_issuer.resource_server()).sub == "test-client"


def test_the_header_segment_cache_is_bounded(stub_issuer: StubIssuer) -> None:
    server = stub_issuer.resource_server()
    fresh(stub_issuer, server)
    token = stub_issuer.mint()
    for i in range(1000):  # a flood of distinct, well-formed headers (unknown kids)
        with pytest.raises(InvalidToken):
            server.authenticate(bearer(with_kid(token, f"random-{i}")))
    assert len(server._headers) <= 256
    assert stub_issuer.jwks_fetches == 2  # the first fetch, then one refetch for unknown kids


def test_a_discovery_issuer_mismatch_is_a_failure(
    stub_issuer: StubIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    stub_issuer.metadata_override["issuer"] = "https://evil.test/oidc"
    server = stub_issuer.resource_server()
    with caplog.at_level(logging.WARNING, logger="bearerguard"), pytest.raises(IssuerUnavailable):
        fresh(stub_issuer, server)
    assert stub_issuer.jwks_fetches == 0
    assert "issuer" in caplog.text


@pytest.mark.parametrize(
    "jwks_uri",
    [
        "http://issuer.test/oidc/jwks",  # plain http off loopback
        "https://[::1/jwks",
        "https://issuer\x00.test/jwks",
        "/oidc/jwks",
        42,
        None,
    ],
)
@pytest.mark.anyio
async def test_a_bad_discovered_jwks_uri_is_a_failure(
    stub_issuer: StubIssuer, jwks_uri: Any
) -> None:
    stub_issuer.metadata_override["jwks_uri"] = jwks_uri
    server = stub_issuer.resource_server()
    with pytest.raises(IssuerUnavailable):
        fresh(stub_issuer, server)
    with pytest.raises(IssuerUnavailable):
        await server.authenticate_async(bearer(stub_issuer.mint()))
    assert stub_issuer.jwks_fetches == 0


def test_logtos_no_cache_with_no_minimum_ttl_revalidates_every_time(
    stub_issuer: StubIssuer,
) -> None:
    """jwks_min_ttl=0 honours no-cache literally: each new token revalidates (ETag: cheap)."""
    stub_issuer.jwks_headers["Cache-Control"] = "no-cache, max-age=0, must-revalidate"
    stub_issuer.etag = '"v1"'
    server = stub_issuer.resource_server(jwks_min_ttl=0, max_stale=0)
    for _ in range(3):
        assert fresh(stub_issuer, server).sub == "test-client"
    assert stub_issuer.jwks_fetches == 3


def test_discovery_falls_back_to_oauth_authorization_server(stub_issuer: StubIssuer) -> None:
    stub_issuer.status[stub_issuer.discovery_path] = 404
    assert fresh(stub_issuer, stub_issuer.resource_server()).sub == "test-client"
    assert stub_issuer.requests[0] == stub_issuer.discovery_path
    assert stub_issuer.fallback_path in stub_issuer.requests
    assert stub_issuer.jwks_fetches == 1


def test_no_discovery_document_at_all_is_a_failure(stub_issuer: StubIssuer) -> None:
    stub_issuer.status[stub_issuer.discovery_path] = 404
    stub_issuer.status[stub_issuer.fallback_path] = 404
    with pytest.raises(IssuerUnavailable):
        fresh(stub_issuer, stub_issuer.resource_server())
    assert stub_issuer.jwks_fetches == 0


def test_jwks_uri_skips_discovery(stub_issuer: StubIssuer, fake_clock: FakeClock) -> None:
    server = ResourceServer(
        stub_issuer.issuer,
        stub_issuer.audience,
        jwks_uri=stub_issuer.issuer + "/jwks",
        transport=stub_issuer.transport(),
        clock=fake_clock,
    )
    fresh(stub_issuer, server)
    assert stub_issuer.requests == [stub_issuer.jwks_path]


# -- single flight ---------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_single_flight_across_100_tasks(stub_issuer: StubIssuer) -> None:
    entered, release, held = stub_issuer.held_jwks_async()
    server = stub_issuer.resource_server(transport=held)
    tokens = [stub_issuer.mint() for _ in range(100)]
    verified: list[AccessToken] = []

    async def request(token: str) -> None:
        verified.append(await server.authenticate_async(bearer(token)))

    async with anyio.create_task_group() as tg:
        for token in tokens:
            tg.start_soon(request, token)
        with anyio.fail_after(10):
            await entered.wait()
        for _ in range(20):  # let every task run up to the fetch in flight
            await anyio.lowlevel.checkpoint()
        release.set()
    assert len(verified) == 100
    assert stub_issuer.jwks_fetches == 1
    assert stub_issuer.discovery_fetches == 1


def test_single_flight_across_16_threads(stub_issuer: StubIssuer) -> None:
    entered, release, held = stub_issuer.held_jwks()
    server = stub_issuer.resource_server(transport=held)
    tokens = [stub_issuer.mint() for _ in range(16)]
    start = threading.Barrier(16)
    verified: list[AccessToken] = []
    errors: list[BaseException] = []

    def request(token: str) -> None:
        start.wait(10)
        try:
            verified.append(server.authenticate(bearer(token)))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=request, args=(t,)) for t in tokens]
    try:
        for thread in threads:
            thread.start()
        assert entered.wait(10)
        time.sleep(0.05)  # not a clock: lets the other 15 threads pile up behind the fetch
    finally:
        release.set()
        for thread in threads:
            thread.join(10)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    assert len(verified) == 16
    assert stub_issuer.jwks_fetches == 1
    assert stub_issuer.discovery_fetches == 1


# -- the verified-token cache ----------------------------------------------------------------------


@pytest.fixture
def signature_checks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Counts the signature checks ResourceServer makes."""
    calls: list[str] = []
    real = bearerguard.server.check_signature

    def counting(*args: Any) -> None:
        calls.append("check")
        real(*args)

    monkeypatch.setattr(bearerguard.server, "check_signature", counting)
    return calls


def test_a_verified_token_is_answered_from_the_cache(
    stub_issuer: StubIssuer, signature_checks: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = stub_issuer.resource_server()
    token = stub_issuer.mint("read:products")
    first = server.authenticate(bearer(token))
    assert signature_checks == ["check"]

    def no_more_work(*args: Any) -> None:
        raise AssertionError("a cache hit parsed or checked the token again")

    for name in ("check_issuer", "check_header", "check_claims", "parse", "decode_segment"):
        if hasattr(bearerguard.server, name):
            monkeypatch.setattr(bearerguard.server, name, no_more_work)
    second = server.authenticate(bearer(token))
    assert second.scopes == first.scopes == {"read:products"}
    assert signature_checks == ["check"]
    assert stub_issuer.jwks_fetches == 1


@pytest.mark.anyio
async def test_a_verified_token_is_answered_from_the_cache_async(
    stub_issuer: StubIssuer, signature_checks: list[str]
) -> None:
    server = stub_issuer.resource_server()
    token = stub_issuer.mint()
    for _ in range(3):
        await server.authenticate_async(bearer(token))
    assert signature_checks == ["check"]


@pytest.mark.parametrize("leeway", [0, 30])
def test_a_cached_token_is_rejected_once_it_expires(
    stub_issuer: StubIssuer, fake_clock: FakeClock, signature_checks: list[str], leeway: int
) -> None:
    server = stub_issuer.resource_server(leeway=leeway)
    token = stub_issuer.mint(expires_in=60)
    server.authenticate(bearer(token))
    fake_clock.advance(60 + leeway - 1)
    server.authenticate(bearer(token))
    assert signature_checks == ["check"]  # still a hit
    fake_clock.advance(1)
    with pytest.raises(InvalidToken, match="expired"):
        server.authenticate(bearer(token))


@pytest.mark.anyio
async def test_a_cached_token_is_rejected_once_it_expires_async(
    stub_issuer: StubIssuer, fake_clock: FakeClock
) -> None:
    server = stub_issuer.resource_server(leeway=0)
    token = stub_issuer.mint(expires_in=60)
    await server.authenticate_async(bearer(token))
    fake_clock.advance(60)
    with pytest.raises(InvalidToken, match="expired"):
        await server.authenticate_async(bearer(token))


def test_a_cache_entry_lives_at_most_token_cache_ttl(
    stub_issuer: StubIssuer, fake_clock: FakeClock, signature_checks: list[str]
) -> None:
    server = stub_issuer.resource_server(token_cache_ttl=10)
    token = stub_issuer.mint()
    server.authenticate(bearer(token))
    fake_clock.advance(9)
    server.authenticate(bearer(token))
    assert len(signature_checks) == 1
    fake_clock.advance(1)
    server.authenticate(bearer(token))
    assert len(signature_checks) == 2


def test_token_cache_size_zero_turns_the_cache_off(
    stub_issuer: StubIssuer, signature_checks: list[str]
) -> None:
    server = stub_issuer.resource_server(token_cache_size=0)
    token = stub_issuer.mint()
    for _ in range(3):
        server.authenticate(bearer(token))
    assert len(signature_checks) == 3


def test_the_token_cache_is_bounded(stub_issuer: StubIssuer, signature_checks: list[str]) -> None:
    server = stub_issuer.resource_server(token_cache_size=2)
    tokens = [stub_issuer.mint() for _ in range(3)]
    for token in tokens:
        server.authenticate(bearer(token))
    assert len(signature_checks) == 3
    server.authenticate(bearer(tokens[2]))  # recent: still cached
    assert len(signature_checks) == 3
    server.authenticate(bearer(tokens[0]))  # pushed out by the third token
    assert len(signature_checks) == 4
    for token in [stub_issuer.mint() for _ in range(50)]:
        server.authenticate(bearer(token))
    checks = len(signature_checks)
    server.authenticate(bearer(tokens[0]))  # long gone
    assert len(signature_checks) == checks + 1


# -- KeyCache alone: the whole policy as plain state, on a fake clock (no I/O) -------------------


@pytest.fixture(scope="module")
def two_keys() -> KeySet:
    return KeySet.from_jwks({"keys": [SigningKey.generate("ES256").jwk for _ in range(2)]})


def fetched_cache(keys: KeySet, now: float, **policy: float) -> KeyCache:
    """A KeyCache that has just fetched ``keys`` (no Cache-Control: ``default_ttl``)."""
    cache = KeyCache(CachePolicy(**policy))
    cache.started(None, now)
    cache.succeeded(keys, None, None, now)
    return cache


def test_key_cache_lookup_answers_fresh_keys_and_asks_for_a_fetch_when_they_expire(
    fake_clock: FakeClock, two_keys: KeySet
) -> None:
    kid = two_keys.keys[0].kid
    cache = KeyCache(CachePolicy(default_ttl=600))
    assert cache.lookup(kid, fake_clock.now) is None  # cold: fetch now
    cache.started(kid, fake_clock.now)
    cache.succeeded(two_keys, None, None, fake_clock.now)
    assert cache.after_fetch(kid, fake_clock.now, fetched=True) is two_keys.find(kid)
    fake_clock.advance(599)
    assert cache.lookup(kid, fake_clock.now) is two_keys.find(kid)
    fake_clock.advance(1)
    assert cache.lookup(kid, fake_clock.now) is None  # stale: the routine refresh is due
    assert cache.fetches == 1


def test_key_cache_an_unknown_kid_fetches_once_then_is_invalid_within_the_cooldown(
    fake_clock: FakeClock, two_keys: KeySet
) -> None:
    cache = fetched_cache(two_keys, fake_clock.now, cooldown=5)
    fake_clock.advance(1)
    assert cache.lookup("new-kid", fake_clock.now) is None  # it may have been rotated in
    cache.started("new-kid", fake_clock.now)
    cache.succeeded(two_keys, None, None, fake_clock.now)
    with pytest.raises(InvalidToken, match="unknown signing key"):
        cache.after_fetch("new-kid", fake_clock.now, fetched=True)
    fake_clock.advance(4.5)
    with pytest.raises(InvalidToken, match="unknown signing key"):
        cache.lookup("another-kid", fake_clock.now)  # inside the cooldown: no fetch
    assert cache.lookup(two_keys.keys[1].kid, fake_clock.now) is two_keys.keys[1]
    fake_clock.advance(0.5)
    assert cache.lookup("another-kid", fake_clock.now) is None


def test_key_cache_a_token_without_a_kid_needs_a_single_key(
    fake_clock: FakeClock, two_keys: KeySet
) -> None:
    one = KeySet(two_keys.keys[:1])
    assert fetched_cache(one, fake_clock.now).lookup(None, fake_clock.now) is one.keys[0]
    cache = fetched_cache(two_keys, fake_clock.now)
    assert cache.lookup(None, fake_clock.now) is None  # perhaps the JWKS is down to one key
    cache.started(None, fake_clock.now)
    cache.succeeded(two_keys, None, None, fake_clock.now)
    with pytest.raises(InvalidToken, match="token has no kid"):
        cache.after_fetch(None, fake_clock.now, fetched=True)
    with pytest.raises(InvalidToken, match="token has no kid"):
        cache.lookup(None, fake_clock.now)


def test_key_cache_keys_just_fetched_answer_even_with_a_zero_ttl(
    fake_clock: FakeClock, two_keys: KeySet
) -> None:
    kid = two_keys.keys[0].kid
    cache = KeyCache(CachePolicy(min_ttl=0, max_stale=0))
    cache.started(kid, fake_clock.now)
    cache.succeeded(two_keys, 0.0, None, fake_clock.now)  # Cache-Control: no-cache
    assert cache.after_fetch(kid, fake_clock.now, fetched=True) is two_keys.find(kid)
    assert cache.lookup(kid, fake_clock.now) is None  # the next request asks again
    cache.started(kid, fake_clock.now)
    cache.failed("down", fake_clock.now)  # and nothing may answer once that fails
    with pytest.raises(IssuerUnavailable):
        cache.after_fetch(kid, fake_clock.now, fetched=False)


def test_key_cache_a_failed_refresh_keeps_stale_keys_until_max_stale(
    fake_clock: FakeClock, two_keys: KeySet
) -> None:
    kid = two_keys.keys[0].kid
    key = two_keys.find(kid)
    start = fake_clock.now
    cache = fetched_cache(two_keys, start, default_ttl=600, max_stale=1000, refresh_retry=30)
    fake_clock.advance(600)
    assert cache.lookup(kid, fake_clock.now) is None
    cache.started(kid, fake_clock.now)
    cache.failed("down", fake_clock.now)
    assert cache.after_fetch(kid, fake_clock.now, fetched=False) is key  # stale, still usable
    fake_clock.advance(29)
    assert cache.lookup(kid, fake_clock.now) is key  # no fetch before refresh_retry
    fake_clock.advance(1)
    assert cache.lookup(kid, fake_clock.now) is None
    fake_clock.now = start + 600 + 1000  # too stale now
    assert cache.lookup(kid, fake_clock.now) is None
    cache.started(kid, fake_clock.now)
    cache.failed("down", fake_clock.now)
    assert cache.keys is None
    with pytest.raises(IssuerUnavailable) as info:
        cache.after_fetch(kid, fake_clock.now, fetched=False)
    assert info.value.retry_after == 2  # the second failure in a row: 2 s of outage backoff
    fake_clock.advance(1)
    with pytest.raises(IssuerUnavailable):
        cache.lookup(kid, fake_clock.now)  # within the backoff: no fetch
    fake_clock.advance(1)
    assert cache.lookup(kid, fake_clock.now) is None


def test_key_cache_cold_and_down_is_unavailable_until_the_backoff_passes(
    fake_clock: FakeClock,
) -> None:
    cache = KeyCache(CachePolicy())
    assert cache.lookup("kid", fake_clock.now) is None
    cache.started("kid", fake_clock.now)
    cache.failed("down", fake_clock.now)
    with pytest.raises(IssuerUnavailable) as info:
        cache.after_fetch("kid", fake_clock.now, fetched=False)
    assert info.value.retry_after == 1
    fake_clock.advance(0.5)
    with pytest.raises(IssuerUnavailable):
        cache.lookup("kid", fake_clock.now)
    fake_clock.advance(0.5)
    assert cache.lookup("kid", fake_clock.now) is None


@pytest.mark.parametrize("routine", [True, False])
def test_key_cache_a_routine_fetch_does_not_start_the_cooldown(
    fake_clock: FakeClock, two_keys: KeySet, routine: bool
) -> None:
    cache = fetched_cache(two_keys, fake_clock.now)
    fake_clock.advance(1)
    cache.started(None, fake_clock.now, routine=routine)  # None: no kid these keys hold
    cache.succeeded(two_keys, None, None, fake_clock.now)
    fake_clock.advance(1)
    if routine:
        assert cache.lookup("rotated-in", fake_clock.now) is None
    else:
        with pytest.raises(InvalidToken):
            cache.lookup("rotated-in", fake_clock.now)


def test_key_cache_usable_stale_is_fresh_or_within_max_stale(
    fake_clock: FakeClock, two_keys: KeySet
) -> None:
    assert not KeyCache(CachePolicy()).usable_stale(fake_clock.now)
    start = fake_clock.now
    cache = fetched_cache(two_keys, start, default_ttl=600, max_stale=1000)
    assert cache.usable_stale(start)
    assert cache.usable_stale(start + 1599)
    assert not cache.usable_stale(start + 1600)


@pytest.mark.parametrize(
    ("max_age", "lifetime"),
    [(None, 600), (0.0, 60), (10.0**6, 86400)],
    ids=["no-max-age", "below-the-minimum", "above-the-maximum"],
)
def test_key_cache_default_lifetime_is_600_s_and_a_max_age_counts_within_60_s_to_a_day(
    fake_clock: FakeClock, two_keys: KeySet, max_age: float | None, lifetime: int
) -> None:
    """``CachePolicy()`` alone has the documented defaults of ``jwks_ttl``, ``jwks_min_ttl``
    and ``jwks_max_ttl``."""
    kid = two_keys.keys[0].kid
    start = fake_clock.now
    cache = KeyCache(CachePolicy())
    cache.started(kid, start)
    cache.succeeded(two_keys, max_age, None, start)
    assert cache.lookup(kid, start + lifetime - 1) is two_keys.find(kid)
    assert cache.lookup(kid, start + lifetime) is None


def test_key_cache_default_cooldown_is_5_s(fake_clock: FakeClock, two_keys: KeySet) -> None:
    cache = fetched_cache(two_keys, fake_clock.now)
    assert cache.lookup("new-kid", fake_clock.now) is None
    cache.started("new-kid", fake_clock.now)
    cache.succeeded(two_keys, None, None, fake_clock.now)
    fake_clock.advance(4.5)
    with pytest.raises(InvalidToken, match="unknown signing key"):
        cache.lookup("another-kid", fake_clock.now)
    fake_clock.advance(0.5)
    assert cache.lookup("another-kid", fake_clock.now) is None


def test_key_cache_default_stale_keys_serve_1_h_and_a_failed_refresh_is_retried_after_30_s(
    fake_clock: FakeClock, two_keys: KeySet
) -> None:
    kid = two_keys.keys[0].kid
    key = two_keys.find(kid)
    start = fake_clock.now
    cache = fetched_cache(two_keys, start)

    def refresh_fails_at(now: float) -> None:
        cache.started(kid, now)
        cache.failed("down", now)

    refresh_fails_at(start + 600)
    assert cache.lookup(kid, start + 629) is key
    assert cache.lookup(kid, start + 630) is None
    refresh_fails_at(start + 600 + 3599)
    assert cache.after_fetch(kid, start + 600 + 3599, fetched=False) is key
    refresh_fails_at(start + 600 + 3600)
    with pytest.raises(IssuerUnavailable):
        cache.after_fetch(kid, start + 600 + 3600, fetched=False)


def test_key_cache_default_outage_backoff_is_1_2_4_then_5_s(fake_clock: FakeClock) -> None:
    cache = KeyCache(CachePolicy())
    waits: list[int] = []
    for _ in range(6):
        assert cache.lookup("kid", fake_clock.now) is None  # the wait is over: a try
        cache.started("kid", fake_clock.now)
        cache.failed("down", fake_clock.now)
        waits.append(cache.retry_after(fake_clock.now))
        fake_clock.advance(waits[-1])
    assert waits == [1, 2, 4, 5, 5, 5]


def test_the_outage_backoff_doubles_all_the_way_to_a_large_outage_retry_max(
    stub_issuer: StubIssuer, fake_clock: FakeClock
) -> None:
    """ "doubling on each failure, never more than outage_retry_max apart": past 2**32 s too."""
    stub_issuer.down = True
    server = stub_issuer.resource_server(outage_retry_max=2.0**40)
    waits: list[int] = []
    for _ in range(35):
        with pytest.raises(IssuerUnavailable) as info:
            fresh(stub_issuer, server)
        waits.append(info.value.retry_after)
        fake_clock.advance(waits[-1])
    assert waits == [2**n for n in range(35)]
    assert info.value.headers["Retry-After"] == str(2**34)


def test_the_outage_backoff_of_a_very_long_outage_is_outage_retry_max() -> None:
    policy = CachePolicy(outage_retry=1.0, outage_retry_max=2.0**40)
    assert policy.outage_backoff(41) == 2.0**40
    assert policy.outage_backoff(10**6) == 2.0**40  # no overflow, however many failures
    assert CachePolicy().outage_backoff(10**6) == 5.0


def test_single_flight_across_both_faces_and_two_event_loops(stub_issuer: StubIssuer) -> None:
    """Threads on the sync face and tasks on two event loops, all cold at once: one fetch.

    (A WSGI app and an ASGI app sharing one ResourceServer, or anyio worker threads.)
    """
    entered, release, held = stub_issuer.held_jwks()
    server = stub_issuer.resource_server(transport=held)
    verified: list[AccessToken] = []
    errors: list[BaseException] = []

    def sync_request() -> None:
        try:
            verified.append(server.authenticate(bearer(stub_issuer.mint())))
        except BaseException as exc:
            errors.append(exc)

    def loop_of_tasks() -> None:
        async def many() -> None:
            async def one() -> None:
                try:
                    verified.append(await server.authenticate_async(bearer(stub_issuer.mint())))
                except BaseException as exc:
                    errors.append(exc)

            async with anyio.create_task_group() as tg:
                for _ in range(20):
                    tg.start_soon(one)

        asyncio.run(many())

    threads = [threading.Thread(target=sync_request) for _ in range(8)]
    threads += [threading.Thread(target=loop_of_tasks) for _ in range(2)]
    try:
        for thread in threads:
            thread.start()
        assert entered.wait(10)
        time.sleep(0.1)  # not a clock: lets every caller pile up behind the one fetch
    finally:
        release.set()
        for thread in threads:
            thread.join(10)
    assert errors == []
    assert len(verified) == 8 + 2 * 20
    assert stub_issuer.jwks_fetches == 1
    assert stub_issuer.discovery_fetches == 1


@pytest.mark.anyio
async def test_a_cancelled_waiter_does_not_cancel_the_shared_fetch(stub_issuer: StubIssuer) -> None:
    entered, release, held = stub_issuer.held_jwks()
    server = stub_issuer.resource_server(transport=held)
    leader = threading.Thread(target=lambda: server.authenticate(bearer(stub_issuer.mint())))
    leader.start()
    try:
        assert entered.wait(10)
        waiter = asyncio.ensure_future(server.authenticate_async(bearer(stub_issuer.mint())))
        await asyncio.sleep(0.05)  # not a clock: the waiter is now waiting on the fetch
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
    finally:
        release.set()
        leader.join(10)
    assert (await server.authenticate_async(bearer(stub_issuer.mint()))).sub == "test-client"
    assert stub_issuer.jwks_fetches == 1


@pytest.mark.timeout(30)
@pytest.mark.anyio
async def test_a_sync_call_on_the_loop_thread_does_not_wait_for_that_loops_fetch(
    stub_issuer: StubIssuer,
) -> None:
    """Sync code inside async code (blocking the loop) while that loop's task fetches: the
    sync call fetches on its own instead of waiting for a fetch it keeps from finishing."""
    entered, gate = asyncio.Event(), asyncio.Event()

    async def held(request: httpx.Request) -> httpx.Response:
        if request.url.path == stub_issuer.jwks_path:
            entered.set()
            await gate.wait()
        return stub_issuer.handle(request)

    server = stub_issuer.resource_server(
        transport=None,
        http_client=httpx.Client(transport=httpx.MockTransport(stub_issuer.handle)),
        async_http_client=httpx.AsyncClient(transport=httpx.MockTransport(held)),
    )
    leader = asyncio.ensure_future(server.authenticate_async(bearer(stub_issuer.mint())))
    await entered.wait()
    assert server.authenticate(bearer(stub_issuer.mint())).sub == "test-client"
    gate.set()
    assert (await leader).sub == "test-client"


def test_a_waiter_takes_over_from_a_fetch_that_never_lands(stub_issuer: StubIssuer) -> None:
    """A leader that can never finish (its event loop blocked or gone) holds nobody past the
    wait bound: the waiter fetches itself, and the late leader cannot clear its flight."""
    server = stub_issuer.resource_server(fetch_timeout=0.2)
    (source,) = server.key_sources
    stuck, lead = source._flight()  # a fetch in flight that will never land
    assert lead
    assert server.authenticate(bearer(stub_issuer.mint())).sub == "test-client"
    assert stub_issuer.jwks_fetches == 1
    source._landed(stuck, "too late")  # the stuck leader finally gives up
    assert source._inflight is None
    assert server.authenticate(bearer(stub_issuer.mint())).sub == "test-client"
