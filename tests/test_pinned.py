"""Behaviour an earlier mutation run left unpinned (issue 17's survivors): each test here
fails if its check is removed or its comparison or constant is moved by one."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from bearerguard import AuthError, ResourceServer
from bearerguard.rules import Rule
from bearerguard.signing import b64url
from bearerguard.testing import LocalIssuer

if TYPE_CHECKING:
    from conftest import FakeClock, StubIssuer

AUDIENCE = "https://api.test"


def refused(server: ResourceServer, header: str) -> AuthError:
    with pytest.raises(AuthError) as info:
        server.authenticate(header)
    return info.value


@pytest.mark.parametrize("alg", ["ES256", "ES384"])
@pytest.mark.parametrize("change", [-1, +1, -32, +32, "half", "empty"])
def test_an_ec_signature_of_the_wrong_length_is_refused_not_a_crash(
    alg: str, change: int | str
) -> None:
    issuer = LocalIssuer("https://issuer.test/oidc", audience=AUDIENCE, alg=alg)
    server = issuer.resource_server(AUDIENCE)
    token = issuer.mint("read")
    h, p, s = token.split(".")
    import base64

    signature = base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
    if change == "half":
        wrong = signature[: len(signature) // 2]
    elif change == "empty":
        wrong = b""
    elif isinstance(change, int) and change < 0:
        wrong = signature[:change]
    else:
        wrong = signature + b"\x01" * int(change)
    exc = refused(server, f"Bearer {h}.{p}.{b64url(wrong)}")
    assert exc.status_code == 401
    assert exc.to_dict()["error"] == "invalid_token"


def test_a_rule_pattern_must_start_with_a_slash() -> None:
    for pattern in ("products", "", "*", "{id}"):
        with pytest.raises(ValueError, match="must start with '/'"):
            Rule(pattern, scopes="read")


def test_a_public_rule_cannot_need_scopes_claims_optional_or_dpop() -> None:
    from bearerguard.claims import claim_equals

    for kwargs in (
        {"scopes": "read"},
        {"claims": [claim_equals("tenant", "acme")]},
        {"optional": True},
        {"dpop": True},
    ):
        with pytest.raises(ValueError, match="public rule"):
            Rule("/x", public=True, **kwargs)  # type: ignore[arg-type]
    assert Rule("/x", public=True).requirement.public


def test_verify_token_answers_a_valid_token_with_the_cache_on_and_off() -> None:
    issuer = LocalIssuer("https://issuer.test/oidc", audience=AUDIENCE)
    for size in (4096, 0):
        server = issuer.resource_server(AUDIENCE, token_cache_size=size)
        token = issuer.mint("read", sub="ada")
        first = server.verify_token(token)
        again = server.verify_token(token)  # from the cache when it is on
        assert (first.sub, again.sub) == ("ada", "ada")
        assert (again is first) == (size > 0)
        assert server.authenticate(f"Bearer {token}").sub == "ada"


def test_the_leeway_boundaries_of_exp_nbf_and_iat(
    stub_issuer: StubIssuer, fake_clock: FakeClock
) -> None:
    server = stub_issuer.resource_server(leeway=30, token_cache_size=0)
    now = int(fake_clock())

    def answer(**claims: int) -> str:
        token = stub_issuer.mint("read", claims=claims)
        try:
            server.authenticate(f"Bearer {token}")
        except AuthError as exc:
            return exc.reason.value
        return "ok"

    # exp: refused from exp + leeway on (now >= exp + leeway).
    assert answer(exp=now - 29) == "ok"
    assert answer(exp=now - 30) == "expired"
    # nbf and iat: accepted up to now + leeway.
    assert answer(nbf=now + 30) == "ok"
    assert answer(nbf=now + 31) == "not_yet_valid"
    assert answer(iat=now + 30) == "ok"
    assert answer(iat=now + 31) == "not_yet_valid"


def test_an_unknown_kid_fetches_again_exactly_when_the_cooldown_is_over(
    stub_issuer: StubIssuer, fake_clock: FakeClock
) -> None:
    from bearerguard.testing import SigningKey

    server = stub_issuer.resource_server(refetch_cooldown=5, token_cache_size=0)
    server.authenticate(f"Bearer {stub_issuer.mint()}")
    stranger = SigningKey.generate("ES384")
    fetched = stub_issuer.jwks_fetches
    for advance, fetches in ((0, 1), (4.999, 1), (0.001, 2), (4.999, 2), (0.001, 3)):
        fake_clock.advance(advance)
        with pytest.raises(AuthError):
            server.authenticate(f"Bearer {stub_issuer.mint(key=stranger)}")
        assert stub_issuer.jwks_fetches - fetched == fetches, advance


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "Bearer  "])
def test_max_token_length_holds_for_every_spelling_of_the_scheme(scheme: str) -> None:
    issuer = LocalIssuer("https://issuer.test/oidc", audience=AUDIENCE)
    server = issuer.resource_server(AUDIENCE, max_token_length=600)
    exc = refused(server, f"{scheme} {'a' * 601}")
    assert exc.reason.value == "token_too_large"
    exactly = refused(server, f"{scheme} {'a' * 600}")  # not too large: malformed instead
    assert exactly.reason.value != "token_too_large"


def test_the_documented_defaults_are_the_defaults() -> None:
    """The README's "Defaults, and why" table, and the defaults of round 2, as the code has
    them: a default moved without the documentation is a test failure."""
    import inspect

    from bearerguard.errors import InsufficientScope, IssuerUnavailable, ReplayStoreUnavailable
    from bearerguard.keys import MIN_RSA_BITS, CachePolicy
    from bearerguard.replay import MemoryReplayStore, RedisReplayStore

    defaults = {
        name: p.default for name, p in inspect.signature(ResourceServer.__init__).parameters.items()
    }
    assert {
        k: defaults[k]
        for k in (
            "leeway",
            "jwks_ttl",
            "jwks_min_ttl",
            "jwks_max_ttl",
            "refetch_cooldown",
            "refresh_retry",
            "outage_retry_max",
            "max_stale",
            "fetch_timeout",
            "token_cache_size",
            "token_cache_ttl",
            "max_token_length",
            "dpop_max_age",
            "dpop_max_future",
        )
    } == {
        "leeway": 30.0,
        "jwks_ttl": 600.0,
        "jwks_min_ttl": 60.0,
        "jwks_max_ttl": 86400.0,
        "refetch_cooldown": 5.0,
        "refresh_retry": 30.0,
        "outage_retry_max": 5.0,
        "max_stale": 3600.0,
        "fetch_timeout": 5.0,
        "token_cache_size": 4096,
        "token_cache_ttl": 300.0,
        "max_token_length": 8192,
        "dpop_max_age": 60.0,
        "dpop_max_future": 5.0,
    }
    policy = CachePolicy()
    assert (policy.default_ttl, policy.min_ttl, policy.max_ttl) == (600.0, 60.0, 86400.0)
    assert (policy.cooldown, policy.max_stale, policy.refresh_retry) == (5.0, 3600.0, 30.0)
    assert policy.outage_retry_max == 5.0
    assert MIN_RSA_BITS == 2048
    assert IssuerUnavailable().retry_after == 30
    assert ReplayStoreUnavailable().retry_after == 5
    assert RedisReplayStore(client=object()).retry_after == 5
    assert (InsufficientScope().status_code, IssuerUnavailable().status_code) == (403, 503)
    full = MemoryReplayStore(maxsize=1)
    assert full.add("a", 60) is True
    with pytest.raises(AuthError):
        full.add("b", 60)
    with pytest.raises(ValueError, match="maxsize"):
        MemoryReplayStore(maxsize=0)
    assert inspect.signature(MemoryReplayStore).parameters["maxsize"].default == 100_000


def _reason(server: ResourceServer, token: str) -> str:
    try:
        server.verify_token(token)
    except AuthError as exc:
        return exc.reason.value
    return "ok"


def test_only_unpadded_base64url_segments_are_read() -> None:
    """A token re-spelled with the standard alphabet or with padding decodes to the same bytes:
    refused all the same (the decoder trusts split() to have excluded "+", "/" and "=")."""
    issuer = LocalIssuer("https://issuer.test/oidc", audience=AUDIENCE)
    server = issuer.resource_server(AUDIENCE, token_cache_size=0)
    for _ in range(20):  # until the signature holds both "-" and "_"
        token = issuer.mint("read")
        if "-" in token.split(".")[2] and "_" in token.split(".")[2]:
            break
    h, p, s = token.split(".")
    assert _reason(server, token) == "ok"
    for respelled in (
        f"{h}.{p}.{s.replace('-', '+')}",
        f"{h}.{p}.{s.replace('_', '/')}",
        f"{h}=.{p}.{s}" if len(h) % 4 else f"{h}.{p}=.{s}",
        f"{h}.{p}.{s}" + "=" * (-len(s) % 4 or 4),
        f"{h}.{p}.{s}é",
    ):
        # refused: malformed_token, or malformed_header where it is not even token68 ("é")
        assert _reason(server, respelled) in ("malformed_token", "malformed_header"), respelled


def _signed(issuer: LocalIssuer, header: bytes, payload: bytes) -> str:
    """A compact JWS over exactly these header and payload bytes, by the issuer's key."""
    from jwt.algorithms import ECAlgorithm

    signing_input = f"{b64url(header)}.{b64url(payload)}"
    key = issuer.current_key
    signature = ECAlgorithm(ECAlgorithm.SHA384).sign(signing_input.encode(), key.private_key)
    return f"{signing_input}.{b64url(signature)}"


def test_what_a_token_is_refused_for_when_its_form_is_odd() -> None:
    issuer = LocalIssuer("https://issuer.test/oidc", audience=AUDIENCE)  # ES384
    server = issuer.resource_server(AUDIENCE, token_cache_size=0, require_typ=False)
    h, p, _ = issuer.mint("read").split(".")
    assert _reason(server, f"{h}.{p}.") == "malformed_token"  # not signed
    assert _reason(server, f"{h}.{p}.abc.def") == "malformed_token"  # four segments
    kid = issuer.current_key.kid
    header = b'{"alg": "ES384", "typ": "at+jwt", "kid": "%s"}' % kid.encode()
    claims = b'{"iss": "%s", "aud": "%s", "exp": %%s}' % (
        issuer.issuer.encode(),
        AUDIENCE.encode(),
    )
    assert _reason(server, _signed(issuer, header, claims % b"4102444800")) == "ok"
    assert _reason(server, _signed(issuer, header, claims % b"NaN")) == "malformed_token"
    assert _reason(server, _signed(issuer, header, claims % b"9007199254740991")) == "ok"
    assert _reason(server, _signed(issuer, header, claims % b"9007199254740992")) == (
        "malformed_token"  # 2**53: past what every JSON reader holds exactly
    )
    odd_kid = b'{"alg": "ES384", "typ": "at+jwt", "kid": 7}'
    assert _reason(server, _signed(issuer, odd_kid, claims % b"4102444800")) == "malformed_token"


def _refusal(server: ResourceServer, token: str) -> tuple[str, str]:
    """(reason, error_description) of a refused token."""
    with pytest.raises(AuthError) as info:
        server.verify_token(token)
    return info.value.reason.value, info.value.description


def test_each_odd_form_is_named_in_the_error_description() -> None:
    """The description says what is wrong, so the developer reading the 401 knows."""
    issuer = LocalIssuer("https://issuer.test/oidc", audience=AUDIENCE)
    server = issuer.resource_server(AUDIENCE, token_cache_size=0, require_typ=False)
    h, p, s = issuer.mint("read").split(".")
    assert _refusal(server, f"{h}.{p}") == ("malformed_token", "token must have three segments")
    assert _refusal(server, f"{h}.{p}.{s}.{s}") == (
        "malformed_token",
        "token must have three segments",
    )
    assert _refusal(server, f"{h}.{p}.") == ("malformed_token", "token is not signed")
    kid = issuer.current_key.kid.encode()
    header = b'{"alg": "ES384", "typ": "at+jwt", "kid": "%s"}' % kid
    base = b'"iss": "%s", "aud": "%s"' % (issuer.issuer.encode(), AUDIENCE.encode())
    assert _refusal(server, _signed(issuer, header, b'{%s, "exp": "4102444800"}' % base)) == (
        "malformed_token",
        "exp must be a number",
    )
    assert _refusal(server, _signed(issuer, header, b'{%s, "exp": -9007199254740992}' % base)) == (
        "malformed_token",
        "exp must be a finite number",  # -2**53, the lower bound
    )
    assert (
        _reason(
            server,
            _signed(issuer, header, b'{%s, "exp": 4102444800, "x": -9007199254740991}' % base),
        )
        == "ok"
    )
    no_iss = b'{"aud": "%s", "exp": 4102444800}' % AUDIENCE.encode()
    assert _refusal(server, _signed(issuer, header, no_iss)) == ("missing_claim", "issuer missing")


def test_json_constants_outside_rfc_8259_are_refused_in_any_member() -> None:
    """NaN and Infinity are not JSON: refused even in a claim nobody checks."""
    issuer = LocalIssuer("https://issuer.test/oidc", audience=AUDIENCE)
    server = issuer.resource_server(AUDIENCE, token_cache_size=0, require_typ=False)
    kid = issuer.current_key.kid.encode()
    header = b'{"alg": "ES384", "typ": "at+jwt", "kid": "%s"}' % kid
    base = b'"iss": "%s", "aud": "%s", "exp": 4102444800' % (
        issuer.issuer.encode(),
        AUDIENCE.encode(),
    )
    assert _reason(server, _signed(issuer, header, b'{%s, "x": 1}' % base)) == "ok"
    for constant in (b"NaN", b"Infinity", b"-Infinity"):
        token = _signed(issuer, header, b'{%s, "x": %s}' % (base, constant))
        assert _refusal(server, token) == ("malformed_token", "token JSON is not valid")


@pytest.mark.parametrize("crit", ["5", "null", "{}", '"exp"', "[]", '["exp"]', "[5]"])
def test_any_crit_header_is_refused_as_a_401_whatever_its_type(crit: str) -> None:
    """RFC 7515 section 4.1.11: bearerguard understands no extension, so any crit is refused,
    including shapes that are not even lists (never a 500)."""
    issuer = LocalIssuer("https://issuer.test/oidc", audience=AUDIENCE)
    server = issuer.resource_server(AUDIENCE, token_cache_size=0, require_typ=False)
    kid = issuer.current_key.kid.encode()
    header = b'{"alg": "ES384", "kid": "%s", "crit": %s}' % (kid, crit.encode())
    payload = b'{"iss": "%s", "aud": "%s", "exp": 4102444800}' % (
        issuer.issuer.encode(),
        AUDIENCE.encode(),
    )
    assert _refusal(server, _signed(issuer, header, payload)) == (
        "malformed_token",
        "unsupported critical header parameter",
    )


def test_verify_options_refuse_what_no_server_can_check() -> None:
    """The validated settings object refuses nonsense itself, whoever builds it."""
    from bearerguard.errors import ConfigurationError
    from bearerguard.verify import VerifyOptions

    good: dict[str, object] = {
        "issuers": frozenset({"https://issuer.test"}),
        "audiences": frozenset({AUDIENCE}),
        "algorithms": frozenset({"ES384"}),
        "leeway": 0.0,
        "require_typ": True,
        "scope_claims": ("scope",),
    }
    VerifyOptions(**good)  # type: ignore[arg-type]
    VerifyOptions(**{**good, "leeway": 300.0})  # type: ignore[arg-type]
    for name, bad in (
        ("issuers", frozenset()),
        ("issuers", frozenset({""})),
        ("issuers", frozenset({7})),
        ("issuers", frozenset({"https://issuer.test", ""})),
        ("audiences", frozenset()),
        ("audiences", frozenset({""})),
        ("audiences", frozenset({7})),
        ("audiences", frozenset({AUDIENCE, ""})),
        ("algorithms", frozenset()),
        ("algorithms", frozenset({"HS256"})),
        ("leeway", -0.5),
        ("leeway", 300.5),
        ("scope_claims", ()),
    ):
        with pytest.raises(ConfigurationError):
            VerifyOptions(**{**good, name: bad})  # type: ignore[arg-type]


def test_an_empty_bearer_token_is_named_as_such() -> None:
    server = LocalIssuer("https://issuer.test/oidc", audience=AUDIENCE).resource_server(AUDIENCE)
    for header in ("Bearer ", "bearer "):
        exc = refused(server, header)
        assert (exc.status_code, exc.description) == (400, "bearer token is empty"), header


def test_several_spaces_after_the_scheme_are_one_separator_for_bearer_and_dpop() -> None:
    """RFC 9110 section 11.4: credentials = auth-scheme [ 1*SP token68 ]."""
    from bearerguard.request import RequestView
    from bearerguard.rules import Requirement
    from bearerguard.signing import DPoPKey

    issuer = LocalIssuer("https://issuer.test/oidc", audience=AUDIENCE)
    server = issuer.resource_server(AUDIENCE, dpop="allowed", token_cache_size=0)
    token = issuer.mint("read", sub="ada")
    assert server.authenticate(f"Bearer  {token}").sub == "ada"
    key = DPoPKey.generate("ES256")
    bound = issuer.mint("read", sub="bea", claims={"cnf": {"jkt": key.jkt}})
    url = "https://api.test/products"
    for spaces in (" ", "  ", "   "):
        proof = key.proof("GET", url, access_token=bound)
        view = RequestView("GET", [f"DPoP{spaces}{bound}"], url=url, dpop=[proof])
        assert server.authorize(view, Requirement(scopes=("read",))).sub == "bea", repr(spaces)


def test_an_auth_error_is_a_401_unless_a_subclass_says_otherwise() -> None:
    """The base class of every refusal: a subclass of one's own (or the base itself, caught and
    re-rendered) answers 401 with a Bearer challenge, as RFC 6750 section 3 says."""
    exc = AuthError("refused by a rule of ours")
    assert exc.status_code == 401
    assert exc.www_authenticate.startswith("Bearer")

    class Ours(AuthError):
        pass

    assert Ours().status_code == 401


@pytest.mark.parametrize("alg", ["ES256", "ES384"])
@pytest.mark.parametrize("half", ["r", "s"])
def test_an_ec_signature_whose_half_starts_with_0x80_verifies(alg: str, half: str) -> None:
    """ECDSA r||s is framed as DER by hand: a half whose top byte is exactly 0x80 has its top bit
    set and needs the 0x00 pad like any other (1 signature in 256 on average)."""
    issuer = LocalIssuer("https://issuer.test/oidc", audience=AUDIENCE, alg=alg)
    server = issuer.resource_server(AUDIENCE, token_cache_size=0)
    size = {"ES256": 32, "ES384": 48}[alg]
    import base64

    for n in range(5000):
        token = issuer.mint("read", jti=str(n))
        signature = base64.urlsafe_b64decode(token.split(".")[2] + "==")
        if signature[0 if half == "r" else size] == 0x80:
            break
    else:  # pragma: no cover - (255/256) ** 5000 is about 3e-9
        pytest.fail("no signature with that top byte in 5000")
    assert server.verify_token(token).scopes == frozenset({"read"})
