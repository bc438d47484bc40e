"""Where the FastAPI example's memory goes under load (issue 17's RSS creep).

    .venv/bin/python bench/rss.py [--seconds 40]

Three runs under uvicorn, each: warm up, snapshot (tracemalloc) and RSS, ``--seconds`` of wrk,
snapshot and RSS, ``--seconds`` more, snapshot and RSS. The runs: the example with a valid token
on ``/products`` (bearerguard's hit path), the example on the public ``/health`` (the
middleware passes it by), and the same routes without bearerguard at all. Printed per run: RSS
at each point, the Python heap tracemalloc sees, and the allocation sites that grew most over
the second half.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from procs import free_port, interpreter, stop

from bearerguard.testing import LocalIssuer

ROOT = Path(__file__).resolve().parents[1]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def wrk(url: str, seconds: int, token: str | None) -> None:
    command = ["wrk", "-t1", "-c4", f"-d{seconds}s"]
    if token is not None:
        command += ["-H", f"Authorization: Bearer {token}"]
    subprocess.run([*command, url], check=True, capture_output=True, timeout=seconds + 30)


def run(variant: str, path: str, seconds: int, issuer_url: str, token: str) -> dict[str, object]:
    port = free_port()
    work = Path(tempfile.mkdtemp(prefix=f"rss-{variant}-"))
    env = {
        **os.environ,
        "AUTH_ISSUER": issuer_url,
        "AUTH_AUDIENCE": "https://shopping.api",
        "RSS_VARIANT": variant,
        "RSS_SNAPSHOTS": str(work),
    }
    command = [interpreter(), "-m", "uvicorn", "--app-dir", "bench"]
    command += ["rss_app:app", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    process = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}{path}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("the app did not start")
            time.sleep(0.1)
        sent = token if path != "/health" else None
        wrk(url, 5, sent)  # warm up
        points = []
        for step in range(3):
            if step:
                wrk(url, seconds, sent)
            process.send_signal(signal.SIGUSR1)
            snapshot_file = work / f"snapshot-{step + 1}.bin"
            deadline = time.monotonic() + 30
            while not snapshot_file.exists() and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(1)  # the dump finishes writing
            points.append((rss_kib(process.pid), tracemalloc.Snapshot.load(str(snapshot_file))))
    finally:
        stop(process)
    (rss1, snap1), (rss2, snap2), (rss3, snap3) = points
    heap = [sum(s.size for s in snap.statistics("filename")) for snap in (snap1, snap2, snap3)]
    growth = snap3.compare_to(snap2, "lineno")[:8]
    return {"rss": (rss1, rss2, rss3), "heap": heap, "growth": growth}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=40)
    parser.add_argument("--only", default="", help="e.g. bare/health,example/products")
    args = parser.parse_args()
    issuer = LocalIssuer(audience="https://shopping.api")
    with issuer.serve() as issuer_url:
        token = issuer.mint("read:products write:products")
        runs = [
            ("example", "/products"),
            ("example", "/health"),
            ("no-metrics", "/products"),
            ("no-metrics", "/health"),
            ("bare", "/products"),
            ("bare", "/health"),
        ]
        only = set(args.only.split(",")) if args.only else None
        for variant, path in runs:
            if only is not None and f"{variant}{path}" not in only:
                continue
            result = run(variant, path, args.seconds, issuer_url, token)
            rss = result["rss"]
            heap = result["heap"]
            print(
                f"\n== {variant} {path}: RSS KiB {rss} (second half {rss[2] - rss[1]:+} KiB); "  # type: ignore[index]
                f"traced heap KiB {[h // 1024 for h in heap]}"
            )  # type: ignore[union-attr]
            for stat in result["growth"]:  # type: ignore[union-attr]
                print("  ", stat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
