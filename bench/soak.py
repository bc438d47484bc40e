"""Soak: both example APIs under their real servers, a bounded mixed load, memory and JWKS watched.

``make soak`` (not part of ``make test``). Everything runs on 127.0.0.1:

- one local issuer per app (``bearerguard.testing.LocalIssuer(...).serve()``), so each app's
  discovery and JWKS requests are counted separately;
- the FastAPI example under uvicorn and the Flask example under gunicorn, started exactly as
  their READMEs say, with AUTH_ISSUER / AUTH_AUDIENCE=https://shopping.api;
- for each app, four wrk processes (one thread each, a few connections each) for the whole run:
  ``valid-reused`` (a handful of tokens, 200), ``valid-distinct`` (a pre-minted pool larger than
  the token cache, so it churns; 200), ``invalid`` (pre-minted forgeries, expired, foreign-key,
  confused tokens, interleaved with random garbage generated per request; 401) and
  ``random-kid`` (a fresh random kid on every request; 401).

Before the load each app's token cache is filled (4352 distinct valid tokens), so the RSS
baseline, taken after a short warm-up, already holds the full cache. Reported: requests and
unexpected answers per class (must be 0; transport errors, timeouts, a 401 without
``error="invalid_token"`` or a JWT echoed in a 401 count as unexpected), JWKS fetches against
what the 5 s refetch cooldown allows, the RSS of each server process (the gunicorn worker, not
its master) idle, at the baseline, at the end and at most, and a memory verdict: "levelled"
when the second half of the run grew by less than ``--rss-tolerance`` or half the first half;
"growing, within budget" when it grew by at most GROWTH_BUDGET bytes per request (passes, but
says plainly that RSS did not level off); "GROWING, over budget" otherwise (fails). The exit
status is non-zero when anything is unexpected, a server died or was replaced, the fetches
exceed the allowance, RSS grew over budget, or a server log holds a traceback or a JWT.

    .venv/bin/python bench/soak.py [--seconds 300] [--connections 2] [--pool 20000]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from bearerguard import AuthError, ResourceServer
from bearerguard.signing import b64url
from bearerguard.testing import LocalIssuer, SigningKey

ROOT = Path(__file__).resolve().parents[1]
PYTHON = str(ROOT / ".venv/bin/python") if (ROOT / ".venv/bin/python").exists() else sys.executable
AUDIENCE = "https://shopping.api"
READ = "read:products"
COOLDOWN = 5.0  # ResourceServer's refetch_cooldown default (the examples keep it)
JWKS_TTL = 600.0  # its jwks_ttl default: LocalIssuer sends no Cache-Control
TOKEN_CACHE = 4096  # its token_cache_size default
# RSS growth allowed per request in the second half of the run. An unbounded cache of tokens,
# kids or headers costs 100 B to 2 KiB for each request adding an entry; uvicorn's own heap
# fragmentation costs 10-40 B per request (a bare ASGI app under uvicorn shows the same creep
# while Python's allocated blocks stay flat).
GROWTH_BUDGET = 64
EXPECTED = {"valid-reused": 200, "valid-distinct": 200, "invalid": 401, "random-kid": 401}
ES384 = ECAlgorithm(ECAlgorithm.SHA384)
SERVERS = {"fastapi": "uvicorn", "flask": "gunicorn"}

# One wrk process per (app, traffic class), -t1: one Lua state per process, so its counters are
# the whole story. done() runs in wrk's main Lua state and reads them with thread:get().
LUA = r"""
local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
local TOKEN68 = B64 .. ".~+/"
local ALGS = {"ES384", "ES256", "RS256", "PS512", "EdDSA", "none", "HS256", "ES384 "}
local threads = {}

function setup(thread)
  threads[#threads + 1] = thread
end

local function b64url(s)
  local out = {}
  for k = 1, #s, 3 do
    local a, b, c = s:byte(k, k + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local chars = 2 + (b and 1 or 0) + (c and 1 or 0)
    for j = 1, chars do
      local index = math.floor(n / 2 ^ (24 - 6 * j)) % 64
      out[#out + 1] = B64:sub(index + 1, index + 1)
    end
  end
  return table.concat(out)
end

local function text(alphabet, n)
  local out = {}
  for k = 1, n do
    local j = math.random(#alphabet)
    out[k] = alphabet:sub(j, j)
  end
  return table.concat(out)
end

local function bytes(n)
  local out = {}
  for k = 1, n do
    out[k] = string.char(math.random(0, 255))
  end
  return table.concat(out)
end

function init(args)
  mode = args[1]
  math.randomseed(tonumber(args[3]))
  lines = {}
  for line in io.lines(args[2]) do
    lines[#lines + 1] = line
  end
  position = 0
  sent = 0
  statuses = {}
  bad_challenge = 0
  echoed = 0
end

local function next_line()
  position = position % #lines + 1
  return lines[position]
end

-- A validly encoded header naming a kid nobody published, a real payload, any signature.
local function random_kid()
  local kid = text(B64, math.random(8, 64))
  local header = b64url('{"alg":"ES384","typ":"at+jwt","kid":"' .. kid .. '"}')
  return header .. "." .. next_line() .. "." .. text(B64, 128)
end

-- Never the same twice; always token68, so the answer is 401 invalid_token (not 400).
local function garbage()
  local kind = math.random(5)
  if kind == 1 then
    return text(TOKEN68, math.random(1, 2048))
  elseif kind == 2 then
    return text(B64, math.random(0, 300)) .. "." .. text(B64, math.random(0, 900)) .. "."
      .. text(B64, math.random(1, 200))
  elseif kind == 3 then
    return b64url(bytes(math.random(1, 120))) .. "." .. b64url(bytes(math.random(1, 400)))
      .. "." .. b64url(bytes(math.random(1, 96)))
  elseif kind == 4 then
    local header = '{"alg":"' .. ALGS[math.random(#ALGS)] .. '","typ":"at+jwt","kid":"'
      .. text(B64, 43) .. '"}'
    return b64url(header) .. "." .. b64url("{" .. bytes(math.random(0, 300)) .. "}") .. "."
      .. text(B64, 128)
  else
    local dots = {}
    for k = 1, math.random(0, 6) do
      dots[k] = text(B64, math.random(0, 60))
    end
    return table.concat(dots, ".") .. text(B64, 1)
  end
end

function request()
  local token
  if mode == "random-kid" then
    token = random_kid()
  elseif mode == "invalid" and sent % 2 == 1 then
    token = garbage()
  else
    token = next_line()
  end
  sent = sent + 1
  return wrk.format("GET", "/products", {Authorization = "Bearer " .. token})
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if status == 401 then
    local challenge = ""
    for name, value in pairs(headers) do
      if name:lower() == "www-authenticate" then
        challenge = value
      end
    end
    if not challenge:find('error="invalid_token"', 1, true) then
      bad_challenge = bad_challenge + 1
    end
    if challenge:find("eyJ", 1, true) or (body and body:find("eyJ", 1, true)) then
      echoed = echoed + 1
    end
  end
end

function done(summary, latency, requests)
  for _, thread in ipairs(threads) do
    local parts = {}
    for code, n in pairs(thread:get("statuses")) do
      parts[#parts + 1] = code .. ":" .. n
    end
    local e = summary.errors
    io.write(string.format(
      "SOAK requests=%d connect=%d read=%d write=%d timeout=%d statuses=%s " ..
      "bad_challenge=%d echoed=%d p99_ms=%.1f max_ms=%.1f\n",
      summary.requests, e.connect, e.read, e.write, e.timeout, table.concat(parts, ","),
      thread:get("bad_challenge"), thread:get("echoed"),
      latency:percentile(99) / 1000, latency.max / 1000))
  end
end
"""


# -- tokens ---------------------------------------------------------------------------------------


def segment(value: Any) -> str:
    return b64url(value if isinstance(value, bytes) else json.dumps(value).encode())


def split(token: str) -> tuple[str, str, str]:
    h, p, s = token.split(".")
    return h, p, s


def _signed(header: dict[str, Any], payload: dict[str, Any], key: SigningKey) -> str:
    assert isinstance(key.private_key, ec.EllipticCurvePrivateKey)
    h, p = segment(header), segment(payload)
    signature = ES384.sign(f"{h}.{p}".encode(), key.private_key)
    return f"{h}.{p}.{b64url(signature)}"


def _der(issuer: LocalIssuer, payload: dict[str, Any]) -> str:
    """A correct ECDSA signature, but DER-encoded instead of JWS's fixed-size r||s."""
    h = segment({"alg": "ES384", "typ": "at+jwt", "kid": issuer.current_key.kid})
    p = segment(payload)
    private = issuer.current_key.private_key
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    return f"{h}.{p}.{b64url(private.sign(f'{h}.{p}'.encode(), ec.ECDSA(hashes.SHA384())))}"


def _hs256(issuer: LocalIssuer, payload: dict[str, Any]) -> str:
    """Algorithm confusion: HMAC keyed with the issuer's public key (PEM)."""
    pem = issuer.current_key.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    h = segment({"alg": "HS256", "typ": "at+jwt", "kid": issuer.current_key.kid})
    p = segment(payload)
    return f"{h}.{p}.{b64url(hmac.new(pem, f'{h}.{p}'.encode(), hashlib.sha256).digest())}"


def invalid_makers(
    issuer: LocalIssuer, valid: list[str], rng: random.Random
) -> dict[str, Callable[[int], str]]:
    """Each kind of invalid token the ``invalid`` class sends, built fresh for index ``i``."""
    foreign = SigningKey.generate("ES384", kid=issuer.current_key.kid)  # unpublished, real kid
    kid = issuer.current_key.kid
    header = {"alg": "ES384", "typ": "at+jwt", "kid": kid}

    def claims(**changes: Any) -> dict[str, Any]:
        return {**issuer.claims(scopes=READ, expires_in=7200), **changes}

    def sig() -> str:
        return b64url(rng.randbytes(96))

    def pick(i: int) -> tuple[str, str, str]:
        return split(valid[i % len(valid)])

    def duplicate_aud(i: int) -> str:
        text = json.dumps(claims(aud="https://evil.test"))[:-1] + f', "aud": "{AUDIENCE}"}}'
        return f"{segment(header)}.{segment(text.encode())}.{sig()}"

    return {
        "bad-signature": lambda i: ".".join((*pick(i)[:2], sig())),
        "tampered-payload": lambda i: issuer.tampered(valid[i % len(valid)]),
        "signature-of-another-token": lambda i: ".".join((*pick(i)[:2], pick(i + 1)[2])),
        "stripped-signature": lambda i: ".".join(pick(i)[:2]) + ".",
        "alg-none": lambda i: f"{segment({**header, 'alg': 'none'})}.{segment(claims())}.",
        "hs256-public-key-as-secret": lambda i: _hs256(issuer, claims()),
        "expired": lambda i: issuer.mint(READ, claims={"iat": 1, "exp": 2 + i}),
        "foreign-key-real-kid": lambda i: issuer.mint(READ, key=foreign),
        "embedded-jwk": lambda i: _signed(
            {"alg": "ES384", "typ": "at+jwt", "jwk": foreign.jwk}, claims(), foreign
        ),
        "ecdsa-der-signature": lambda i: _der(issuer, claims()),
        "wrong-audience": lambda i: issuer.mint(READ, audience="https://other.api"),
        "wrong-issuer": lambda i: (
            f"{segment(header)}.{segment(claims(iss=issuer.issuer + '/'))}.{sig()}"
        ),
        "exp-as-string": lambda i: issuer.mint(READ, claims={"exp": str(2**31)}),
        "typ-jwt": lambda i: f"{segment({**header, 'typ': 'JWT'})}.{segment(claims())}.{sig()}",
        "crit-unknown": lambda i: (
            f"{segment({**header, 'crit': ['exp']})}.{segment(claims())}.{sig()}"
        ),
        "duplicate-aud": duplicate_aud,
    }


@dataclass
class Pools:
    reused: list[str]
    distinct: list[str]
    invalid: list[str]
    kinds: dict[str, str]  # one sample token of each invalid kind, for the self-check


def mint_pools(issuer: LocalIssuer, size: int, invalid_size: int, lifetime: int) -> Pools:
    rng = random.Random(0x50AC)
    reused = [issuer.mint(READ, expires_in=lifetime, client_id=f"svc-{i}") for i in range(8)]
    distinct = [issuer.mint(READ, expires_in=lifetime) for _ in range(size)]
    makers = invalid_makers(issuer, distinct, rng)
    names = list(makers)
    invalid = [makers[names[i % len(names)]](i) for i in range(invalid_size)]
    rng.shuffle(invalid)
    return Pools(reused, distinct, invalid, {name: makers[name](0) for name in names})


def self_check(issuer: LocalIssuer, pools: Pools) -> None:
    """The pools mean what the run assumes: checked in-process with the examples' settings."""
    server = ResourceServer(issuer.issuer, AUDIENCE, require_typ=True)
    for token in (*pools.reused, pools.distinct[0], pools.distinct[-1]):
        server.check_scopes(server.authenticate(f"Bearer {token}"), READ)
    for name, token in pools.kinds.items():
        try:
            server.authenticate(f"Bearer {token}")
        except AuthError as exc:
            if exc.status_code != 401:
                raise SystemExit(f"self-check: {name} gives {exc.status_code}, not 401") from None
        else:
            raise SystemExit(f"self-check: the invalid token {name} verified")


# -- processes ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop(proc: subprocess.Popen[Any]) -> None:
    """Terminate a process we started; if it does not stop, kill its group (its own session).

    The group is killed before the leader is reaped, so its id cannot have been reused.
    """
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(stat.parent.name))
        return found


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


@dataclass
class App:
    kind: str
    issuer: LocalIssuer
    pools: Pools
    log: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    pid: int = 0  # the process that serves requests (gunicorn: the worker)
    initial: tuple[int, int] = (0, 0)  # (discovery, jwks) requests before the load
    idle_rss: int = 0  # KiB, after the first request, before the load
    samples: list[tuple[float, int]] = field(default_factory=list)  # (s into the load, KiB)
    died: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def fetches(self) -> tuple[int, int]:
        paths = list(self.issuer.requests)
        return (
            sum(1 for p in paths if "/.well-known/" in p),
            sum(1 for p in paths if p.endswith("/jwks")),
        )


def command(kind: str, port: int) -> list[str]:
    """The examples' contract (their docstrings and READMEs), run from the repository root."""
    if kind == "fastapi":
        app = ["uvicorn", "--app-dir", "examples/fastapi_app", "main:app"]
        return [PYTHON, "-m", *app, "--host", "127.0.0.1", "--port", str(port)]
    return [
        PYTHON,
        "-m",
        "gunicorn",
        "--chdir",
        "examples/flask_app",
        "-b",
        f"127.0.0.1:{port}",
        "main:app",
    ]


def start_app(app: App, stack: contextlib.ExitStack) -> None:
    app.port = free_port()
    cmd = command(app.kind, app.port)
    env = {**os.environ, "AUTH_ISSUER": app.issuer.issuer, "AUTH_AUDIENCE": AUDIENCE}
    with app.log.open("wb") as out:
        app.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    stack.callback(stop, app.proc)
    deadline = time.monotonic() + 60
    while True:
        if app.proc.poll() is not None:
            raise SystemExit(f"{app.kind} exited at start:\n{app.log.read_text(errors='replace')}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(app.url + "/health", timeout=2).status_code == 200:
                break
        if time.monotonic() > deadline:
            raise SystemExit(f"{app.kind} not healthy in 60 s:\n{app.log.read_text('utf-8')}")
        time.sleep(0.1)
    if app.kind == "flask":
        workers = children(app.proc.pid)
        if len(workers) != 1:
            raise SystemExit(f"expected one gunicorn worker, found {workers}")
        app.pid = workers[0]
    else:
        app.pid = app.proc.pid


def get(app: App, token: str) -> int:
    headers = {"Authorization": f"Bearer {token}"}
    return httpx.get(app.url + "/products", headers=headers, timeout=15).status_code


def prefill(apps: list[App]) -> dict[str, dict[int, int]]:
    """Fill each app's token cache (plus a margin) so the RSS baseline has it full.

    The tokens are the end of the distinct pool, which wrk reaches last: its first requests
    evict them, so the load churns the cache from its first second.
    """

    stopping = threading.Event()  # set on the way out, also by Ctrl-C

    def send(app: App, tokens: list[str]) -> Counter[int]:
        counts: Counter[int] = Counter()
        with httpx.Client(base_url=app.url, timeout=15) as client:
            for token in tokens:
                if stopping.is_set():
                    break
                headers = {"Authorization": f"Bearer {token}"}
                counts[client.get("/products", headers=headers).status_code] += 1
        return counts

    jobs = []
    totals: dict[str, Counter[int]] = {app.kind: Counter() for app in apps}
    pool = ThreadPoolExecutor(max_workers=4 * len(apps))
    try:
        for app in apps:
            tokens = app.pools.distinct[-(TOKEN_CACHE + 256) :]
            jobs += [(app.kind, pool.submit(send, app, tokens[i::4])) for i in range(4)]
        for kind, job in jobs:
            totals[kind].update(job.result())
    finally:
        stopping.set()
        pool.shutdown(cancel_futures=True)
    return {kind: dict(counts) for kind, counts in totals.items()}


@dataclass
class Load:
    app: App
    cls: str
    proc: subprocess.Popen[str]
    result: dict[str, Any] = field(default_factory=dict)


def start_wrk(app: App, cls: str, lines: Path, args: argparse.Namespace, lua: Path) -> Load:
    seed = str(random.SystemRandom().randrange(1, 2**31))
    cmd = ["wrk", "-t1", f"-c{args.connections}", f"-d{args.seconds}s", "--timeout", "10s"]
    cmd += ["-s", str(lua), app.url + "/products", "--", cls, str(lines), seed]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    return Load(app, cls, proc)


def parse_wrk(output: str) -> dict[str, Any]:
    match = re.search(r"^SOAK (.*)$", output, re.M)
    if not match:
        raise SystemExit(f"cannot read wrk's output:\n{output}")
    fields = dict(item.split("=", 1) for item in match.group(1).split())
    statuses = {
        int(code): int(n)
        for code, n in (p.split(":") for p in fields.pop("statuses").split(",") if p)
    }
    result: dict[str, Any] = {k: float(v) if "." in v else int(v) for k, v in fields.items()}
    result["statuses"] = statuses
    return result


# -- the run --------------------------------------------------------------------------------------


def mib(kib: int) -> str:
    return f"{kib / 1024:.1f}"


def memory_verdict(
    samples: list[tuple[float, int]], requests_per_s: float, tolerance_kib: int
) -> tuple[int, int, float, str, bool]:
    """Growth in the first and second half of the measured window, and what it means.

    Maxima rather than single samples, so one allocator hiccup is not a trend. The verdict is
    "levelled" when the second half grew less than the tolerance or at most half as much as the
    first; otherwise "growing, within budget" when the second half grew by at most GROWTH_BUDGET
    bytes per request (the run passes, but RSS did not level off within the run), else
    "growing" (the run fails). Returns (first-half KiB, second-half KiB, second-half bytes per
    request, verdict, passed).
    """
    start_t, start = samples[0]
    end_t = samples[-1][0]
    middle_t = (start_t + end_t) / 2
    first = max(r for t, r in samples if t <= middle_t)
    second = max((r for t, r in samples if t > middle_t), default=first)
    grow1, grow2 = first - start, second - first
    per_request = grow2 * 1024 / max(1.0, requests_per_s * (end_t - middle_t))
    if grow2 <= tolerance_kib or grow2 <= grow1 // 2:
        return grow1, grow2, per_request, "levelled", True
    if per_request <= GROWTH_BUDGET:
        return grow1, grow2, per_request, f"growing, within {GROWTH_BUDGET} B/req budget", True
    return grow1, grow2, per_request, "GROWING, over budget", False


def scan_log(path: Path) -> tuple[int, int, int]:
    """(lines, tracebacks, lines holding a JWT-looking string) of a server log."""
    lines = tracebacks = tokens = 0
    with path.open("rb") as f:
        for line in f:
            lines += 1
            tracebacks += b"Traceback" in line
            tokens += b"eyJ" in line
    return lines, tracebacks, tokens


def prepare(args: argparse.Namespace, work: Path, stack: contextlib.ExitStack) -> list[App]:
    """Per app: an issuer on a loopback port, its token pools, the app under its real server."""
    apps: list[App] = []
    for kind in (k.strip() for k in args.apps.split(",") if k.strip()):
        if kind not in SERVERS:
            raise SystemExit(f"unknown app {kind!r}: choose from {', '.join(SERVERS)}")
        issuer = LocalIssuer("http://127.0.0.1/oidc", audience=AUDIENCE)
        stack.enter_context(issuer.serve())
        started = time.monotonic()
        pools = mint_pools(issuer, args.pool, args.invalid_pool, args.seconds + 3600)
        self_check(issuer, pools)
        issuer.requests.clear()
        print(
            f"{kind}: minted {len(pools.distinct) + len(pools.reused)} valid and "
            f"{len(pools.invalid)} invalid tokens ({len(pools.kinds)} kinds) in "
            f"{time.monotonic() - started:.0f} s; issuer {issuer.issuer}",
            flush=True,
        )
        apps.append(App(kind, issuer, pools, work / f"{kind}.log"))
    for app in apps:
        start_app(app, stack)
        if get(app, app.pools.reused[0]) != 200:  # the initial discovery and JWKS fetch
            raise SystemExit(f"{app.kind}: a valid token was refused before the load")
        app.initial = app.fetches()
        app.idle_rss = rss_kib(app.pid) or 0
        print(f"{app.kind}: {SERVERS[app.kind]} pid {app.pid} on {app.url}", flush=True)
    return apps


def drive(
    apps: list[App], args: argparse.Namespace, work: Path, stack: contextlib.ExitStack
) -> tuple[list[Load], float]:
    """Run the wrk processes to their end, sampling each server's RSS; the loads and seconds."""
    started = time.monotonic()
    for kind, statuses in prefill(apps).items():
        print(f"{kind}: token cache filled ({statuses}) in {time.monotonic() - started:.0f} s")
        if set(statuses) != {200}:
            raise SystemExit(f"{kind}: valid tokens refused while filling the cache: {statuses}")
    lua = work / "soak.lua"
    lua.write_text(LUA)
    loads: list[Load] = []
    began = time.monotonic()
    for app in apps:
        files = {
            "valid-reused": app.pools.reused,
            "valid-distinct": app.pools.distinct,
            "invalid": app.pools.invalid,
            "random-kid": [split(t)[1] for t in app.pools.distinct],  # payloads only
        }
        for cls, lines in files.items():
            if cls not in args.classes:
                continue
            path = work / f"{app.kind}-{cls}.txt"
            path.write_text("\n".join(lines) + "\n")
            loads.append(start_wrk(app, cls, path, args, lua))
            stack.callback(stop, loads[-1].proc)
    warmup = max(2.0, min(15.0, args.seconds / 20))
    print(
        f"load: {len(loads)} wrk processes x {args.connections} connections for {args.seconds} s "
        f"(RSS baseline after {warmup:.0f} s of warm-up)",
        flush=True,
    )
    next_sample, next_report = began + warmup, began + 60
    while any(load.proc.poll() is None for load in loads):
        now = time.monotonic()
        if now >= next_sample:
            for app in apps:
                sample(app, now - began)
            next_sample += args.interval
        if now >= next_report:
            rss = ", ".join(f"{a.kind} {mib(a.samples[-1][1])} MiB" for a in apps if a.samples)
            print(f"  {now - began:.0f} s: RSS {rss}", flush=True)
            next_report += 60
        time.sleep(0.2)
    elapsed = time.monotonic() - began
    for load in loads:
        load.result = parse_wrk(load.proc.stdout.read() if load.proc.stdout else "")
    return loads, elapsed


def sample(app: App, at: float) -> None:
    assert app.proc is not None
    rss = rss_kib(app.pid)
    if app.proc.poll() is not None or rss is None:
        app.died = app.died or f"server process {app.pid} gone at {at:.0f} s"
    elif app.kind == "flask" and children(app.proc.pid) != [app.pid]:
        app.died = app.died or f"gunicorn worker {app.pid} replaced at {at:.0f} s"
    else:
        app.samples.append((at, rss))


def report(
    apps: list[App], loads: list[Load], elapsed: float, args: argparse.Namespace
) -> list[str]:
    """Print the summary tables; return what failed."""
    failures: list[str] = []
    for app in apps:
        status = get(app, app.pools.reused[0])  # still serving after the load?
        if status != 200:
            failures.append(f"{app.kind}: a valid token gives {status} after the load")
        if app.died:
            failures.append(f"{app.kind}: {app.died}")
        assert app.proc is not None
        stop(app.proc)  # flushes the logs scanned below

    print(
        f"\nSoak: {elapsed:.0f} s on 127.0.0.1, {len(loads)} wrk processes (-t1 "
        f"-c{args.connections}), {args.pool} distinct valid tokens per app "
        f"(token cache {TOKEN_CACHE})"
    )
    print("| app | class | requests | req/s | expected | unexpected | p99 ms | max ms |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    total = unexpected_total = 0
    for load in loads:
        r = load.result
        want = EXPECTED[load.cls]
        other = {code: n for code, n in r["statuses"].items() if code != want}
        transport = r["connect"] + r["read"] + r["write"] + r["timeout"]
        bad = sum(other.values()) + transport + r["bad_challenge"] + r["echoed"]
        total += r["requests"]
        unexpected_total += bad
        if bad:
            failures.append(
                f"{load.app.kind}/{load.cls}: statuses {other}, transport errors {transport} "
                f"(connect/read/write/timeout {r['connect']}/{r['read']}/{r['write']}/"
                f"{r['timeout']}), bad challenges {r['bad_challenge']}, echoed {r['echoed']}"
            )
        print(
            f"| {load.app.kind} | {load.cls} | {r['requests']} | {r['requests'] / elapsed:.0f} "
            f"| {want} | {bad} | {r['p99_ms']:.1f} | {r['max_ms']:.1f} |"
        )
    print(f"| all | all | {total} | {total / elapsed:.0f} | | {unexpected_total} | | |")

    # An unknown kid may refetch once per cooldown; routine refreshes come once per TTL.
    allowed = 1 + math.floor(elapsed / COOLDOWN) + math.floor(elapsed / JWKS_TTL)
    print(
        "\n| app | JWKS fetches before / during load | allowed during load | discovery "
        "| RSS idle / start / end / max MiB | growth 1st / 2nd half MiB | memory |"
    )
    print("|---|---:|---:|---:|---:|---:|---|")
    for app in apps:
        discovery, jwks = app.fetches()
        during = jwks - app.initial[1]
        if during > allowed:
            failures.append(f"{app.kind}: {during} JWKS fetches during the load, allowed {allowed}")
        if len(app.samples) < 3:
            failures.append(f"{app.kind}: too few RSS samples ({len(app.samples)})")
            continue
        series = [r for _, r in app.samples]
        rate = sum(load.result["requests"] for load in loads if load.app is app) / elapsed
        grow1, grow2, per_request, verdict, passed = memory_verdict(
            app.samples, rate, int(args.rss_tolerance * 1024)
        )
        if not passed:
            failures.append(
                f"{app.kind}: RSS still growing ({mib(grow1)} then {mib(grow2)} MiB, "
                f"{per_request:.0f} B per request)"
            )
        rss = " / ".join(mib(v) for v in (app.idle_rss, series[0], series[-1], max(series)))
        print(
            f"| {app.kind} ({SERVERS[app.kind]}) | {app.initial[1]} / {during} | {allowed} "
            f"| {discovery} | {rss} | {mib(grow1)} / {mib(grow2)} ({per_request:.0f} B/req) "
            f"| {verdict} |"
        )

    for app in apps:
        count, tracebacks, tokens = scan_log(app.log)
        print(f"{app.kind} log: {count} lines, {tracebacks} tracebacks, {tokens} with a JWT")
        if tracebacks or tokens:
            failures.append(f"{app.kind}: {tracebacks} tracebacks, {tokens} JWTs in its log")
        if args.samples:
            trail = " ".join(f"{t:.0f}:{mib(r)}" for t, r in app.samples)
            print(f"{app.kind} RSS samples (s:MiB): {trail}")
    return failures


def run(args: argparse.Namespace, work: Path) -> int:
    with contextlib.ExitStack() as stack:  # unwinds on failure, Ctrl-C and SIGTERM too
        apps = prepare(args, work, stack)
        loads, elapsed = drive(apps, args, work, stack)
        failures = report(apps, loads, elapsed, args)
    if failures:
        print("\nFAILED:\n- " + "\n- ".join(failures))
        return 1
    print(
        "\nOK: no unexpected answers, JWKS fetches within the cooldown, RSS levelled off or "
        f"grew by at most {GROWTH_BUDGET} B per request"
    )
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=300, help="load duration (default 300)")
    parser.add_argument(
        "--connections", type=int, default=2, help="per wrk process (default 2; 8 wrk in all)"
    )
    parser.add_argument("--pool", type=int, default=20000, help="distinct valid tokens per app")
    parser.add_argument("--invalid-pool", type=int, default=4000, help="invalid tokens per app")
    parser.add_argument("--interval", type=float, default=5.0, help="RSS sampling period (s)")
    parser.add_argument(
        "--rss-tolerance", type=float, default=2.0, help="growth in MiB always counted as flat"
    )
    parser.add_argument("--apps", default="fastapi,flask", help="fastapi,flask (default both)")
    parser.add_argument(
        "--classes",
        default=",".join(EXPECTED),
        help=f"traffic classes (default {','.join(EXPECTED)})",
    )
    parser.add_argument("--samples", action="store_true", help="print every RSS sample")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args()
    args.classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    if not args.classes or set(args.classes) - set(EXPECTED):
        parser.error(f"--classes: choose from {', '.join(EXPECTED)}")
    if args.seconds < 10 or not 1 <= args.connections <= 64 or args.pool < 100:
        parser.error("need --seconds >= 10, 1 <= --connections <= 64 and --pool >= 100")
    if shutil.which("wrk") is None:
        raise SystemExit("wrk not found: apt-get install wrk (Debian's package)")
    # Ctrl-C (even when started with SIGINT ignored) and SIGTERM unwind the same way: every
    # process started here is stopped on the way out.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = Path(tempfile.mkdtemp(prefix="bearerguard-soak-"))
    code = 1
    try:
        code = run(args, work)
    except KeyboardInterrupt:
        print("\ninterrupted: servers and load stopped", file=sys.stderr)
        code = 130
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
