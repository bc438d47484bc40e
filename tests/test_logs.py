"""What bearerguard logs: issuer trouble once per change of state, rotations, refusals at
DEBUG, and never a token."""

from __future__ import annotations

import contextlib
import logging
import random
from typing import TYPE_CHECKING

import pytest

from bearerguard import AuthError, IssuerUnavailable
from bearerguard.request import RequestView
from bearerguard.rules import Requirement

if TYPE_CHECKING:
    from conftest import FakeClock, StubIssuer


def bearer(token: str) -> str:
    return f"Bearer {token}"


def records(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == "bearerguard" and r.levelno == level
    ]


def test_a_flood_of_invalid_tokens_logs_no_warning(
    stub_issuer: StubIssuer, fake_clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    server = stub_issuer.resource_server()
    good = stub_issuer.mint("read")
    rng = random.Random(3)
    with caplog.at_level(logging.DEBUG, logger="bearerguard"):
        server.authenticate(bearer(good))
        for _i in range(500):
            forged = good[:-8] + "".join(rng.choice("abcdefgh") for _ in range(8))
            header = rng.choice([bearer(forged), "Bearer a$b", "Basic x", bearer("x.y.z")])
            view = RequestView("GET", [header])
            with pytest.raises(AuthError):
                server.authorize(view, Requirement(scopes=("read",)))
            fake_clock.advance(0.1)
    assert records(caplog, logging.WARNING) == []
    refusals = records(caplog, logging.DEBUG)
    assert len(refusals) == 500  # one DEBUG line each, with its reason
    assert all(line.startswith("bearerguard: refused (") for line in refusals)
    assert not any(good[:40] in r.getMessage() for r in caplog.records)


def test_an_outage_warns_once_then_recovery_is_one_info_line(
    stub_issuer: StubIssuer, fake_clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    server = stub_issuer.resource_server(jwks_ttl=600, max_stale=60)
    with caplog.at_level(logging.DEBUG, logger="bearerguard"):
        server.authenticate(bearer(stub_issuer.mint()))
        stub_issuer.down = True
        fake_clock.advance(600)
        for _ in range(200):  # 200 s: stale keys serve for 60 s, then nothing does
            with contextlib.suppress(IssuerUnavailable):
                server.authenticate(bearer(stub_issuer.mint()))
            fake_clock.advance(1)
        stub_issuer.down = False
        fake_clock.advance(5)
        server.authenticate(bearer(stub_issuer.mint()))
    warnings = records(caplog, logging.WARNING)
    assert len(warnings) == 2, warnings  # stale keys serving; then no usable keys
    assert "cached keys keep serving" in warnings[0]
    assert "answered 503" in warnings[1]
    assert all(stub_issuer.issuer in w for w in warnings)
    assert records(caplog, logging.INFO) == [
        f"bearerguard: signing keys of {stub_issuer.issuer} fetched again"
    ]
    assert len([d for d in records(caplog, logging.DEBUG) if "failed again" in d]) >= 10


def test_a_rotation_is_one_info_line_naming_the_new_kid(
    stub_issuer: StubIssuer, fake_clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    server = stub_issuer.resource_server()
    server.authenticate(bearer(stub_issuer.mint()))
    new = stub_issuer.rotate()
    fake_clock.advance(1)
    with caplog.at_level(logging.INFO, logger="bearerguard"):
        server.authenticate(bearer(stub_issuer.mint(key=new)))
    assert records(caplog, logging.INFO) == [
        f"bearerguard: new signing keys from {stub_issuer.issuer}: {new.kid!r}"
    ]
