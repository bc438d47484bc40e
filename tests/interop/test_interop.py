"""bearerguard against a real issuer: node-oidc-provider configured as Logto (see issuer.mjs).

Everything goes over real HTTP on 127.0.0.1: the token endpoint, OIDC discovery (no jwks_uri is
ever configured) and the JWKS. Organization tokens, which oidc-provider cannot mint, use
bearerguard.testing.LocalIssuer.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from bearerguard import InsufficientScope, InvalidToken, ResourceServer, require_scopes
from bearerguard.client import ClientCredentialsAuth, TokenRequestError, fetch_token
from bearerguard.testing import LocalIssuer, thumbprint

# Per test, fixtures excluded: installing and starting node is bounded by the fixtures
# themselves. The whole module runs in well under a minute.
pytestmark = [pytest.mark.interop, pytest.mark.timeout(60, func_only=True)]

ROOT = Path(__file__).parents[2]
RESOURCE = "https://shopping.api"
SCOPES = "read:products write:products"
LOGTO_CLAIMS = {"jti", "sub", "iat", "exp", "scope", "client_id", "iss", "aud"}


def segment(token: str, index: int) -> dict[str, Any]:
    part = token.split(".")[index]
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))  # type: ignore[no-any-return]


class Recording(httpx.HTTPTransport):
    """A real sync transport that remembers every request and (path, status)."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[httpx.Request] = []
        self.seen: list[tuple[str, int]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        response = super().handle_request(request)
        self.seen.append((request.url.path, response.status_code))
        return response

    def paths(self, path: str) -> int:
        return sum(1 for p, _ in self.seen if p == path)


def fetches(server: ResourceServer) -> int:
    return server.key_sources[0].cache.fetches


# -- the issuer behaves as Logto ------------------------------------------------------------------


def test_token_response_and_token_look_like_logtos(issuer: Any) -> None:
    response = issuer.token_response(issuer.admin, SCOPES)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"access_token", "expires_in", "token_type", "scope"}
    assert body["expires_in"] == 3600
    assert body["token_type"] == "Bearer"
    assert body["scope"] == SCOPES

    token = body["access_token"]
    header, claims = segment(token, 0), segment(token, 1)
    assert header == {"alg": "ES384", "typ": "at+jwt", "kid": thumbprint(issuer.keys[0])}
    assert set(claims) == LOGTO_CLAIMS  # no nbf
    assert claims["iss"] == issuer.issuer
    assert claims["aud"] == RESOURCE  # one string
    assert claims["sub"] == claims["client_id"] == issuer.admin.client_id
    assert claims["exp"] - claims["iat"] == 3600

    jwks = httpx.get(issuer.jwks_uri, timeout=5)
    assert jwks.headers["cache-control"] == "no-cache, max-age=0, must-revalidate"
    assert jwks.headers["etag"]
    (key,) = jwks.json()["keys"]
    assert key["kid"] == header["kid"]
    assert (key["alg"], key["use"], key["crv"]) == ("ES384", "sig", "P-384")
    assert "d" not in key
    again = httpx.get(issuer.jwks_uri, headers={"If-None-Match": jwks.headers["etag"]}, timeout=5)
    assert again.status_code == 304


def test_token_endpoint_errors_are_logtos(issuer: Any) -> None:
    wrong = httpx.post(
        issuer.token_endpoint,
        data={"grant_type": "client_credentials", "resource": RESOURCE},
        auth=(issuer.admin.client_id, "wrong-secret"),
        timeout=10,
    )
    assert wrong.status_code == 401
    assert wrong.json()["error"] == "invalid_client"
    assert wrong.headers["www-authenticate"].startswith("Basic")
    for resource in (None, "https://unknown.api"):
        response = issuer.token_response(issuer.admin, SCOPES, resource=resource)
        assert response.status_code == 400
        assert response.json()["error"] == "invalid_target"


# -- bearerguard.client ---------------------------------------------------------------------------


def test_seed_request_through_the_client(issuer: Any) -> None:
    """Logto's M2M guide, step "Basics about access token request", made by fetch_token."""
    transport = Recording()
    body = fetch_token(
        issuer=issuer.issuer,  # the token endpoint comes from discovery
        client_id=issuer.admin.client_id,
        client_secret=issuer.admin.client_secret,
        resource=RESOURCE,
        scope=SCOPES,
        transport=transport,
    )
    request = transport.requests[-1]
    assert request.method == "POST"
    assert str(request.url) == issuer.token_endpoint
    credentials = f"{issuer.admin.client_id}:{issuer.admin.client_secret}".encode()
    assert request.headers["authorization"] == "Basic " + base64.b64encode(credentials).decode()
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert parse_qs(request.content.decode(), strict_parsing=True) == {
        "grant_type": ["client_credentials"],
        "resource": [RESOURCE],
        "scope": [SCOPES],
    }
    # The seed's "Access token response".
    assert set(body) == {"access_token", "expires_in", "token_type", "scope"}
    assert (body["expires_in"], body["token_type"], body["scope"]) == (3600, "Bearer", SCOPES)
    server = ResourceServer(issuer.issuer, RESOURCE, require_typ=True)
    assert server.verify_token(body["access_token"]).scopes == frozenset(SCOPES.split())

    direct = fetch_token(
        token_endpoint=issuer.token_endpoint,
        client_id=issuer.reader.client_id,
        client_secret=issuer.reader.client_secret,
        resource=RESOURCE,
        scope=SCOPES.split(),
    )
    assert direct["scope"] == "read:products"  # narrowed by the issuer, not refused


def test_client_reports_token_endpoint_errors(issuer: Any) -> None:
    def request(app: Any, secret: str | None = None, **kwargs: Any) -> TokenRequestError:
        with pytest.raises(TokenRequestError) as caught:
            fetch_token(
                issuer=issuer.issuer,
                client_id=app.client_id,
                client_secret=secret or app.client_secret,
                **{"resource": RESOURCE, "scope": SCOPES, **kwargs},
            )
        return caught.value

    wrong = request(issuer.admin, "wrong-secret")
    assert (wrong.error, wrong.status_code) == ("invalid_client", 401)
    for resource in (None, "https://unknown.api"):
        target = request(issuer.admin, resource=resource)
        assert (target.error, target.status_code) == ("invalid_target", 400)
    strict = request(issuer.strict_reader)
    assert (strict.error, strict.status_code) == ("invalid_scope", 400)


# -- verification through discovery ---------------------------------------------------------------


def test_real_token_verifies_through_discovery(issuer: Any) -> None:
    transport = Recording()
    server = ResourceServer(issuer.issuer, RESOURCE, require_typ=True, transport=transport)
    token = server.authenticate("Bearer " + issuer.token(issuer.admin))
    assert token.scopes == frozenset(SCOPES.split())
    assert token.client_id == token.sub == issuer.admin.client_id
    assert token.issuer == issuer.issuer
    assert token.audience == (RESOURCE,)
    assert token.organization_id is None
    # Discovery at <issuer>/.well-known/openid-configuration, then the jwks_uri it names.
    assert transport.seen == [("/oidc/.well-known/openid-configuration", 200), ("/oidc/jwks", 200)]
    assert fetches(server) == 1
    # The Logto shortcut: issuer <endpoint>/oidc, RFC 9068 strictness on.
    endpoint = issuer.issuer.removesuffix("/oidc")
    assert ResourceServer.logto(endpoint, RESOURCE).verify_token(issuer.token()).scopes

    async def verify_async() -> frozenset[str]:
        fresh = ResourceServer(issuer.issuer, RESOURCE, require_typ=True)
        return (await fresh.authenticate_async("Bearer " + issuer.token(issuer.reader))).scopes

    assert asyncio.run(verify_async()) == {"read:products"}


def test_wrong_audience_or_issuer_is_rejected(issuer: Any) -> None:
    token = issuer.token(issuer.admin)
    with pytest.raises(InvalidToken):
        ResourceServer(issuer.issuer, "https://other.api", require_typ=True).verify_token(token)
    other_issuer = issuer.issuer.replace("/oidc", "/other")
    with pytest.raises(InvalidToken):
        ResourceServer(other_issuer, RESOURCE, require_typ=True).verify_token(token)


def test_jwks_revalidates_with_the_etag(issuer: Any) -> None:
    # Logto's JWKS says no-cache: with no floor on the TTL, every verification revalidates,
    # and the issuer answers 304 with the ETag bearerguard kept.
    transport = Recording()
    server = ResourceServer(
        issuer.issuer,
        RESOURCE,
        require_typ=True,
        transport=transport,
        jwks_min_ttl=0,
        token_cache_size=0,
    )
    token = issuer.token(issuer.admin)
    server.verify_token(token)
    server.verify_token(token)
    assert [s for p, s in transport.seen if p == "/oidc/jwks"] == [200, 304]


# -- scopes ---------------------------------------------------------------------------------------


def test_scopes_are_narrowed_silently_as_logto_does(issuer: Any) -> None:
    server = ResourceServer(issuer.issuer, RESOURCE, require_typ=True)

    # The read-only app asks for both scopes and gets read only: no error.
    response = issuer.token_response(issuer.reader, SCOPES)
    assert response.status_code == 200, response.text
    assert response.json()["scope"] == "read:products"
    reader = server.verify_token(response.json()["access_token"])
    assert reader.scopes == {"read:products"}
    require_scopes(reader, "read:products")
    with pytest.raises(InsufficientScope):
        require_scopes(reader, "write:products")

    # Scopes the resource does not define are dropped, not refused.
    response = issuer.token_response(issuer.admin, "read:products delete:everything")
    assert response.json()["scope"] == "read:products"
    assert server.verify_token(response.json()["access_token"]).scopes == {"read:products"}

    # No scope requested: no scope claim at all, and no scope in the response.
    response = issuer.token_response(issuer.admin, None)
    body = response.json()
    assert "scope" not in body
    assert "scope" not in segment(body["access_token"], 1)
    assert server.verify_token(body["access_token"]).scopes == frozenset()


def test_oidc_provider_client_scope_errors_where_logto_narrows(issuer: Any) -> None:
    # oidc-provider's own per-client allow-list (client metadata `scope`) refuses the request
    # with invalid_scope; Logto narrows instead (see issuer.mjs). Asking within it works.
    response = issuer.token_response(issuer.strict_reader, SCOPES)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_scope"
    token = issuer.token(issuer.strict_reader, "read:products")
    server = ResourceServer(issuer.issuer, RESOURCE, require_typ=True)
    assert server.verify_token(token).scopes == {"read:products"}


# -- the example apps -----------------------------------------------------------------------------


def load_example(name: str, monkeypatch: pytest.MonkeyPatch, issuer: str) -> ModuleType:
    """Import examples/<name>/main.py afresh: it reads AUTH_ISSUER/AUTH_AUDIENCE at import."""
    monkeypatch.setenv("AUTH_ISSUER", issuer)
    monkeypatch.setenv("AUTH_AUDIENCE", RESOURCE)
    module_name = f"interop_{name}_{uuid.uuid4().hex}"
    spec = importlib.util.spec_from_file_location(module_name, ROOT / "examples" / name / "main.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, module_name, module)  # Flask finds its root path there
    spec.loader.exec_module(module)
    return module


Call = Callable[..., httpx.Response]


def fastapi_client(module: ModuleType) -> Call:
    def call(method: str, path: str, token: str | None = None, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}

        async def run() -> httpx.Response:
            transport = httpx.ASGITransport(app=module.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as c:
                response = await c.request(method, path, headers=headers, **kwargs)
                await response.aread()
                return response

        return asyncio.run(run())

    return call


def flask_client(module: ModuleType) -> Call:
    client = module.app.test_client()

    def call(method: str, path: str, token: str | None = None, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        r = client.open(path, method=method, headers=headers, **kwargs)
        return httpx.Response(r.status_code, headers=list(r.headers.items()), content=r.data)

    return call


def http_client(base: str) -> Call:
    def call(method: str, path: str, token: str | None = None, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.request(method, base + path, headers=headers, timeout=15, **kwargs)

    return call


def check_shopping_api(call: Call, issuer: Any) -> None:
    """The example contract with real tokens: scopes per route, 401/403 as RFC 6750 says."""
    admin, reader = issuer.token(issuer.admin), issuer.token(issuer.reader, SCOPES)

    assert call("GET", "/health").status_code == 200
    missing = call("GET", "/products")
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith("Bearer")

    listed = call("GET", "/products", admin)
    assert listed.status_code == 200, listed.text
    assert isinstance(listed.json(), list)
    created = call("POST", "/products", admin, json={"name": "Grinder", "price": 99})
    assert created.status_code == 201, created.text
    assert created.json()["name"] == "Grinder"
    me = call("GET", "/whoami", admin).json()
    assert me["client_id"] == issuer.admin.client_id
    assert me["scopes"] == sorted(SCOPES.split())

    assert call("GET", "/products", reader).status_code == 200
    refused = call("POST", "/products", reader, json={"name": "Grinder", "price": 99})
    assert refused.status_code == 403
    assert refused.json()["error"] == "insufficient_scope"
    challenge = refused.headers["www-authenticate"]
    assert 'error="insufficient_scope"' in challenge
    assert "write:products" in challenge

    forged = admin[:-4] + ("AAAA" if not admin.endswith("AAAA") else "BBBB")
    assert call("GET", "/products", forged).status_code == 401


@pytest.mark.parametrize("name", ["fastapi_app", "flask_app"])
def test_example_in_process(name: str, issuer: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    module = load_example(name, monkeypatch, issuer.issuer)
    client = fastapi_client(module) if name == "fastapi_app" else flask_client(module)
    check_shopping_api(client, issuer)


@pytest.mark.parametrize("name", ["fastapi_app", "flask_app"])
def test_client_auth_calls_the_examples(
    name: str, issuer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bearerguard.client -> oidc-provider -> a bearerguard-protected app, in process."""
    app = load_example(name, monkeypatch, issuer.issuer).app

    def auth(client: Any) -> ClientCredentialsAuth:
        return ClientCredentialsAuth(
            issuer=issuer.issuer,
            client_id=client.client_id,
            client_secret=client.client_secret,
            resource=RESOURCE,
            scope=SCOPES,
        )

    admin, reader = auth(issuer.admin), auth(issuer.reader)
    product = {"name": "Tamper", "price": 25}
    steps = [  # (method, path, body, auth)
        ("GET", "/products", None, reader),
        ("POST", "/products", product, reader),
        ("POST", "/products", product, admin),
        ("GET", "/whoami", None, admin),
    ]
    base = "http://api.test"
    if name == "fastapi_app":

        async def run() -> list[int]:
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url=base) as client:
                return [
                    (await client.request(m, p, json=b, auth=a)).status_code for m, p, b, a in steps
                ]

        statuses = asyncio.run(run())
    else:
        with httpx.Client(transport=httpx.WSGITransport(app=app), base_url=base) as client:
            statuses = [client.request(m, p, json=b, auth=a).status_code for m, p, b, a in steps]
    assert statuses == [200, 403, 201, 200]


@pytest.fixture(params=["uvicorn", "gunicorn"])
def served_example(
    request: pytest.FixtureRequest,
    issuer: Any,
    python_exe: str,
    serve_app: Any,
    free_port: Callable[[], int],
    tmp_path: Path,
) -> Iterator[str]:
    port = free_port()
    if request.param == "uvicorn":
        argv = [python_exe, "-m", "uvicorn", "--app-dir", "examples/fastapi_app", "main:app"]
        argv += ["--host", "127.0.0.1", "--port", str(port)]
    else:
        argv = [python_exe, "-m", "gunicorn", "--chdir", "examples/flask_app", "main:app"]
        argv += ["-b", f"127.0.0.1:{port}", "--workers", "1"]
    env = {"AUTH_ISSUER": issuer.issuer, "AUTH_AUDIENCE": RESOURCE}
    with serve_app(argv, port, env, tmp_path / f"{request.param}.log") as base:
        yield base


def test_example_under_its_real_server(served_example: str, issuer: Any) -> None:
    check_shopping_api(http_client(served_example), issuer)


# -- keys -----------------------------------------------------------------------------------------


def test_key_rotation_is_picked_up_by_one_refetch(
    start_issuer: Callable[..., Any], make_key: Callable[[str], dict[str, Any]]
) -> None:
    first, second, third = make_key("ES384"), make_key("ES384"), make_key("ES384")
    issuer = start_issuer([first])
    transport = Recording()
    # token_cache_size=0: every verification really looks its key up.
    server = ResourceServer(
        issuer.issuer, RESOURCE, require_typ=True, transport=transport, token_cache_size=0
    )
    old = issuer.token(issuer.admin)
    assert segment(old, 0)["kid"] == thumbprint(first)
    server.verify_token(old)
    assert fetches(server) == 1

    # Logto's rotation: a new current key, the previous one still published.
    issuer.restart(keys=[second, first])
    new = issuer.token(issuer.admin)
    assert segment(new, 0)["kid"] == thumbprint(second)
    assert server.verify_token(new).client_id == issuer.admin.client_id
    assert fetches(server) == 2  # the unknown kid caused exactly one refetch
    assert transport.paths("/oidc/jwks") == 2
    server.verify_token(old)  # the previous key still verifies, from the cache
    server.verify_token(new)
    assert fetches(server) == 2

    # Once a key is retired from the JWKS, its tokens fail (here: a server with no cooldown).
    issuer.restart(keys=[third, second])
    strict = ResourceServer(issuer.issuer, RESOURCE, require_typ=True, refetch_cooldown=0)
    strict.verify_token(issuer.token(issuer.admin))
    with pytest.raises(InvalidToken):
        strict.verify_token(old)
    strict.verify_token(new)


def test_rs256_issuer(
    start_issuer: Callable[..., Any], make_key: Callable[[str], dict[str, Any]]
) -> None:
    # Logto lets admins rotate to RSA; its RSA JWKs carry no "alg".
    issuer = start_issuer([make_key("RS256")])
    token = issuer.token(issuer.admin)
    assert segment(token, 0) == {"alg": "RS256", "typ": "at+jwt", "kid": thumbprint(issuer.keys[0])}
    (key,) = httpx.get(issuer.jwks_uri, timeout=5).json()["keys"]
    assert key["kty"] == "RSA"
    assert "alg" not in key
    server = ResourceServer(issuer.issuer, RESOURCE, require_typ=True)
    assert server.verify_token(token).scopes == frozenset(SCOPES.split())
    only_ec = ResourceServer(issuer.issuer, RESOURCE, require_typ=True, algorithms=["ES384"])
    with pytest.raises(InvalidToken):
        only_ec.verify_token(token)


# -- the command line -----------------------------------------------------------------------------


def test_cli_token_and_verify(issuer: Any, python_exe: str) -> None:
    def bearerguard(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [python_exe, "-m", "bearerguard", *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            cwd=ROOT,
            env={**os.environ, **env},
        )

    fetched = bearerguard(
        "token",
        "--json",
        *("--issuer", issuer.issuer, "--client-id", issuer.reader.client_id),
        *("--resource", RESOURCE, "--scope", *SCOPES.split()),
        BEARERGUARD_CLIENT_SECRET=issuer.reader.client_secret,
    )
    assert fetched.returncode == 0, fetched.stderr
    response = json.loads(fetched.stdout)
    assert response["scope"] == "read:products"
    # The reader asked for more than it may have: the CLI says so on stderr.
    assert "write:products" in fetched.stderr
    assert response["access_token"] not in fetched.stderr
    token = response["access_token"]

    where = ("--issuer", issuer.issuer)
    valid = bearerguard("verify", token, *where, "--audience", RESOURCE, "--scope", "read:products")
    assert valid.returncode == 0, valid.stdout + valid.stderr
    assert "Result: VALID" in valid.stdout
    assert token not in valid.stdout + valid.stderr  # the report never echoes the token

    wrong_audience = bearerguard("verify", token, *where, "--audience", "https://other.api")
    assert wrong_audience.returncode == 1
    assert "Result: INVALID" in wrong_audience.stdout
    lacking = bearerguard(
        "verify", token, *where, "--audience", RESOURCE, "--scope", "write:products"
    )
    assert lacking.returncode == 1
    assert "missing write:products" in lacking.stdout


# -- Logto organization tokens (LocalIssuer: oidc-provider does not mint them) ---------------


def test_organization_id_from_the_claim() -> None:
    # organization_id with resource: aud is the resource, plus an organization_id claim.
    local = LocalIssuer(audience=RESOURCE)
    server = local.resource_server()
    token = server.verify_token(local.mint("read:products", organization_id="org_1"))
    assert token.organization_id == "org_1"
    assert token.audience == (RESOURCE,)
    plain = server.verify_token(local.mint("read:products"))
    assert plain.organization_id is None


def test_organization_id_from_the_audience() -> None:
    # organization_id without resource: aud is urn:logto:organization:<id>, scope may be "".
    audience = "urn:logto:organization:org_2"
    local = LocalIssuer()
    server = local.resource_server(audience)
    token = server.verify_token(local.mint(audience=audience, claims={"scope": ""}))
    assert token.organization_id == "org_2"
    assert token.scopes == frozenset()
    with pytest.raises(InvalidToken):  # an organization token is not a token for the API
        local.resource_server(RESOURCE).verify_token(local.mint(audience=audience))


# -- DPoP (RFC 9449): oidc-provider binds the tokens, the examples check the proofs ---------------


@pytest.fixture(scope="module")
def dpop_issuer(start_issuer: Callable[..., Any]) -> Any:
    return start_issuer(dpop=True)


@pytest.mark.parametrize("server", ["uvicorn", "gunicorn"])
def test_dpop_bound_tokens_from_oidc_provider_work_with_our_proofs_only(
    server: str,
    dpop_issuer: Any,
    python_exe: str,
    serve_app: Any,
    free_port: Callable[[], int],
    tmp_path: Path,
) -> None:
    from bearerguard.dpop import DPoPKey

    port = free_port()
    if server == "uvicorn":
        argv = [python_exe, "-m", "uvicorn", "--app-dir", "examples/fastapi_app", "main:app"]
        argv += ["--host", "127.0.0.1", "--port", str(port)]
    else:
        argv = [python_exe, "-m", "gunicorn", "--chdir", "examples/flask_app", "main:app"]
        argv += ["-b", f"127.0.0.1:{port}", "--workers", "1"]
    env = {"AUTH_ISSUER": dpop_issuer.issuer, "AUTH_AUDIENCE": RESOURCE, "AUTH_DPOP": "required"}
    key = DPoPKey.generate("ES256")
    auth = ClientCredentialsAuth(
        issuer=dpop_issuer.issuer,
        client_id=dpop_issuer.admin.client_id,
        client_secret=dpop_issuer.admin.client_secret,
        resource=RESOURCE,
        scope=SCOPES,
        dpop_key=key,
    )
    with serve_app(argv, port, env, tmp_path / f"{server}.log") as base:
        token = auth.get_token()
        claims = segment(token, 1)
        assert claims["cnf"] == {"jkt": key.jkt}  # oidc-provider bound it to our key
        with httpx.Client(base_url=base, auth=auth, timeout=10) as client:
            assert client.get("/products").status_code == 200
            created = client.post("/products", json={"name": "Kettle", "price": 45})
            assert created.status_code == 201
            assert client.delete(f"/products/{created.json()['id']}").status_code == 204
        as_bearer = httpx.get(base + "/products", headers={"Authorization": f"Bearer {token}"})
        assert as_bearer.status_code == 401
        assert as_bearer.headers["www-authenticate"].startswith("DPoP ")
