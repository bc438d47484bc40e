"""Soak: the four example apps under their real servers, through key rotation, an issuer outage
and a Redis restart; every answer, every write, memory and logs checked.

``make soak`` (ten minutes; not part of ``make test``; needs wrk and redis-server). Everything
runs on 127.0.0.1:

- one ``bearerguard.testing.LocalIssuer`` (ES384) serving discovery and the JWKS on one port, so
  that it can go away (connections refused) and come back;
- redis-server (nothing kept on disk): the DPoP replay store of two replicas;
- the FastAPI example under uvicorn and the Flask example under gunicorn (its ``-c`` config),
  both with AUTH_DPOP=allowed and AUTH_REPLAY_STORE=redis://...; the Django example under
  gunicorn; the MCP server under uvicorn, AUTH_AUDIENCE its own URL; each started as its README
  says, audience https://shopping.api for the three shopping APIs;
- per app, four paced wrk processes for the whole run (``--rate`` requests a second each):
  ``valid-reused`` (a handful of tokens, 200), ``valid-distinct`` (more tokens than the token
  cache holds, so it churns; 200), ``invalid`` (forgeries, expired, foreign-key, confused tokens,
  interleaved with garbage made per request; 401) and ``random-kid`` (a fresh kid every time; 401);
- Python drivers: a writer (a product POSTed to each shopping API every 2 s, read back at once
  and at the end), DPoP (a fresh proof every 0.5 s to FastAPI and Flask in turn, two in eight
  of them POSTs read back; each accepted proof replayed on both replicas), MCP tool calls every
  2 s (reads, writes read back, a write with a read-only token) and a probe (every second, each
  app gets a fresh token of every published signing key).

The phases, at fractions of ``--seconds`` (those the apps discover by refetching 2.5 s later, off
the 5 s beat of their refetches): K2 published beside K1 (0.10); clients' tokens, wrk's too,
signed with K2 (0.20); K1 dropped (0.30); the issuer refusing connections (0.40 to 0.50), K3
published meanwhile and a second Flask replica started without keys (stopped at 0.60); Redis
stopped (0.62) and started again (8% of the run later, 45 s at most). Which answers are expected
depends on when a request was made, as the README documents, with a grace window after each
change for the 5 s refetch cooldown, the 5 s outage retry and Redis clients reconnecting: a
token of a new key is 401 ``unknown signing key`` until the apps can have fetched it, a token of
a dropped key from then on; cached keys keep serving through the outage (a key published
during it is 401 until the issuer is back); the cold replica answers 503 until then; DPoP
requests are 503 while Redis is away; a replayed proof is refused, on either replica. A proof
used just before Redis stops is replayed once after its restart, and what happened is reported
(an empty Redis has forgotten it: accepted).

Each app's token cache is filled before the load, so the RSS baseline (after a short warm-up)
already holds a full cache. Exit status 1 on any unexpected answer (a status or refusal reason
the phase does not allow, a transport error, a JWT echoed), a lost or phantom write, a server
that died or was replaced, more JWKS fetches than the cooldown allows, RSS growth of
``--rss-budget`` (2 MiB) or more over the second half in any server process, a phase that did not
happen, or a traceback or a JWT in a server log.

    .venv/bin/python bench/soak.py [--seconds 600] [--rate 20] [--connections 2] [--pool 8000]
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
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from procs import RedisServer, free_port, stop  # the tests' own: loopback port, process group

from bearerguard import AuthError
from bearerguard.signing import DPoPKey, b64url
from bearerguard.testing import LocalIssuer, SigningKey

ROOT = Path(__file__).resolve().parents[1]
PYTHON = str(ROOT / ".venv/bin/python") if (ROOT / ".venv/bin/python").exists() else sys.executable
SHOP = "https://shopping.api"  # the shopping APIs' audience
READ, WRITE = "read:products", "write:products"
COOLDOWN = 5.0  # ResourceServer's refetch_cooldown default (the examples keep it)
JWKS_TTL = 600.0  # its jwks_ttl default: LocalIssuer sends no Cache-Control
OUTAGE_RETRY_MAX = 5.0  # its outage_retry_max default
TOKEN_CACHE = 4096  # its token_cache_size default
# How long after a change an answer may still be the old one. A key published or dropped: the
# next refetch (random kids keep the cooldown running), the probe's period, a busy machine.
KEY_GRACE = COOLDOWN + 5.0
RECOVERY_GRACE = OUTAGE_RETRY_MAX + 5.0  # an app without keys: its next retry, and margin
REDIS_GRACE = 3.0  # Redis started again: its clients reconnect
DPOP_HOST = "shop.test"  # the Host a load balancer passes to both replicas: one htu for both
EXPECTED = {"valid-reused": 200, "valid-distinct": 200, "invalid": 401, "random-kid": 401}
SERVERS = {"fastapi": "uvicorn", "flask": "gunicorn", "django": "gunicorn", "mcp": "uvicorn"}
SHOPS = ("fastapi", "flask", "django")
REPLICAS = ("fastapi", "flask")  # DPoP allowed, one Redis replay store
SEEDED = {1, 2}  # the products every example starts with
ES384 = ECAlgorithm(ECAlgorithm.SHA384)

# Answers as ``label()`` names them: a refusal by its status, error and description.
UNKNOWN_KID = "401 unknown_kid"
REPLAYED = "401 dpop_replay"
FORBIDDEN = "403 insufficient_scope"
NO_KEYS = "503 issuer_unavailable"
NO_STORE = "503 replay_store_unavailable"
REFUSALS = {
    UNKNOWN_KID: (401, "invalid_token", "unknown signing key"),
    REPLAYED: (401, "invalid_dpop_proof", "the DPoP proof was used before"),
    FORBIDDEN: (403, "insufficient_scope", "write:products"),
    NO_KEYS: (503, "temporarily_unavailable", "the token issuer is unavailable"),
    NO_STORE: (503, "temporarily_unavailable", "the DPoP replay store is unavailable"),
}

# One wrk process per (app, traffic class), -t1: one Lua state per process, so its counters are
# the whole story. done() runs in wrk's main Lua state and reads them with thread:get().
# Arguments: class, token file, seed, the file to switch to at the epoch second given next ("" and
# 0: none), the mean pause between a connection's requests (ms), and "mcp" for the MCP server.
LUA = r"""
local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
local TOKEN68 = B64 .. ".~+/"
local ALGS = {"ES384", "ES256", "RS256", "PS512", "EdDSA", "none", "HS256", "ES384 "}
local MCP_CALL = '{"jsonrpc":"2.0","id":1,"method":"tools/call",'
  .. '"params":{"name":"get_product","arguments":{"id":1}}}'
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

local function read_lines(path)
  local found = {}
  for line in io.lines(path) do
    found[#found + 1] = line
  end
  return found
end

function init(args)
  mode = args[1]
  lines = read_lines(args[2])
  math.randomseed(tonumber(args[3]))
  later = args[4] ~= "" and read_lines(args[4]) or nil
  switch_at = tonumber(args[5])
  pause = tonumber(args[6])
  mcp = args[7] == "mcp"
  position = 0
  sent = 0
  statuses = {}
  bad_challenge = 0
  echoed = 0
  tool_errors = 0
end

function delay()
  return pause * (0.5 + math.random())
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
  if later and os.time() >= switch_at then
    lines, later, position = later, nil, 0
  end
  local token
  if mode == "random-kid" then
    token = random_kid()
  elseif mode == "invalid" and sent % 2 == 1 then
    token = garbage()
  else
    token = next_line()
  end
  sent = sent + 1
  local headers = {Authorization = "Bearer " .. token}
  if mcp then
    headers["Content-Type"] = "application/json"
    headers["Accept"] = "application/json, text/event-stream"
    return wrk.format("POST", "/mcp", headers, MCP_CALL)
  end
  return wrk.format("GET", "/products/1", headers)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if status == 200 and mcp and not (body and body:find('"isError":false', 1, true)) then
    tool_errors = tool_errors + 1
  end
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
      "bad_challenge=%d echoed=%d tool_errors=%d p99_ms=%.1f max_ms=%.1f\n",
      summary.requests, e.connect, e.read, e.write, e.timeout, table.concat(parts, ","),
      thread:get("bad_challenge"), thread:get("echoed"), thread:get("tool_errors"),
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


def _der(key: SigningKey, payload: dict[str, Any]) -> str:
    """A correct ECDSA signature, but DER-encoded instead of JWS's fixed-size r||s."""
    h = segment({"alg": "ES384", "typ": "at+jwt", "kid": key.kid})
    p = segment(payload)
    assert isinstance(key.private_key, ec.EllipticCurvePrivateKey)
    signature = key.private_key.sign(f"{h}.{p}".encode(), ec.ECDSA(hashes.SHA384()))
    return f"{h}.{p}.{b64url(signature)}"


def _hs256(key: SigningKey, payload: dict[str, Any]) -> str:
    """Algorithm confusion: HMAC keyed with the issuer's public key (PEM)."""
    pem = key.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    h = segment({"alg": "HS256", "typ": "at+jwt", "kid": key.kid})
    p = segment(payload)
    return f"{h}.{p}.{b64url(hmac.new(pem, f'{h}.{p}'.encode(), hashlib.sha256).digest())}"


def invalid_makers(
    issuer: LocalIssuer, key: SigningKey, audience: str, valid: list[str], rng: random.Random
) -> dict[str, Callable[[int], str]]:
    """Each kind of invalid token the ``invalid`` class sends, built fresh for index ``i``."""
    foreign = SigningKey.generate("ES384", kid=key.kid)  # unpublished, real kid
    header = {"alg": "ES384", "typ": "at+jwt", "kid": key.kid}

    def claims(**changes: Any) -> dict[str, Any]:
        return {**issuer.claims(scopes=READ, audience=audience, expires_in=7200), **changes}

    def mint(**args: Any) -> str:
        return issuer.mint(READ, **{"key": key, "audience": audience, **args})

    def sig() -> str:
        return b64url(rng.randbytes(96))

    def pick(i: int) -> tuple[str, str, str]:
        return split(valid[i % len(valid)])

    def duplicate_aud(i: int) -> str:
        text = json.dumps(claims(aud="https://evil.test"))[:-1] + f', "aud": "{audience}"}}'
        return f"{segment(header)}.{segment(text.encode())}.{sig()}"

    return {
        "bad-signature": lambda i: ".".join((*pick(i)[:2], sig())),
        "tampered-payload": lambda i: issuer.tampered(valid[i % len(valid)]),
        "signature-of-another-token": lambda i: ".".join((*pick(i)[:2], pick(i + 1)[2])),
        "stripped-signature": lambda i: ".".join(pick(i)[:2]) + ".",
        "alg-none": lambda i: f"{segment({**header, 'alg': 'none'})}.{segment(claims())}.",
        "hs256-public-key-as-secret": lambda i: _hs256(key, claims()),
        "expired": lambda i: mint(claims={"iat": 1, "exp": 2 + i}),
        "foreign-key-real-kid": lambda i: mint(key=foreign),
        "embedded-jwk": lambda i: _signed(
            {"alg": "ES384", "typ": "at+jwt", "jwk": foreign.jwk}, claims(), foreign
        ),
        "ecdsa-der-signature": lambda i: _der(key, claims()),
        "wrong-audience": lambda i: mint(audience="https://other.api"),
        "wrong-issuer": lambda i: (
            f"{segment(header)}.{segment(claims(iss=issuer.issuer + '/'))}.{sig()}"
        ),
        "exp-as-string": lambda i: mint(claims={"exp": str(2**31)}),
        "typ-jwt": lambda i: f"{segment({**header, 'typ': 'JWT'})}.{segment(claims())}.{sig()}",
        "crit-unknown": lambda i: (
            f"{segment({**header, 'crit': ['exp']})}.{segment(claims())}.{sig()}"
        ),
        "duplicate-aud": duplicate_aud,
    }


@dataclass
class Pools:
    """The tokens wrk sends to the apps of one audience, signed with one key."""

    reused: list[str]
    distinct: list[str]
    invalid: list[str]
    kinds: dict[str, str]  # one sample token of each invalid kind, for the self-check


def mint_pools(
    issuer: LocalIssuer, key: SigningKey, audience: str, args: argparse.Namespace
) -> Pools:
    rng = random.Random(0x50AC)
    lifetime = args.seconds + 3600

    def mint(client_id: str = "test-client") -> str:
        return issuer.mint(
            READ, key=key, audience=audience, expires_in=lifetime, client_id=client_id
        )

    reused = [mint(f"svc-{i}") for i in range(8)]
    distinct = [mint() for _ in range(args.pool)]
    makers = invalid_makers(issuer, key, audience, distinct, rng)
    names = list(makers)
    invalid = [makers[names[i % len(names)]](i) for i in range(args.invalid_pool)]
    rng.shuffle(invalid)
    return Pools(reused, distinct, invalid, {name: makers[name](0) for name in names})


def self_check(issuer: LocalIssuer, keys: list[SigningKey], audience: str, pools: Pools) -> None:
    """The pools mean what the run assumes: checked in memory, every key of the run published,
    with the examples' settings."""
    check = LocalIssuer(issuer.issuer, audience=audience)
    check.keys = keys
    server = check.resource_server()
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


class Issuer:
    """The run's LocalIssuer, served on one loopback port so that it can go away (connections
    refused) and come back. Its ``keys`` list is what the JWKS publishes."""

    def __init__(self) -> None:
        self.port = free_port()
        self.local = LocalIssuer(f"http://127.0.0.1:{self.port}/oidc", audience=SHOP)
        self._serving: contextlib.ExitStack | None = None

    def up(self) -> None:
        serving = contextlib.ExitStack()
        serving.enter_context(self.local.serve(port=self.port))
        self._serving = serving

    def down(self) -> None:
        if self._serving is not None:
            self._serving.close()
            self._serving = None

    def served(self, suffix: str) -> int:
        return sum(1 for path in list(self.local.requests) if path.endswith(suffix))


@dataclass
class App:
    """One example app under its server: where it listens, its log, the process serving it."""

    kind: str  # fastapi, flask, django, mcp; flask-cold: the replica started during the outage
    port: int
    log: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    pid: int = 0  # the process that serves requests (gunicorn: the worker)
    started: float = 0.0  # monotonic
    stopped: float = 0.0
    idle_rss: int = 0  # KiB, after the first request, before the load
    samples: list[tuple[float, int]] = field(default_factory=list)  # (s into the load, KiB)
    died: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def example(self) -> str:
        return "flask" if self.kind == "flask-cold" else self.kind

    @property
    def audience(self) -> str:
        return self.url + "/mcp" if self.kind == "mcp" else SHOP


def command(kind: str, port: int) -> list[str]:
    """How each example's README runs it, from the repository root, on 127.0.0.1:``port``."""
    if kind in ("fastapi", "mcp"):
        app = ["--app-dir", "examples/fastapi_app" if kind == "fastapi" else "examples/mcp_server"]
        return [
            PYTHON,
            "-m",
            "uvicorn",
            *app,
            "main:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
    if kind == "django":
        app = ["--chdir", "examples/django_app", "-b", f"127.0.0.1:{port}"]
        return [PYTHON, "-m", "gunicorn", *app, "shop.wsgi:application"]
    config = ["-c", "examples/flask_app/gunicorn.conf.py", "--chdir", "examples/flask_app"]
    return [PYTHON, "-m", "gunicorn", *config, "-b", f"127.0.0.1:{port}", "main:app"]


def start_app(app: App, stack: contextlib.ExitStack) -> None:
    env = {**os.environ, **app.env}
    with app.log.open("wb") as out:
        app.proc = subprocess.Popen(
            command(app.example, app.port),
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    stack.callback(stop, app.proc)
    app.started = time.monotonic()
    deadline = app.started + 60
    while True:
        if app.proc.poll() is not None:
            raise SystemExit(f"{app.kind} exited at start:\n{app.log.read_text(errors='replace')}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(app.url + "/health", timeout=2).status_code == 200:
                break
        if time.monotonic() > deadline:
            raise SystemExit(f"{app.kind} not healthy in 60 s:\n{app.log.read_text('utf-8')}")
        time.sleep(0.1)
    if SERVERS[app.example] == "gunicorn":
        workers = children(app.proc.pid)
        if len(workers) != 1:
            raise SystemExit(f"{app.kind}: expected one gunicorn worker, found {workers}")
        app.pid = workers[0]
    else:
        app.pid = app.proc.pid


def sample(app: App, at: float) -> None:
    assert app.proc is not None
    rss = rss_kib(app.pid)
    if app.proc.poll() is not None or rss is None:
        app.died = app.died or f"server process {app.pid} gone at {at:.0f} s"
    elif SERVERS[app.example] == "gunicorn" and children(app.proc.pid) != [app.pid]:
        app.died = app.died or f"gunicorn worker {app.pid} replaced at {at:.0f} s"
    else:
        app.samples.append((at, rss))


# -- answers and when they are expected -----------------------------------------------------------


def label(response: httpx.Response) -> str:
    """The answer in a few words: the status; for a refusal, which one (by its error and
    description; a 503 must say Retry-After); an MCP error or a JWT in the answer stands out."""
    status = response.status_code
    try:
        body = response.json()
    except ValueError:
        body = None
    if status < 400:
        if isinstance(body, dict) and "jsonrpc" in body:
            result = body.get("result")
            if "error" in body or not isinstance(result, dict) or result.get("isError"):
                return f"{status} MCP error"
        return str(status)
    challenge = response.headers.get("www-authenticate", "")
    if "eyJ" in response.text or "eyJ" in challenge:
        return f"{status} JWT echoed"
    body = body if isinstance(body, dict) else {}
    error, said = body.get("error"), str(body.get("error_description", ""))
    for name, (code, expected_error, words) in REFUSALS.items():
        said_it = (status, error) == (code, expected_error) and words in said
        if said_it and (status != 503 or "retry-after" in response.headers):
            return name
    return f"{status} {error}: {said}"


@dataclass
class Answer:
    label: str
    response: httpx.Response | None
    sent: float  # monotonic, just before the request
    received: float  # and just after its answer


def ask(send: Callable[..., httpx.Response], *args: Any, **kwargs: Any) -> Answer:
    sent = time.monotonic()
    try:
        response = send(*args, **kwargs)
    except httpx.HTTPError as exc:
        return Answer(f"transport error ({type(exc).__name__})", None, sent, time.monotonic())
    return Answer(label(response), response, sent, time.monotonic())


@dataclass
class Outage:
    """When something was taken away and given back (monotonic). The start of each edge is
    recorded just before its action, the end once the action took effect."""

    begin: float = math.inf  # stopping it began
    down: float = math.inf  # it is gone
    end: float = math.inf  # starting it again began
    up: float = math.inf  # it answers again

    def expect(self, answer: Answer, grace: float, normal: str, away: str) -> set[str]:
        """``away`` for a request made wholly while it was gone, ``normal`` for one made wholly
        before or ``grace`` seconds after it came back, either one in between."""
        if answer.sent >= self.down and answer.received <= self.end:
            return {away}
        if answer.received < self.begin or answer.sent >= self.up + grace:
            return {normal}
        return {normal, away}


@dataclass
class KeyLife:
    """One signing key of the run: from when the probe sends tokens of it, from when the apps
    could fetch it, when it left the JWKS (monotonic)."""

    name: str
    key: SigningKey
    published: float = math.inf
    fetchable: float = math.inf
    dropped: float = math.inf

    def expect(self, answer: Answer) -> set[str]:
        """What a fresh token (never cached) of this key may be answered."""
        if answer.received < self.fetchable or answer.sent >= self.dropped + KEY_GRACE:
            return {UNKNOWN_KID}
        if answer.sent >= self.fetchable + KEY_GRACE and answer.received < self.dropped:
            return {"200"}
        return {"200", UNKNOWN_KID}


class Tally:
    """What the Python drivers were answered: per app and check, how often each answer came;
    the unexpected ones counted, the first few kept as examples (timed from ``began``)."""

    def __init__(self) -> None:
        self.began = 0.0
        self.answers: dict[tuple[str, str], Counter[str]] = {}
        self.unexpected: Counter[tuple[str, str]] = Counter()
        self.examples: list[str] = []
        self._lock = threading.Lock()

    def add(self, app: str, check: str, answer: Answer, expected: set[str]) -> bool:
        ok = answer.label in expected
        with self._lock:
            self.answers.setdefault((app, check), Counter())[answer.label] += 1
            if not ok:
                self.unexpected[(app, check)] += 1
                if len(self.examples) < 20:
                    self.examples.append(
                        f"{answer.sent - self.began:.1f} s, {app}, {check}: {answer.label}, "
                        f"expected {' or '.join(sorted(expected))}"
                    )
        return ok


@dataclass
class Run:
    """What the orchestrator and the drivers share."""

    issuer: Issuer
    redis: RedisServer
    apps: dict[str, App]
    keys: dict[str, KeyLife]
    lifetime: int  # seconds every token minted during the run lives
    began: float = 0.0
    signing: str = "K1"  # the key clients' tokens are signed with
    issuer_outage: Outage = field(default_factory=Outage)
    redis_outage: Outage = field(default_factory=Outage)
    cold: App | None = None  # the Flask replica started during the outage, while it runs
    cold_lock: threading.Lock = field(default_factory=threading.Lock)
    tally: Tally = field(default_factory=Tally)
    # Every product answered 201, per app: (id, name, price). A list, not a dict by id: an app
    # that lost its store hands out the same ids again.
    ledger: dict[str, list[tuple[int, str, float]]] = field(default_factory=dict)
    events: list[tuple[float, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    crashed: list[str] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    _tokens: dict[tuple[str, str, str, str | None], str] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def token(self, audience: str, scopes: str, jkt: str | None = None) -> str:
        """A token as a client holds it: one per signing key, audience, scopes and DPoP key,
        reused until the issuer signs with another key."""
        with self._lock:
            name = (self.signing, audience, scopes, jkt)
            if name not in self._tokens:
                self._tokens[name] = self.issuer.local.mint(
                    scopes,
                    key=self.keys[self.signing].key,
                    audience=audience,
                    expires_in=self.lifetime,
                    claims={"cnf": {"jkt": jkt}} if jkt else None,
                )
            return self._tokens[name]

    def wrote(self, app: str, product: dict[str, Any], created: dict[str, Any]) -> None:
        with self._lock:
            entry = (created["id"], product["name"], product["price"])
            self.ledger.setdefault(app, []).append(entry)


# -- the drivers ----------------------------------------------------------------------------------


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def tool(client: httpx.Client, name: str, arguments: dict[str, Any], token: str) -> httpx.Response:
    """One MCP tools/call over streamable HTTP (the example is stateless: no session)."""
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call"}
    headers = {"Accept": "application/json, text/event-stream", **bearer(token)}
    return client.post(
        "/mcp", json={**call, "params": {"name": name, "arguments": arguments}}, headers=headers
    )


def read(client: httpx.Client, app: App, token: str) -> httpx.Response:
    """What wrk's valid classes ask for: product 1 (of the MCP server, with its tool)."""
    if app.kind == "mcp":
        return tool(client, "get_product", {"id": 1}, token)
    return client.get("/products/1", headers=bearer(token))


def product_of(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    return dict(body["result"]["structuredContent"]) if "jsonrpc" in body else dict(body)


def same(answer: Answer, product: dict[str, Any]) -> Answer:
    """``answer`` relabelled when it is a 200 holding another product than ``product``."""
    if answer.response is not None and answer.label == "200":
        got = product_of(answer.response)
        if (got.get("name"), got.get("price")) != (product["name"], product["price"]):
            answer.label = "200 another product"
    return answer


def every(run: Run, period: float) -> Iterator[int]:
    """Ticks ``period`` seconds apart until the run stops."""
    tick, at = 0, time.monotonic()
    while not run.stopping.wait(max(0.0, at - time.monotonic())):
        yield tick
        tick += 1
        at += period


@contextlib.contextmanager
def clients(apps: list[App]) -> Iterator[dict[str, httpx.Client]]:
    """One keep-alive client per app, by kind."""
    with contextlib.ExitStack() as stack:
        yield {
            app.kind: stack.enter_context(httpx.Client(base_url=app.url, timeout=15))
            for app in apps
        }


def proof_for(key: DPoPKey, method: str, path: str, token: str) -> str:
    return key.proof(method, f"http://{DPOP_HOST}{path}", access_token=token)


def dpop_send(
    client: httpx.Client, token: str, proof: str, method: str, path: str, body: Any = None
) -> Answer:
    """A DPoP request as a load balancer passes it on, ``Host: shop.test`` kept (so both
    replicas see one htu)."""
    headers = {"Host": DPOP_HOST, "Authorization": f"DPoP {token}", "DPoP": proof}
    return ask(client.request, method, path, json=body, headers=headers)


def probe(run: Run) -> None:
    """Every second, each app gets a fresh token (never cached) of every published key, K1 on
    after its drop; the cold replica, while it runs, a token of the signing key."""
    with clients(list(run.apps.values())) as http:
        for _ in every(run, 1.0):
            for kind, app in run.apps.items():
                for life in run.keys.values():
                    if life.published > time.monotonic():
                        continue
                    token = run.issuer.local.mint(
                        READ, key=life.key, audience=app.audience, expires_in=run.lifetime
                    )
                    answer = ask(read, http[kind], app, token)
                    check = f"fresh token of {life.name}"
                    run.tally.add(kind, check, answer, life.expect(answer))
            with run.cold_lock:
                cold = run.cold
                if cold is not None:
                    with httpx.Client(base_url=cold.url, timeout=15) as client:
                        answer = ask(read, client, cold, run.token(SHOP, READ))
                    expected = run.issuer_outage.expect(answer, RECOVERY_GRACE, "200", NO_KEYS)
                    run.tally.add(cold.kind, "token of the signing key", answer, expected)


def writer(run: Run) -> None:
    """Every 2 s, each shopping API is sent a new product (write scope) and asked for it back."""
    with clients([run.apps[kind] for kind in SHOPS]) as http:
        for tick in every(run, 2.0):
            for kind in SHOPS:
                token = run.token(SHOP, f"{READ} {WRITE}")
                product = {"name": f"soak {kind} {tick}", "price": tick + 0.5}
                answer = ask(http[kind].post, "/products", json=product, headers=bearer(token))
                if run.tally.add(kind, "POST a product", answer, {"201"}):
                    assert answer.response is not None
                    created = answer.response.json()
                    run.wrote(kind, product, created)
                    path = f"/products/{created['id']}"
                    back = ask(http[kind].get, path, headers=bearer(token))
                    run.tally.add(kind, "GET it back", same(back, product), {"200"})


def dpop(run: Run) -> None:
    """Every 0.5 s a DPoP request with a fresh proof, to FastAPI and Flask in turn (every 8th a
    POST, read back), its proof then replayed on both: their one Redis store refuses it."""
    key = DPoPKey.generate("ES256")

    def expect(answer: Answer, normal: str) -> set[str]:
        return run.redis_outage.expect(answer, REDIS_GRACE, normal, NO_STORE)

    with clients([run.apps[kind] for kind in REPLICAS]) as http:
        for tick in every(run, 0.5):
            kind = REPLICAS[tick % 2]
            token = run.token(SHOP, f"{READ} {WRITE}", jkt=key.jkt)
            write = tick % 8 >= 6  # one POST to each replica in every eight requests
            product = {"name": f"soak dpop {tick}", "price": tick + 0.25} if write else None
            method, path = ("POST", "/products") if write else ("GET", "/products/1")
            proof = proof_for(key, method, path, token)
            answer = dpop_send(http[kind], token, proof, method, path, product)
            ok = "201" if write else "200"
            run.tally.add(kind, f"DPoP {method}, fresh proof", answer, expect(answer, ok))
            if answer.label != ok:
                continue
            if product is not None:
                assert answer.response is not None
                created = answer.response.json()
                run.wrote(kind, product, created)
                path_back = f"/products/{created['id']}"
                proof_back = proof_for(key, "GET", path_back, token)
                back = same(dpop_send(http[kind], token, proof_back, "GET", path_back), product)
                run.tally.add(kind, "DPoP GET it back", back, expect(back, "200"))
            for target in REPLICAS:
                again = dpop_send(http[target], token, proof, method, path, product)
                where = "" if target == kind else ", on the other replica"
                check = f"DPoP {method}, proof replayed{where}"
                run.tally.add(target, check, again, expect(again, REPLAYED))


def mcp(run: Run) -> None:
    """Every 2 s, MCP tool calls: list_products; add_product and get_product of it (read and
    write scopes); add_product with a read-only token (403 insufficient_scope)."""
    app = run.apps["mcp"]
    with httpx.Client(base_url=app.url, timeout=15) as client:
        for tick in every(run, 2.0):
            full, reader = run.token(app.audience, f"{READ} {WRITE}"), run.token(app.audience, READ)
            listed = ask(tool, client, "list_products", {}, reader)
            run.tally.add("mcp", "list_products", listed, {"200"})
            product = {"name": f"soak mcp {tick}", "price": tick + 0.75}
            added = ask(tool, client, "add_product", product, full)
            if run.tally.add("mcp", "add_product", added, {"200"}):
                assert added.response is not None
                created = product_of(added.response)
                run.wrote("mcp", product, created)
                back = ask(tool, client, "get_product", {"id": created["id"]}, reader)
                run.tally.add("mcp", "get_product of it", same(back, product), {"200"})
            refused = ask(tool, client, "add_product", product, reader)
            run.tally.add("mcp", "add_product, read-only token", refused, {FORBIDDEN})


def guarded(run: Run, driver: Callable[[Run], None]) -> threading.Thread:
    """``driver`` in a thread; a crash is recorded (and fails the run), not lost."""

    def body() -> None:
        try:
            driver(run)
        except Exception:
            run.crashed.append(f"driver {driver.__name__} crashed:\n{traceback.format_exc()}")

    thread = threading.Thread(target=body, name=driver.__name__, daemon=True)
    thread.start()
    return thread


# -- the phases -----------------------------------------------------------------------------------


def phases(
    run: Run, seconds: int, switch_at: float, work: Path, stack: contextlib.ExitStack
) -> list[tuple[float, Callable[[], str]]]:
    """The run's changes: (seconds into the load, action saying what it did)."""
    k1, k2, k3 = run.keys["K1"], run.keys["K2"], run.keys["K3"]
    local = run.issuer.local
    kept: dict[str, str] = {}  # the token and proof used just before Redis stops
    dpop_key = DPoPKey.generate("ES256")

    def publish() -> str:
        k2.published = k2.fetchable = time.monotonic()
        local.keys = [k1.key, k2.key]
        return "K2 published beside K1"

    def switch() -> str:
        run.signing = "K2"
        return "clients' tokens (wrk's too) signed with K2"

    def drop() -> str:
        k1.dropped = time.monotonic()
        local.keys = [k2.key]
        return "K1 dropped from the JWKS"

    def issuer_down() -> str:
        run.issuer_outage.begin = time.monotonic()
        run.issuer.down()
        run.issuer_outage.down = k3.published = time.monotonic()
        local.keys = [k2.key, k3.key]
        cold = App("flask-cold", free_port(), work / "flask-cold.log", run.apps["flask"].env)
        start_app(cold, stack)
        run.cold = cold
        return (
            f"issuer down (connections refused), K3 published; a second Flask replica "
            f"(worker {cold.pid}) started without keys"
        )

    def issuer_up() -> str:
        run.issuer_outage.end = k3.fetchable = time.monotonic()
        run.issuer.up()
        run.issuer_outage.up = time.monotonic()
        return "issuer back"

    def cold_stop() -> str:
        with run.cold_lock:
            cold, run.cold = run.cold, None
        assert cold is not None
        assert cold.proc is not None
        stop(cold.proc)
        return "the second Flask replica stopped"

    def dpop_once(token: str, proof: str) -> Answer:
        with httpx.Client(base_url=run.apps["fastapi"].url, timeout=15) as client:
            return dpop_send(client, token, proof, "GET", "/products/1")

    def redis_down() -> str:
        token = kept["token"] = run.token(SHOP, READ, jkt=dpop_key.jkt)
        proof = kept["proof"] = proof_for(dpop_key, "GET", "/products/1", token)
        check = "DPoP proof used just before the Redis restart"
        run.tally.add("fastapi", check, dpop_once(token, proof), {"200"})
        run.redis_outage.begin = time.monotonic()
        run.redis.stop()
        run.redis_outage.down = time.monotonic()
        return "Redis stopped"

    def redis_up() -> str:
        run.redis_outage.end = time.monotonic()
        run.redis.start()
        run.redis_outage.up = time.monotonic()
        return "Redis started again (empty)"

    def replay_across() -> str:
        answer = dpop_once(kept["token"], kept["proof"])
        run.tally.add("fastapi", "that proof replayed after the restart", answer, {"200", REPLAYED})
        if answer.label == "200":
            run.notes.append(
                "A DPoP proof accepted just before Redis stopped was accepted again after its "
                "restart: a Redis that keeps nothing across restarts forgets the proofs of the "
                "last dpop_max_age (60 s)."
            )
        return f"the proof used before the restart replayed: {answer.label}"

    # Random kids restart every app's refetch cooldown in step with the load's start (one
    # refetch every 5 s from then on): a change the apps must discover at their next refetch is
    # made half a cooldown off that beat, or the grace window after it would never be needed.
    off_beat = COOLDOWN / 2
    redis_at = 0.62 * seconds
    redis_back = redis_at + min(0.08 * seconds, 45.0)
    return [
        (0.10 * seconds + off_beat, publish),
        (switch_at, switch),
        (0.30 * seconds + off_beat, drop),
        (0.40 * seconds, issuer_down),
        (0.50 * seconds + off_beat, issuer_up),
        (0.60 * seconds, cold_stop),
        (redis_at, redis_down),
        (redis_back, redis_up),
        (redis_back + REDIS_GRACE + 1, replay_across),
    ]


# -- wrk ------------------------------------------------------------------------------------------


@dataclass
class Load:
    app: App
    cls: str
    proc: subprocess.Popen[str]
    result: dict[str, Any] = field(default_factory=dict)


def start_wrk(
    app: App,
    cls: str,
    files: tuple[Path, Path | None],
    switch_epoch: int,
    args: argparse.Namespace,
    lua: Path,
) -> Load:
    """wrk sending class ``cls`` to ``app``, paced to ``--rate``; the token file switches to
    ``files[1]`` (when given) at the wall-clock second ``switch_epoch``."""
    seed = str(random.SystemRandom().randrange(1, 2**31))
    pause = args.connections * 1000 / args.rate
    first, later = files
    cmd = ["wrk", "-t1", f"-c{args.connections}", f"-d{args.seconds}s", "--timeout", "10s"]
    cmd += ["-s", str(lua), app.url, "--", cls, str(first), seed]
    cmd += [str(later or ""), str(switch_epoch if later else 0), f"{pause:.1f}"]
    cmd += ["mcp" if app.kind == "mcp" else "rest"]
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


def mib(kib: float) -> str:
    return f"{kib / 1024:.1f}"


def growth(samples: list[tuple[float, int]]) -> tuple[int, int]:
    """RSS growth (KiB) over the first and the second half of the measured window: the maximum
    of each half against the start and against the first half's maximum, so that one
    allocator hiccup is not a trend."""
    start_t, start = samples[0]
    middle_t = (start_t + samples[-1][0]) / 2
    first = max(r for t, r in samples if t <= middle_t)
    second = max((r for t, r in samples if t > middle_t), default=first)
    return first - start, second - first


def scan_log(path: Path) -> tuple[int, int, int]:
    """(lines, tracebacks, lines holding a JWT-looking string) of a server log."""
    lines = tracebacks = tokens = 0
    with path.open("rb") as f:
        for line in f:
            lines += 1
            tracebacks += b"Traceback" in line
            tokens += b"eyJ" in line
    return lines, tracebacks, tokens


def scrape(app: App) -> dict[str, float]:
    """The app's Prometheus metrics (GET /metrics): {sample with its labels: value}."""
    samples = {}
    for line in httpx.get(app.url + "/metrics", timeout=15).text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def listing(app: App, run: Run) -> dict[int, tuple[str, float]]:
    """Every product the app holds now, by id."""
    token = run.token(app.audience, READ)
    with httpx.Client(base_url=app.url, timeout=30) as client:
        if app.kind == "mcp":
            response = tool(client, "list_products", {}, token)
            products = response.json()["result"]["structuredContent"]["result"]
        else:
            response = client.get("/products", headers=bearer(token))
            products = response.json()
    if response.status_code != 200:
        raise ValueError(f"listing answered {response.status_code}")
    return {p["id"]: (p["name"], p["price"]) for p in products}


def prefill(run: Run, pools: dict[tuple[str, str], Pools]) -> None:
    """Fill each app's token cache (plus a margin) so that the RSS baseline has it full.

    The tokens are the end of the K1 distinct pool, which wrk reaches last: its first requests
    evict them, so the load churns the cache from its first second.
    """

    def send(app: App, tokens: list[str]) -> Counter[str]:
        with httpx.Client(base_url=app.url, timeout=15) as client:
            return Counter(ask(read, client, app, token).label for token in tokens)

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=4 * len(run.apps)) as pool:
        jobs = {}
        for app in run.apps.values():
            tokens = pools[(app.audience, "K1")].distinct[-(TOKEN_CACHE + 256) :]
            jobs[app.kind] = [pool.submit(send, app, tokens[i::4]) for i in range(4)]
        for kind, parts in jobs.items():
            answers = sum((job.result() for job in parts), Counter[str]())
            if set(answers) != {"200"}:
                raise SystemExit(f"{kind}: valid tokens refused while filling the cache: {answers}")
    print(f"token caches filled in {time.monotonic() - started:.0f} s", flush=True)


def prepare(
    args: argparse.Namespace, work: Path, stack: contextlib.ExitStack
) -> tuple[Run, dict[tuple[str, str], Pools]]:
    """The issuer, Redis, the token pools and the four apps, started and answering."""
    issuer = Issuer()
    issuer.up()
    stack.callback(issuer.down)
    (work / "redis").mkdir()
    redis = RedisServer(work / "redis")
    redis.start()
    stack.callback(redis.stop)
    apps = {kind: App(kind, free_port(), work / f"{kind}.log", {}) for kind in SERVERS}
    for app in apps.values():
        app.env = {"AUTH_ISSUER": issuer.local.issuer, "AUTH_AUDIENCE": app.audience}
        if app.kind in REPLICAS:
            app.env |= {"AUTH_DPOP": "allowed", "AUTH_DPOP_NONCE": "off"}
            app.env["AUTH_REPLAY_STORE"] = redis.url
        else:
            app.env["AUTH_DPOP"] = "off"
    keys = [issuer.local.current_key, SigningKey.generate("ES384"), SigningKey.generate("ES384")]
    lives = {f"K{i + 1}": KeyLife(f"K{i + 1}", key) for i, key in enumerate(keys)}
    lives["K1"].published = lives["K1"].fetchable = -math.inf
    started = time.monotonic()
    pools = {}
    for audience in sorted({app.audience for app in apps.values()}):
        for name in ("K1", "K2"):
            pools[(audience, name)] = mint_pools(issuer.local, lives[name].key, audience, args)
            self_check(issuer.local, keys[:2], audience, pools[(audience, name)])
    print(
        f"minted {len(pools)} pools of {args.pool + 8} valid and {args.invalid_pool} invalid "
        f"tokens in {time.monotonic() - started:.0f} s; issuer {issuer.local.issuer}; "
        f"Redis {redis.url}",
        flush=True,
    )
    run = Run(issuer, redis, apps, lives, lifetime=args.seconds + 3600)
    for app in apps.values():
        start_app(app, stack)
        with httpx.Client(base_url=app.url, timeout=15) as client:
            answer = ask(read, client, app, run.token(app.audience, READ))
        if answer.label != "200":  # the first discovery and JWKS fetch, where not warmed up
            raise SystemExit(f"{app.kind}: a valid token answered {answer.label} before the load")
        app.idle_rss = rss_kib(app.pid) or 0
        print(f"{app.kind}: {SERVERS[app.kind]} pid {app.pid} on {app.url}", flush=True)
    return run, pools


def start_load(
    run: Run,
    pools: dict[tuple[str, str], Pools],
    args: argparse.Namespace,
    work: Path,
    stack: contextlib.ExitStack,
) -> tuple[list[Load], float]:
    """wrk for every app and class; the token files switch to K2's at one wall-clock second,
    returned as seconds into the load."""
    lua = work / "soak.lua"
    lua.write_text(LUA)

    def write(name: str, lines: list[str]) -> Path:
        path = work / f"{name}.txt"
        if not path.exists():
            path.write_text("\n".join(lines) + "\n")
        return path

    wall = time.time()
    switch_epoch = math.ceil(wall + 0.2 * args.seconds)
    loads = []
    for app in run.apps.values():
        aud = "mcp" if app.kind == "mcp" else "shop"
        for cls in EXPECTED:
            first, later = pools[(app.audience, "K1")], pools[(app.audience, "K2")]
            files: tuple[Path, Path | None]
            if cls == "random-kid":  # payloads only, whatever the key
                files = (write(f"{aud}-payloads", [split(t)[1] for t in first.distinct]), None)
            else:
                attr = cls.removeprefix("valid-")
                files = (
                    write(f"{aud}-K1-{cls}", getattr(first, attr)),
                    write(f"{aud}-K2-{cls}", getattr(later, attr)),
                )
            loads.append(start_wrk(app, cls, files, switch_epoch, args, lua))
            stack.callback(stop, loads[-1].proc)
    run.began = run.tally.began = time.monotonic() - (time.time() - wall)
    return loads, switch_epoch - wall


def drive(
    run: Run,
    loads: list[Load],
    actions: list[tuple[float, Callable[[], str]]],
    args: argparse.Namespace,
) -> tuple[float, list[str]]:
    """The phases on time and RSS sampled until wrk is done; the seconds taken and the phases
    that did not happen."""
    threads = [guarded(run, driver) for driver in (probe, writer, dpop, mcp)]
    warmup = max(5.0, min(15.0, args.seconds / 20))
    print(
        f"load: {len(loads)} wrk processes x {args.connections} connections at {args.rate} "
        f"requests/s each, and 4 drivers, for {args.seconds} s (RSS baseline after "
        f"{warmup:.0f} s)",
        flush=True,
    )
    pending = sorted(actions, key=lambda action: action[0])
    next_sample, next_report = run.began + warmup, run.began + 60
    try:
        while any(load.proc.poll() is None for load in loads):
            now = time.monotonic()
            if pending and now - run.began >= pending[0][0]:
                what = pending.pop(0)[1]()
                run.events.append((now - run.began, what))
                print(f"  {now - run.began:.0f} s: {what}", flush=True)
            if now >= next_sample:
                for app in run.apps.values():
                    sample(app, now - run.began)
                next_sample += args.interval
            if now >= next_report:
                apps = [app for app in run.apps.values() if app.samples]
                rss = ", ".join(f"{app.kind} {mib(app.samples[-1][1])}" for app in apps)
                print(f"  {now - run.began:.0f} s: RSS MiB {rss}", flush=True)
                next_report += 60
            time.sleep(0.2)
    finally:
        run.stopping.set()
        for thread in threads:
            thread.join(30)
    elapsed = time.monotonic() - run.began
    for load in loads:
        load.result = parse_wrk(load.proc.stdout.read() if load.proc.stdout else "")
    return elapsed, [action.__name__ for _, action in pending]


def check_writes(run: Run) -> tuple[list[str], list[str]]:
    """Every product answered 201 (MCP: added) is listed as written; nothing else was added.
    Returns the table's rows and what failed."""
    rows, failures = [], []
    for kind in (*SHOPS, "mcp"):
        written = run.ledger.get(kind, [])
        try:
            held = listing(run.apps[kind], run)
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            failures.append(f"{kind}: cannot list its products at the end ({exc!r})")
            continue
        lost = [i for i, name, price in written if held.get(i) != (name, price)]
        phantom = sorted(set(held) - {i for i, _, _ in written} - SEEDED)
        listed = len(held) - len(SEEDED)
        rows.append(f"| {kind} | {len(written)} | {listed} | {len(lost)} | {len(phantom)} |")
        if lost or phantom:
            failures.append(f"{kind}: lost writes {lost[:10]}, phantom products {phantom[:10]}")
        if not written:
            failures.append(f"{kind}: no product was written")
    return rows, failures


def report(
    run: Run, loads: list[Load], elapsed: float, missed: list[str], args: argparse.Namespace
) -> list[str]:
    """Check what only the end can show, print the summary tables; return what failed."""
    failures = [f"phase not reached: {name}" for name in missed] + run.crashed
    writes, failed = check_writes(run)
    failures += failed
    metrics: dict[str, dict[str, float]] = {}
    for app in run.apps.values():
        try:
            metrics[app.kind] = scrape(app)
        except httpx.HTTPError as exc:
            failures.append(f"{app.kind}: /metrics unanswered after the load ({exc!r})")
        assert app.proc is not None
        stop(app.proc)  # flushes the logs scanned below
        app.stopped = time.monotonic()
        if app.died:
            failures.append(f"{app.kind}: {app.died}")

    print(
        f"\nSoak: {elapsed:.0f} s on 127.0.0.1, {len(loads)} wrk processes (-t1 "
        f"-c{args.connections}, {args.rate} requests/s each), {args.pool} distinct valid tokens "
        f"per key and audience (token cache {TOKEN_CACHE})\n"
    )
    print("| s | phase |\n|---:|---|")
    for at, what in run.events:
        print(f"| {at:.0f} | {what} |")

    print("\n| app | class | requests | req/s | expected | unexpected | p99 ms | max ms |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    total = unexpected_total = 0
    for load in loads:
        r = load.result
        want = EXPECTED[load.cls]
        other = {code: n for code, n in r["statuses"].items() if code != want}
        transport = r["connect"] + r["read"] + r["write"] + r["timeout"]
        bad = sum(other.values()) + transport + r["bad_challenge"] + r["echoed"] + r["tool_errors"]
        total += r["requests"]
        unexpected_total += bad
        if bad:
            failures.append(
                f"{load.app.kind}/{load.cls}: statuses {other}, transport errors {transport} "
                f"(connect/read/write/timeout {r['connect']}/{r['read']}/{r['write']}/"
                f"{r['timeout']}), bad challenges {r['bad_challenge']}, echoed {r['echoed']}, "
                f"MCP tool errors {r['tool_errors']}"
            )
        print(
            f"| {load.app.kind} | {load.cls} | {r['requests']} | {r['requests'] / elapsed:.0f} "
            f"| {want} | {bad} | {r['p99_ms']:.1f} | {r['max_ms']:.1f} |"
        )
    print(f"| all | all | {total} | {total / elapsed:.0f} | | {unexpected_total} | | |")

    print("\n| app | driver check | answers | unexpected |\n|---|---|---|---:|")
    for (kind, check), answers in sorted(run.tally.answers.items()):
        shown = ", ".join(f"{name} x{n}" for name, n in answers.most_common())
        print(f"| {kind} | {check} | {shown} | {run.tally.unexpected[(kind, check)]} |")
    if run.tally.unexpected:
        failures.append(
            f"{sum(run.tally.unexpected.values())} unexpected answers to the drivers, first: "
            + "; ".join(run.tally.examples)
        )

    print("\n| app | written | listed at the end | lost | phantom |\n|---|---:|---:|---:|---:|")
    print("\n".join(writes))

    print(
        "\n| app | JWKS fetches ok / failed | allowed | RSS idle / start / end / max MiB "
        "| growth 1st / 2nd half MiB | memory |\n|---|---:|---:|---:|---:|---|"
    )
    budget = int(args.rss_budget * 1024)
    for app in run.apps.values():
        samples = metrics.get(app.kind, {})
        fetched = Counter[str]()
        for name, value in samples.items():
            if name.startswith("bearerguard_jwks_fetches_total{"):
                fetched["failed" if 'result="failure"' in name else "ok"] += int(value)
        # The warm-up or first request, then one per unknown-kid cooldown and one per TTL.
        uptime = app.stopped - app.started
        allowed = 2 + math.floor(uptime / COOLDOWN) + math.floor(uptime / JWKS_TTL)
        if fetched.total() > allowed:
            failures.append(f"{app.kind}: {fetched.total()} JWKS fetches, allowed {allowed}")
        if len(app.samples) < 3:
            failures.append(f"{app.kind}: too few RSS samples ({len(app.samples)})")
            continue
        series = [r for _, r in app.samples]
        grow1, grow2 = growth(app.samples)
        verdict = "flat" if grow2 < budget else "GROWING"
        if grow2 >= budget:
            failures.append(f"{app.kind}: RSS grew {mib(grow2)} MiB over the second half")
        rss = " / ".join(mib(v) for v in (app.idle_rss, series[0], series[-1], max(series)))
        print(
            f"| {app.kind} ({SERVERS[app.kind]} pid {app.pid}) | {fetched['ok']} / "
            f"{fetched['failed']} | {allowed} | {rss} | {mib(grow1)} / {mib(grow2)} | {verdict} |"
        )
    print(
        f"issuer: {run.issuer.served('/openid-configuration')} discovery and "
        f"{run.issuer.served('/jwks')} JWKS requests answered"
    )

    print("\nRefusals by reason, as each app counted them (its /metrics):")
    for kind, samples in metrics.items():
        reasons = Counter[str]()
        for name, value in samples.items():
            found = re.match(r'bearerguard_authentications_total\{reason="(\w+)"', name)
            if found and value:
                reasons[found.group(1)] += int(value)
        print(f"- {kind}: " + ", ".join(f"{reason} {n}" for reason, n in reasons.most_common()))

    print()
    for log in sorted(Path(loads[0].app.log.parent).glob("*.log")):
        count, tracebacks, tokens = scan_log(log)
        print(f"{log.stem} log: {count} lines, {tracebacks} tracebacks, {tokens} with a JWT")
        if tracebacks or tokens:
            failures.append(f"{log.stem}: {tracebacks} tracebacks, {tokens} JWTs in its log")
    if args.samples:
        for app in run.apps.values():
            trail = " ".join(f"{t:.0f}:{mib(r)}" for t, r in app.samples)
            print(f"{app.kind} RSS samples (s:MiB): {trail}")
    for note in run.notes:
        print(f"\nNote: {note}")
    return failures


def run_soak(args: argparse.Namespace, work: Path) -> int:
    with contextlib.ExitStack() as stack:  # unwinds on failure, Ctrl-C and SIGTERM too
        run, pools = prepare(args, work, stack)
        prefill(run, pools)
        loads, switch_at = start_load(run, pools, args, work, stack)
        actions = phases(run, args.seconds, switch_at, work, stack)
        elapsed, missed = drive(run, loads, actions, args)
        failures = report(run, loads, elapsed, missed, args)
    if failures:
        print("\nFAILED:\n- " + "\n- ".join(failures))
        return 1
    print(
        "\nOK: every phase happened; no unexpected answer, no lost write, JWKS fetches within "
        f"the cooldown, RSS grew less than {args.rss_budget} MiB over the second half in every "
        "server process, clean logs"
    )
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=600, help="load duration (default 600)")
    parser.add_argument(
        "--rate", type=float, default=20.0, help="requests/s of each wrk process (default 20)"
    )
    parser.add_argument(
        "--connections", type=int, default=2, help="per wrk process (default 2; 16 wrk in all)"
    )
    parser.add_argument("--pool", type=int, default=8000, help="distinct valid tokens per pool")
    parser.add_argument("--invalid-pool", type=int, default=4000, help="invalid tokens per pool")
    parser.add_argument("--interval", type=float, default=5.0, help="RSS sampling period (s)")
    parser.add_argument(
        "--rss-budget", type=float, default=2.0, help="second-half RSS growth that fails (MiB)"
    )
    parser.add_argument("--samples", action="store_true", help="print every RSS sample")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args()
    if args.seconds < 100 or not 1 <= args.connections <= 64 or args.rate <= 0:
        parser.error("need --seconds >= 100 (room for every phase), 1 <= --connections <= 64")
    if args.pool < TOKEN_CACHE + 256:
        parser.error(f"--pool must exceed the token cache: at least {TOKEN_CACHE + 256}")
    for tool_name in ("wrk", "redis-server"):
        if shutil.which(tool_name) is None:
            raise SystemExit(f"{tool_name} not found: apt-get install {tool_name} (Debian's)")
    # Ctrl-C (even when started with SIGINT ignored) and SIGTERM unwind the same way: every
    # process started here is stopped on the way out.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = Path(tempfile.mkdtemp(prefix="bearerguard-soak-"))
    code = 1
    try:
        code = run_soak(args, work)
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
