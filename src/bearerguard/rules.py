"""Which requests need which scopes: the rule model shared by the ASGI and WSGI middleware.

Deny by default: a request that matches no rule still needs a valid token. A rule is a
method set plus a path pattern: ``/products`` (exact), ``/products/{id}`` (one non-empty
segment per ``{name}``; ``/files/{name}.{ext}`` works too), ``/static/*`` (the prefix and
everything under it).

A path can be spelled several ways that a router sends to one handler: with a trailing
slash or without (Starlette and Werkzeug redirect between them), with doubled slashes
(Werkzeug merges them). Rules are decided on the spelling the request carries, and the
scopes of every rule that another spelling of the same path would match are required too:
a spelling can make a path need more, never less. Matching is linear in the path's length.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

from .claims import ClaimRule
from .errors import InvalidRequest, Reason

__all__ = ["Requirement", "Rule", "RuleSet"]

_PLACEHOLDER = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}")
_SLASHES = re.compile(r"//+")
# No path a client means holds these; "/admin\n" (from "%0A") still reaches Starlette's
# "/admin" route, whose regex ends in "$", while no rule for "/admin" would match it.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class _Segment:
    """One segment of a pattern: literals around placeholders, each placeholder >= 1 char.

    ``lits`` are the literals (one more than ``mins``); ``mins[i]`` is how many characters
    the i-th run of placeholders needs at least (``{a}{b}``: 2).
    """

    lits: tuple[str, ...]
    mins: tuple[int, ...]

    def regex(self) -> str | None:
        """This segment as a regex that cannot backtrack badly, or None (two or more runs
        of placeholders, such as ``{name}.{ext}``, need ``matches``)."""
        if len(self.mins) > 1:
            return None
        if not self.mins:
            return re.escape(self.lits[0])
        return f"{re.escape(self.lits[0])}[^/]{{{self.mins[0]},}}{re.escape(self.lits[1])}"

    def matches(self, text: str) -> bool:
        lits, mins = self.lits, self.mins
        if not mins:
            return text == lits[0]
        first, last = lits[0], lits[-1]
        if not text.startswith(first) or not text.endswith(last):
            return False
        pos, end = len(first), len(text) - len(last)
        # Placeholders match any run of characters, so taking each middle literal at its
        # leftmost place that leaves room is enough: one left-to-right pass, no backtracking.
        for i in range(1, len(lits) - 1):
            found = text.find(lits[i], pos + mins[i - 1], end)
            if found < 0:
                return False
            pos = found + len(lits[i])
        return end - pos >= mins[-1]


def _segment(text: str) -> _Segment:
    lits = [""]
    mins: list[int] = []
    pos = 0
    for m in _PLACEHOLDER.finditer(text):
        lits[-1] += text[pos : m.start()]
        if m.start() == pos and mins and lits[-1] == "":
            mins[-1] += 1  # adjacent placeholders: one run needing one more character
        else:
            mins.append(1)
            lits.append("")
        pos = m.end()
    lits[-1] += text[pos:]
    return _Segment(tuple(lits), tuple(mins))


def merge_slashes(path: str) -> str:
    """``path`` with runs of slashes merged, as Werkzeug (and the MCP guard) route it."""
    return _SLASHES.sub("/", path) if "//" in path else path


def _toggled(path: str) -> str:
    return path[:-1] if path.endswith("/") else path + "/"


_CONVERTER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*):(?:str|int|float|uuid)\}")
_TAIL_PATH = re.compile(r"/\{[A-Za-z_][A-Za-z0-9_]*:path\}$")


def _pattern(path: str) -> tuple[str, bool]:
    """(the pattern without a trailing ``/*``, whether it had one); ValueError for syntax we
    would otherwise take literally and never match (Flask's ``<id>``, a ``*`` mid-path).

    Starlette's converters are accepted: ``{id:int}`` is ``{id}`` (any segment, so the
    rule covers at least what the route does) and a final ``{rest:path}`` is ``/*``.
    """
    prefix = path.endswith("/*")
    body = path[:-2] if prefix else path
    tail = _TAIL_PATH.search(body)
    if tail is not None and not prefix:
        body, prefix = body[: tail.start()], True
    body = _CONVERTER.sub(r"{\1}", body)
    leftover = _PLACEHOLDER.sub("", body)
    bad = sorted({c for c in leftover if c in "{}<>*"})
    if bad:
        raise ValueError(
            f"path pattern {path!r}: {' '.join(bad)} outside a placeholder; write a segment "
            "as {name} (Starlette's {name:int} and a final {name:path} work too) and a "
            "prefix as /prefix/*"
        )
    return body, prefix


def _variants(path: str) -> list[str]:
    """Other spellings of ``path`` a router may send to the same handler: the trailing
    slash toggled, doubled slashes merged (Werkzeug), and for a path not starting with "/"
    (an absolute-form or a bare target, which Werkzeug-based routers such as Quart's
    accept) the path they route it as."""
    if path.startswith("/") and "//" not in path:  # the usual case
        return [_toggled(path)] if len(path) > 1 else []
    roots = [path]
    if not path.startswith("/"):
        if "://" in path:
            roots.append(urlsplit(path).path or "/")
        roots.append("/" + path.lstrip("/"))
    out: list[str] = []
    for root in roots:
        merged = merge_slashes(root)
        for p in (root, merged):
            for q in (p, _toggled(p)) if len(p) > 1 else (p,):
                if q != path and q not in out:
                    out.append(q)
    return out


@dataclass(frozen=True)
class Requirement:
    """What one request needs: nothing (public), or a valid token with these scopes.

    ``also`` holds further scope sets that must hold as well (from rules that another
    spelling of the path matches).
    """

    public: bool = False
    scopes: tuple[str, ...] = ()
    any_of: bool = False
    also: tuple[Requirement, ...] = ()
    optional: bool = False  # no bearer credentials: go on without a token
    claims: tuple[ClaimRule, ...] = ()  # the route's claim rules (403 when one fails)
    dpop: bool = False  # a DPoP-bound token with its proof only (RFC 9449), never Bearer
    _groups: tuple[Requirement, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Worked out once: settle() reads it on every request.
        own_checks = bool(self.scopes or self.claims)
        if not self.also:
            groups: tuple[Requirement, ...] = (self,) if own_checks else ()
        else:
            own = Requirement(scopes=self.scopes, any_of=self.any_of, claims=self.claims)
            groups = (own, *self.also) if own_checks else self.also
        object.__setattr__(self, "_groups", groups)

    def groups(self) -> tuple[Requirement, ...]:
        """Every scope set (with its claim rules) to check: this one and those in ``also``."""
        return self._groups

    def needing(self, other: Requirement) -> Requirement:
        """This requirement and what ``other``, a rule's requirement, adds to it.

        ``AUTHENTICATED`` (no rule matched) and public rules add nothing; another rule
        turns a public requirement into its own, and adds its scopes to any other.
        """
        if other is AUTHENTICATED or other.public:
            return self
        if self.public:
            return other
        optional = self.optional and other.optional  # optional only if both spellings are
        dpop = self.dpop or other.dpop  # DPoP-only if either is
        if not (other.scopes or other.claims) or other in self.groups():
            if self.optional == optional and self.dpop == dpop:
                return self
            return replace(self, optional=optional, dpop=dpop)
        if not (self.scopes or self.claims or self.also):
            return replace(other, optional=optional, dpop=dpop)
        simple = not (self.any_of or other.any_of or other.also or self.claims or other.claims)
        if simple:
            merged = tuple(dict.fromkeys(self.scopes + other.scopes))
            return replace(self, scopes=merged, optional=optional, dpop=dpop)
        extra = replace(other, optional=False, also=(), dpop=False)
        return replace(self, optional=optional, dpop=dpop, also=(*self.also, extra))


@dataclass(frozen=True)
class Rule:
    """``Rule("/products/{id}", methods=["DELETE"], scopes=["write:products"])``.

    ``public=True`` makes matching requests skip authentication entirely; ``optional=True``
    lets requests without bearer credentials through with no token (credentials that are
    there must still be valid); ``dpop=True`` takes DPoP-bound tokens with their proofs only
    (the server must have ``dpop="allowed"`` or ``"required"``); ``claims=[...]`` adds claim
    rules (``bearerguard.claims``, token-only there: path parameters are the route's, see the
    decorators). Methods are compared case-insensitively; a rule for GET covers HEAD too.
    """

    path: str
    methods: Iterable[str] | None = None
    scopes: str | Sequence[str] = ()
    any_of: bool = False
    public: bool = False
    optional: bool = False
    claims: Sequence[ClaimRule] = ()
    dpop: bool = False
    _segments: tuple[_Segment, ...] = field(init=False, repr=False, compare=False)
    _regex: re.Pattern[str] | None = field(init=False, repr=False, compare=False)
    _prefix: bool = field(init=False, repr=False, compare=False)
    _methods: frozenset[str] | None = field(init=False, repr=False, compare=False)
    requirement: Requirement = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.path, str) or not self.path.startswith("/"):
            raise ValueError(f"path pattern must start with '/': {self.path!r}")
        scopes = tuple(self.scopes.split()) if isinstance(self.scopes, str) else tuple(self.scopes)
        claims = tuple(self.claims)
        if self.public and (scopes or claims or self.optional or self.dpop):
            raise ValueError("a public rule cannot require scopes, claims or DPoP, nor be optional")
        if not all(isinstance(c, ClaimRule) for c in claims):
            raise TypeError("claims= takes ClaimRule objects (see bearerguard.claims)")
        methods = None if self.methods is None else frozenset(m.upper() for m in self.methods)
        if methods is not None and "GET" in methods:
            methods |= {"HEAD"}  # HEAD is GET without a body: frameworks route it the same way
        body, prefix = _pattern(self.path)
        segments = tuple(_segment(s) for s in body.split("/"))
        # A regex (C speed) when every segment has one run of placeholders at most: each
        # [^/]+ then has one place to end (before the segment's literal tail and "/"), so
        # matching stays linear. Otherwise the segment matcher, which never backtracks.
        pieces = [seg.regex() for seg in segments]
        texts = [piece for piece in pieces if piece is not None]
        regex = None
        if len(texts) == len(pieces):
            regex = re.compile("/".join(texts) + ("(?:/.*)?" if prefix else ""), re.S)
        set_ = object.__setattr__
        set_(self, "_segments", segments)
        set_(self, "_regex", regex)
        set_(self, "_prefix", prefix)
        set_(self, "_methods", methods)
        requirement = Requirement(
            self.public, scopes, self.any_of, optional=self.optional, claims=claims, dpop=self.dpop
        )
        set_(self, "requirement", requirement)

    def matches(self, method: str, path: str) -> bool:
        """Whether this rule applies to ``method`` (any case) and ``path``, as spelled."""
        if self._methods is not None and method.upper() not in self._methods:
            return False
        if self._regex is not None:
            return self._regex.fullmatch(path) is not None
        return self._match(path.split("/"))

    def _match(self, parts: list[str]) -> bool:
        segments = self._segments
        if self._prefix:
            if len(parts) < len(segments):
                return False
        elif len(parts) != len(segments):
            return False
        return all(seg.matches(part) for seg, part in zip(segments, parts, strict=False))


AUTHENTICATED = Requirement()
PUBLIC = Requirement(public=True)


class RuleSet:
    """An ordered list of rules; the first match wins, no match means 'valid token needed'.

    The scopes of the first rule matching another spelling of the path (see the module
    docstring) are needed too.
    """

    def __init__(self, rules: Iterable[Rule] = (), public: Iterable[str] = ()) -> None:
        public_rules = tuple(Rule(p, public=True) for p in public)
        self.rules = public_rules + tuple(rules)
        # ``public`` paths come first, so exact ones (the common /health) can be answered by
        # a set lookup without changing first-match-wins.
        self._public_exact = frozenset(
            r.path for r in public_rules if "{" not in r.path and not r.path.endswith("/*")
        )
        # Only a rule that is not public can make another spelling need more.
        self._strengthening = any(not r.public for r in self.rules)
        # Answers for recent (method, path) pairs: an API's hot paths are few. Bounded, and
        # simply started over when full, so paths a client makes up cost what they did.
        self._memo: dict[tuple[str, str, tuple[str, ...]], Requirement] = {}
        # When every rule is a regex: one alternation per method, tried in rule order, so the
        # first alternative that matches is the first rule that matches (one C call a path).
        self._combined: dict[str, tuple[re.Pattern[str], tuple[Requirement, ...]]] = {}
        if all(r._regex is not None for r in self.rules):
            named = {m for r in self.rules if r._methods is not None for m in r._methods}
            for method in (*named, ""):  # "": any method no rule names
                chosen = [r for r in self.rules if r._methods is None or method in r._methods]
                alternation = "|".join(f"({r._regex.pattern})" for r in chosen if r._regex)
                combined = re.compile(alternation or "(?!)", re.S)
                self._combined[method] = (combined, tuple(r.requirement for r in chosen))

    def requirement(self, method: str, path: str, *others: str) -> Requirement:
        """What a request for ``method`` and ``path`` (the path its router sees) needs.

        ``others`` are further spellings the adapter knows a router might act on. A path
        with control characters (decoded from ``%0A`` and the like) is an ``InvalidRequest``.
        """
        key = (method, path, others)
        found = self._memo.get(key)
        if found is not None:
            return found
        found = self._decide(method.upper(), path, others)
        if len(self._memo) >= 1024:
            self._memo.clear()
        self._memo[key] = found
        return found

    def _decide(self, method: str, path: str, others: tuple[str, ...]) -> Requirement:
        if _CONTROL.search(path) or any(_CONTROL.search(o) for o in others):
            raise InvalidRequest(
                "the request path holds control characters", reason=Reason.MALFORMED_REQUEST
            )
        found = PUBLIC if path in self._public_exact else self._first(method, path)
        if self._strengthening:
            for other in others:
                found = found.needing(self._first(method, other))
            for spelling in (path, *others):
                for variant in _variants(spelling):
                    found = found.needing(self._first(method, variant))
        return found

    def _first(self, method: str, path: str) -> Requirement:
        combined = self._combined.get(method) or self._combined.get("")
        if combined is not None:
            found = combined[0].fullmatch(path)
            return AUTHENTICATED if found is None else combined[1][found.lastindex - 1]  # type: ignore[operator]
        parts: list[str] | None = None
        for rule in self.rules:
            if rule._methods is not None and method not in rule._methods:
                continue
            regex = rule._regex
            if regex is not None:
                if regex.fullmatch(path) is not None:
                    return rule.requirement
                continue
            if parts is None:
                parts = path.split("/")
            if rule._match(parts):
                return rule.requirement
        return AUTHENTICATED
