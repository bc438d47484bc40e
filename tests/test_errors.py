"""Each AuthError renders its own status, WWW-Authenticate challenge and JSON body."""

from __future__ import annotations

import json
import re

import pytest

from bearerguard import (
    AccessToken,
    AuthError,
    ConfigurationError,
    InsufficientScope,
    InvalidRequest,
    InvalidToken,
    IssuerUnavailable,
    MissingToken,
    require_scopes,
)

# RFC 6750 section 3: auth-param values are quoted-strings of %x20-21 / %x23-5B / %x5D-7E.
SAFE_VALUE = r'"[\x20\x21\x23-\x5b\x5d-\x7e]*"'
CHALLENGE = re.compile(rf"Bearer(?: [a-z_]+={SAFE_VALUE}(?:, [a-z_]+={SAFE_VALUE})*)?")


def params(challenge: str) -> dict[str, str]:
    assert CHALLENGE.fullmatch(challenge), challenge
    return dict(re.findall(r"([a-z_]+)=\"([\x20\x21\x23-\x5b\x5d-\x7e]*)\"", challenge))


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (MissingToken(), 401),
        (InvalidRequest(), 400),
        (InvalidToken(), 401),
        (InsufficientScope(("read:products",)), 403),
        (IssuerUnavailable(), 503),
    ],
)
def test_status_codes(error: AuthError, status: int) -> None:
    assert isinstance(error, AuthError)
    assert isinstance(error, Exception)
    assert error.status_code == status


def test_configuration_error_is_not_an_auth_error() -> None:
    assert issubclass(ConfigurationError, ValueError)
    assert not issubclass(ConfigurationError, AuthError)


def test_missing_token_challenge_has_no_error_attribute() -> None:
    error = MissingToken(realm="https://api.test")
    assert error.error is None
    assert error.www_authenticate == 'Bearer realm="https://api.test"'
    assert error.headers == {"WWW-Authenticate": 'Bearer realm="https://api.test"'}
    assert MissingToken().www_authenticate == "Bearer"


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidRequest("malformed authorization header", realm="api"), "invalid_request"),
        (InvalidToken("token expired", realm="api"), "invalid_token"),
    ],
)
def test_error_codes_and_descriptions_are_in_the_challenge(error: AuthError, code: str) -> None:
    assert error.error == code
    assert params(error.www_authenticate) == {
        "realm": "api",
        "error": code,
        "error_description": error.description,
    }
    assert error.www_authenticate.startswith('Bearer realm="api", error=')
    assert json.loads(error.to_json()) == {"error": code, "error_description": error.description}


def test_descriptions_say_which_check_failed() -> None:
    assert InvalidToken("token expired").description == "token expired"
    assert "token expired" in InvalidToken("token expired").www_authenticate
    assert InvalidToken().description  # a default is always there
    assert InvalidRequest().description


def test_insufficient_scope_names_the_required_scopes() -> None:
    error = InsufficientScope(("read:products", "write:products"), realm="api")
    assert error.status_code == 403
    assert error.error == "insufficient_scope"
    challenge = params(error.www_authenticate)
    assert challenge["error"] == "insufficient_scope"
    assert challenge["scope"] == "read:products write:products"
    assert challenge["realm"] == "api"
    body = json.loads(error.to_json())
    assert body["error"] == "insufficient_scope"
    assert body["scope"] == "read:products write:products"
    assert "read:products" in body["error_description"]


def test_issuer_unavailable_is_503_with_retry_after() -> None:
    error = IssuerUnavailable(retry_after=12, realm="api")
    assert error.status_code == 503
    assert error.retry_after == 12
    assert error.headers["Retry-After"] == "12"
    assert error.headers["WWW-Authenticate"] == error.www_authenticate
    assert CHALLENGE.fullmatch(error.www_authenticate)
    body = json.loads(error.to_json())
    assert body["error"] == "temporarily_unavailable"
    assert body["error_description"]


@pytest.mark.parametrize(("given", "header"), [(0, "1"), (-5, "1"), (2.4, "2"), (30, "30")])
def test_retry_after_is_a_positive_whole_number_of_seconds(given: float, header: str) -> None:
    assert IssuerUnavailable(retry_after=given).headers["Retry-After"] == header  # type: ignore[arg-type]


def test_missing_token_body_is_json_with_a_description() -> None:
    body = json.loads(MissingToken().to_json())
    assert set(body) == {"error", "error_description"}
    assert body["error_description"]


HOSTILE_TEXT = [
    'quote " inside',
    "back\\slash",
    'closing \\" and more',
    "cr\rlf\ninjection: Set-Cookie: a=b",
    "nul\x00 and bell\x07 and del\x7f",
    "caf\u00e9 \u2603 \U0001f511",
    "line\u2028separator",
    "\t tab",
]


@pytest.mark.parametrize("text", HOSTILE_TEXT)
@pytest.mark.parametrize(
    "make",
    [
        lambda t: InvalidToken(t, realm="api"),
        lambda t: InvalidRequest(t, realm="api"),
        lambda t: MissingToken(t, realm=t),
        lambda t: InvalidToken("x", realm=t),
        lambda t: InsufficientScope((t, "read"), realm="api"),
        lambda t: InsufficientScope(("read",), t, realm="api"),
        lambda t: IssuerUnavailable(t, realm=t),
    ],
    ids=["description", "request", "missing-realm", "realm", "scope", "scope-desc", "unavailable"],
)
def test_attacker_text_never_appears_unescaped_in_the_header(make, text: str) -> None:  # type: ignore[no-untyped-def]
    error = make(text)
    for name, value in error.headers.items():
        value.encode("ascii")  # never non-ASCII
        assert not re.search(r"[\x00-\x1f\x7f]", value), (name, value)
    header = error.www_authenticate
    assert CHALLENGE.fullmatch(header), header
    for value in params(header).values():
        assert '"' not in value
        assert "\\" not in value
    # The JSON body is real JSON and keeps the text exactly (JSON has its own escaping).
    body = json.loads(error.to_json())
    if error.description == text:
        assert body["error_description"] == text


def test_require_scopes_all_of_and_any_of() -> None:
    token = AccessToken(
        sub="app",
        client_id="app",
        scopes=frozenset({"read:products", "write:orders"}),
        audience=("https://api.test",),
        issuer="https://issuer.test/oidc",
        expires_at=2e9,
        claims={},
    )
    require_scopes(token, "read:products")
    require_scopes(token, ["read:products", "write:orders"])
    require_scopes(token, "read:products write:orders")
    require_scopes(token, ["admin", "write:orders"], any_of=True)
    with pytest.raises(InsufficientScope) as info:
        require_scopes(token, "read:products admin")
    assert info.value.required == ("read:products", "admin")
    assert params(info.value.www_authenticate)["scope"] == "read:products admin"
    with pytest.raises(InsufficientScope) as info:
        require_scopes(token, ["admin", "root"], any_of=True)
    assert "one of" in info.value.description
    with pytest.raises(InsufficientScope):
        require_scopes(token, "read:productsX")
    with pytest.raises(InsufficientScope):
        require_scopes(token, "READ:PRODUCTS")
