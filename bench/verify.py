"""Per-token verification cost: bearerguard next to the floor and the peers.

The floor is a raw ``cryptography`` verify of the same signature. Contenders run in
interleaved rounds (every contender once per round, order rotated), each round timing a batch;
we report the median per-operation time over rounds and its ratio to the floor's median in the
same run, so machine noise hits everyone alike.

    .venv/bin/python bench/verify.py [--rounds 15] [--algs ES384,RS256,EdDSA,ES256]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import jwt as pyjwt
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from bearerguard.keys import HASHES
from bearerguard.testing import LocalIssuer

AUDIENCE = "https://shopping.api"
PEERS_MISSING: list[str] = []


def b64d(s: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def floor_for(issuer: LocalIssuer, token: str) -> Callable[[], None]:
    """A raw cryptography verify of the token's signature: the physical floor."""
    key = issuer.current_key
    public = key.private_key.public_key()
    h, p, s = token.split(".")
    data, sig = f"{h}.{p}".encode(), b64d(s)
    if isinstance(public, ec.EllipticCurvePublicKey):
        n = len(sig) // 2
        der = encode_dss_signature(int.from_bytes(sig[:n], "big"), int.from_bytes(sig[n:], "big"))
        algo = ec.ECDSA(HASHES[key.alg]())
        return lambda: public.verify(der, data, algo)
    if isinstance(public, rsa.RSAPublicKey):
        hash_alg = HASHES[key.alg]()
        return lambda: public.verify(sig, data, padding.PKCS1v15(), hash_alg)
    return lambda: public.verify(sig, data)  # type: ignore[call-arg]


def contenders(alg: str, issuer: LocalIssuer, url: str) -> dict[str, Callable[[str], Any]]:
    """name -> verify(token) for every contender, each configured to check iss, aud and exp."""
    key = issuer.current_key
    public = key.private_key.public_key()
    miss = issuer.resource_server(AUDIENCE, transport=None, token_cache_size=0)
    hit = issuer.resource_server(AUDIENCE, transport=None)
    found: dict[str, Callable[[str], Any]] = {
        "bearerguard (miss)": miss.verify_token,
        "bearerguard (hit)": hit.verify_token,
        "PyJWT, key in hand": lambda t: pyjwt.decode(
            t, public, algorithms=[alg], audience=AUDIENCE, issuer=issuer.issuer
        ),
    }
    jwks_client = pyjwt.PyJWKClient(url + "/jwks")

    def pyjwk(t: str) -> Any:
        signing = jwks_client.get_signing_key_from_jwt(t)
        return pyjwt.decode(
            t, signing.key, algorithms=[alg], audience=AUDIENCE, issuer=issuer.issuer
        )

    found["PyJWT + PyJWKClient"] = pyjwk
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from authlib.jose import JsonWebKey, JsonWebToken

        authlib_jwt = JsonWebToken([alg])
        authlib_key = JsonWebKey.import_key(key.jwk)
        options = {
            "iss": {"essential": True, "value": issuer.issuer},
            "aud": {"essential": True, "value": AUDIENCE},
        }

        def authlib_verify(t: str) -> Any:
            claims = authlib_jwt.decode(t, authlib_key, claims_options=options)
            claims.validate()
            return claims

        found["Authlib jose"] = authlib_verify
    except ImportError:
        PEERS_MISSING.append("authlib")
    try:
        from joserfc import jwk as jrc_jwk
        from joserfc import jwt as jrc_jwt

        jrc_key = jrc_jwk.import_key(key.jwk)
        registry = jrc_jwt.JWTClaimsRegistry(
            iss={"essential": True, "value": issuer.issuer},
            aud={"essential": True, "value": AUDIENCE},
            exp={"essential": True},
        )

        def joserfc_verify(t: str) -> Any:
            tok = jrc_jwt.decode(t, jrc_key, algorithms=[alg])
            registry.validate(tok.claims)
            return tok

        found["joserfc"] = joserfc_verify
    except ImportError:
        PEERS_MISSING.append("joserfc")
    return found


def check(name: str, verify: Callable[[str], Any], token: str, bad: str) -> None:
    """Every contender must accept the valid token and reject a tampered one before timing."""
    verify(token)
    try:
        verify(bad)
    except Exception:  # peers raise their own error types
        return
    raise SystemExit(f"{name} accepted a tampered token: not a fair contender")


def time_batch(fn: Callable[[], Any], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n


def bench_alg(alg: str, rounds: int, target_s: float) -> dict[str, Any]:
    issuer = LocalIssuer("https://issuer.test/oidc", audience=AUDIENCE, alg=alg)
    with issuer.serve() as url:
        token = issuer.mint("read:products write:products")
        bad = issuer.tampered(token)
        floor = floor_for(issuer, token)
        runs: dict[str, Callable[[], Any]] = {"floor (cryptography)": floor}
        for name, verify in contenders(alg, issuer, url).items():
            check(name, verify, token, bad)
            runs[name] = lambda v=verify: v(token)
        # Calibrate one batch size per contender so each batch takes ~target_s.
        sizes = {}
        for name, fn in runs.items():
            once = time_batch(fn, 20)
            sizes[name] = max(20, int(target_s / max(once, 1e-7)))
        samples: dict[str, list[float]] = {name: [] for name in runs}
        names = list(runs)
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                samples[name].append(time_batch(runs[name], sizes[name]))
    medians = {name: statistics.median(v) for name, v in samples.items()}
    base = medians["floor (cryptography)"]
    return {
        "alg": alg,
        "results": {n: {"us": m * 1e6, "ratio": m / base} for n, m in medians.items()},
    }


def observer_runs(issuer: LocalIssuer) -> dict[str, Callable[[], Any]]:
    """The per-request hit path (``authorize``, as every adapter calls it) with no observer,
    the Prometheus one and the OpenTelemetry one (its SDK, reading into memory)."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from prometheus_client import CollectorRegistry

    from bearerguard.otel import OpenTelemetryObserver
    from bearerguard.prometheus import PrometheusObserver
    from bearerguard.request import RequestView
    from bearerguard.rules import Requirement

    token = issuer.mint("read:products write:products")
    requirement = Requirement(scopes=("read:products",))
    provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    observers = {
        "no observer": None,
        "Prometheus observer": PrometheusObserver(CollectorRegistry()),
        "OpenTelemetry observer (SDK)": OpenTelemetryObserver(provider),
    }
    runs: dict[str, Callable[[], Any]] = {}
    for name, observer in observers.items():
        server = issuer.resource_server(AUDIENCE, transport=None, observer=observer)
        view = RequestView("GET", [f"Bearer {token}"])
        assert server.authorize(view, requirement) is not None  # verified once: then hits

        def run(server: Any = server, view: RequestView = view) -> Any:
            return server.authorize(view, requirement)

        runs[name] = run
    return runs


def bench_observers(rounds: int, target_s: float) -> dict[str, float]:
    """Median µs per request on the hit path, per observer (interleaved rounds)."""
    issuer = LocalIssuer("https://issuer.test/oidc", audience=AUDIENCE, alg="ES384")
    with issuer.serve():
        runs = observer_runs(issuer)
        sizes = {
            n: max(200, int(target_s / max(time_batch(f, 200), 1e-8))) for n, f in runs.items()
        }
        samples: dict[str, list[float]] = {name: [] for name in runs}
        names = list(runs)
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                samples[name].append(time_batch(runs[name], sizes[name]))
    return {name: statistics.median(v) * 1e6 for name, v in samples.items()}


def dpop_runs(issuer: LocalIssuer, proofs_needed: int, redis_url: str | None) -> dict[str, Any]:
    """A DPoP request on the hit path (a cached token, a fresh ES256 proof each time) with
    the memory replay store and, when a redis-server runs, the Redis one; the floor is the
    raw ES256 verify of the same proofs' signatures. Proofs are made before timing, each
    used once (the replay store refuses a second use)."""
    from bearerguard.dpop import DPoPKey
    from bearerguard.request import RequestView
    from bearerguard.rules import Requirement

    key = DPoPKey.generate("ES256")
    url = "https://shopping.api/products"
    token = issuer.mint("read:products", claims={"cnf": {"jkt": key.jkt}})
    public = key.private_key.public_key()
    algo = ec.ECDSA(HASHES["ES256"]())
    requirement = Requirement(scopes=("read:products",))
    stores: dict[str, Any] = {"memory store": None}
    if redis_url is not None:
        from bearerguard.replay import replay_store_from_url

        stores["Redis store (loopback)"] = replay_store_from_url(redis_url)
    runs: dict[str, Any] = {}
    for name, store in stores.items():
        server = issuer.resource_server(
            AUDIENCE, transport=None, dpop="required", dpop_replay_store=store
        )
        proofs = iter([key.proof("GET", url, access_token=token) for _ in range(proofs_needed)])
        header = [f"DPoP {token}"]
        first = RequestView("GET", header, url=url, dpop=[next(proofs)])
        assert server.authorize(first, requirement) is not None  # the token is cached now

        def run(server: Any = server, proofs: Any = proofs, header: Any = header) -> Any:
            view = RequestView("GET", header, url=url, dpop=[next(proofs)])
            return server.authorize(view, requirement)

        runs[f"DPoP request, {name}"] = run
    floor_proofs = iter([key.proof("GET", url, access_token=token) for _ in range(proofs_needed)])

    def floor() -> None:
        h, p, s = next(floor_proofs).split(".")
        sig = b64d(s)
        der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
        public.verify(der, f"{h}.{p}".encode(), algo)

    return {"floor (ES256 verify of the proof)": floor, **runs}


def bench_dpop(rounds: int, batch: int, redis_url: str | None) -> dict[str, float]:
    """Median µs per request for each DPoP run (interleaved rounds of ``batch`` calls)."""
    issuer = LocalIssuer("https://issuer.test/oidc", audience=AUDIENCE, alg="ES384")
    with issuer.serve():
        runs = dpop_runs(issuer, rounds * batch + 1, redis_url)
        samples: dict[str, list[float]] = {name: [] for name in runs}
        names = list(runs)
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                samples[name].append(time_batch(runs[name], batch))
    return {name: statistics.median(v) * 1e6 for name, v in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--batch-seconds", type=float, default=0.02)
    parser.add_argument("--algs", default="ES384,RS256,EdDSA,ES256")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--observers-only", action="store_true", help="only the observers' cost on the hit path"
    )
    parser.add_argument("--dpop-only", action="store_true", help="only the DPoP request cost")
    parser.add_argument(
        "--redis", default=None, help="a redis:// URL for the Redis replay store's figures"
    )
    args = parser.parse_args()
    dpop = bench_dpop(args.rounds, 200, args.redis)
    floor_us = dpop["floor (ES256 verify of the proof)"]
    print(f"DPoP request on the hit path, median of {args.rounds} interleaved rounds of 200")
    print("| run | per request | ratio to the floor |")
    print("|---|---|---|")
    for name, us in dpop.items():
        print(f"| {name} | {us:.1f} µs | {us / floor_us:.2f}x |")
    print()
    if args.dpop_only:
        return
    observed = bench_observers(args.rounds, args.batch_seconds)
    if args.observers_only:
        reports = []
    else:
        reports = [bench_alg(a, args.rounds, args.batch_seconds) for a in args.algs.split(",")]
    if args.json:
        print(json.dumps({"verify": reports, "observers_us": observed, "dpop_us": dpop}, indent=2))
        return
    base = observed["no observer"]
    print(f"hit path per request (authorize, ES384), median of {args.rounds} interleaved rounds")
    print("| observer | per request | added |")
    print("|---|---|---|")
    for name, us in observed.items():
        added = "" if name == "no observer" else f"+{us - base:.2f} µs"
        print(f"| {name} | {us:.2f} µs | {added} |")
    if not reports:
        return
    print()
    names = list(reports[0]["results"])
    print(f"per-token verification, median of {args.rounds} interleaved rounds; ratio to floor")
    print("| contender | " + " | ".join(r["alg"] for r in reports) + " |")
    print("|---|" + "---|" * len(reports))
    for name in names:
        cells = []
        for r in reports:
            res = r["results"].get(name)
            if res is None:
                cells.append("n/a")
            elif name.startswith("floor"):
                cells.append(f"{res['us']:.1f} µs")
            else:
                cells.append(f"{res['ratio']:.2f}x ({res['us']:.1f} µs)")
        print(f"| {name} | " + " | ".join(cells) + " |")
    if PEERS_MISSING:
        print("missing peers (install the bench extra):", ", ".join(sorted(set(PEERS_MISSING))))


if __name__ == "__main__":
    main()
