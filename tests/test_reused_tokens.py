"""A token an outer guard verified, or one found in the verified-token cache, meets the same DPoP
binding rules (RFC 9449) as a token verified now, on the sync and the async face alike."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from clocks import FakeClock

from bearerguard import AccessToken, AuthError, ResourceServer
from bearerguard.dpop import DPoPKey
from bearerguard.request import RequestView
from bearerguard.rules import Requirement
from bearerguard.testing import LocalIssuer

AUDIENCE = "https://api.test"
URL = "https://api.test/orders"
ANY_TOKEN = Requirement()
DPOP_ONLY = Requirement(scopes=("read",), dpop=True)
FACES = ["sync", "async"]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def issuer(clock: FakeClock) -> LocalIssuer:
    return LocalIssuer("https://issuer.test/oidc", audience=AUDIENCE, clock=clock)


@pytest.fixture(scope="module")
def key() -> DPoPKey:
    return DPoPKey.generate("ES256")


def authorize(
    server: ResourceServer, face: str, view: RequestView, requirement: Requirement
) -> AccessToken | AuthError | None:
    """What the request gets on ``face``: the token (None: none needed) or the refusal."""
    try:
        if face == "sync":
            return server.authorize(view, requirement)
        return anyio.run(server.authorize_async, view, requirement)
    except AuthError as exc:
        return exc


def refused(result: Any) -> AuthError:
    assert isinstance(result, AuthError), result
    return result


def with_proof(issuer: LocalIssuer, key: DPoPKey, clock: FakeClock) -> tuple[str, RequestView]:
    """A token bound to ``key`` and a request carrying it with its proof."""
    token = issuer.mint("read", claims={"cnf": {"jkt": key.jkt}})
    proof = key.proof("GET", URL, access_token=token, iat=clock())
    return token, RequestView("GET", [f"DPoP {token}"], url=URL, dpop=[proof])


@pytest.mark.parametrize("face", FACES)
def test_a_dpop_bound_token_from_an_outer_guard_passes_a_route_that_takes_dpop_only(
    issuer: LocalIssuer, key: DPoPKey, clock: FakeClock, face: str
) -> None:
    server = issuer.resource_server(dpop="allowed")
    _, view = with_proof(issuer, key, clock)
    outer = server.authorize(view, ANY_TOKEN)
    assert isinstance(outer, AccessToken)
    assert outer.jkt == key.jkt
    inner = RequestView("GET", [], url=URL, upstream=outer)
    assert authorize(server, face, inner, DPOP_ONLY) is outer


@pytest.mark.parametrize("face", FACES)
def test_a_bearer_token_from_an_outer_guard_is_refused_by_a_route_that_takes_dpop_only(
    issuer: LocalIssuer, face: str
) -> None:
    server = issuer.resource_server(dpop="allowed")
    outer = server.authorize(RequestView("GET", [f"Bearer {issuer.mint('read')}"]), ANY_TOKEN)
    assert isinstance(outer, AccessToken)
    assert outer.jkt is None
    inner = RequestView("GET", [], url=URL, upstream=outer)
    exc = refused(authorize(server, face, inner, DPOP_ONLY))
    assert exc.status_code == 401
    assert exc.reason.value == "dpop_binding"
    assert exc.description == "this route takes DPoP-bound tokens only (Authorization: DPoP)"


@pytest.mark.parametrize("face", FACES)
def test_an_api_that_requires_dpop_refuses_a_bearer_token_every_time(
    issuer: LocalIssuer, face: str
) -> None:
    server = issuer.resource_server(dpop="required")
    header = f"Bearer {issuer.mint('read')}"
    for _ in range(2):  # the second time, the token is in the verified-token cache
        exc = refused(authorize(server, face, RequestView("GET", [header], url=URL), ANY_TOKEN))
        assert exc.reason.value == "dpop_binding"
        assert exc.description == "this API takes DPoP-bound tokens only (Authorization: DPoP)"


@pytest.mark.parametrize("face", FACES)
def test_a_dpop_bound_token_sent_as_bearer_after_its_proof_passed_is_refused(
    issuer: LocalIssuer, key: DPoPKey, clock: FakeClock, face: str
) -> None:
    server = issuer.resource_server(dpop="allowed")
    token, view = with_proof(issuer, key, clock)
    assert isinstance(authorize(server, face, view, ANY_TOKEN), AccessToken)  # now cached
    stolen = RequestView("GET", [f"Bearer {token}"], url=URL)
    exc = refused(authorize(server, face, stolen, ANY_TOKEN))
    assert exc.reason.value == "dpop_binding"
    assert exc.description == (
        "a DPoP-bound token must be sent as Authorization: DPoP, with a proof"
    )
