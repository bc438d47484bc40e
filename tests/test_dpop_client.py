"""DPoP end to end: the dev issuer binds tokens to the proof's key (RFC 9449 section 5), and
ClientCredentialsAuth(dpop_key=...) calls the examples with a fresh proof each time, nonces
included, over real HTTP."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from procs import example_command, free_port, serving

from bearerguard.client import ClientCredentialsAuth, TokenRequestError
from bearerguard.devissuer import DevIssuer, load_config
from bearerguard.dpop import DPoPKey

SHOP = "https://shopping.api"
ADMIN = ("shopping-admin", "dev-only-shopping-admin-secret")


def claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def dev() -> Iterator[str]:
    issuer = DevIssuer(load_config())
    with issuer.serve() as url:
        yield url


def token_request(issuer_url: str, proof: str | None) -> httpx.Response:
    headers = {"DPoP": proof} if proof is not None else {}
    return httpx.post(
        issuer_url + "/token",
        auth=ADMIN,
        headers=headers,
        data={"grant_type": "client_credentials", "resource": SHOP, "scope": "read:products"},
        timeout=10,
    )


def test_the_dev_issuer_binds_a_token_to_the_proofs_key(dev: str) -> None:
    key = DPoPKey.generate("ES256")
    proof = key.proof("POST", dev + "/token")
    response = token_request(dev, proof)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "DPoP"
    assert claims_of(body["access_token"])["cnf"] == {"jkt": key.jkt}
    # The same proof again, a proof for another URL, a broken one: invalid_dpop_proof.
    for bad in (proof, key.proof("POST", dev + "/elsewhere"), "junk"):
        refused = token_request(dev, bad)
        assert refused.status_code == 400
        assert refused.json()["error"] == "invalid_dpop_proof"
    plain = token_request(dev, None).json()
    assert plain["token_type"] == "Bearer"
    assert "cnf" not in claims_of(plain["access_token"])


@pytest.fixture(scope="module", params=["fastapi", "flask"])
def api(
    request: pytest.FixtureRequest, dev: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    kind = request.param
    port = free_port()
    env = {
        **os.environ,
        "AUTH_ISSUER": dev,
        "AUTH_AUDIENCE": SHOP,
        "AUTH_DPOP": "required",
        "AUTH_DPOP_NONCE": "on",
        "AUTH_DPOP_NONCE_SECRET": "a shared secret for the replicas!",
    }
    base = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp(kind) / "server.log"
    with serving(example_command(kind, port), env, base + "/health", log, kind):
        yield base


def recording(seen: list[httpx.Headers]) -> dict[str, list[Any]]:
    def record(request: httpx.Request) -> None:
        seen.append(httpx.Headers(request.headers))  # a copy: a retry reuses the request

    return {"request": [record]}


def test_the_client_calls_a_dpop_api_with_a_fresh_proof_each_time(dev: str, api: str) -> None:
    auth = ClientCredentialsAuth(
        issuer=dev,
        client_id=ADMIN[0],
        client_secret=ADMIN[1],
        resource=SHOP,
        scope="read:products write:products",
        dpop_key=True,
    )
    seen: list[httpx.Headers] = []
    with httpx.Client(base_url=api, auth=auth, event_hooks=recording(seen), timeout=10) as client:
        statuses = [client.get("/products").status_code for _ in range(3)]
        created = client.post("/products", json={"name": "Kettle", "price": 45})
        assert created.status_code == 201
        assert client.delete(f"/products/{created.json()['id']}").status_code == 204
    assert statuses == [200, 200, 200]
    proofs = [headers["DPoP"] for headers in seen]
    jtis = [claims_of(p)["jti"] for p in proofs]
    assert len(set(jtis)) == len(jtis)  # never a jti twice
    assert all(headers["Authorization"].startswith("DPoP ") for headers in seen)
    # The API asked for a nonce once (the first call), the client answered it and kept it.
    assert "nonce" not in claims_of(proofs[0])
    assert all("nonce" in claims_of(p) for p in proofs[1:])
    assert [claims_of(p)["htm"] for p in proofs[-2:]] == ["POST", "DELETE"]


def test_the_async_face_does_the_same(dev: str, api: str) -> None:
    async def run() -> list[int]:
        auth = ClientCredentialsAuth(
            issuer=dev,
            client_id=ADMIN[0],
            client_secret=ADMIN[1],
            resource=SHOP,
            scope="read:products",
            dpop_key=DPoPKey.generate("EdDSA"),
        )
        async with httpx.AsyncClient(base_url=api, auth=auth, timeout=10) as client:
            return [(await client.get("/products")).status_code for _ in range(3)]

    assert asyncio.run(run()) == [200, 200, 200]


def test_a_bound_token_without_its_proof_is_refused(dev: str, api: str) -> None:
    key = DPoPKey.generate()
    token = token_request(dev, key.proof("POST", dev + "/token")).json()["access_token"]
    as_bearer = httpx.get(api + "/products", headers={"Authorization": f"Bearer {token}"})
    assert as_bearer.status_code == 401
    thief = DPoPKey.generate()  # a stolen token with the thief's own proof
    stolen = httpx.get(
        api + "/products",
        headers={
            "Authorization": f"DPoP {token}",
            "DPoP": thief.proof("GET", api + "/products", access_token=token),
        },
    )
    assert stolen.status_code == 401
    assert stolen.json()["error"] in ("invalid_token", "use_dpop_nonce")


def test_a_client_expecting_dpop_takes_what_an_issuer_without_it_gives(tmp_path: Path) -> None:
    def bearer_only(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"access_token": "a.b.c", "token_type": "Bearer"})

    auth = ClientCredentialsAuth(
        token_endpoint="https://issuer.test/token",
        client_id="x",
        client_secret="y",
        dpop_key=True,
        transport=httpx.MockTransport(bearer_only),
    )
    assert auth.get_token() == "a.b.c"

    def odd(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"access_token": "a.b.c", "token_type": "MAC"})

    strange = ClientCredentialsAuth(
        token_endpoint="https://issuer.test/token",
        client_id="x",
        client_secret="y",
        transport=httpx.MockTransport(odd),
    )
    with pytest.raises(TokenRequestError, match="invalid_response"):
        strange.get_token()


def test_the_dev_issuer_refuses_a_proof_with_a_non_ascii_jti_without_a_500(dev: str) -> None:
    key = DPoPKey.generate()
    for claims in ({"jti": "\ud800"}, {"jti": "\u00e9"}, {"htu": dev + "/token\ud800"}):
        response = token_request(dev, key.proof("POST", dev + "/token", claims=claims))
        assert response.status_code == 400, claims
        assert response.json()["error"] == "invalid_dpop_proof"
