"""JWKS fetch counts under load: cold concurrency and a random-kid flood.

.venv/bin/python bench/jwks.py
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time

from bearerguard import AuthError, ResourceServer
from bearerguard.testing import LocalIssuer

AUDIENCE = "https://shopping.api"


def jwks_fetches(issuer: LocalIssuer) -> int:
    return sum(1 for path in issuer.requests if path.endswith("/jwks"))


async def cold_async(n: int) -> tuple[int, int]:
    issuer = LocalIssuer("http://127.0.0.1/oidc", audience=AUDIENCE)
    with issuer.serve():
        server = ResourceServer(issuer.issuer, AUDIENCE, require_typ=True)
        tokens = [issuer.mint("read:products") for _ in range(n)]
        results = await asyncio.gather(
            *(server.authenticate_async("Bearer " + t) for t in tokens), return_exceptions=True
        )
        ok = sum(1 for r in results if not isinstance(r, BaseException))
        return ok, jwks_fetches(issuer)


def cold_threads(n: int) -> tuple[int, int]:
    issuer = LocalIssuer("http://127.0.0.1/oidc", audience=AUDIENCE)
    with issuer.serve():
        server = ResourceServer(issuer.issuer, AUDIENCE, require_typ=True)
        tokens = [issuer.mint("read:products") for _ in range(n)]
        ok = []
        barrier = threading.Barrier(n)

        def call(token: str) -> None:
            barrier.wait()
            server.authenticate("Bearer " + token)
            ok.append(1)

        threads = [threading.Thread(target=call, args=(t,)) for t in tokens]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        return len(ok), jwks_fetches(issuer)


def random_kids(n: int, cooldown: float) -> tuple[int, int, float]:
    issuer = LocalIssuer("http://127.0.0.1/oidc", audience=AUDIENCE)
    with issuer.serve():
        server = ResourceServer(
            issuer.issuer, AUDIENCE, require_typ=True, refetch_cooldown=cooldown
        )
        server.authenticate("Bearer " + issuer.mint("read:products"))  # keys cached
        before = jwks_fetches(issuer)
        rejected = 0
        start = time.monotonic()
        for _ in range(n):
            token = issuer.mint("read:products", header={"kid": secrets.token_urlsafe(16)})
            try:
                server.authenticate("Bearer " + token)
            except AuthError:
                rejected += 1
        elapsed = time.monotonic() - start
        return rejected, jwks_fetches(issuer) - before, elapsed


def main() -> None:
    ok, fetches = asyncio.run(cold_async(100))
    print(f"100 concurrent cold asyncio requests: {ok} verified, {fetches} JWKS fetch(es)")
    ok, fetches = cold_threads(100)
    print(f"100 concurrent cold threads:          {ok} verified, {fetches} JWKS fetch(es)")
    rejected, fetches, elapsed = random_kids(1000, 5.0)
    allowed = 1 + int(elapsed // 5.0)
    print(
        f"1,000 random-kid tokens in {elapsed:.1f} s: {rejected} rejected, {fetches} JWKS "
        f"fetch(es) (the 5 s cooldown allows at most {allowed})"
    )


if __name__ == "__main__":
    main()
