"""The Authorization header (RFC 6750 section 2.1): what is a bearer token and what is not."""

from __future__ import annotations

import pytest

import bearerguard.server
from bearerguard import (
    AccessToken,
    AuthError,
    InvalidRequest,
    InvalidToken,
    MissingToken,
    ResourceServer,
)
from bearerguard.testing import LocalIssuer

LIMIT = 8192


@pytest.fixture(scope="module")
def issuer() -> LocalIssuer:
    return LocalIssuer()


@pytest.fixture(scope="module")
def token(issuer: LocalIssuer) -> str:
    return issuer.mint("read:products")


@pytest.fixture
def server(issuer: LocalIssuer) -> ResourceServer:
    return issuer.resource_server(token_cache_size=0)


def rejected(server: ResourceServer, header: str | None) -> AuthError:
    """The error ``header`` is rejected with, after checking the async face agrees."""
    import asyncio

    with pytest.raises(AuthError) as sync_info:
        server.authenticate(header)
    with pytest.raises(AuthError) as async_info:
        asyncio.run(server.authenticate_async(header))
    assert type(sync_info.value) is type(async_info.value)
    return sync_info.value


@pytest.mark.parametrize(
    "template",
    [
        "Bearer {}",
        "bearer {}",
        "BEARER {}",
        "bEaReR {}",
        "Bearer  {}",
        "Bearer      {}",
    ],
)
def test_scheme_is_case_insensitive_and_one_or_more_spaces_separate_it(
    server: ResourceServer, token: str, template: str
) -> None:
    access = server.authenticate(template.format(token))
    assert isinstance(access, AccessToken)
    assert access.scopes == {"read:products"}


@pytest.mark.parametrize("header", ["Bearer", "Bearer ", "Bearer     ", "bearer"])
def test_empty_credentials_are_an_invalid_request(server: ResourceServer, header: str) -> None:
    error = rejected(server, header)
    assert isinstance(error, InvalidRequest)
    assert error.status_code == 400
    assert 'error="invalid_request"' in error.www_authenticate


@pytest.mark.parametrize(
    "template",
    [
        "Bearer {0} {0}",
        "Bearer {0}, Bearer {0}",
        "Bearer {0},{0}",
        "Bearer {0} x",
        "Bearer token={0}, realm=x",
    ],
)
def test_several_credentials_are_an_invalid_request(
    server: ResourceServer, token: str, template: str
) -> None:
    assert isinstance(rejected(server, template.format(token)), InvalidRequest)


@pytest.mark.parametrize(
    "bad",
    [
        '"{}"',
        "{};",
        "{}\\",
        "{}\x00",
        "{}\t",
        "{}\u00e9",
        "{}\u2028",
        "{{{}}}",
        "={}",
        "a=b{}",
    ],
)
def test_non_token68_credentials_are_an_invalid_request(
    server: ResourceServer, token: str, bad: str
) -> None:
    assert isinstance(rejected(server, "Bearer " + bad.format(token)), InvalidRequest)


@pytest.mark.parametrize(
    "header",
    [
        "Basic dXNlcjpwYXNzd29yZA==",
        "DPoP eyJhbGciOiJFUzI1NiJ9.e30.c2ln",
        "Token abc",
        "Bearerx abc",
        "Digest username=x",
    ],
)
def test_another_scheme_is_a_missing_token_with_a_bare_challenge(
    server: ResourceServer, header: str
) -> None:
    error = rejected(server, header)
    assert isinstance(error, MissingToken)
    assert error.status_code == 401
    assert error.error is None
    assert (
        error.www_authenticate
        == 'Bearer realm="https://api.test", resource_metadata="https://api.test/.well-known/oauth-protected-resource"'
    )


@pytest.mark.parametrize("header", [None, "", "   "])
def test_absent_header_is_a_missing_token(server: ResourceServer, header: str | None) -> None:
    error = rejected(server, header)
    assert isinstance(error, MissingToken)
    assert (
        error.www_authenticate
        == 'Bearer realm="https://api.test", resource_metadata="https://api.test/.well-known/oauth-protected-resource"'
    )
    assert "error=" not in error.www_authenticate


def test_a_token_just_within_the_size_limit_verifies(issuer: LocalIssuer) -> None:
    base = len(issuer.mint(claims={"padding": ""}))
    size = (LIMIT - base) * 3 // 4 - 10
    while len(issuer.mint(claims={"padding": "x" * (size + 1)})) <= LIMIT:
        size += 1
    token = issuer.mint(claims={"padding": "x" * size})
    assert LIMIT - 4 < len(token) <= LIMIT
    server = issuer.resource_server()
    assert server.authenticate(f"Bearer {token}").claims["padding"] == "x" * size


@pytest.mark.parametrize("filler", ["a", "!", "a.b c"])
def test_an_oversize_token_is_an_invalid_token_before_any_decoding(
    server: ResourceServer, monkeypatch: pytest.MonkeyPatch, filler: str
) -> None:
    def never(*args: object) -> None:
        raise AssertionError("an oversize token reached the decoder")

    monkeypatch.setattr(bearerguard.server, "check_issuer", never)
    monkeypatch.setattr(bearerguard.server, "check_signature", never)
    header = "Bearer " + (filler * (LIMIT + 1))[: LIMIT + 1]
    error = rejected(server, header)
    assert isinstance(error, InvalidToken)
    assert "too large" in error.description
    with pytest.raises(InvalidToken, match="too large"):
        server.verify_token("a" * (LIMIT + 1))


def test_an_oversize_signed_token_is_rejected_without_fetching_keys(issuer: LocalIssuer) -> None:
    local = LocalIssuer()
    token = local.mint(claims={"padding": "x" * LIMIT})
    with pytest.raises(InvalidToken, match="too large"):
        local.resource_server().authenticate(f"Bearer {token}")
    assert local.requests == []


def test_the_size_limit_is_configurable() -> None:
    issuer = LocalIssuer()
    token = issuer.mint(claims={"padding": "x" * 600})
    with pytest.raises(InvalidToken, match="too large"):
        issuer.resource_server(max_token_length=600).authenticate(f"Bearer {token}")
    roomy = issuer.resource_server(max_token_length=4096)
    assert roomy.authenticate(f"Bearer {token}").claims["padding"] == "x" * 600


def test_errors_carry_the_servers_realm(issuer: LocalIssuer) -> None:
    server: ResourceServer = issuer.resource_server(realm="shop")
    with pytest.raises(MissingToken) as info:
        server.authenticate(None)
    assert (
        info.value.www_authenticate
        == 'Bearer realm="shop", resource_metadata="https://api.test/.well-known/oauth-protected-resource"'
    )
