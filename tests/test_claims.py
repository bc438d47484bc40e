"""Claim rules and optional authentication, through ResourceServer.authorize (both faces)."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest

from bearerguard import (
    AccessToken,
    AuthError,
    ConfigurationError,
    InsufficientScope,
    InvalidRequest,
    InvalidToken,
    MissingToken,
    ResourceServer,
)
from bearerguard.claims import (
    ClaimRule,
    claim_contains,
    claim_equals,
    claim_in,
    claim_matches_path,
)
from bearerguard.request import RequestView
from bearerguard.rules import Requirement
from bearerguard.testing import LocalIssuer

AUDIENCE = "https://api.test"
NOW = 1_800_000_000.0
META = f'resource_metadata="{AUDIENCE}/.well-known/oauth-protected-resource"'


def clock() -> float:
    return NOW


@pytest.fixture
def issuer() -> LocalIssuer:
    return LocalIssuer(audience=AUDIENCE, clock=clock)


def view(
    *headers: str, params: dict[str, Any] | None = None, upstream: object = None
) -> RequestView:
    return RequestView("GET", list(headers), path_params=params or {}, upstream=upstream)


def outcome(
    server: ResourceServer, request: RequestView, requirement: Requirement
) -> AccessToken | AuthError | None:
    """What both faces answer; they must agree."""
    answers: list[Any] = []
    for face in ("sync", "async"):
        try:
            if face == "sync":
                answers.append(server.authorize(request, requirement))
            else:
                answers.append(asyncio.run(server.authorize_async(request, requirement)))
        except AuthError as exc:
            answers.append(exc)
    sync, async_ = answers
    if isinstance(sync, AuthError):
        assert type(async_) is type(sync)
        assert async_.www_authenticate == sync.www_authenticate
        assert async_.to_json() == sync.to_json()
    else:
        assert async_ == sync or (async_ is not None and sync is not None)
    return sync  # type: ignore[no-any-return]


# -- optional authentication ----------------------------------------------------------------------

OPTIONAL = Requirement(scopes=("read",), optional=True)


@pytest.mark.parametrize(
    "headers", [(), ("Basic dXNlcjpwYXNz",), ("ApiKey k-123",), ("Digest x",), ("",)]
)
def test_optional_without_bearer_credentials_goes_on_with_no_token(
    issuer: LocalIssuer, headers: tuple[str, ...]
) -> None:
    """No credentials, or another scheme (an API key beside bearer tokens): no token."""
    assert outcome(issuer.resource_server(), view(*headers), OPTIONAL) is None


@pytest.mark.parametrize(
    ("header", "error"),
    [
        ("Bearer not.a.token", InvalidToken),
        ("Bearer ", InvalidRequest),
        ("Bearer a b", InvalidRequest),
        ("bearer a$b", InvalidRequest),
    ],
)
def test_optional_with_bad_bearer_credentials_is_still_rejected(
    issuer: LocalIssuer, header: str, error: type[AuthError]
) -> None:
    found = outcome(issuer.resource_server(), view(header), OPTIONAL)
    assert type(found) is error
    assert isinstance(found, AuthError)
    assert found.realm == AUDIENCE


def test_optional_with_an_expired_token_is_rejected_not_anonymous(issuer: LocalIssuer) -> None:
    found = outcome(issuer.resource_server(), view(f"Bearer {issuer.expired('read')}"), OPTIONAL)
    assert isinstance(found, InvalidToken)


def test_optional_with_a_valid_token_applies_the_scopes(issuer: LocalIssuer) -> None:
    server = issuer.resource_server()
    token = outcome(server, view(f"Bearer {issuer.mint('read', sub='ann')}"), OPTIONAL)
    assert isinstance(token, AccessToken)
    assert token.sub == "ann"
    assert isinstance(
        outcome(server, view(f"Bearer {issuer.mint('write')}"), OPTIONAL), InsufficientScope
    )


def test_optional_with_several_authorization_headers_is_a_bad_request(issuer: LocalIssuer) -> None:
    found = outcome(issuer.resource_server(), view("Basic a", "Bearer b"), OPTIONAL)
    assert isinstance(found, InvalidRequest)


def test_not_optional_without_credentials_is_a_401_naming_the_routes_scopes(
    issuer: LocalIssuer,
) -> None:
    """No error code (RFC 6750 3.1), but every scope the route needs in one challenge, and
    where the resource's metadata is (RFC 9728 5.1)."""
    requirement = Requirement(scopes=("read", "write"))
    found = outcome(issuer.resource_server(), view(), requirement)
    assert isinstance(found, MissingToken)
    assert found.www_authenticate == f'Bearer realm="{AUDIENCE}", scope="read write", {META}'
    any_of = Requirement(scopes=("read",), also=(Requirement(scopes=("a", "b"), any_of=True),))
    found = outcome(issuer.resource_server(), view(), any_of)
    assert found.www_authenticate == f'Bearer realm="{AUDIENCE}", scope="read a b", {META}'


# -- claim rules on a route: 403 naming the rule ---------------------------------------------------


def test_a_failed_route_rule_is_403_naming_it_without_scope_or_claim_values(
    issuer: LocalIssuer,
) -> None:
    server = issuer.resource_server()
    rule = claim_contains("roles", "admin")
    token = issuer.mint("read", roles=["viewer", "secret-value-42"])
    found = outcome(server, view(f"Bearer {token}"), Requirement(scopes=("read",), claims=(rule,)))
    assert isinstance(found, InsufficientScope)
    assert found.status_code == 403
    assert found.www_authenticate == (
        f'Bearer realm="{AUDIENCE}", error="insufficient_scope", '
        "error_description=\"token fails a claim rule: roles must include 'admin'\", " + META
    )
    body = json.loads(found.to_json())
    assert body == {
        "error": "insufficient_scope",
        "error_description": "token fails a claim rule: roles must include 'admin'",
    }
    assert "secret-value-42" not in found.www_authenticate + found.to_json()
    assert "viewer" not in found.www_authenticate + found.to_json()


def test_scopes_are_checked_before_the_claim_rules(issuer: LocalIssuer) -> None:
    server = issuer.resource_server()
    requirement = Requirement(scopes=("write",), claims=(claim_contains("roles", "admin"),))
    found = outcome(server, view(f"Bearer {issuer.mint('read')}"), requirement)
    assert isinstance(found, InsufficientScope)
    assert 'scope="write"' in found.www_authenticate


@pytest.mark.parametrize(
    ("claims", "params", "passes"),
    [
        ({"organization_id": "org-1"}, {"org": "org-1"}, True),
        ({"organization_id": "org-1"}, {"org": "org-2"}, False),
        ({"organization_id": "org-1"}, {}, False),  # no such path parameter: deny
        ({"aud": "urn:logto:organization:org-7"}, {"org": "org-7"}, True),
        ({}, {"org": "org-1"}, False),
        ({"organization_id": "10"}, {"org": 10}, True),  # Starlette's {org:int} converter
    ],
)
def test_organization_must_match_the_path(
    issuer: LocalIssuer, claims: dict[str, Any], params: dict[str, Any], passes: bool
) -> None:
    audience = [AUDIENCE, "urn:logto:organization:org-7"]
    server = issuer.resource_server(audience=audience)
    if "aud" not in claims:
        claims = {**claims, "aud": AUDIENCE}
    token = issuer.mint("read", claims=claims)
    rule = claim_matches_path("organization_id", "org")
    found = outcome(server, view(f"Bearer {token}", params=params), Requirement(claims=(rule,)))
    assert isinstance(found, AccessToken) is passes
    if not passes:
        assert isinstance(found, InsufficientScope)
        assert "organization_id must match the path's org" in found.description


@pytest.mark.parametrize(
    ("rule", "claims", "passes"),
    [
        (claim_equals("tenant", "acme"), {"tenant": "acme"}, True),
        (claim_equals("tenant", "acme"), {"tenant": "acme2"}, False),
        (claim_equals("tier", 1), {"tier": True}, False),  # True == 1, but it is no number
        (claim_equals("tier", 1), {"tier": 1}, True),
        (claim_contains("roles", "admin"), {"roles": ["viewer", "admin"]}, True),
        (claim_contains("roles", "admin"), {"roles": "viewer admin"}, True),
        (claim_contains("roles", "admin"), {"roles": "administrator"}, False),
        (claim_contains("roles", "admin"), {"roles": {"admin": True}}, False),
        (claim_in("azp", ["billing", "stats"]), {"azp": "stats"}, True),
        (claim_in("azp", ["billing", "stats"]), {"azp": "evil"}, False),
        (claim_in("azp", ["billing", "stats"]), {"azp": ["stats"]}, False),
        (claim_in("azp", ["billing", "stats"]), {}, False),
    ],
)
def test_the_ready_made_rules(
    issuer: LocalIssuer, rule: ClaimRule, claims: dict[str, Any], passes: bool
) -> None:
    token = issuer.mint("read", claims=claims)
    found = outcome(issuer.resource_server(), view(f"Bearer {token}"), Requirement(claims=(rule,)))
    assert isinstance(found, AccessToken) is passes


def test_a_rule_that_raises_denies_and_is_logged(
    issuer: LocalIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(token: AccessToken, params: Any) -> bool:
        raise KeyError("oops")

    rule = ClaimRule("tenant is known", broken)
    token = issuer.mint("read")
    with caplog.at_level(logging.ERROR, logger="bearerguard"):
        found = outcome(
            issuer.resource_server(), view(f"Bearer {token}"), Requirement(claims=(rule,))
        )
    assert isinstance(found, InsufficientScope)
    assert any("tenant is known" in r.getMessage() for r in caplog.records)
    assert all(token not in r.getMessage() for r in caplog.records)


def test_a_rule_must_answer_true_not_something_truthy(issuer: LocalIssuer) -> None:
    rule = ClaimRule("truthy is not enough", lambda token, params: "yes")  # type: ignore[arg-type,return-value]
    found = outcome(
        issuer.resource_server(), view(f"Bearer {issuer.mint('read')}"), Requirement(claims=(rule,))
    )
    assert isinstance(found, InsufficientScope)


# -- server-wide claim rules: 401, and never cached ---------------------------------------------


def test_a_failed_server_rule_is_401_invalid_token_and_not_cached(issuer: LocalIssuer) -> None:
    checked: list[str] = []

    def tenant_is_acme(token: AccessToken, params: Any) -> bool:
        checked.append(str(token.claims.get("tenant")))
        return token.claims.get("tenant") == "acme"

    server = issuer.resource_server(claim_rules=[ClaimRule("tenant must be acme", tenant_is_acme)])
    other = issuer.mint("read", tenant="other")
    for _ in range(2):
        with pytest.raises(InvalidToken) as info:
            server.authenticate(f"Bearer {other}")
        assert info.value.www_authenticate == (
            f'Bearer realm="{AUDIENCE}", error="invalid_token", '
            'error_description="token fails a claim rule of this API: tenant must be acme", ' + META
        )
    assert checked == ["other", "other"]  # checked again: a failing token is never cached
    good = issuer.mint("read", tenant="acme")
    assert server.authenticate(f"Bearer {good}").claims["tenant"] == "acme"
    assert server.authenticate(f"Bearer {good}").claims["tenant"] == "acme"
    assert checked == ["other", "other", "acme"]  # a passing token is cached with its verdict
    found = outcome(server, view(f"Bearer {other}"), Requirement())
    assert isinstance(found, InvalidToken)


@pytest.mark.parametrize("bad", [["not a rule"], [lambda t, p: True]])
def test_claim_rules_must_be_claim_rules(bad: Any) -> None:
    with pytest.raises(ConfigurationError, match="ClaimRule"):
        ResourceServer("https://issuer.test/oidc", AUDIENCE, claim_rules=bad)


def test_a_rule_needs_a_description_and_a_callable() -> None:
    with pytest.raises(ValueError, match="description"):
        ClaimRule("  ", lambda t, p: True)
    with pytest.raises(TypeError, match="callable"):
        ClaimRule("x", "not callable")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="allowed"):
        claim_in("azp", [])


@pytest.mark.parametrize(
    "header",
    [
        "Bearer\tnot.a.token",
        "Bearer\xa0not.a.token",
        "Bearer,not.a.token",
        ",Bearer not.a.token",
        "Basic x, Bearer not.a.token",
        "  bearer not.a.token",
    ],
)
def test_optional_never_takes_a_mangled_bearer_attempt_for_no_credentials(
    issuer: LocalIssuer, header: str
) -> None:
    found = outcome(issuer.resource_server(), view(header), OPTIONAL)
    assert isinstance(found, (InvalidRequest, InvalidToken)), found


@pytest.mark.parametrize("header", ['Digest username="a", realm="b"', "Basic a,b", "Bearerish x"])
def test_optional_takes_other_schemes_with_commas_for_no_bearer_credentials(
    issuer: LocalIssuer, header: str
) -> None:
    assert outcome(issuer.resource_server(), view(header), OPTIONAL) is None


def test_ready_made_rules_refuse_arguments_that_would_loosen_them() -> None:
    with pytest.raises(TypeError, match="not a string"):
        claim_in("azp", "billing")  # would allow "b", "i", "l", ...
    with pytest.raises(ValueError, match="non-empty"):
        claim_contains("roles", "")
