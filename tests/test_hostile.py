"""Hostile tokens, each rejected with the exact error class; and the tokens that must pass."""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from jwt.algorithms import get_default_algorithms

from bearerguard import (
    AccessToken,
    AuthError,
    InsufficientScope,
    InvalidRequest,
    InvalidToken,
    ResourceServer,
)
from bearerguard.testing import LocalIssuer, SigningKey, public_jwk

NOW = 1_700_000_000
ISSUER = "https://issuer.test/oidc"
AUDIENCE = "https://api.test"
ALGORITHMS = get_default_algorithms()
ALLOWED_PATHS = {"/oidc/.well-known/openid-configuration", "/oidc/jwks"}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def segment(part: Mapping[str, Any] | list[Any] | str | bytes) -> str:
    """A base64url segment: a dict/list as JSON, a str as raw JSON text, bytes as they are."""
    if isinstance(part, bytes):
        return b64(part)
    if isinstance(part, str):
        return b64(part.encode())
    return b64(json.dumps(part).encode())


def signed(header: Any, payload: Any, private_key: Any, alg: str) -> str:
    h, p = segment(header), segment(payload)
    signature = ALGORITHMS[alg].sign(f"{h}.{p}".encode(), private_key)
    return f"{h}.{p}.{b64(signature)}"


def _drop_none(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


@dataclass
class World:
    """One issuer whose JWKS holds every kind of key a hostile case needs."""

    issuer: LocalIssuer
    keys: dict[str, SigningKey]
    foreign: SigningKey  # never published; its kid is the real "main"
    foreign_cert: str  # base64 DER certificate for the foreign key (x5c)

    def header(self, **changes: Any) -> dict[str, Any]:
        return _drop_none({"alg": "ES384", "typ": "at+jwt", "kid": "main", **changes})

    def claims(self, **changes: Any) -> dict[str, Any]:
        return _drop_none({**self.issuer.claims(scopes="read:products"), **changes})

    def token(
        self,
        header: Any = None,
        claims: Any = None,
        *,
        key: str = "main",
        alg: str | None = None,
    ) -> str:
        header = self.header() if header is None else header
        claims = self.claims() if claims is None else claims
        signing = self.foreign if key == "foreign" else self.keys[key]
        alg = alg or (header["alg"] if isinstance(header, dict) else signing.alg)
        return signed(header, claims, signing.private_key, alg)

    def server(self, **kwargs: Any) -> ResourceServer:
        return self.issuer.resource_server(**kwargs)


def _with_jwk(key: SigningKey, kid: str, **changes: Any) -> SigningKey:
    jwk = _drop_none({**key.jwk, "kid": kid, **changes})
    return SigningKey(key.alg, key.private_key, kid, jwk)


def _certificate(key: SigningKey) -> str:
    private = key.private_key
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "issuer.test")])
    start = datetime.datetime(2023, 1, 1, tzinfo=datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=3650))
        .sign(private, hashes.SHA384())
    )
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()


@pytest.fixture(scope="module")
def world() -> World:
    issuer = LocalIssuer(ISSUER, audience=AUDIENCE, clock=lambda: NOW)
    main = SigningKey.generate("ES384", kid="main")
    es256 = SigningKey.generate("ES256", kid="es256")
    rsa_key = SigningKey.generate("RS256", kid="rsa")  # like Logto: an RSA JWK has no alg
    # A deliberately weak key: the JWKS publishes it and the verifier must refuse it.
    small_private = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505
    small = SigningKey(
        "RS256", small_private, "small", {**public_jwk(small_private), "kid": "small"}
    )
    keys = {
        "es256": es256,
        "es512": SigningKey.generate("ES512", kid="es512"),
        "eddsa": SigningKey.generate("EdDSA", kid="eddsa"),
        "rsa": rsa_key,
        "rs256only": _with_jwk(rsa_key, "rs256only", alg="RS256"),
        "p256": _with_jwk(es256, "p256", alg=None),  # a P-256 key that names no alg
        "enc": _with_jwk(main, "enc", use="enc"),  # main's key material, for encryption
        "noverify": _with_jwk(main, "noverify", key_ops=["sign"]),
        "small": small,
        "main": main,
    }
    issuer.keys = list(keys.values())
    foreign = SigningKey.generate("ES384", kid="main")
    return World(issuer, keys, foreign, _certificate(foreign))


# -- the catalog ----------------------------------------------------------------------------------

Build = Callable[[World], str]
CASES: list[Any] = []


def case(
    name: str,
    expected: type[AuthError] = InvalidToken,
    *,
    require: str | None = None,
    **server: Any,
) -> Callable[[Build], Build]:
    """Register a hostile token. ``require``: scopes checked after authentication."""

    def register(build: Build) -> Build:
        CASES.append(pytest.param(build, expected, require, server, id=name))
        return build

    return register


def _hmac(w: World, secret: bytes, kid: str = "main", alg: str = "HS256") -> str:
    """HMAC with a public key as the secret: the classic algorithm-confusion forgery."""
    h, p = segment(w.header(alg=alg, kid=kid)), segment(w.claims())
    digest = {"HS256": hashlib.sha256, "HS512": hashlib.sha512}[alg]
    mac = hmac.new(secret, f"{h}.{p}".encode(), digest).digest()
    return f"{h}.{p}.{b64(mac)}"


def _pem(key: SigningKey) -> bytes:
    return key.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _none(w: World, *, dot: bool = True, alg: str = "none") -> str:
    token = f"{segment(w.header(alg=alg))}.{segment(w.claims())}"
    return token + "." if dot else token


def _replace_signature(token: str, signature: str) -> str:
    h, p, _ = token.split(".")
    return f"{h}.{p}.{signature}"


def _raw_payload(w: World, text: str | bytes) -> str:
    return w.token(claims=text)


# alg
case("alg-none-trailing-dot")(lambda w: _none(w))
case("alg-none-no-dot")(lambda w: _none(w, dot=False))
case("alg-None-capitalised")(lambda w: _none(w, alg="None"))
case("alg-none-with-signature")(lambda w: _replace_signature(_none(w), w.token().split(".")[2]))
case("alg-missing")(lambda w: w.token(w.header(alg=None), alg="ES384"))
case("alg-as-list")(lambda w: w.token(w.header(alg=["ES384"]), alg="ES384"))
case("hs256-ec-public-key-pem-as-secret")(lambda w: _hmac(w, _pem(w.keys["main"])))
case("hs256-rsa-public-key-pem-as-secret")(lambda w: _hmac(w, _pem(w.keys["rsa"]), "rsa"))
case("hs256-public-jwk-as-secret")(lambda w: _hmac(w, json.dumps(w.keys["main"].jwk).encode()))
case("hs512-rsa-public-key-pem-as-secret")(
    lambda w: _hmac(w, _pem(w.keys["rsa"]), "rsa", alg="HS512")
)

# keys and where they come from
case("foreign-key-under-the-real-kid")(lambda w: w.token(key="foreign"))
case("embedded-jwk-header")(lambda w: w.token(w.header(jwk=w.foreign.jwk), key="foreign"))
case("embedded-jwk-header-without-kid")(
    lambda w: w.token(w.header(kid=None, jwk=w.foreign.jwk), key="foreign")
)
case("jku-header-unknown-kid")(
    lambda w: w.token(w.header(kid="attacker", jku=f"{ISSUER}/attacker/jwks"), key="foreign")
)
case("jku-header-real-kid")(
    lambda w: w.token(w.header(jku=f"{ISSUER}/attacker/jwks"), key="foreign")
)
case("x5u-header")(
    lambda w: w.token(w.header(kid=None, x5u=f"{ISSUER}/attacker/cert.pem"), key="foreign")
)
case("x5c-header")(lambda w: w.token(w.header(kid=None, x5c=[w.foreign_cert]), key="foreign"))
case("x5c-header-real-kid")(lambda w: w.token(w.header(x5c=[w.foreign_cert]), key="foreign"))
case("kid-path-traversal")(lambda w: w.token(w.header(kid="../../etc/passwd")))
case("kid-url")(lambda w: w.token(w.header(kid=f"{ISSUER}/attacker/jwks")))
case("kid-not-a-string")(lambda w: w.token(w.header(kid=1)))
case("kid-unknown")(lambda w: w.token(w.header(kid="rotated-away")))
case("kid-missing-with-several-keys")(lambda w: w.token(w.header(kid=None)))
case("es384-header-with-p256-key")(lambda w: w.token(w.header(kid="p256"), key="p256", alg="ES384"))
case("es256-header-with-p384-key")(lambda w: w.token(w.header(alg="ES256"), alg="ES256"))
case("rsa-key-with-es-alg")(
    lambda w: _replace_signature(
        w.token(w.header(alg="ES256", kid="rsa"), key="es256"), b64(bytes(64))
    )
)
case("ec-key-with-rs-alg")(lambda w: w.token(w.header(alg="RS256"), key="rsa"))
case("eddsa-key-with-es-alg")(lambda w: w.token(w.header(alg="ES256", kid="eddsa"), key="es256"))
case("use-enc-key")(lambda w: w.token(w.header(kid="enc")))
case("key-ops-without-verify")(lambda w: w.token(w.header(kid="noverify")))
case("jwk-alg-differs-from-header-alg")(
    lambda w: w.token(w.header(alg="PS256", kid="rs256only"), key="rsa")
)
case("rsa-key-under-2048-bits")(lambda w: w.token(w.header(alg="RS256", kid="small"), key="small"))

# signatures
case("stripped-signature")(lambda w: w.token().rsplit(".", 1)[0] + ".")
case("ecdsa-r-s-zero")(lambda w: _replace_signature(w.token(), b64(bytes(96))))


@case("ecdsa-der-signature")
def _der_signature(w: World) -> str:
    """A valid ECDSA signature, but DER-encoded instead of JWS's fixed-size r||s."""
    h, p = segment(w.header()), segment(w.claims())
    private = w.keys["main"].private_key
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    return f"{h}.{p}.{b64(private.sign(f'{h}.{p}'.encode(), ec.ECDSA(hashes.SHA384())))}"


case("signature-of-another-token")(
    lambda w: _replace_signature(w.token(), w.token(claims=w.claims(sub="admin")).split(".")[2])
)
case("truncated-signature")(lambda w: w.token()[:-4])
case("tampered-payload")(lambda w: LocalIssuer.tampered(w.token()))

# structure and encoding
case("two-segments")(lambda w: w.token().rsplit(".", 1)[0])
case("four-segments")(lambda w: w.token() + "." + segment(b"more"))
case("five-segments-jwe-shaped")(lambda w: w.token() + ".." + segment(b"tag"))
case("empty-header-segment")(lambda w: "." + w.token().split(".", 1)[1])


@case("base64-length-one-mod-four")
def _impossible_length(w: World) -> str:
    h, p, s = w.token().split(".")
    return f"{h}.{p + 'A' * ((1 - len(p)) % 4)}.{s}"


case("tilde-in-payload-segment")(lambda w: w.token().replace(".", ".~", 1))
case("standard-base64-alphabet")(lambda w: w.token() + "+/")
case("padded-signature")(lambda w: w.token() + "==")
case("non-json-payload")(lambda w: _raw_payload(w, "not json"))
case("non-utf8-payload")(lambda w: _raw_payload(w, b"\xff\xfe{}"))
case("array-payload")(lambda w: w.token(claims=[w.claims()]))
case("string-payload")(lambda w: _raw_payload(w, '"claims"'))
case("deeply-nested-payload")(lambda w: _raw_payload(w, "[" * 2000 + "]" * 2000))
case("array-header")(lambda w: w.token([w.header()], alg="ES384"))
case("non-json-header")(lambda w: w.token("alg=ES384", alg="ES384"))
case("duplicate-member-in-header")(
    lambda w: w.token('{"alg":"none","typ":"at+jwt","kid":"main","alg":"ES384"}', alg="ES384")
)
case("duplicate-member-in-payload")(
    lambda w: _raw_payload(
        w,
        json.dumps(w.claims(aud="https://evil.test"))[:-1] + f', "aud": "{AUDIENCE}"}}',
    )
)
# One JSON value per segment, whatever follows it (the decoder's fast path must not stop early)
case("payload-followed-by-a-second-object")(
    lambda w: _raw_payload(w, json.dumps(w.claims()) + json.dumps({"aud": "https://evil.test"}))
)
case("payload-followed-by-garbage")(lambda w: _raw_payload(w, json.dumps(w.claims()) + "x"))
case("payload-empty")(lambda w: _raw_payload(w, ""))

# JOSE header parameters
case("crit-unknown")(lambda w: w.token(w.header(crit=["exp"], exp=NOW + 60)))
case("crit-not-a-list")(lambda w: w.token(w.header(crit="exp", exp=NOW + 60)))
case("crit-empty-list")(lambda w: w.token(w.header(crit=[])))
case("b64-false")(lambda w: w.token(w.header(b64=False, crit=["b64"])))
case("b64-false-without-crit")(lambda w: w.token(w.header(b64=False)))
case("typ-jwt-when-required")(lambda w: w.token(w.header(typ="JWT")))
case("typ-absent-when-required")(lambda w: w.token(w.header(typ=None)))
case("typ-not-a-string")(lambda w: w.token(w.header(typ=["at+jwt"])))
case("typ-dpop-when-not-required", require_typ=False)(lambda w: w.token(w.header(typ="dpop+jwt")))
case("typ-id-token-when-not-required", require_typ=False)(
    lambda w: w.token(w.header(typ="id_token+jwt"))
)
case("typ-logout-when-not-required", require_typ=False)(
    lambda w: w.token(w.header(typ="logout+jwt"))
)

# time
case("expired")(lambda w: w.token(claims=w.claims(iat=NOW - 7200, exp=NOW - 3600)))
case("missing-exp")(lambda w: w.token(claims=w.claims(exp=None)))
case("exp-null")(lambda w: _raw_payload(w, json.dumps({**w.claims(), "exp": None})))
case("future-nbf")(lambda w: w.token(claims=w.claims(nbf=NOW + 3600)))
case("iat-in-the-future")(lambda w: w.token(claims=w.claims(iat=NOW + 3600, exp=NOW + 7200)))
case("exp-as-string")(lambda w: w.token(claims=w.claims(exp=str(NOW + 3600))))
case("exp-as-bool")(lambda w: w.token(claims=w.claims(exp=True)))
case("exp-nan")(lambda w: _raw_payload(w, json.dumps(w.claims(exp=None))[:-1] + ', "exp": NaN}'))
case("exp-infinity")(
    lambda w: _raw_payload(w, json.dumps(w.claims(exp=None))[:-1] + ', "exp": Infinity}')
)
case("nbf-minus-infinity")(
    lambda w: _raw_payload(w, json.dumps(w.claims())[:-1] + ', "nbf": -Infinity}')
)
case("exp-overflowing-to-infinity")(
    lambda w: _raw_payload(w, json.dumps(w.claims(exp=None))[:-1] + ', "exp": 1e400}')
)
case("exp-huge-integer")(lambda w: w.token(claims=w.claims(exp=10**400)))
case("iat-as-string")(lambda w: w.token(claims=w.claims(iat=str(NOW))))

# iss and aud
case("wrong-iss")(lambda w: w.token(claims=w.claims(iss="https://evil.test/oidc")))
case("iss-trailing-slash")(lambda w: w.token(claims=w.claims(iss=ISSUER + "/")))
case("iss-only-starts-with-issuer")(lambda w: w.token(claims=w.claims(iss=ISSUER + ".evil.test")))
case("iss-only-contains-issuer")(
    lambda w: w.token(claims=w.claims(iss="https://evil.test/?next=" + ISSUER))
)
case("iss-other-case")(lambda w: w.token(claims=w.claims(iss=ISSUER.upper())))
case("iss-as-list")(lambda w: w.token(claims=w.claims(iss=[ISSUER])))
case("iss-missing")(lambda w: w.token(claims=w.claims(iss=None)))
case("wrong-aud")(lambda w: w.token(claims=w.claims(aud="https://other.api")))
case("aud-trailing-slash")(lambda w: w.token(claims=w.claims(aud=AUDIENCE + "/")))
case("missing-aud")(lambda w: w.token(claims=w.claims(aud=None)))
case("aud-list-without-the-resource")(
    lambda w: w.token(claims=w.claims(aud=["https://other.api", "https://third.api"]))
)
case("aud-empty-list")(lambda w: w.token(claims=w.claims(aud=[])))
case("aud-not-a-string")(lambda w: w.token(claims=w.claims(aud=1)))

# RFC 9068 claims (strict mode is on for the world's server)
for _claim in ("sub", "client_id", "jti", "iat"):
    case(f"missing-{_claim}-in-strict-mode")(
        lambda w, _claim=_claim: w.token(
            claims={k: v for k, v in w.claims().items() if k != _claim}
        )
    )
case("sub-not-a-string")(lambda w: w.token(claims=w.claims(sub=42)))
case("client-id-not-a-string")(lambda w: w.token(claims=w.claims(client_id=["app"])))
case("scope-not-a-string")(lambda w: w.token(claims=w.claims(scope=7)))
case("scope-prefix-does-not-grant", InsufficientScope, require="read:products")(
    lambda w: w.token(claims=w.claims(scope="read:productsX write:products"))
)
case("scope-case-does-not-grant", InsufficientScope, require="read:products")(
    lambda w: w.token(claims=w.claims(scope="READ:PRODUCTS"))
)

# size and header syntax
case("oversize-token")(lambda w: w.token(claims=w.claims(padding="x" * 8192)))
case("space-inside-token", InvalidRequest)(lambda w: w.token().replace(".", ". ", 1))
case("quote-inside-token", InvalidRequest)(lambda w: w.token() + '"')
case("comma-separated-tokens", InvalidRequest)(lambda w: w.token() + "," + w.token())
case("non-ascii-token", InvalidRequest)(lambda w: w.token() + "\u00e9")


def test_the_catalog_is_large_enough() -> None:
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)


def _check(world: World, error: AuthError, token: str, expected: type[AuthError]) -> None:
    assert type(error) is expected, f"{type(error).__name__}: {error.description}"
    # Nothing is fetched from anywhere but discovery and the JWKS (jku, x5u, kid paths...).
    assert set(world.issuer.requests) <= ALLOWED_PATHS, world.issuer.requests
    assert world.issuer.requests.count("/oidc/jwks") <= 2
    # The description names a check, never the token or its attacker-controlled parts.
    assert token not in error.description
    assert "passwd" not in error.description
    assert "attacker" not in error.description
    assert error.www_authenticate.isascii()


def _use(server: ResourceServer, access: AccessToken, require: str | None) -> None:
    """What a protected route does with the token: fail unless it demands missing scopes."""
    assert require is not None, "a hostile token was accepted"
    server.check_scopes(access, require)


@pytest.mark.parametrize(("build", "expected", "require", "options"), CASES)
def test_hostile_token_sync(
    world: World,
    build: Build,
    expected: type[AuthError],
    require: str | None,
    options: dict[str, Any],
) -> None:
    token = build(world)
    server = world.server(**options)
    world.issuer.requests.clear()
    with pytest.raises(AuthError) as info:
        _use(server, server.authenticate(f"Bearer {token}"), require)
    _check(world, info.value, token, expected)


@pytest.mark.anyio
@pytest.mark.parametrize(("build", "expected", "require", "options"), CASES)
async def test_hostile_token_async(
    world: World,
    build: Build,
    expected: type[AuthError],
    require: str | None,
    options: dict[str, Any],
) -> None:
    token = build(world)
    server = world.server(**options)
    world.issuer.requests.clear()
    with pytest.raises(AuthError) as info:
        _use(server, await server.authenticate_async(f"Bearer {token}"), require)
    _check(world, info.value, token, expected)


# -- what must pass ------------------------------------------------------------------------------


def test_the_untouched_token_verifies(world: World) -> None:
    """Every hostile case is one change away from this token."""
    access = world.server().authenticate(f"Bearer {world.token()}")
    assert access.issuer == ISSUER
    assert access.audience == (AUDIENCE,)
    assert access.scopes == {"read:products"}
    assert access.sub == "test-client"
    assert access.client_id == "test-client"
    assert access.expires_at == NOW + 3600
    assert access.organization_id is None


@pytest.mark.parametrize(
    ("alg", "kid"),
    [
        ("ES384", "main"),
        ("ES256", "es256"),
        ("ES512", "es512"),
        ("RS256", "rsa"),
        ("RS384", "rsa"),
        ("RS512", "rsa"),
        ("PS256", "rsa"),
        ("PS512", "rsa"),
        ("EdDSA", "eddsa"),
    ],
)
def test_every_default_algorithm_verifies(world: World, alg: str, kid: str) -> None:
    token = world.token(world.header(alg=alg, kid=kid), key=kid)
    assert world.server().authenticate(f"Bearer {token}").scopes == {"read:products"}


@pytest.mark.parametrize(
    ("alg", "kid"), [("ES384", "main"), ("ES256", "es256"), ("PS256", "rsa"), ("EdDSA", "eddsa")]
)
@pytest.mark.anyio
async def test_every_default_algorithm_verifies_async(world: World, alg: str, kid: str) -> None:
    token = world.token(world.header(alg=alg, kid=kid), key=kid)
    access = await world.server().authenticate_async(f"Bearer {token}")
    assert access.scopes == {"read:products"}


def test_the_algorithm_allow_list_is_honoured(world: World) -> None:
    server = world.server(algorithms=["ES384"])
    server.authenticate(f"Bearer {world.token()}")
    token = world.token(world.header(alg="RS256", kid="rsa"), key="rsa")
    with pytest.raises(InvalidToken, match="algorithm"):
        server.authenticate(f"Bearer {token}")


@pytest.mark.parametrize("typ", ["at+jwt", "application/at+jwt", "AT+JWT", "Application/AT+JWT"])
def test_access_token_types_pass_in_strict_mode(world: World, typ: str) -> None:
    token = world.token(world.header(typ=typ))
    assert world.server(require_typ=True).authenticate(f"Bearer {token}").sub == "test-client"


@pytest.mark.parametrize("typ", [None, "JWT", "jwt", "application/jwt", "at+jwt"])
def test_plain_types_pass_when_typ_is_not_required(world: World, typ: str | None) -> None:
    token = world.token(world.header(typ=typ))
    assert world.server(require_typ=False).authenticate(f"Bearer {token}").sub == "test-client"


def test_rfc9068_claims_are_optional_when_typ_is_not_required(world: World) -> None:
    claims = {"iss": ISSUER, "aud": AUDIENCE, "exp": NOW + 60}
    access = world.server(require_typ=False).authenticate(f"Bearer {world.token(claims=claims)}")
    assert access.sub is None
    assert access.client_id is None
    assert access.scopes == frozenset()


def test_scope_as_a_json_array(world: World) -> None:
    token = world.token(claims=world.claims(scope=["read:products", "write:products"]))
    access = world.server().authenticate(f"Bearer {token}")
    assert access.scopes == {"read:products", "write:products"}
    assert access.has_scopes("read:products", "write:products")
    assert not access.has_scopes("read:products", "admin")
    assert access.has_scopes("read:products", "admin", any_of=True)


def test_a_token_without_scope_has_no_scopes(world: World) -> None:
    access = world.server().authenticate(f"Bearer {world.token(claims=world.claims(scope=None))}")
    assert access.scopes == frozenset()
    assert not access.has_scopes("read:products")


@pytest.mark.parametrize(
    ("claim", "value"),
    [
        ("scp", ["read:products", "write:products"]),
        ("scp", "read:products write:products"),
        ("permissions", ["read:products", "write:products"]),
    ],
)
def test_other_scope_claims_are_selectable(world: World, claim: str, value: Any) -> None:
    token = world.token(claims=world.claims(scope=None, **{claim: value}))
    access = world.server(scope_claims=[claim]).authenticate(f"Bearer {token}")
    assert access.scopes == {"read:products", "write:products"}
    # Not selected, the claim grants nothing.
    assert world.server().authenticate(f"Bearer {token}").scopes == frozenset()


def test_several_audiences(world: World) -> None:
    server = world.server(audience=["https://other.api", AUDIENCE])
    for aud in (AUDIENCE, "https://other.api", ["https://third.api", AUDIENCE]):
        token = world.token(claims=world.claims(aud=aud))
        access = server.authenticate(f"Bearer {token}")
        assert access.audience == ((aud,) if isinstance(aud, str) else tuple(aud))


def test_aud_list_containing_the_resource(world: World) -> None:
    token = world.token(claims=world.claims(aud=["https://other.api", AUDIENCE]))
    access = world.server().authenticate(f"Bearer {token}")
    assert access.audience == ("https://other.api", AUDIENCE)


def test_several_issuers_share_keys_but_each_is_exact() -> None:
    """A Logto tenant with a custom domain signs for both issuers with the same keys."""
    default = LocalIssuer("https://tenant.logto.test/oidc", clock=lambda: NOW)
    custom = LocalIssuer("https://auth.shop.test/oidc", clock=lambda: NOW)
    custom.keys = default.keys
    stranger = LocalIssuer("https://evil.test/oidc", clock=lambda: NOW)
    stranger.keys = default.keys  # even with the right keys, an untrusted iss fails
    by_host = {httpx.URL(i.issuer).host: i.transport() for i in (default, custom, stranger)}

    def route(request: httpx.Request) -> httpx.Response:
        return by_host[request.url.host].handle_request(request)

    server = ResourceServer(
        [default.issuer, custom.issuer],
        "https://api.test",
        transport=httpx.MockTransport(route),
        clock=lambda: NOW,
        require_typ=True,
    )
    assert server.authenticate(f"Bearer {default.mint()}").issuer == default.issuer
    assert server.authenticate(f"Bearer {custom.mint()}").issuer == custom.issuer
    with pytest.raises(InvalidToken, match="issuer"):
        server.authenticate(f"Bearer {stranger.mint()}")
    assert stranger.requests == []


def test_missing_kid_is_accepted_only_with_exactly_one_usable_key() -> None:
    issuer = LocalIssuer(clock=lambda: NOW)
    only = issuer.current_key
    # A key for encryption does not count: one usable key remains.
    issuer.keys = [_with_jwk(SigningKey.generate("ES384"), "enc", use="enc"), only]
    h = segment({"alg": "ES384", "typ": "at+jwt"})
    p = segment(issuer.claims(scopes="read:products"))
    sig = b64(ALGORITHMS["ES384"].sign(f"{h}.{p}".encode(), only.private_key))
    token = f"{h}.{p}.{sig}"
    assert issuer.resource_server().authenticate(f"Bearer {token}").scopes == {"read:products"}

    issuer.keys = [SigningKey.generate("ES384"), only]
    with pytest.raises(InvalidToken):
        issuer.resource_server().authenticate(f"Bearer {token}")


def test_leeway_is_honoured_with_an_injected_clock() -> None:
    now = [float(NOW)]
    issuer = LocalIssuer(clock=lambda: now[0])
    token = issuer.mint(claims={"iat": NOW - 100, "exp": NOW - 10})
    assert issuer.resource_server(leeway=30).authenticate(f"Bearer {token}").expires_at == NOW - 10
    with pytest.raises(InvalidToken, match="expired"):
        issuer.resource_server(leeway=0).authenticate(f"Bearer {token}")
    now[0] = NOW + 21  # 31 s past exp: beyond the leeway too
    with pytest.raises(InvalidToken, match="expired"):
        issuer.resource_server(leeway=30).authenticate(f"Bearer {token}")

    early = issuer.mint(claims={"nbf": now[0] + 10})
    assert issuer.resource_server(leeway=30).authenticate(f"Bearer {early}")
    with pytest.raises(InvalidToken, match="not yet valid"):
        issuer.resource_server(leeway=0).authenticate(f"Bearer {early}")


def test_organization_id_from_the_claim(world: World) -> None:
    token = world.token(claims=world.claims(organization_id="org-42"))
    assert world.server().authenticate(f"Bearer {token}").organization_id == "org-42"


def test_organization_id_from_a_logto_organization_audience(world: World) -> None:
    org_audience = "urn:logto:organization:org-7"
    token = world.token(claims=world.claims(aud=org_audience, scope=""))
    access = world.server(audience=[AUDIENCE, org_audience]).authenticate(f"Bearer {token}")
    assert access.organization_id == "org-7"
    assert access.audience == (org_audience,)
    # The organization audience alone does not open an API configured for another audience.
    with pytest.raises(InvalidToken, match="audience"):
        world.server().authenticate(f"Bearer {token}")


def test_claims_are_read_only_and_custom_claims_are_kept(world: World) -> None:
    token = world.token(claims=world.claims(tenant="acme", roles=["admin"]))
    access: AccessToken = world.server().authenticate(f"Bearer {token}")
    assert access.claims["tenant"] == "acme"
    assert access.claims["roles"] == ["admin"]
    with pytest.raises(TypeError):
        access.claims["tenant"] = "evil"  # type: ignore[index]


def test_json_whitespace_around_the_payload_is_accepted(world: World) -> None:
    # RFC 8259 allows whitespace around a value; the full decoder handles what the fast path skips.
    token = world.token(claims=" \n" + json.dumps(world.claims()) + "\t ")
    assert world.server().authenticate(f"Bearer {token}").sub is not None


def _top_byte_class(byte: int) -> str:
    return "zero" if byte == 0 else "low" if byte < 0x80 else "high"


@pytest.mark.parametrize("alg", ["ES256", "ES384", "ES512"])
def test_ecdsa_signatures_of_every_shape_verify(alg: str) -> None:
    """JWS's r||s becomes DER by fixed framing, or through the encoder when a half starts with
    0x00: each shape must verify, and fail with one bit flipped or for other data."""
    from bearerguard.keys import KeySet

    key = SigningKey.generate(alg, kid="k")
    verify = KeySet.from_jwks({"keys": [key.jwk]}).keys[0].verifiers[alg]
    size = {"ES256": 32, "ES384": 48, "ES512": 66}[alg]
    classes = ("zero", "low") if alg == "ES512" else ("zero", "low", "high")  # P-521: 0 or 1
    wanted = {(half, c) for half in "rs" for c in classes}
    wanted |= {(r, s) for r in classes for s in classes if "zero" not in (r, s)}
    seen: set[tuple[str, str]] = set()
    for i in range(5000):  # a half starts with 0x00 once in 256 signatures
        data = f"message {i}".encode()
        raw = ALGORITHMS[alg].sign(data, key.private_key)
        r, s = _top_byte_class(raw[0]), _top_byte_class(raw[size])
        shapes = {("r", r), ("s", s), (r, s)} & wanted
        if shapes <= seen:
            continue
        seen |= shapes
        verify(raw, data)
        with pytest.raises(InvalidSignature):
            verify(raw[:-1] + bytes([raw[-1] ^ 1]), data)
        with pytest.raises(InvalidSignature):
            verify(raw, data + b"!")
        if seen == wanted:
            break
    assert seen == wanted
