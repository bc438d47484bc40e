"""httpx2 (httpx's successor, unrelated classes) works wherever httpx does: the key fetch's
clients and transports, and ClientCredentialsAuth as a client's auth."""

from __future__ import annotations

import httpx2
import pytest
from procs import free_port

from bearerguard import AuthError, ResourceServer
from bearerguard.client import ClientCredentialsAuth
from bearerguard.devissuer import DevIssuer, load_config
from bearerguard.testing import LocalIssuer

AUDIENCE = "https://shopping.api"


@pytest.fixture
def issuer() -> LocalIssuer:
    return LocalIssuer(audience=AUDIENCE)


def test_a_sync_httpx2_client_fetches_the_keys(issuer: LocalIssuer) -> None:
    with issuer.serve() as url, httpx2.Client() as http:
        server = ResourceServer(url, AUDIENCE, http_client=http)
        assert server.authenticate("Bearer " + issuer.mint("read")).scopes == {"read"}
    assert issuer.requests.count("/oidc/jwks") == 1


@pytest.mark.anyio
async def test_an_async_httpx2_client_fetches_the_keys(issuer: LocalIssuer) -> None:
    with issuer.serve() as url:
        async with httpx2.AsyncClient() as http:
            server = ResourceServer(url, AUDIENCE, http_client=http)
            token = await server.authenticate_async("Bearer " + issuer.mint("read"))
    assert token.scopes == {"read"}


@pytest.mark.anyio
async def test_httpx2_transports_serve_both_faces(issuer: LocalIssuer) -> None:
    def handle(request: httpx2.Request) -> httpx2.Response:
        path = request.url.path
        if path.endswith("/jwks"):
            return httpx2.Response(200, json=issuer.jwks())
        return httpx2.Response(200, json=issuer.metadata())

    server = ResourceServer(issuer.issuer, AUDIENCE, transport=httpx2.MockTransport(handle))
    assert server.authenticate("Bearer " + issuer.mint()).sub == "test-client"
    again = ResourceServer(issuer.issuer, AUDIENCE, transport=httpx2.MockTransport(handle))
    assert (await again.authenticate_async("Bearer " + issuer.mint())).sub == "test-client"


@pytest.mark.anyio
async def test_an_unreachable_issuer_through_httpx2_is_a_503_not_a_crash() -> None:
    issuer_url = f"http://127.0.0.1:{free_port()}/oidc"  # nothing listens there
    issuer = LocalIssuer(issuer_url, audience=AUDIENCE)
    token = "Bearer " + issuer.mint()
    with httpx2.Client(timeout=2) as http:
        with pytest.raises(AuthError) as caught:
            ResourceServer(issuer_url, AUDIENCE, http_client=http).authenticate(token)
        assert caught.value.status_code == 503
    async with httpx2.AsyncClient(timeout=2) as http:
        with pytest.raises(AuthError) as caught:
            await ResourceServer(issuer_url, AUDIENCE, http_client=http).authenticate_async(token)
        assert caught.value.status_code == 503


def test_something_else_is_still_refused() -> None:
    with pytest.raises(ValueError, match="http_client"):
        ResourceServer("https://issuer.test/oidc", AUDIENCE, http_client=object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="transport"):
        ResourceServer("https://issuer.test/oidc", AUDIENCE, transport=object())  # type: ignore[arg-type]


def seen_authorization(request: httpx2.Request) -> httpx2.Response:
    return httpx2.Response(200, json={"authorization": request.headers.get("authorization")})


@pytest.mark.anyio
async def test_client_credentials_auth_on_httpx2_clients_sync_and_async() -> None:
    dev = DevIssuer(load_config())
    with dev.serve() as issuer_url:
        auth = ClientCredentialsAuth(
            issuer=issuer_url,
            client_id="stats-service",
            client_secret="dev-only-stats-service-secret",
            resource=AUDIENCE,
            scope="read:products",
        )
        api = httpx2.MockTransport(seen_authorization)
        with httpx2.Client(auth=auth, transport=api) as client:
            first = client.get("https://shopping.api/products").json()["authorization"]
        async with httpx2.AsyncClient(auth=auth, transport=api) as client:
            second = (await client.get("https://shopping.api/products")).json()["authorization"]
        # The token requests themselves through an httpx2 client of the app's.
        with httpx2.Client() as http:
            own = ClientCredentialsAuth(
                issuer=issuer_url,
                client_id="stats-service",
                client_secret="dev-only-stats-service-secret",
                resource=AUDIENCE,
                http_client=http,
            )
            fetched = own.get_token()
        verifier = ResourceServer(issuer_url, AUDIENCE, require_typ=True)
        for header in (first, "Bearer " + fetched):
            token = verifier.authenticate(header)
            assert token.client_id == "stats-service"
        assert token.scopes == frozenset()  # none asked for: none granted
    assert first == second  # one token, reused by both faces
    assert verifier.authenticate(first).scopes == {"read:products"}
