"""Path rules: what each spelling of a path needs, decided in time linear in the path."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from bearerguard.asgi import BearerAuthMiddleware, route_path
from bearerguard.claims import claim_equals
from bearerguard.errors import InvalidToken
from bearerguard.request import RequestView
from bearerguard.rules import Requirement, Rule, RuleSet
from bearerguard.testing import LocalIssuer

RULES = RuleSet(
    [
        Rule("/orders", methods=["POST"], scopes="write:orders"),
        Rule("/orders", methods=["GET"], scopes="read:orders"),
        Rule("/orders/{id}", methods=["DELETE"], scopes="admin"),
        Rule("/files/{name}.{ext}", scopes="files"),
        Rule("/admin/*", scopes="admin"),
        Rule("/reports", scopes=["read", "audit"], any_of=True),
    ],
    public=["/health", "/static/*"],
)


def needs(method: str, path: str, rules: RuleSet = RULES) -> set[str] | str:
    req = rules.requirement(method, path)
    if req.public:
        return "public"
    return {s for group in req.groups() for s in group.scopes}


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("POST", "/orders", {"write:orders"}),
        ("post", "/orders", {"write:orders"}),
        ("Post", "/orders", {"write:orders"}),
        ("delete", "/orders/7", {"admin"}),
        ("GET", "/orders", {"read:orders"}),
        ("HEAD", "/orders", {"read:orders"}),
        ("head", "/orders", {"read:orders"}),
        # trailing slash: the same rule (routers redirect one spelling to the other)
        ("POST", "/orders/", {"write:orders"}),
        ("delete", "/orders/7/", {"admin"}),
        # doubled slashes: Werkzeug merges them, so the merged path's rule applies too
        ("POST", "//orders", {"write:orders"}),
        ("POST", "///orders//", {"write:orders"}),
        ("GET", "///admin//users", {"admin"}),
        ("GET", "/admin", {"admin"}),
        ("GET", "/files/report.pdf", {"files"}),
        ("GET", "/files/a.b.c", {"files"}),
        ("GET", "/files/report", set()),  # no ".": the rule does not apply, a token is needed
        ("GET", "/health", "public"),
        ("GET", "/static/app.js", "public"),
        ("GET", "/static", "public"),
        ("GET", "/nowhere", set()),
        # a spelling never makes a path public that is not public as written
        ("GET", "//health", set()),
        ("GET", "/health/", set()),
    ],
)
def test_what_each_spelling_needs(method: str, path: str, expected: Any) -> None:
    assert needs(method, path) == expected


def test_the_scopes_of_every_spelling_are_needed_together() -> None:
    rules = RuleSet(
        [
            Rule("/a/", scopes="slash"),
            Rule("/a", scopes="bare"),
            Rule("/x", scopes=["p", "q"], any_of=True),
        ]
    )
    assert rules.requirement("GET", "/a").groups() == (Requirement(scopes=("bare", "slash")),)
    both = rules.requirement("GET", "/x/")
    assert both.groups() == (Requirement(scopes=("p", "q"), any_of=True),)
    mixed = RuleSet([Rule("/y", scopes="one"), Rule("/y/", scopes=["p", "q"], any_of=True)])
    assert mixed.requirement("GET", "/y").groups() == (
        Requirement(scopes=("one",)),
        Requirement(scopes=("p", "q"), any_of=True),
    )


@pytest.mark.parametrize(
    ("root_path", "path", "expected"),
    [
        ("", "/orders", "/orders"),
        ("/api", "/api/orders", "/orders"),
        ("/api", "/api", "/"),
        ("/api", "/api/", "/"),
        ("/api", "/apiorders", "/apiorders"),  # not below the root: routed as it is
        ("/api", "/orders", "/orders"),  # a proxy that already stripped the prefix
        ("/v1/shop", "/v1/shop/orders/7", "/orders/7"),
    ],
)
def test_route_path_strips_the_root_path_as_starlette_does(
    root_path: str, path: str, expected: str
) -> None:
    assert route_path({"type": "http", "path": path, "root_path": root_path}) == expected


def test_a_mounted_guard_applies_its_rules_below_the_mount_point() -> None:
    issuer = LocalIssuer(audience="https://api.test")
    server = issuer.resource_server()

    async def ok(request: Request) -> PlainTextResponse:
        return PlainTextResponse(request.method)

    inner = Starlette(
        routes=[
            Route("/orders", ok, methods=["GET", "POST"]),
            Route("/orders/{id}", ok, methods=["DELETE"]),
            Route("/health", ok),
        ]
    )
    guarded = BearerAuthMiddleware(
        inner, server=server, public=["/health"], rules=list(RULES.rules[2:])
    )
    client = TestClient(Starlette(routes=[Mount("/v1", app=guarded)]))
    read = {"Authorization": f"Bearer {issuer.mint('read:orders')}"}
    write = {"Authorization": f"Bearer {issuer.mint('write:orders')}"}
    assert client.get("/v1/health").status_code == 200
    assert client.post("/v1/orders", headers=read).status_code == 403
    assert client.post("/v1/orders", headers=write).status_code == 200
    assert client.get("/v1/orders", headers=read).status_code == 200
    assert client.delete("/v1/orders/1", headers=write).status_code == 403


class Guarded:
    """The ASGI middleware with RULES in front of an app that records what reached it,
    driven with hand-made scopes (spellings a test client would normalise away)."""

    def __init__(self) -> None:
        self.issuer = LocalIssuer(audience="https://api.test")
        self.reached: list[tuple[str, str]] = []

        async def app(scope: Any, receive: Any, send: Any) -> None:
            self.reached.append((scope["method"], scope["path"]))
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b""})

        server = self.issuer.resource_server()
        self.app = BearerAuthMiddleware(app, server=server, rules=list(RULES.rules))

    def status(self, method: str, path: str, *, scopes: str, root_path: str = "") -> int:
        import asyncio

        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        token = self.issuer.mint(scopes)
        scope = {
            "type": "http",
            "method": method,
            "path": path,
            "root_path": root_path,
            "headers": [(b"authorization", f"Bearer {token}".encode())],
            "query_string": b"",
        }
        asyncio.run(self.app(scope, receive, send))
        return int(sent[0]["status"])


def test_a_lowercase_method_meets_the_rule_for_its_uppercase_form() -> None:
    guarded = Guarded()
    # uvicorn passes a lowercase request method on as it came
    assert guarded.status("delete", "/orders/1", scopes="read:orders") == 403
    assert guarded.reached == []
    assert guarded.status("delete", "/orders/1", scopes="admin") == 200


# -- linear time ----------------------------------------------------------------------------


def _old_regex(pattern: str) -> re.Pattern[str]:
    """The matcher of round 1: one regex per rule (correct, but backtracking)."""
    prefix = pattern.endswith("/*")
    body = pattern[:-2] if prefix else pattern
    regex = ""
    for piece in re.split(r"(\{[A-Za-z_][A-Za-z0-9_]*\})", body):
        regex += "[^/]+" if piece.startswith("{") and piece.endswith("}") else re.escape(piece)
    return re.compile(regex + ("(?:/.*)?" if prefix else ""), re.S)


_piece = st.sampled_from(["a", ".", "-", "ab", "{x}", "{y}", "/"])
_path_char = st.sampled_from(["a", "b", ".", "-", "/"])


@settings(max_examples=600, deadline=None)
@given(
    pattern=st.lists(_piece, max_size=6).map(lambda p: "/" + "".join(p)),
    prefix=st.booleans(),
    path=st.lists(_path_char, max_size=12).map(lambda p: "/" + "".join(p)),
)
def test_the_segment_matcher_agrees_with_the_round_one_regex(
    pattern: str, prefix: bool, path: str
) -> None:
    if prefix:
        pattern = pattern.rstrip("/") + "/*"
    rule = Rule(pattern, scopes="s")
    assert rule.matches("GET", path) == bool(_old_regex(pattern).fullmatch(path)), (pattern, path)


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("pattern", "path"),
    [
        ("/files/{name}.{ext}", "/files/" + "a." * 150_000 + "/"),
        ("/files/{name}.{ext}/x", "/files/" + "a." * 150_000 + "b/y"),
        ("/f/{a}-{b}-{c}", "/f/" + "-" * 300_000),
        ("/f/{a}{b}{c}.json", "/f/" + "x" * 300_000),
    ],
)
def test_hostile_paths_are_matched_without_backtracking(pattern: str, path: str) -> None:
    """~300 KB paths that cost the round-one regex minutes (quadratic or worse) are decided
    at once; the timeout only stops a regression from hanging the suite."""
    rules = RuleSet([Rule(pattern, scopes="s")])
    for _ in range(20):
        rules.requirement("GET", path)


def test_adjacent_placeholders_need_one_character_each() -> None:
    rule = Rule("/f/{a}{b}.json", scopes="s")
    assert rule.matches("GET", "/f/ab.json")
    assert not rule.matches("GET", "/f/a.json")
    assert not rule.matches("GET", "/f/.json")


_rule = st.builds(
    lambda path, methods, scope: Rule(path, methods=methods, scopes=scope),
    st.lists(_piece, max_size=5).map(lambda p: "/" + "".join(p)),
    st.sampled_from([None, ["GET"], ["POST"], ["GET", "DELETE"]]),
    st.sampled_from(["a", "b", "c"]),
)


@settings(max_examples=400, deadline=None)
@given(
    rules=st.lists(_rule, min_size=1, max_size=6),
    method=st.sampled_from(["GET", "HEAD", "POST", "DELETE", "PATCH"]),
    path=st.lists(_path_char, max_size=10).map(lambda p: "/" + "".join(p)),
)
def test_the_set_answers_as_the_first_matching_rule_does(
    rules: list[Rule], method: str, path: str
) -> None:
    """The one-regex-per-method fast path agrees with trying the rules in order."""
    ruleset = RuleSet(rules)
    expected = next((r.requirement for r in rules if r.matches(method, path)), Requirement())
    assert ruleset._first(method, path) == expected


# -- found in review: targets not starting with "/", public spellings, converter syntax --------


@pytest.mark.parametrize("path", ["admin", "admin/users", "http://x/admin", "https://x:8/admin/"])
def test_a_target_without_a_leading_slash_needs_what_werkzeug_routes_it_as(path: str) -> None:
    """Quart (Werkzeug routing behind ASGI) and Werkzeug's own server route ``admin`` and an
    absolute-form ``http://x/admin`` to ``/admin``."""
    assert needs("GET", path) == {"admin"}


def test_below_root_path_a_rest_without_slash_needs_what_quart_routes_it_as() -> None:
    guarded = Guarded()
    # Quart strips root_path "/api" as a plain prefix: "/apiadmin" -> "admin" -> /admin
    assert guarded.status("GET", "/apiadmin", scopes="read:orders", root_path="/api") == 403
    assert guarded.status("GET", "/api/admin", scopes="read:orders", root_path="/api") == 403
    assert guarded.status("GET", "/api/orders", scopes="read:orders", root_path="/api") == 200
    assert guarded.reached == [("GET", "/api/orders")]


def test_an_explicit_rule_for_another_spelling_makes_a_public_spelling_need_a_token() -> None:
    """Werkzeug with strict_slashes=False sends /account to the /account/ view."""
    rules = RuleSet([Rule("/account/"), Rule("/{slug}", public=True)])
    assert not rules.requirement("GET", "/account").public
    assert rules.requirement("GET", "/about").public
    # No rule for the other spelling: a public path stays public.
    plain = RuleSet([Rule("/orders", scopes="read")], public=["/health", "/docs/*"])
    assert plain.requirement("GET", "/health").public
    assert plain.requirement("GET", "/docs/index.html").public


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("/items/{id:int}", "/items/42", True),
        ("/items/{id:int}", "/items/abc", True),  # any segment: at least what the route covers
        ("/items/{id:uuid}/x", "/items/u/x", True),
        ("/files/{rest:path}", "/files/a/b.txt", True),
        ("/files/{rest:path}", "/files", True),
        ("/files/{rest:path}", "/filesx", False),
    ],
)
def test_starlette_converters_are_understood(pattern: str, path: str, matches: bool) -> None:
    assert Rule(pattern, scopes="s").matches("GET", path) is matches


@pytest.mark.parametrize(
    "pattern",
    [
        "/items/<int:id>",
        "/items/<id>",
        "/a/*/b",
        "/a{b",
        "/a}b",
        "/files/{p:path}/x",
        "/x/{id:wat}",
    ],
)
def test_syntax_that_would_be_taken_literally_is_refused_at_start_up(pattern: str) -> None:
    with pytest.raises(ValueError, match="outside a placeholder"):
        Rule(pattern, scopes="s")


def test_a_spelling_never_makes_an_optional_route_out_of_a_required_one() -> None:
    """Werkzeug with strict_slashes=False sends /api/private/x/ to the /api/private/{x} view."""
    rules = RuleSet([Rule("/api/private/{x}"), Rule("/api/*", optional=True)])
    assert not rules.requirement("GET", "/api/private/x").optional
    assert not rules.requirement("GET", "/api/private/x/").optional
    assert rules.requirement("GET", "/api/open").optional
    scoped = RuleSet([Rule("/a/{x}", scopes="s"), Rule("/a/*", optional=True)])
    merged = scoped.requirement("GET", "/a/b/")
    assert not merged.optional
    assert [g.scopes for g in merged.groups()] == [("s",)]


def test_remembered_answers_are_bounded_and_the_same_as_fresh_ones() -> None:
    rules = RuleSet(list(RULES.rules))
    for i in range(3000):  # paths a client makes up: the memo starts over, never grows past 1024
        path = f"/orders/{i}"
        assert rules.requirement("DELETE", path) == RULES._decide("DELETE", path, ())
        assert len(rules._memo) <= 1024
    assert rules.requirement("post", "/orders") is rules.requirement("post", "/orders")
    assert rules.requirement("post", "/orders").scopes == ("write:orders",)


# -- pinned from the mutation run: pattern limits, HEAD, spellings of the root, DPoP ------------


@pytest.mark.parametrize(
    ("path", "matches"),
    [
        ("/files/a.b", True),  # one character is enough for each placeholder
        ("/files/report.pdf", True),
        ("/files/a.b.c", True),
        ("/files/report.", False),  # {ext} is empty
        ("/files/.pdf", False),  # {name} is empty
        ("/files/a.b/c", False),  # not a prefix rule: one segment more is another path
        ("/files", False),
    ],
)
def test_each_placeholder_of_a_segment_takes_one_character_or_more(
    path: str, matches: bool
) -> None:
    rule = Rule("/files/{name}.{ext}", scopes="files")
    assert rule.matches("GET", path) is matches


def test_a_segment_with_placeholders_needs_its_first_and_last_literals() -> None:
    """The literal before the first placeholder and the one after the last must both be there,
    whichever matcher the segment gets (one run of placeholders: a regex; several: a scan)."""
    for pattern, good, wrong_start, wrong_end in (
        ("/files/report-{id}", "/files/report-12", "/files/summary-12", None),
        ("/files/{name}.pdf", "/files/a.pdf", None, "/files/a.txt"),
        ("/f/a{x}.{y}b", "/f/ax.yb", "/f/zx.yb", "/f/ax.yz"),
        ("/f/v{major}.{minor}-rc", "/f/v1.2-rc", "/f/w1.2-rc", "/f/v1.2-ga"),
    ):
        rule = Rule(pattern, scopes="s")
        assert rule.matches("GET", good), pattern
        for wrong in (wrong_start, wrong_end):
            assert wrong is None or not rule.matches("GET", wrong), (pattern, wrong)


def test_adjacent_placeholders_after_a_literal_need_one_character_each() -> None:
    rule = Rule("/f/{a}.{b}{c}", scopes="s")
    assert rule.matches("GET", "/f/x.yz")
    assert not rule.matches("GET", "/f/x.y")
    tail = Rule("/f/{a}{b}.{c}", scopes="s")
    assert tail.matches("GET", "/f/xy.z")
    assert not tail.matches("GET", "/f/x.z")


@pytest.mark.parametrize(
    ("path", "matches"),
    [
        ("/api/1.2", True),  # the prefix itself
        ("/api/1.2/orders", True),
        ("/api/1.2/orders/7", True),
        ("/api/1", False),
        ("/api", False),
    ],
)
def test_a_prefix_rule_with_several_placeholders_covers_its_prefix_and_below(
    path: str, matches: bool
) -> None:
    rule = Rule("/api/{major}.{minor}/*", scopes="api")
    assert rule.matches("GET", path) is matches


def test_a_set_whose_rules_all_need_the_segment_matcher_still_finds_them() -> None:
    rules = RuleSet([Rule("/files/{name}.{ext}", scopes="files"), Rule("/v/{a}-{b}/*")])
    assert rules.requirement("GET", "/files/report.pdf").scopes == ("files",)
    assert rules.requirement("GET", "/files/report").scopes == ()
    assert not rules.requirement("GET", "/v/1-2/x").public


def test_a_rule_for_get_covers_head_and_no_other_rule_does() -> None:
    get = Rule("/orders", methods=["get"], scopes="read")
    assert get.matches("HEAD", "/orders")
    assert get.matches("GET", "/orders")
    post = Rule("/orders", methods=["POST"], scopes="write")
    assert not post.matches("HEAD", "/orders")
    assert not post.matches("GET", "/orders")


def test_claims_that_are_not_claim_rules_are_refused_at_start_up() -> None:
    with pytest.raises(TypeError, match=r"claims= takes ClaimRule objects"):
        Rule("/orders", claims=["org_id"])  # type: ignore[list-item]
    assert Rule("/orders", claims=[claim_equals("org_id", "acme")]).requirement.claims


def test_a_public_root_stays_public_beside_a_catch_all_rule() -> None:
    """ "/" has no other spelling: without its slash it would be the empty path, which only
    a ``/*`` rule matches."""
    rules = RuleSet([Rule("/*", scopes="api")], public=["/"])
    assert rules.requirement("GET", "/").public
    assert rules.requirement("GET", "/orders").scopes == ("api",)


def test_a_target_without_a_path_never_needs_what_only_the_empty_path_matches() -> None:
    """``GET http://host`` is routed as "/" (and, as always for such a target, as
    "/http://host" and its spellings); never as the empty path, which only ``/*`` matches."""
    rules = RuleSet(
        [
            Rule("/", scopes="home"),
            Rule("/{section}/*", scopes="read"),
            Rule("/*", scopes="admin"),  # what is left: doubled slashes such as "//x"
        ]
    )
    assert needs("GET", "http://api.test", rules) == {"home", "read"}
    assert needs("GET", "//x", rules) == {"admin", "read"}


@pytest.mark.parametrize("path", ["v", "//v", "/v"])
def test_a_one_character_path_needs_what_its_trailing_slash_spelling_needs(path: str) -> None:
    rules = RuleSet([Rule("/v/", scopes="versions")])
    assert needs("GET", path, rules) == {"versions"}


def test_a_spelling_never_lets_bearer_tokens_into_a_dpop_only_route() -> None:
    rules = RuleSet(
        [
            Rule("/orders", scopes="read", dpop=True),
            Rule("/payments", scopes="pay"),
            Rule("/payments/", dpop=True),
        ]
    )
    assert rules.requirement("GET", "/orders/").dpop
    assert rules.requirement("GET", "/payments").dpop
    assert rules.requirement("GET", "/payments").scopes == ("pay",)
    assert not RuleSet([Rule("/payments", scopes="pay")]).requirement("GET", "/payments/").dpop
    issuer = LocalIssuer(audience="https://api.test")
    server = issuer.resource_server(dpop="allowed")
    header = f"Bearer {issuer.mint('read pay')}"
    for path in ("/orders/", "/payments"):
        view = RequestView("GET", [header], url=f"https://api.test{path}")
        with pytest.raises(InvalidToken) as refused:
            server.authorize(view, rules.requirement("GET", path))
        assert refused.value.description == (
            "this route takes DPoP-bound tokens only (Authorization: DPoP)"
        )


def test_a_scope_set_a_requirement_already_needs_adds_nothing() -> None:
    """``needing`` a group that is already among ``groups()`` leaves the requirement as it
    was: a refusal still names the group the token fails, not a union of groups."""
    other = Requirement(scopes=("b",))
    held = Requirement(scopes=("a",), also=(other,))
    assert held.needing(other) == held
    assert [g.scopes for g in held.needing(other).groups()] == [("a",), ("b",)]
    plain = Requirement(scopes=("a", "c"))
    assert plain.needing(Requirement(scopes=("a", "c"))) == plain
