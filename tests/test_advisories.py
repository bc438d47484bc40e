"""Security defects found from outside (round 2), each pinned by the behaviour a user sees.

Named after PyJWT's tests/test_advisory.py: every test here failed before its fix.
"""

from __future__ import annotations

import asyncio
import copy
import json
import pickle
from typing import Any

import pytest

from bearerguard import AccessToken, InvalidRequest, InvalidToken, ResourceServer
from bearerguard.bearer import parse_authorization
from bearerguard.keys import KeySet
from bearerguard.testing import LocalIssuer, SigningKey
from bearerguard.verify import decode_segment, decode_signature

AUDIENCE = "https://api.test"
NOW = 1_800_000_000.0
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def clock() -> float:
    return NOW


@pytest.fixture
def issuer() -> LocalIssuer:
    return LocalIssuer(audience=AUDIENCE, clock=clock, alg="RS256")


def both_faces(server: ResourceServer, header: str) -> AccessToken:
    sync = server.authenticate(header)
    assert asyncio.run(server.authenticate_async(header)).claims == sync.claims
    return sync


# -- a token has one spelling -------------------------------------------------------------------


def _respellings(segment: str) -> list[str]:
    """Every other last character that decodes to the same bytes (non-zero padding bits)."""
    bits = {2: 4, 3: 2}.get(len(segment) % 4, 0)
    if not bits:
        return []
    index = ALPHABET.index(segment[-1])
    same = [ALPHABET[(index & ~((1 << bits) - 1)) | low] for low in range(1 << bits)]
    return [segment[:-1] + c for c in same if c != segment[-1]]


@pytest.mark.parametrize("alg", ["RS256", "ES256", "ES384", "EdDSA"])
def test_only_the_canonical_spelling_of_a_signature_verifies(alg: str) -> None:
    issuer = LocalIssuer(audience=AUDIENCE, clock=clock, alg=alg)
    server = issuer.resource_server(token_cache_size=0)
    token = issuer.mint("read")
    both_faces(server, f"Bearer {token}")
    head, _, signature = token.rpartition(".")
    others = _respellings(signature)
    # 256 (RS256) and 64 (ES256, EdDSA) bytes leave 4 padding bits: 15 other spellings.
    # 96 bytes (ES384) fill whole characters: there is only one spelling.
    assert len(others) == {"RS256": 15, "ES256": 15, "ES384": 0, "EdDSA": 15}[alg]
    for other in others:
        with pytest.raises(InvalidToken, match="base64url"):
            server.authenticate(f"Bearer {head}.{other}")
        with pytest.raises(InvalidToken, match="base64url"):
            asyncio.run(server.authenticate_async(f"Bearer {head}.{other}"))


def test_non_canonical_header_and_payload_segments_are_refused() -> None:
    for text in ("QR", "QRF"):  # "A" + padding bits set: not what any encoder writes
        with pytest.raises(InvalidToken):
            decode_signature(text)
    assert decode_signature("QQ") == b"A"
    assert decode_segment("e30", "header") == {}
    with pytest.raises(InvalidToken):
        decode_segment("e31", "header")


@pytest.mark.parametrize("segment", ["e30=", "+/8", "ab/c", "ab+c", "e3=0"])
def test_public_decoders_accept_only_base64url(segment: str) -> None:
    with pytest.raises(InvalidToken, match="base64url"):
        decode_signature(segment)
    with pytest.raises(InvalidToken, match="base64url"):
        decode_segment(segment, "header")


@pytest.mark.parametrize(
    "header", ["Bearer a$b", "Bearer a,b", "Bearer ab\x7f", "Bearer é", "Bearer a=b", "Bearer a\tb"]
)
def test_parse_authorization_refuses_what_is_not_token68(header: str) -> None:
    with pytest.raises(InvalidRequest):
        parse_authorization(header, max_length=8192)


def test_parse_authorization_returns_token68_values() -> None:
    assert parse_authorization("Bearer a.b-c_d~e+f/g==", max_length=8192) == "a.b-c_d~e+f/g=="
    assert parse_authorization("bearer   abc", max_length=8192) == "abc"


def test_a_non_token68_bearer_value_is_400_through_the_server(issuer: LocalIssuer) -> None:
    server = issuer.resource_server()
    with pytest.raises(InvalidRequest):
        server.authenticate("Bearer a$b.c.d")
    with pytest.raises(InvalidRequest):
        asyncio.run(server.authenticate_async("Bearer a$b.c.d"))


# -- claims are frozen all the way down --------------------------------------------------------


def test_nested_claims_are_read_only_and_not_shared_between_requests(
    issuer: LocalIssuer,
) -> None:
    server = issuer.resource_server()
    token = issuer.mint("read", roles=["viewer"], ctx={"org": {"id": "o1"}, "tags": ["a"]})
    first = server.authenticate(f"Bearer {token}")
    for change in (
        lambda c: c["roles"].append("admin"),
        lambda c: c["roles"].__setitem__(0, "admin"),
        lambda c: c["roles"].extend(["admin"]),
        lambda c: c["ctx"].__setitem__("org", {"id": "o2"}),
        lambda c: c["ctx"]["org"].update(id="o2"),
        lambda c: c["ctx"]["tags"].insert(0, "admin"),
        lambda c: c["ctx"].pop("org"),
    ):
        with pytest.raises(TypeError, match="read-only"):
            change(first.claims)
    second = server.authenticate(f"Bearer {token}")  # the cached token
    assert second.claims["roles"] == ["viewer"]
    assert second.claims["ctx"] == {"org": {"id": "o1"}, "tags": ["a"]}
    # still plain JSON to callers: serialisable, comparable, and copies are mutable
    assert json.loads(json.dumps(dict(second.claims)))["ctx"]["org"]["id"] == "o1"
    mutable = copy.deepcopy(dict(second.claims))
    mutable["roles"].append("admin")
    copied = pickle.loads(pickle.dumps(second.claims["ctx"]))  # noqa: S301
    assert copied == {"org": {"id": "o1"}, "tags": ["a"]}


def test_a_hand_built_token_freezes_its_claims_too() -> None:
    token = AccessToken(claims={"roles": ["a"], "x": {"y": 1}})
    with pytest.raises(TypeError):
        token.claims["roles"].append("b")
    with pytest.raises(TypeError):
        token.claims["x"]["y"] = 2


# -- scopes are separated by spaces, nothing else -----------------------------------------------


@pytest.mark.parametrize(
    ("scope", "expected"),
    [
        ("read  write", {"read", "write"}),
        (" read write ", {"read", "write"}),
        ("read\twrite", {"read\twrite"}),
        ("read\nwrite", {"read\nwrite"}),
        ("read\u00a0write", {"read\u00a0write"}),
        ("read\u2003write", {"read\u2003write"}),
        ("read\x1fwrite", {"read\x1fwrite"}),
    ],
)
def test_scopes_split_on_the_space_character_only(
    issuer: LocalIssuer, scope: str, expected: set[str]
) -> None:
    server = issuer.resource_server()
    access = server.authenticate(f"Bearer {issuer.mint(claims={'scope': scope})}")
    assert access.scopes == expected


def test_a_tab_separated_scope_string_does_not_grant_write(issuer: LocalIssuer) -> None:
    server = issuer.resource_server()
    token = issuer.mint(claims={"scope": "read\twrite"})
    assert not server.authenticate(f"Bearer {token}").has_scopes("write")


# -- one kid, two key types ---------------------------------------------------------------------


def test_a_kid_shared_by_two_key_types_finds_the_key_for_the_tokens_algorithm() -> None:
    rsa = SigningKey.generate("RS256", kid="shared")
    ec = SigningKey.generate("ES256", kid="shared")
    for order in ([rsa, ec], [ec, rsa]):
        issuer = LocalIssuer(audience=AUDIENCE, clock=clock)
        issuer.keys = list(order)
        server = issuer.resource_server(token_cache_size=0)
        for key in (rsa, ec):
            access = both_faces(server, f"Bearer {issuer.mint('read', key=key)}")
            assert access.scopes == {"read"}
        keys = KeySet.from_jwks(issuer.jwks())
        assert keys.find("shared") is not None
        assert keys.find("shared").verifiers.keys() >= {"RS256", "ES256"}  # type: ignore[union-attr]


def test_a_deeply_nested_claim_is_verified_not_a_500(issuer: LocalIssuer) -> None:
    """As deep as the JSON decoder accepts: freezing it must not overflow the stack."""
    depth = 900
    nested: Any = "leaf"
    for _ in range(depth):
        nested = [nested]
    server = issuer.resource_server()
    access = both_faces(server, f"Bearer {issuer.mint('read', data={'x': nested})}")
    node = access.claims["data"]["x"]
    for _ in range(depth):
        with pytest.raises(TypeError):
            node.append(1)
        node = node[0]
    assert node == "leaf"


def test_frozen_claims_cannot_be_re_initialised(issuer: LocalIssuer) -> None:
    server = issuer.resource_server()
    token = issuer.mint("read", org={"tier": "free"}, roles=["viewer"])
    access = server.authenticate(f"Bearer {token}")
    with pytest.raises(TypeError):
        access.claims["org"].__init__(tier="gold")
    with pytest.raises(TypeError):
        access.claims["roles"].__init__(["admin"])
    again = server.authenticate(f"Bearer {token}")
    assert again.claims["org"] == {"tier": "free"}
    assert again.claims["roles"] == ["viewer"]


def test_an_opaque_token_is_401_saying_it_is_not_a_jwt(issuer: LocalIssuer) -> None:
    """What Logto hands out for a token request without a resource indicator."""
    server = issuer.resource_server()
    with pytest.raises(InvalidToken, match="not a JWT") as info:
        server.authenticate("Bearer G-HMSESWae8UFLUliq7KsLe5c2mGLyp6E8r3IKCaNis")
    assert "resource indicator" in info.value.description
