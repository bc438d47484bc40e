"""Claim rules: checks on a verified token beyond its scopes.

::

    ResourceServer(..., claim_rules=[claim_in("azp", {"billing", "stats"})])   # server-wide
    Security(auth.with_claims(claim_matches_path("organization_id", "org")), scopes=[...])

A server-wide rule that fails means the token is not for this API: 401 ``invalid_token``. A
route's rule that fails means the token lacks a privilege: 403 ``insufficient_scope`` whose
``error_description`` names the rule. Neither ever shows the token's claim values.

A rule is a description and a check ``(token, path_params) -> bool``; ``path_params`` are the
route's parameters as the framework matched them (empty for server-wide rules and path
rules in the middleware). A check that raises counts as failed (and is logged): a bug in a
rule denies access, it never grants it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .token import AccessToken

__all__ = [
    "ClaimCheck",
    "ClaimRule",
    "claim_contains",
    "claim_equals",
    "claim_in",
    "claim_matches_path",
]

log = logging.getLogger("bearerguard")

ClaimCheck = Callable[[AccessToken, Mapping[str, Any]], bool]
NO_PARAMS: Mapping[str, Any] = {}


class ClaimRule:
    """``ClaimRule("tenant is acme", lambda token, params: token.claims.get("tenant") == "acme")``.

    ``description`` names the rule in error responses: say what is required, never what the
    token held.
    """

    __slots__ = ("check", "description")

    def __init__(self, description: str, check: ClaimCheck) -> None:
        if not isinstance(description, str) or not description.strip():
            raise ValueError("a claim rule needs a description (it names the rule in errors)")
        if not callable(check):
            raise TypeError("a claim rule's check must be callable: (token, path_params) -> bool")
        self.description = description
        self.check = check

    def holds(self, token: AccessToken, params: Mapping[str, Any] = NO_PARAMS) -> bool:
        """Whether ``token`` passes; an exception in the check is a failure."""
        try:
            return self.check(token, params) is True
        except Exception:
            log.exception("bearerguard: claim rule %r raised; access denied", self.description)
            return False

    def __repr__(self) -> str:
        return f"ClaimRule({self.description!r})"


def _values(token: AccessToken, claim: str) -> tuple[Any, ...]:
    value = token.claims.get(claim)
    if isinstance(value, str):
        return tuple(value.split(" "))
    if isinstance(value, (list, tuple)):
        return tuple(value)
    return ()


def claim_equals(claim: str, expected: str | int | bool) -> ClaimRule:
    """The claim equals ``expected`` (exact type and value)."""
    return ClaimRule(
        f"{claim} must be {expected!r}",
        lambda token, _: (
            type(token.claims.get(claim)) is type(expected) and token.claims.get(claim) == expected
        ),
    )


def claim_contains(claim: str, value: str) -> ClaimRule:
    """The claim (a list, or a space-separated string) includes ``value``: a role, a group."""
    if not isinstance(value, str) or not value.strip(" "):
        raise ValueError(f"claim_contains({claim!r}, ...) needs a non-empty value")
    return ClaimRule(
        f"{claim} must include {value!r}", lambda token, _: value in _values(token, claim)
    )


def claim_in(claim: str, allowed: Iterable[str]) -> ClaimRule:
    """The claim is a string from ``allowed``: e.g. ``azp`` from a list of client ids."""
    if isinstance(allowed, str):  # its characters would be the allowed values
        raise TypeError(f"claim_in({claim!r}, ...) takes a collection of strings, not a string")
    choices = frozenset(allowed)
    if not choices:
        raise ValueError(f"claim_in({claim!r}, ...) needs at least one allowed value")
    return ClaimRule(
        f"{claim} must be an allowed value",
        lambda token, _: (
            isinstance(token.claims.get(claim), str) and token.claims[claim] in choices
        ),
    )


def claim_matches_path(claim: str, param: str) -> ClaimRule:
    """The claim equals the route's path parameter ``param``: a Logto organization token's
    ``organization_id`` and ``/orgs/{org}/...``. ``organization_id`` also reads an
    ``urn:logto:organization:<id>`` audience (``AccessToken.organization_id``)."""

    def check(token: AccessToken, params: Mapping[str, Any]) -> bool:
        value = params.get(param)
        expected = str(value) if value is not None else ""
        if not expected:
            return False
        found = token.organization_id if claim == "organization_id" else token.claims.get(claim)
        return isinstance(found, str) and found == expected

    return ClaimRule(f"{claim} must match the path's {param}", check)
