"""HTTP throughput, protected vs unprotected, on the same server in the same run.

For each framework two servers run side by side (one worker each, loopback only): the same
endpoint without and with bearerguard. wrk loads them alternately for a few seconds per round,
with one valid token reused (the machine-to-machine norm); we report the median requests/s
and the ratio protected / unprotected.

    .venv/bin/python bench/throughput.py [--rounds 5] [--seconds 3] [--apps starlette,fastapi,flask]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from bearerguard.testing import LocalIssuer

ROOT = Path(__file__).resolve().parents[1]
PYTHON = str(ROOT / ".venv/bin/python") if (ROOT / ".venv/bin/python").exists() else sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve(kind: str, protect: bool, issuer: str) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "BENCH_APP": kind, "BENCH_PROTECT": "1" if protect else "0"}
    env.update(AUTH_ISSUER=issuer, AUTH_AUDIENCE="https://shopping.api")
    if kind == "flask":
        cmd = [PYTHON, "-m", "gunicorn", "--chdir", str(ROOT / "bench"), "-w", "1"]
        cmd += ["-b", f"127.0.0.1:{port}", "apps:app"]
    else:
        cmd = [PYTHON, "-m", "uvicorn", "--app-dir", str(ROOT / "bench"), "apps:app"]
        cmd += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
        cmd += ["--no-access-log"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(url + "/products", timeout=1)
                break
            except httpx.HTTPError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    err = proc.stderr.read().decode() if proc.stderr else ""
                    raise SystemExit(f"{kind} server did not start:\n{err}") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def load(url: str, token: str, seconds: int, connections: int) -> float:
    """Requests per second from wrk; any non-2xx answer invalidates the run."""
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    cmd += ["-H", f"Authorization: Bearer {token}", url + "/products"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise SystemExit(f"unexpected errors under load at {url}:\n{out}")
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not match:
        raise SystemExit(f"cannot read wrk output:\n{out}")
    return float(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--apps", default="starlette,fastapi,flask")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install wrk (make bench does this)")
    issuer = LocalIssuer("http://127.0.0.1/oidc", audience="https://shopping.api")
    rows = []
    with issuer.serve() as issuer_url:
        token = issuer.mint("read:products")
        for kind in args.apps.split(","):
            with serve(kind, False, issuer_url) as open_url, serve(kind, True, issuer_url) as url:
                for u in (open_url, url):  # warm up: imports, keys fetched, caches filled
                    load(u, token, 1, args.connections)
                rates: dict[bool, list[float]] = {False: [], True: []}
                for r in range(args.rounds):
                    order = (False, True) if r % 2 == 0 else (True, False)
                    for protect in order:
                        target = url if protect else open_url
                        rates[protect].append(load(target, token, args.seconds, args.connections))
            plain, guarded = statistics.median(rates[False]), statistics.median(rates[True])
            rows.append((kind, plain, guarded, guarded / plain))
            print(f"{kind}: {plain:.0f} -> {guarded:.0f} req/s ({guarded / plain:.3f})", flush=True)
    print(f"\nHTTP throughput, token reused, median of {args.rounds} alternating rounds")
    print("| app | unprotected req/s | protected req/s | ratio |")
    print("|---|---|---|---|")
    for kind, plain, guarded, ratio in rows:
        print(f"| {kind} | {plain:.0f} | {guarded:.0f} | {ratio:.3f} |")


if __name__ == "__main__":
    main()
