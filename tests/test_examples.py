"""The example shopping APIs, black-box, against the exact contract of issue 3.

Each example is imported fresh (it builds its ResourceServer at import time from AUTH_ISSUER and
AUTH_AUDIENCE) and driven in-process: FastAPI through httpx.ASGITransport, Flask through its
test client. Then each runs once under its real server (uvicorn / gunicorn) as a subprocess.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import importlib.util
import json
import os
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
from jwt.algorithms import get_default_algorithms
from procs import example_command, free_port, serving
from prometheus_client.parser import text_string_to_metric_families

from bearerguard.testing import LocalIssuer, SigningKey

ROOT = Path(__file__).parents[1]
EXAMPLES = {
    "fastapi": ROOT / "examples" / "fastapi_app" / "main.py",
    "flask": ROOT / "examples" / "flask_app" / "main.py",
    "django": ROOT / "examples" / "django_app" / "shop" / "wsgi.py",  # served, not imported
}
AUDIENCE = "https://shopping.api"
READ, WRITE = "read:products", "write:products"
PROTECTED = [
    ("GET", "/products"),
    ("GET", "/products/1"),
    ("POST", "/products"),
    ("DELETE", "/products/1"),
    ("GET", "/whoami"),
]


# -- importing an example fresh ------------------------------------------------------------------


@contextlib.contextmanager
def imported_example(kind: str, issuer_url: str) -> Iterator[ModuleType]:
    """Import ``examples/<kind>_app/main.py`` under a unique name with AUTH_ISSUER set."""
    path = EXAMPLES[kind]
    name = f"bearerguard_example_{kind}_{uuid.uuid4().hex}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AUTH_ISSUER", issuer_url)
        patch.setenv("AUTH_AUDIENCE", AUDIENCE)
        patch.syspath_prepend(str(path.parent))  # as uvicorn --app-dir / gunicorn --chdir do
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        # Registered like a normal import: pydantic and Flask look the module up by name.
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
            yield module
        finally:
            sys.modules.pop(name, None)


@contextlib.contextmanager
def example_api(kind: str, issuer_url: str) -> Iterator[Api]:
    """The example behind ``Api``: FastAPI and Flask imported fresh, driven in process;
    Django (one settings module per process) served by gunicorn on loopback."""
    if kind != "django":
        with imported_example(kind, issuer_url) as module:
            yield Api(kind, module.app)
        return
    port = free_port()
    env = {**os.environ, "AUTH_ISSUER": issuer_url, "AUTH_AUDIENCE": AUDIENCE}
    base = f"http://127.0.0.1:{port}"
    log = Path(tempfile.mkdtemp(prefix="django-example-")) / "server.log"
    with serving(example_command(kind, port), env, base + "/health", log, "django example"):
        yield Api(kind, base)


@dataclass
class Api:
    """One example app behind a uniform async ``request`` returning an httpx.Response
    (``app``: the ASGI or WSGI app, or the base URL of a served one)."""

    kind: str
    app: Any

    async def request(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | list[tuple[str, str]] | None = None,
        json: Any = None,
        content: bytes | None = None,
    ) -> httpx.Response:
        if self.kind == "django":
            # On the wire a header value has no trailing whitespace ("Bearer " is "Bearer").
            pairs = list(headers.items()) if isinstance(headers, Mapping) else headers or []
            sent = [(name, value.rstrip(" \t")) for name, value in pairs]
            async with httpx.AsyncClient(base_url=self.app, timeout=20) as c:
                return await c.request(method, path, headers=sent, json=json, content=content)
        if self.kind == "fastapi":
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
                return await c.request(method, path, headers=headers, json=json, content=content)
        client = self.app.test_client()
        extra: dict[str, Any] = {"json": json} if json is not None else {"data": content}
        response = client.open(path, method=method, headers=headers, **extra)
        return httpx.Response(
            response.status_code,
            headers=list(response.headers.items()),
            content=response.get_data(),
        )

    async def get(self, path: str, token: str | None = None) -> httpx.Response:
        return await self.request("GET", path, headers=auth(token))


def auth(token: str | None) -> dict[str, str]:
    return {} if token is None else {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def shop_issuer() -> Iterator[LocalIssuer]:
    """The issuer of the shopping API, served over loopback for the whole module."""
    issuer = LocalIssuer(audience=AUDIENCE)
    with issuer.serve():
        yield issuer


@pytest.fixture(scope="module", params=sorted(EXAMPLES))
def api(request: pytest.FixtureRequest, shop_issuer: LocalIssuer) -> Iterator[Api]:
    with example_api(request.param, shop_issuer.issuer) as example:
        yield example


# -- tokens built by hand --------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def sign_raw(header: bytes, payload: bytes, key: SigningKey) -> str:
    """A compact JWS over exactly these header and payload bytes."""
    signing_input = f"{b64url(header)}.{b64url(payload)}"
    algorithm = get_default_algorithms()[key.alg]
    signature = algorithm.sign(signing_input.encode(), algorithm.prepare_key(key.private_key))
    return f"{signing_input}.{b64url(signature)}"


def raw_token(
    issuer: LocalIssuer,
    scopes: str | None = None,
    *,
    header: Mapping[str, Any] | None = None,
    claims: Mapping[str, Any] | None = None,
    drop: tuple[str, ...] = (),
    drop_header: tuple[str, ...] = (),
) -> str:
    """Like ``issuer.mint`` but claims and header members can be dropped or set to null."""
    key = issuer.current_key
    head = {"alg": key.alg, "typ": "at+jwt", "kid": key.kid, **(header or {})}
    payload = {**issuer.claims(scopes=scopes), **(claims or {})}
    for name in drop:
        payload.pop(name, None)
    for name in drop_header:
        head.pop(name, None)
    return sign_raw(json.dumps(head).encode(), json.dumps(payload).encode(), key)


# -- assertions ------------------------------------------------------------------------------------


def assert_error(
    response: httpx.Response, status: int, error: str | None, scope: str | None = None
) -> dict[str, Any]:
    """The contract's error: status, RFC 6750 challenge, JSON {"error", "error_description"}."""
    assert response.status_code == status, response.text
    challenge = response.headers.get("www-authenticate", "")
    assert challenge.startswith("Bearer"), challenge
    if error is None:
        assert "error=" not in challenge
    else:
        assert f'error="{error}"' in challenge
    if scope is not None:
        assert f'scope="{scope}"' in challenge
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert isinstance(body.get("error"), str)
    assert isinstance(body.get("error_description"), str)
    if error is not None:
        assert body["error"] == error
    return body


async def create(api: Api, issuer: LocalIssuer, name: str, price: float) -> dict[str, Any]:
    response = await api.request(
        "POST", "/products", headers=auth(issuer.mint(WRITE)), json={"name": name, "price": price}
    )
    assert response.status_code == 201, response.text
    product: dict[str, Any] = response.json()
    return product


# -- routes ----------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_health_is_public(api: Api, shop_issuer: LocalIssuer) -> None:
    for headers in (
        {},
        {"Authorization": "Bearer bogus"},
        {"Authorization": "Bearer a b"},
        {"Authorization": "Basic eHl6"},
        auth(shop_issuer.expired(READ)),
        [("Authorization", "Bearer x"), ("Authorization", "Bearer y")],
    ):
        response = await api.request("GET", "/health", headers=headers)
        assert response.status_code == 200, (headers, response.text)


@pytest.mark.anyio
async def test_list_products(api: Api, shop_issuer: LocalIssuer) -> None:
    response = await api.get("/products", shop_issuer.mint(READ))
    assert response.status_code == 200
    products = response.json()
    assert isinstance(products, list)
    assert products
    for product in products:
        assert isinstance(product["id"], int)
        assert isinstance(product["name"], str)
        assert isinstance(product["price"], (int, float))


@pytest.mark.anyio
async def test_get_product_and_404(api: Api, shop_issuer: LocalIssuer) -> None:
    read = shop_issuer.mint(READ)
    first = (await api.get("/products", read)).json()[0]
    response = await api.get(f"/products/{first['id']}", read)
    assert response.status_code == 200
    assert response.json() == first
    assert (await api.get("/products/987654321", read)).status_code == 404


@pytest.mark.anyio
async def test_create_get_delete(api: Api, shop_issuer: LocalIssuer) -> None:
    read, write = shop_issuer.mint(READ), shop_issuer.mint(WRITE)
    created = await create(api, shop_issuer, "Grinder", 129.99)
    assert created["name"] == "Grinder"
    assert created["price"] == 129.99
    product_id = created["id"]
    response = await api.get(f"/products/{product_id}", read)
    assert response.status_code == 200
    assert response.json() == created
    assert created in (await api.get("/products", read)).json()

    response = await api.request("DELETE", f"/products/{product_id}", headers=auth(write))
    assert response.status_code == 204
    assert response.content == b""
    assert (await api.get(f"/products/{product_id}", read)).status_code == 404
    response = await api.request("DELETE", f"/products/{product_id}", headers=auth(write))
    assert response.status_code == 404
    assert created not in (await api.get("/products", read)).json()


@pytest.mark.anyio
async def test_create_with_integer_price(api: Api, shop_issuer: LocalIssuer) -> None:
    created = await create(api, shop_issuer, "Filter papers", 3)
    assert created["price"] == 3


@pytest.mark.anyio
@pytest.mark.parametrize(
    "body",
    [
        {"name": "x"},
        {"price": 1},
        {"name": "x", "price": "12"},
        {"name": 7, "price": 1},
        {"name": "x", "price": True},
        {"name": "x", "price": None},
        ["x", 1],
        b"not json",
        b"",
    ],
    ids=repr,
)
async def test_create_with_a_bad_body(
    api: Api, shop_issuer: LocalIssuer, body: dict[str, Any] | list[Any] | bytes
) -> None:
    headers = {**auth(shop_issuer.mint(WRITE)), "Content-Type": "application/json"}
    if isinstance(body, bytes):
        response = await api.request("POST", "/products", headers=headers, content=body)
    else:
        response = await api.request("POST", "/products", headers=headers, json=body)
    assert response.status_code in (400, 422), response.text


@pytest.mark.anyio
async def test_whoami(api: Api, shop_issuer: LocalIssuer) -> None:
    token = shop_issuer.mint(f"{WRITE} {READ}", sub="user-42", client_id="app-7")
    response = await api.get("/whoami", token)
    assert response.status_code == 200
    body = response.json()
    assert body["sub"] == "user-42"
    assert body["client_id"] == "app-7"
    assert isinstance(body["scopes"], list)
    assert sorted(body["scopes"]) == [READ, WRITE]
    # any valid token will do, even one without scopes
    response = await api.get("/whoami", shop_issuer.mint())
    assert response.status_code == 200
    assert response.json()["scopes"] == []


# -- errors ----------------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(("method", "path"), PROTECTED)
async def test_missing_token(api: Api, method: str, path: str) -> None:
    response = await api.request(method, path)
    assert_error(response, 401, None)
    response = await api.request(method, path, headers={"Authorization": "Basic eHl6"})
    assert_error(response, 401, None)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "authorization",
    ["Bearer", "Bearer ", "Bearer a b", "Bearer a$b", "Bearer tok,en", "Bearer {x}", "Bearer a=b"],
)
async def test_malformed_authorization_is_400(
    api: Api, shop_issuer: LocalIssuer, authorization: str
) -> None:
    for method, path in (("GET", "/products"), ("POST", "/products")):
        response = await api.request(method, path, headers={"Authorization": authorization})
        assert_error(response, 400, "invalid_request")


@pytest.mark.anyio
async def test_a_valid_token_followed_by_junk_is_400(api: Api, shop_issuer: LocalIssuer) -> None:
    token = shop_issuer.mint(READ)
    for junk in (" extra", "!", '"'):
        response = await api.get("/products", token + junk)
        assert_error(response, 400, "invalid_request")


@pytest.mark.anyio
@pytest.mark.parametrize("token", ["abc.d~f.ghi", "a+b/c.def.ghi", "abc", "a.b.c==", "..."])
async def test_bad_base64url_inside_token68_is_invalid_token(api: Api, token: str) -> None:
    assert_error(await api.get("/products", token), 401, "invalid_token")


@pytest.mark.anyio
async def test_invalid_token_on_write_route_is_401_not_403(
    api: Api, shop_issuer: LocalIssuer
) -> None:
    for scopes in (WRITE, READ, None):
        tampered = shop_issuer.tampered(shop_issuer.mint(scopes))
        for method, path in (("POST", "/products"), ("DELETE", "/products/1")):
            response = await api.request(
                method, path, headers=auth(tampered), json={"name": "x", "price": 1}
            )
            assert_error(response, 401, "invalid_token")
    # signed by a key the issuer never published, under the published kid
    forged = shop_issuer.mint(
        WRITE, key=SigningKey.generate("ES384", kid=shop_issuer.current_key.kid)
    )
    response = await api.request("DELETE", "/products/1", headers=auth(forged))
    assert_error(response, 401, "invalid_token")


@pytest.mark.anyio
async def test_valid_token_without_the_scope_is_403(api: Api, shop_issuer: LocalIssuer) -> None:
    read = shop_issuer.mint(READ)
    response = await api.request(
        "POST", "/products", headers=auth(read), json={"name": "x", "price": 1}
    )
    assert_error(response, 403, "insufficient_scope", WRITE)
    response = await api.request("DELETE", "/products/1", headers=auth(read))
    assert_error(response, 403, "insufficient_scope", WRITE)
    for token in (shop_issuer.mint(WRITE), shop_issuer.mint(), shop_issuer.mint("read:orders")):
        assert_error(await api.get("/products", token), 403, "insufficient_scope", READ)
        assert_error(await api.get("/products/1", token), 403, "insufficient_scope", READ)


@pytest.mark.anyio
@pytest.mark.parametrize("typ", ["JWT", "jwt", "application/jwt", "at+jwt+x", None])
async def test_strict_typ(api: Api, shop_issuer: LocalIssuer, typ: str | None) -> None:
    token = shop_issuer.mint(READ, header={"typ": typ})
    assert_error(await api.get("/products", token), 401, "invalid_token")


@pytest.mark.anyio
async def test_application_at_jwt_typ_is_accepted(api: Api, shop_issuer: LocalIssuer) -> None:
    token = shop_issuer.mint(READ, header={"typ": "application/at+jwt"})
    assert (await api.get("/products", token)).status_code == 200


@pytest.mark.anyio
@pytest.mark.parametrize("claim", ["sub", "client_id", "iat", "jti", "iss", "aud", "exp"])
async def test_required_claims(api: Api, shop_issuer: LocalIssuer, claim: str) -> None:
    assert (await api.get("/products", raw_token(shop_issuer, READ))).status_code == 200
    token = raw_token(shop_issuer, READ, drop=(claim,))
    assert_error(await api.get("/products", token), 401, "invalid_token")
    null = raw_token(shop_issuer, READ, claims={claim: None})
    assert_error(await api.get("/products", null), 401, "invalid_token")


@pytest.mark.anyio
async def test_scope_as_json_array(api: Api, shop_issuer: LocalIssuer) -> None:
    token = shop_issuer.mint(claims={"scope": [READ, WRITE]})
    assert (await api.get("/products", token)).status_code == 200
    response = await api.request(
        "POST", "/products", headers=auth(token), json={"name": "Tamper", "price": 9.5}
    )
    assert response.status_code == 201
    assert sorted((await api.get("/whoami", token)).json()["scopes"]) == [READ, WRITE]
    read_only = shop_issuer.mint(claims={"scope": [READ]})
    response = await api.request(
        "POST", "/products", headers=auth(read_only), json={"name": "x", "price": 1}
    )
    assert_error(response, 403, "insufficient_scope", WRITE)


@pytest.mark.anyio
async def test_time_claims(api: Api, shop_issuer: LocalIssuer) -> None:
    assert_error(await api.get("/products", shop_issuer.expired(READ)), 401, "invalid_token")
    now = int(time.time())
    beyond_leeway = shop_issuer.mint(READ, claims={"iat": now - 7200, "exp": now - 120})
    assert_error(await api.get("/products", beyond_leeway), 401, "invalid_token")
    not_yet = shop_issuer.mint(READ, claims={"nbf": now + 3600})
    assert_error(await api.get("/products", not_yet), 401, "invalid_token")


@pytest.mark.anyio
async def test_audience_and_issuer_must_match(api: Api, shop_issuer: LocalIssuer) -> None:
    for claims in (
        {"aud": "https://other.api"},
        {"aud": ["https://other.api", "https://third.api"]},
        {"iss": "https://evil.example/oidc"},
        {"iss": shop_issuer.issuer + "/"},
    ):
        token = shop_issuer.mint(READ, claims=claims)
        assert_error(await api.get("/products", token), 401, "invalid_token")
    several = shop_issuer.mint(READ, claims={"aud": ["https://other.api", AUDIENCE]})
    assert (await api.get("/products", several)).status_code == 200


@pytest.mark.anyio
async def test_duplicate_json_member_names(api: Api, shop_issuer: LocalIssuer) -> None:
    key = shop_issuer.current_key
    header = json.dumps({"alg": key.alg, "typ": "at+jwt", "kid": key.kid}).encode()
    claims = json.dumps(shop_issuer.claims(scopes=READ)).encode()
    assert (await api.get("/products", sign_raw(header, claims, key))).status_code == 200

    twice = claims[:-1] + f', "scope": "{READ} {WRITE}"'.encode() + b"}"
    token = sign_raw(header, twice, key)
    assert_error(await api.get("/products", token), 401, "invalid_token")
    response = await api.request(
        "POST", "/products", headers=auth(token), json={"name": "x", "price": 1}
    )
    assert_error(response, 401, "invalid_token")

    header_twice = header[:-1] + b', "typ": "at+jwt"}'
    token = sign_raw(header_twice, claims, key)
    assert_error(await api.get("/products", token), 401, "invalid_token")


@pytest.mark.anyio
async def test_missing_kid_with_a_single_key(api: Api, shop_issuer: LocalIssuer) -> None:
    token = raw_token(shop_issuer, READ, drop_header=("kid",))
    assert (await api.get("/products", token)).status_code == 200


@pytest.mark.anyio
async def test_unsigned_and_symmetric_tokens(api: Api, shop_issuer: LocalIssuer) -> None:
    claims = b64url(json.dumps(shop_issuer.claims(scopes=READ)).encode())
    none = b64url(json.dumps({"alg": "none", "typ": "at+jwt"}).encode())
    assert_error(await api.get("/products", f"{none}.{claims}."), 401, "invalid_token")
    # HS256 keyed with the published public key (the algorithm confusion attack)
    key = shop_issuer.current_key
    header = b64url(json.dumps({"alg": "HS256", "typ": "at+jwt", "kid": key.kid}).encode())
    secret = json.dumps(key.jwk).encode()
    mac = hmac.new(secret, f"{header}.{claims}".encode(), hashlib.sha256).digest()
    forged = f"{header}.{claims}.{b64url(mac)}"
    assert_error(await api.get("/products", forged), 401, "invalid_token")


@pytest.mark.anyio
async def test_token_in_query_string_or_form_is_not_accepted(
    api: Api, shop_issuer: LocalIssuer
) -> None:
    token = shop_issuer.mint(f"{READ} {WRITE}")
    assert_error(await api.get(f"/products?access_token={token}"), 401, None)
    assert_error(await api.get(f"/whoami?access_token={token}"), 401, None)
    response = await api.request(
        "POST",
        "/products",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        content=f"access_token={token}&name=x&price=1".encode(),
    )
    assert_error(response, 401, None)


@pytest.mark.anyio
async def test_several_authorization_headers_are_400(api: Api, shop_issuer: LocalIssuer) -> None:
    token = shop_issuer.mint(READ)
    headers = [("Authorization", f"Bearer {token}"), ("Authorization", f"Bearer {token}")]
    response = await api.request("GET", "/products", headers=headers)
    assert_error(response, 400, "invalid_request")


# -- the issuer's availability (each test imports the example again) -----------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("kind", sorted(EXAMPLES))
async def test_issuer_unreachable_with_nothing_cached_is_503(kind: str) -> None:
    closed = f"http://127.0.0.1:{free_port()}/oidc"
    issuer = LocalIssuer(closed, audience=AUDIENCE)
    with example_api(kind, closed) as api:
        for _ in range(2):  # the cold start, then within the retry cooldown
            started = time.monotonic()
            response = await api.get("/products", issuer.mint(READ))
            assert time.monotonic() - started < 15
            body = assert_error(response, 503, None)
            assert body["error"] == "temporarily_unavailable"
            assert set(body) == {"error", "error_description"}
            assert int(response.headers["retry-after"]) >= 1
        # what needs no keys is still answered as usual
        assert_error(await api.get("/products"), 401, None)
        assert_error(await api.get("/products", "a$b"), 400, "invalid_request")
        assert (await api.get("/health")).status_code == 200


@pytest.mark.anyio
@pytest.mark.parametrize("kind", sorted(EXAMPLES))
async def test_issuer_hanging_with_nothing_cached_is_503_within_15s(kind: str) -> None:
    # A listening socket that never answers: connections succeed, responses never come.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as hanging:
        hanging.bind(("127.0.0.1", 0))
        hanging.listen(16)
        url = f"http://127.0.0.1:{hanging.getsockname()[1]}/oidc"
        issuer = LocalIssuer(url, audience=AUDIENCE)
        with example_api(kind, url) as api:
            started = time.monotonic()
            response = await api.get("/products", issuer.mint(READ))
            assert time.monotonic() - started < 15
            body = assert_error(response, 503, None)
            assert body["error"] == "temporarily_unavailable"
            assert int(response.headers["retry-after"]) >= 1


@pytest.mark.anyio
@pytest.mark.parametrize("kind", sorted(EXAMPLES))
async def test_unknown_kid_with_keys_cached_and_issuer_down_is_401(kind: str) -> None:
    port = free_port()
    issuer = LocalIssuer(f"http://127.0.0.1:{port}/oidc", audience=AUDIENCE)
    with contextlib.ExitStack() as up:
        up.enter_context(issuer.serve(port=port))  # up before the example: a served one warms
        with example_api(kind, issuer.issuer) as api:
            assert (await api.get("/products", issuer.mint(READ))).status_code == 200
            assert "/oidc/jwks" in issuer.requests
            up.close()  # the issuer is gone now (connection refused); its keys stay cached
            stranger = SigningKey.generate("ES384")
            started = time.monotonic()
            response = await api.get("/products", issuer.mint(READ, key=stranger))
            assert time.monotonic() - started < 15
            assert_error(response, 401, "invalid_token")
            # tokens signed with the cached key still pass
            assert (await api.get("/products", issuer.mint(READ))).status_code == 200


# -- OpenAPI of the FastAPI example ----------------------------------------------------------------


def test_fastapi_example_documents_its_security(shop_issuer: LocalIssuer) -> None:
    with imported_example("fastapi", shop_issuer.issuer) as module:
        document = module.app.openapi()
    [scheme] = document["components"]["securitySchemes"].values()
    flow = scheme["flows"]["clientCredentials"]
    assert flow["tokenUrl"] == shop_issuer.issuer + "/token"
    assert set(flow["scopes"]) == {READ, WRITE}
    [name] = document["components"]["securitySchemes"]
    paths = document["paths"]
    assert paths["/products"]["get"]["security"] == [{name: [READ]}]
    assert paths["/products"]["post"]["security"] == [{name: [WRITE]}]
    assert paths["/products/{product_id}"]["delete"]["security"] == [{name: [WRITE]}]
    assert paths["/whoami"]["get"]["security"] == [{name: []}]
    assert "security" not in paths["/health"]["get"]


# -- under the real servers ------------------------------------------------------------------------


@contextlib.contextmanager
def running_example(
    kind: str,
    issuer_url: str,
    log: Path,
    *,
    args: list[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> Iterator[str]:
    """Start the example under its real server (with extra ``args`` and ``env``); yield its
    base URL once /health answers."""
    port = free_port()
    env = {**os.environ, **(env or {}), "AUTH_ISSUER": issuer_url, "AUTH_AUDIENCE": AUDIENCE}
    base = f"http://127.0.0.1:{port}"
    command = [*example_command(kind, port), *(args or [])]
    with serving(command, env, base + "/health", log, f"{kind} server"):
        yield base


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_under_the_real_server(kind: str, tmp_path: Path) -> None:
    issuer = LocalIssuer(audience=AUDIENCE)
    with (
        issuer.serve() as url,
        running_example(kind, url, tmp_path / "server.log") as base,
        httpx.Client(base_url=base, timeout=10) as client,
    ):
        read, write = issuer.mint(READ), issuer.mint(f"{READ} {WRITE}")

        def call(method: str, path: str, token: str | None = None, **kw: Any) -> httpx.Response:
            return client.request(method, path, headers=auth(token), **kw)

        assert call("GET", "/health").status_code == 200
        # Warmed up at start-up: the keys were fetched before any token came.
        assert issuer.requests.count("/oidc/jwks") == 1
        assert_error(call("GET", "/products"), 401, None)
        assert_error(call("GET", "/products", "a b"), 400, "invalid_request")

        response = call("GET", "/products", read)
        assert response.status_code == 200
        assert isinstance(response.json(), list)
        assert issuer.requests.count("/oidc/jwks") == 1  # no fetch for the first token

        product = {"name": "Kettle", "price": 45}
        assert_error(
            call("POST", "/products", read, json=product), 403, "insufficient_scope", WRITE
        )
        response = call("POST", "/products", write, json=product)
        assert response.status_code == 201
        created = response.json()
        assert created["name"] == "Kettle"
        assert call("GET", f"/products/{created['id']}", read).json() == created
        assert call("DELETE", f"/products/{created['id']}", write).status_code == 204
        assert call("GET", f"/products/{created['id']}", read).status_code == 404

        assert_error(call("GET", "/products", issuer.tampered(read)), 401, "invalid_token")
        whoami = call("GET", "/whoami", read).json()
        assert whoami["client_id"] == "test-client"
        assert whoami["scopes"] == [READ]

        # GET /metrics is public and counts every decision above, by result and reason.
        response = call("GET", "/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        samples = metric_samples(response.text)
        auths = "bearerguard_authentications_total"
        assert value(samples, auths, result="success", reason="") == 7
        for result, reason in (
            ("none", "missing_token"),
            ("failure", "malformed_header"),
            ("failure", "insufficient_scope"),
            ("failure", "bad_signature"),
        ):
            assert value(samples, auths, result=result, reason=reason) == 1
        assert value(samples, auths, result="failure", reason="expired") == 0
        # Verified: the first read, the first write, "a b" and the forgery; the rest cached.
        assert value(samples, "bearerguard_token_cache_total", result="miss") == 4
        assert value(samples, "bearerguard_token_cache_total", result="hit") == 5
        assert value(samples, "bearerguard_verification_duration_seconds_count") == 4
        assert value(samples, "bearerguard_jwks_fetches_total", issuer=url, result="success") == 1


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def metric_samples(text: str) -> Samples:
    """{(sample name, sorted labels): value} from Prometheus text."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_flask_metrics_add_up_across_gunicorn_workers(tmp_path: Path) -> None:
    """prometheus-client's multiprocess mode: whichever worker answers /metrics, it counts
    the requests every worker served."""
    issuer = LocalIssuer(audience=AUDIENCE)
    directory = tmp_path / "prometheus"
    directory.mkdir()
    (directory / "counter_1.db").write_bytes(b"left over from an earlier run")
    with (
        issuer.serve() as url,
        running_example(
            "flask",
            url,
            tmp_path / "server.log",
            args=["-w", "2"],
            env={"PROMETHEUS_MULTIPROC_DIR": str(directory)},
        ) as base,
    ):
        token = issuer.mint(READ)

        def totals() -> Samples:
            response = httpx.get(base + "/metrics", headers={"Connection": "close"}, timeout=10)
            assert response.status_code == 200
            return metric_samples(response.text)

        sent = 0
        # Each worker verifies the token once (a cache miss) and then serves it from its
        # own cache: two misses mean both workers served requests.
        misses = "bearerguard_token_cache_total"
        while sent < 20 or value(totals(), misses, result="miss") < 2:
            response = httpx.get(
                base + "/products",
                headers={**auth(token), "Connection": "close"},
                timeout=10,
            )
            assert response.status_code == 200
            sent += 1
            assert sent < 400, "one gunicorn worker served every request"
        for _ in range(4):  # asked of either worker, the sums are the same
            samples = totals()
            auths = "bearerguard_authentications_total"
            assert value(samples, auths, result="success", reason="") == sent
            assert value(samples, misses, result="miss") == 2
            assert value(samples, misses, result="hit") == sent - 2
            fetches = "bearerguard_jwks_fetches_total"
            assert value(samples, fetches, issuer=url, result="success") == 2
            stamp = "bearerguard_jwks_last_success_timestamp_seconds"
            assert value(samples, stamp, issuer=url) > 0


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_the_real_server_starts_while_the_issuer_is_down_then_recovers(
    kind: str, tmp_path: Path
) -> None:
    """Warm-up failing at start-up is a warning, not a crash; keys come once the issuer does."""
    port = free_port()
    issuer = LocalIssuer(f"http://127.0.0.1:{port}/oidc", audience=AUDIENCE)
    log = tmp_path / "server.log"
    with (
        running_example(kind, issuer.issuer, log) as base,
        httpx.Client(base_url=base, timeout=10) as client,
    ):
        assert "starting without signing keys" in log.read_text(errors="replace")
        assert issuer.issuer in log.read_text(errors="replace")  # the URL that failed
        token = issuer.mint(READ)
        reply = client.get("/products", headers=auth(token))
        assert_error(reply, 503, None)
        with issuer.serve(port=port):
            deadline = time.monotonic() + 15
            while reply.status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.25)  # polling for recovery, bounded by the 5 s outage pace
                reply = client.get("/products", headers=auth(token))
            assert reply.status_code == 200
