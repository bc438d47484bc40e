"""DPoP over real HTTP: the replay store on a real redis-server, the examples under their
real servers (a proof used on one replica is refused by the other), every broken proof
refused by both examples, and Redis going away and coming back."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio
from procs import RedisServer, example_command, free_port, serving
from test_dpop import SAYS, broken_proofs

from bearerguard import AuthError
from bearerguard.dpop import DPoPKey
from bearerguard.errors import ReplayStoreUnavailable
from bearerguard.replay import RedisReplayStore, replay_store_from_url
from bearerguard.request import RequestView
from bearerguard.rules import Requirement
from bearerguard.testing import LocalIssuer

AUDIENCE = "https://shopping.api"
HOST = "shop.test"  # what a load balancer keeping the Host header passes to every replica
URL = f"http://{HOST}/products"


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


# -- the store itself ----------------------------------------------------------------------------


def test_redis_store_accepts_a_key_once_with_its_ttl(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url)
    store = RedisReplayStore(client, prefix="t1:")
    assert store.add("proof", 65) is True
    assert store.add("proof", 65) is False
    pttl = client.pttl("t1:proof")
    assert 60_000 < pttl <= 65_000  # type: ignore[operator]
    client.close()


def test_redis_store_async_face_sees_the_sync_faces_keys(redis_server: RedisServer) -> None:
    async def run() -> list[bool]:
        client = redis.asyncio.Redis.from_url(redis_server.url)
        store = RedisReplayStore(async_client=client, prefix="t2:")
        results = [await store.add_async("a", 5), await store.add_async("a", 5)]
        await client.aclose()
        return results

    assert asyncio.run(run()) == [True, False]
    sync = RedisReplayStore(redis.Redis.from_url(redis_server.url), prefix="t2:")
    assert sync.add("a", 5) is False


def test_redis_store_from_a_url_has_both_faces(redis_server: RedisServer) -> None:
    store = replay_store_from_url(redis_server.url)
    assert isinstance(store, RedisReplayStore)
    assert store.add("from-url", 5) is True
    assert asyncio.run(store.add_async("from-url", 5)) is False


def test_an_unreachable_redis_fails_closed_with_503_then_recovers(tmp_path: Path) -> None:
    own = RedisServer(tmp_path)
    own.start()
    issuer = LocalIssuer("https://issuer.test/oidc", audience=AUDIENCE)
    key = DPoPKey.generate()
    store = replay_store_from_url(own.url)
    server = issuer.resource_server(dpop="required", dpop_replay_store=store)
    token = issuer.mint("read", claims={"cnf": {"jkt": key.jkt}})

    def call() -> Any:
        proof = key.proof("GET", URL, access_token=token)
        view = RequestView("GET", [f"DPoP {token}"], url=URL, dpop=[proof])
        try:
            return server.authorize(view, Requirement())
        except AuthError as exc:
            return exc

    try:
        assert not isinstance(call(), AuthError)
        own.stop()
        down = call()
        assert isinstance(down, ReplayStoreUnavailable)
        assert down.status_code == 503
        assert down.to_dict()["error"] == "temporarily_unavailable"
        assert down.headers["Retry-After"] == "5"
        own.start()  # the same port: the clients reconnect on their own
        assert not isinstance(call(), AuthError)
    finally:
        own.stop()


# -- the examples, two replicas sharing one Redis -----------------------------------------------


def run_example(kind: str, issuer_url: str, log: Path, **env: str) -> Any:
    port = free_port()
    environ = {**os.environ, "AUTH_ISSUER": issuer_url, "AUTH_AUDIENCE": AUDIENCE, **env}
    base = f"http://127.0.0.1:{port}"
    return base, serving(example_command(kind, port), environ, base + "/health", log, kind)


@pytest.fixture(scope="module")
def replicas(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LocalIssuer, dict[str, str]]]:
    issuer = LocalIssuer(audience=AUDIENCE)
    logs = tmp_path_factory.mktemp("replicas")
    env = {"AUTH_DPOP": "required", "AUTH_REPLAY_STORE": redis_server.url}
    with issuer.serve() as url:
        fastapi_base, fastapi_running = run_example("fastapi", url, logs / "fastapi.log", **env)
        flask_base, flask_running = run_example("flask", url, logs / "flask.log", **env)
        with fastapi_running, flask_running:
            yield issuer, {"fastapi": fastapi_base, "flask": flask_base}


def send(base: str, token: str, proofs: list[str]) -> httpx.Response:
    headers = [("Host", HOST), ("Authorization", f"DPoP {token}")]
    headers += [("DPoP", proof) for proof in proofs]
    return httpx.get(base + "/products", headers=headers, timeout=10)


def test_a_proof_used_on_one_replica_is_refused_by_the_other(
    replicas: tuple[LocalIssuer, dict[str, str]],
) -> None:
    issuer, bases = replicas
    key = DPoPKey.generate()
    token = issuer.mint("read:products", claims={"cnf": {"jkt": key.jkt}})
    for first, second in (("fastapi", "flask"), ("flask", "fastapi")):
        proof = key.proof("GET", URL, access_token=token)
        assert send(bases[first], token, [proof]).status_code == 200
        replayed = send(bases[second], token, [proof])
        assert replayed.status_code == 401, second
        assert replayed.headers["www-authenticate"].startswith(
            f'DPoP realm="{AUDIENCE}", error="invalid_dpop_proof", '
            'error_description="the DPoP proof was used before"'
        )
        again = send(bases[first], token, [proof])  # and by the first one, of course
        assert again.status_code == 401


@pytest.mark.parametrize("kind", ["fastapi", "flask"])
def test_every_broken_proof_is_refused_by_the_example(
    kind: str, replicas: tuple[LocalIssuer, dict[str, str]]
) -> None:
    issuer, bases = replicas
    key = DPoPKey.generate()
    token = issuer.mint("read:products", claims={"cnf": {"jkt": key.jkt}})
    proof = key.proof("GET", URL, access_token=token)
    assert send(bases[kind], token, [proof]).status_code == 200
    for name in SAYS:
        # Made just before it is sent: the clock edges (61 s old, 6 s ahead) stay edges.
        proofs, error = broken_proofs(key, token, time.time(), URL)[name]
        response = send(bases[kind], token, proofs())
        if name == "oversized" and response.status_code == 431:
            continue  # gunicorn's own cap on a header line (8190 bytes): refused before us
        assert response.status_code == 401, (name, response.text)
        assert response.json()["error"] == error, name
        assert response.headers["www-authenticate"].startswith("DPoP "), name
        said = response.json()["error_description"]
        # A WSGI server joins two DPoP headers into one "a, b": refused as two proofs in one.
        assert SAYS[name] in said or (name == "two DPoP headers" and "hold one JWT" in said), name


def test_a_bound_token_sent_as_bearer_is_refused_by_the_examples(
    replicas: tuple[LocalIssuer, dict[str, str]],
) -> None:
    issuer, bases = replicas
    key = DPoPKey.generate()
    token = issuer.mint("read:products", claims={"cnf": {"jkt": key.jkt}})
    plain = issuer.mint("read:products")
    for base in bases.values():
        for sent in (token, plain):  # bound as Bearer; any Bearer where DPoP is required
            response = httpx.get(
                base + "/products", headers={"Authorization": f"Bearer {sent}"}, timeout=10
            )
            assert response.status_code == 401
            assert response.json()["error"] == "invalid_token"
            assert response.headers["www-authenticate"].startswith("DPoP ")


@pytest.mark.parametrize("kind", ["fastapi", "flask"])
def test_the_example_answers_503_while_redis_is_away_and_recovers(
    kind: str, tmp_path: Path
) -> None:
    own = RedisServer(tmp_path)
    own.start()
    issuer = LocalIssuer(audience=AUDIENCE)
    key = DPoPKey.generate()
    env = {"AUTH_DPOP": "allowed", "AUTH_REPLAY_STORE": own.url}
    try:
        with issuer.serve() as url:  # minted once served: iss is the served URL
            token = issuer.mint("read:products", claims={"cnf": {"jkt": key.jkt}})
            base, running = run_example(kind, url, tmp_path / "server.log", **env)
            with running:
                assert (
                    send(base, token, [key.proof("GET", URL, access_token=token)]).status_code
                    == 200
                )
                own.stop()
                down = send(base, token, [key.proof("GET", URL, access_token=token)])
                assert down.status_code == 503
                assert down.json()["error"] == "temporarily_unavailable"
                assert down.headers["retry-after"] == "5"
                # Bearer requests need no replay store: they go on being answered.
                plain = issuer.mint("read:products")
                bearer = httpx.get(
                    base + "/products", headers={"Authorization": f"Bearer {plain}"}, timeout=10
                )
                assert bearer.status_code == 200
                own.start()
                back = send(base, token, [key.proof("GET", URL, access_token=token)])
                assert back.status_code == 200
    finally:
        own.stop()
