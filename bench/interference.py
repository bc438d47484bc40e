"""Why a new token costs more than the floor plus our Python: the floor runs with warm caches.

For each algorithm, in interleaved rounds (medians, same run):

- floor: a raw ``cryptography`` verify in a tight loop, as in ``bench/verify.py``;
- floor, caches disturbed: the same verify with 256 KiB of memory written between calls (the
  write's own time subtracted): what the verify costs once anything else runs in between;
- our Python alone: ``verify_token`` with the signature check replaced by a no-op;
- bearerguard (miss): the real thing, token cache off.

    .venv/bin/python bench/interference.py [--rounds 21] [--algs ES384,RS256,EdDSA,ES256]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

# bench/ is on sys.path when a script in it runs: reuse verify.py's floor and timer.
from verify import AUDIENCE, floor_for, time_batch

import bearerguard.server
from bearerguard.testing import LocalIssuer

_BUFFER = bytearray(256 * 1024)
_LINES = b"\x01" * (len(_BUFFER) // 64)


def disturb() -> None:
    """Write one byte in every 64-byte line of 256 KiB (in C: no Python objects involved)."""
    _BUFFER[::64] = _LINES


def measure(alg: str, rounds: int, target_s: float) -> dict[str, float]:
    issuer = LocalIssuer("https://issuer.test/oidc", audience=AUDIENCE, alg=alg)
    with issuer.serve():
        token = issuer.mint("read:products write:products")
        floor = floor_for(issuer, token)
        server = issuer.resource_server(AUDIENCE, transport=None, token_cache_size=0)
        server.verify_token(token)
        real_check = bearerguard.server.check_signature

        def no_check(*args: Any) -> None:
            return None

        def python_alone() -> None:
            bearerguard.server.check_signature = no_check  # type: ignore[assignment]
            try:
                server.verify_token(token)
            finally:
                bearerguard.server.check_signature = real_check

        def disturbed() -> None:
            floor()
            disturb()

        runs: dict[str, Callable[[], Any]] = {
            "floor": floor,
            "disturb": disturb,
            "floor+disturb": disturbed,
            "python": python_alone,
            "miss": lambda: server.verify_token(token),
        }
        sizes = {n: max(20, int(target_s / max(time_batch(f, 20), 1e-7))) for n, f in runs.items()}
        samples: dict[str, list[float]] = {n: [] for n in runs}
        names = list(runs)
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                samples[name].append(time_batch(runs[name], sizes[name]))
    m = {n: statistics.median(v) * 1e6 for n, v in samples.items()}
    # The no-op swap costs two module attribute writes: negligible next to the path itself.
    return {
        "floor": m["floor"],
        "disturbed": m["floor+disturb"] - m["disturb"],
        "python": m["python"],
        "miss": m["miss"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--batch-seconds", type=float, default=0.02)
    parser.add_argument("--algs", default="ES384,RS256,EdDSA,ES256")
    args = parser.parse_args()
    started = time.perf_counter()
    rows = {a: measure(a, args.rounds, args.batch_seconds) for a in args.algs.split(",")}
    print(f"the floor with warm and disturbed caches, median of {args.rounds} interleaved rounds")
    print("| alg | floor | floor, caches disturbed | our Python alone | bearerguard (miss) |")
    print("|---|---|---|---|---|")
    for alg, r in rows.items():
        f = r["floor"]
        print(
            f"| {alg} | {f:.1f} µs | {r['disturbed'] / f:.2f}x ({r['disturbed']:.1f} µs) "
            f"| {r['python']:.1f} µs | {r['miss'] / f:.2f}x ({r['miss']:.1f} µs) |"
        )
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
