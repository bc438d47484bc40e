"""What a ResourceServer tells its observer: one event per decision, one per key fetch."""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from recorder import Event, Recorder

from bearerguard import AuthError, ConfigurationError, ResourceServer
from bearerguard.observe import Observer
from bearerguard.request import RequestView
from bearerguard.rules import Requirement
from bearerguard.testing import LocalIssuer

if TYPE_CHECKING:
    from conftest import FakeClock, StubIssuer

ISSUER = "https://issuer.test/oidc"


def bearer(token: str) -> str:
    return f"Bearer {token}"


def observed(stub_issuer: StubIssuer, **kwargs: Any) -> tuple[ResourceServer, Recorder]:
    seen = Recorder()
    return stub_issuer.resource_server(observer=seen, **kwargs), seen


def test_authenticate_reports_a_miss_then_hits_then_each_refusal(
    stub_issuer: StubIssuer, fake_clock: FakeClock
) -> None:
    server, seen = observed(stub_issuer)
    token = stub_issuer.mint("read", sub="ada")
    server.authenticate(bearer(token))
    server.authenticate(bearer(token))
    server.authenticate("bearer  " + token)  # another spelling: found in the cache all the same
    for header in (
        None,  # no credentials at all
        "Basic dTpw",  # another scheme: no bearer credentials
        "Bearer a$b",
        bearer(stub_issuer.tampered(token)),
        bearer(stub_issuer.expired()),
        bearer(stub_issuer.mint(audience="https://other.test")),
    ):
        with pytest.raises(AuthError):
            server.authenticate(header)
    assert seen.pairs() == [
        ("success", None),
        ("success", None),
        ("success", None),
        ("none", "missing_token"),
        ("none", "missing_token"),
        ("failure", "malformed_header"),
        ("failure", "bad_signature"),
        ("failure", "expired"),
        ("failure", "audience_mismatch"),
    ]
    assert [e.cached for e in seen.events] == [False, True, True, None, None] + [False] * 4
    first = seen.events[0]
    assert first.sub == "ada"
    assert first.duration is not None
    assert 0 < first.duration < 5
    # The first verification fetched the keys, once, and said so.
    assert [(f.issuer, f.result) for f in seen.fetches] == [(ISSUER, "success")]


def test_verify_token_reports_like_authenticate(stub_issuer: StubIssuer) -> None:
    server, seen = observed(stub_issuer)
    token = stub_issuer.mint()
    server.verify_token(token)
    server.verify_token(token)
    with pytest.raises(AuthError):
        server.verify_token("x" * 9000)
    assert [(e.result, e.reason, e.cached) for e in seen.events] == [
        ("success", None, False),
        ("success", None, True),
        ("failure", "token_too_large", False),
    ]


def test_authorize_reports_each_request_once(stub_issuer: StubIssuer) -> None:
    server, seen = observed(stub_issuer)
    read, write = stub_issuer.mint("read"), stub_issuer.mint("write")
    needs_read = Requirement(scopes=("read",))

    def call(
        headers: list[str], requirement: Requirement = needs_read, upstream: Any = None
    ) -> Any:
        try:
            return server.authorize(RequestView("GET", headers, upstream=upstream), requirement)
        except AuthError as exc:
            return exc.reason.value

    token = call([bearer(read)])  # verified now
    call([bearer(read)])  # cached
    assert call([bearer(write)]) == "insufficient_scope"  # verified, then refused
    assert call([bearer(write)]) == "insufficient_scope"  # cached, then refused
    assert call([]) == "missing_token"
    assert call([bearer(read), bearer(read)]) == "malformed_header"  # several headers
    assert call([], Requirement(public=True)) is None  # public: nothing decided, nothing said
    assert call([], Requirement(optional=True)) is None  # optional, no credentials: "none"
    assert call([], upstream=token) is token  # an outer guard verified it and reported it
    assert call([], Requirement(scopes=("write",)), upstream=token) == "insufficient_scope"
    assert [(e.result, e.reason, e.cached) for e in seen.events] == [
        ("success", None, False),
        ("success", None, True),
        ("failure", "insufficient_scope", False),
        ("failure", "insufficient_scope", True),
        ("none", "missing_token", None),
        ("failure", "malformed_header", None),
        ("none", None, None),
        ("failure", "insufficient_scope", None),
    ]


def test_the_async_faces_report_what_the_sync_faces_do(stub_issuer: StubIssuer) -> None:
    sync_server, sync_seen = observed(stub_issuer)
    async_server, async_seen = observed(stub_issuer)
    read = stub_issuer.mint("read")
    headers = [[bearer(read)], [bearer(read)], [], ["Bearer a$b"], [bearer(stub_issuer.mint())]]
    requirement = Requirement(scopes=("read",))

    def shape(events: list[Event]) -> list[tuple[str, str | None, bool | None]]:
        return [(e.result, e.reason, e.cached) for e in events]

    for values in headers:
        with contextlib.suppress(AuthError):
            sync_server.authorize(RequestView("GET", values), requirement)
    sync_server.verify_token(read)

    async def run() -> None:
        for values in headers:
            with contextlib.suppress(AuthError):
                await async_server.authorize_async(RequestView("GET", values), requirement)
        await async_server.verify_token_async(read)
        with pytest.raises(AuthError):
            await async_server.authenticate_async(None)

    anyio.run(run)
    with pytest.raises(AuthError):
        sync_server.authenticate(None)
    assert shape(async_seen.events) == shape(sync_seen.events)
    assert len(sync_seen.events) == 7


def test_an_unreachable_issuer_is_reported_as_unavailable_with_failed_fetches(
    stub_issuer: StubIssuer,
) -> None:
    server, seen = observed(stub_issuer)
    stub_issuer.down = True
    with pytest.raises(AuthError) as caught:
        server.authenticate(bearer(stub_issuer.mint()))
    assert caught.value.status_code == 503
    assert seen.pairs() == [("unavailable", "issuer_unavailable")]
    assert seen.events[0].cached is False  # a miss: it was being verified
    assert [(f.issuer, f.result) for f in seen.fetches] == [(ISSUER, "failure")]


def test_key_fetches_report_success_not_modified_and_failure(
    stub_issuer: StubIssuer, fake_clock: FakeClock
) -> None:
    stub_issuer.etag = '"v1"'
    server, seen = observed(stub_issuer, jwks_ttl=600, refresh_retry=0)
    server.warm_up()
    fake_clock.advance(601)  # stale: the next request refreshes them (If-None-Match -> 304)
    server.authenticate(bearer(stub_issuer.mint()))
    fake_clock.advance(601)
    stub_issuer.down = True  # stale keys keep serving; the refresh fails
    server.authenticate(bearer(stub_issuer.mint("other")))
    assert [f.result for f in seen.fetches] == ["success", "not_modified", "failure"]
    assert all(f.issuer == ISSUER and f.duration >= 0 for f in seen.fetches)


class Broken:
    def on_authentication(self, *args: Any) -> None:
        raise RuntimeError("metrics backend down")

    def on_key_fetch(self, *args: Any) -> None:
        raise RuntimeError("metrics backend down")


def test_an_observer_that_raises_changes_no_answer_and_is_logged_once(
    stub_issuer: StubIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    server = stub_issuer.resource_server(observer=Broken())
    token = stub_issuer.mint("read")
    with caplog.at_level(logging.ERROR, logger="bearerguard"):
        for _ in range(3):
            assert server.authenticate(bearer(token)).scopes == {"read"}
            with pytest.raises(AuthError) as caught:
                server.authenticate(bearer(stub_issuer.tampered(token)))
            assert caught.value.status_code == 401
    errors = [r for r in caplog.records if r.name == "bearerguard" and r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert "Broken" in errors[0].getMessage()
    assert token[:30] not in caplog.text


def test_the_observer_can_be_set_and_removed_later(stub_issuer: StubIssuer) -> None:
    server = stub_issuer.resource_server()
    assert server.observer is None
    token = stub_issuer.mint()
    server.authenticate(bearer(token))
    seen = Recorder()
    server.observer = seen
    assert isinstance(seen, Observer)
    server.authenticate(bearer(token))
    server.observer = None
    server.authenticate(bearer(token))
    assert seen.pairs() == [("success", None)]


@pytest.mark.parametrize("observer", [object(), "prometheus", print])
def test_something_that_is_not_an_observer_is_refused(
    stub_issuer: StubIssuer, observer: object
) -> None:
    with pytest.raises(ConfigurationError, match="on_authentication"):
        stub_issuer.resource_server(observer=observer)


def test_authorize_async_reports_an_optional_request_without_credentials_not_a_public_one(
    stub_issuer: StubIssuer,
) -> None:
    server, seen = observed(stub_issuer)

    async def call(requirement: Requirement) -> None:
        assert await server.authorize_async(RequestView("GET", []), requirement) is None

    anyio.run(call, Requirement(public=True))
    assert seen.events == []  # public: nothing decided, nothing said
    anyio.run(call, Requirement(optional=True))
    assert [(e.result, e.reason, e.cached) for e in seen.events] == [("none", None, None)]


def test_a_cached_token_sent_with_extra_spaces_is_still_a_hit(stub_issuer: StubIssuer) -> None:
    server, seen = observed(stub_issuer)
    token = stub_issuer.mint()
    server.authenticate(bearer(token))
    server.authenticate("Bearer  " + token)
    server.authenticate("Bearer   " + token)
    assert [e.cached for e in seen.events] == [False, True, True]


def test_a_cached_token_refused_for_the_routes_scopes_is_reported_as_a_hit(
    stub_issuer: StubIssuer,
) -> None:
    server, seen = observed(stub_issuer)
    write = stub_issuer.mint("write")
    server.authenticate(bearer(write))  # verified and cached
    needs_read = Requirement(scopes=("read",))
    view = RequestView("GET", ["bearer " + write])  # another spelling: found by verification
    with pytest.raises(AuthError):
        server.authorize(view, needs_read)

    async def run() -> None:
        with pytest.raises(AuthError):
            await server.authorize_async(view, needs_read)

    anyio.run(run)
    assert [(e.result, e.reason, e.cached, e.duration) for e in seen.events[1:]] == [
        ("failure", "insufficient_scope", True, None),
        ("failure", "insufficient_scope", True, None),
    ]


def test_a_verified_token_is_remembered_for_300_s_by_default(
    stub_issuer: StubIssuer, fake_clock: FakeClock
) -> None:
    server, seen = observed(stub_issuer)
    token = stub_issuer.mint()  # valid for an hour
    server.authenticate(bearer(token))
    fake_clock.advance(299)
    server.authenticate(bearer(token))
    fake_clock.advance(1)
    server.authenticate(bearer(token))  # verified again, then remembered anew
    server.authenticate(bearer(token))
    assert [e.cached for e in seen.events] == [False, True, False, True]


def test_the_verified_token_cache_holds_4096_tokens_by_default(fake_clock: FakeClock) -> None:
    issuer = LocalIssuer(ISSUER, alg="ES256", clock=fake_clock)  # ES256: the fastest to mint
    seen = Recorder()
    server = issuer.resource_server(observer=seen)
    tokens = [issuer.mint() for _ in range(4097)]
    for token in tokens:
        server.verify_token(token)
    assert not any(e.cached for e in seen.events)
    del seen.events[:]
    server.verify_token(tokens[1])  # the 4096 latest are cached
    server.verify_token(tokens[-1])
    server.verify_token(tokens[0])  # the oldest made room for the 4097th
    assert [e.cached for e in seen.events] == [True, True, False]
