"""Which requests need which scopes: the rule model shared by the ASGI and WSGI middleware.

Deny by default: a request that matches no rule still needs a valid token. A rule is a
method set plus a path pattern: ``/products`` (exact), ``/products/{id}`` (one segment per
``{name}``), ``/static/*`` (the prefix and everything under it).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = ["Requirement", "Rule", "RuleSet"]


def _compile(pattern: str) -> re.Pattern[str]:
    if not pattern.startswith("/"):
        raise ValueError(f"path pattern must start with '/': {pattern!r}")
    prefix = pattern.endswith("/*")
    body = pattern[:-2] if prefix else pattern
    regex = ""
    for piece in re.split(r"(\{[A-Za-z_][A-Za-z0-9_]*\})", body):
        regex += "[^/]+" if piece.startswith("{") and piece.endswith("}") else re.escape(piece)
    return re.compile(regex + ("(?:/.*)?" if prefix else ""), re.S)


@dataclass(frozen=True)
class Requirement:
    """What one request needs: nothing (public), or a valid token with these scopes."""

    public: bool = False
    scopes: tuple[str, ...] = ()
    any_of: bool = False


@dataclass(frozen=True)
class Rule:
    """``Rule("/products/{id}", methods=["DELETE"], scopes=["write:products"])``.

    ``public=True`` makes matching requests skip authentication entirely.
    """

    path: str
    methods: Iterable[str] | None = None
    scopes: str | Sequence[str] = ()
    any_of: bool = False
    public: bool = False
    _regex: re.Pattern[str] = field(init=False, repr=False, compare=False)
    _methods: frozenset[str] | None = field(init=False, repr=False, compare=False)
    requirement: Requirement = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        scopes = tuple(self.scopes.split()) if isinstance(self.scopes, str) else tuple(self.scopes)
        if self.public and scopes:
            raise ValueError("a public rule cannot require scopes")
        methods = None if self.methods is None else frozenset(m.upper() for m in self.methods)
        if methods is not None and "GET" in methods:
            methods |= {"HEAD"}  # HEAD is GET without a body: frameworks route it the same way
        object.__setattr__(self, "_regex", _compile(self.path))
        object.__setattr__(self, "_methods", methods)
        object.__setattr__(self, "requirement", Requirement(self.public, scopes, self.any_of))

    def matches(self, method: str, path: str) -> bool:
        if self._methods is not None and method not in self._methods:
            return False
        return self._regex.fullmatch(path) is not None


AUTHENTICATED = Requirement()
PUBLIC = Requirement(public=True)


class RuleSet:
    """An ordered list of rules; the first match wins, no match means 'valid token needed'."""

    def __init__(self, rules: Iterable[Rule] = (), public: Iterable[str] = ()) -> None:
        public_rules = tuple(Rule(p, public=True) for p in public)
        self.rules = public_rules + tuple(rules)
        # ``public`` paths come first, so exact ones (the common /health) can be answered by
        # a set lookup without changing first-match-wins.
        self._public_exact = frozenset(
            r.path for r in public_rules if "{" not in r.path and not r.path.endswith("/*")
        )

    def requirement(self, method: str, path: str) -> Requirement:
        if path in self._public_exact:
            return PUBLIC
        for rule in self.rules:
            if rule.matches(method, path):
                return rule.requirement
        return AUTHENTICATED
