"""A fast mutation fuzzer: valid inputs, mutated, fed to every face and adapter in process.

Seeds are real: tokens signed by real keys (ES384, RS256, EdDSA, ES256), a JWKS document, DPoP
proofs for a bound token, MCP JSON-RPC bodies. Each input is one seed mutated one to three
times (bytes, base64url segments, JSON members: duplicates, types, huge numbers, deep nesting,
unicode; header spellings and counts). The oracle:

- only the documented outcomes: an ``AccessToken`` or an ``AuthError`` (``JWKSError`` for a
  JWKS, ``Rejected`` for an MCP body); any other exception is a crash;
- the sync face, the async face, the ASGI middleware and the WSGI middleware agree on every
  header (the same status; on success the same subject);
- no input takes longer than ``SLOW`` seconds.

``run(n, seed)`` returns a ``Report``; ``tests/test_mutfuzz.py`` runs a short slice and
``bench/mutfuzz.py`` millions across processes (``make fuzz``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from jwt.algorithms import ECAlgorithm, OKPAlgorithm

from bearerguard import AccessToken, AuthError, ResourceServer
from bearerguard import asgi as bg_asgi
from bearerguard import wsgi as bg_wsgi
from bearerguard.dpop import DPoPKey
from bearerguard.keys import JWKSError, KeySet
from bearerguard.mcp import Rejected, check_headers, parse_calls
from bearerguard.request import RequestView
from bearerguard.rules import Requirement, Rule
from bearerguard.testing import LocalIssuer

_ALGORITHMS = {"ES384": ECAlgorithm(ECAlgorithm.SHA384), "ES256": ECAlgorithm(ECAlgorithm.SHA256)}
_ALGORITHMS["EdDSA"] = OKPAlgorithm()

AUDIENCE = "https://api.test"
URL = "https://api.test/read"
SLOW = 1.0  # seconds: no single input may take longer
NOW = 1_800_000_000.0


def clock() -> float:
    return NOW


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# -- mutations ---------------------------------------------------------------------------------

ODD_VALUES: list[Any] = [
    None,
    True,
    0,
    -1,
    2**64,
    10**400,
    1e308,
    "",
    "\ud800",
    "\u202e",
    "\x00",
    "a" * 5000,
    [],
    {},
    [[[[[[[[]]]]]]]],
    {"": {"": {"": []}}},
    "read write admin",
    ["read", 7],
]


def mutate_json(value: Any, rng: random.Random) -> Any:
    """One structural change to a decoded JSON document."""
    if isinstance(value, dict) and value and rng.random() < 0.8:
        key = rng.choice(list(value))
        choice = rng.randrange(5)
        changed = dict(value)
        if choice == 0:
            changed[key] = rng.choice(ODD_VALUES)
        elif choice == 1:
            del changed[key]
        elif choice == 2:
            changed[key + rng.choice(["", "x", "\u0000", " "])] = mutate_json(value[key], rng)
        elif choice == 3:
            changed[key] = mutate_json(value[key], rng)
        else:
            changed[
                rng.choice(["alg", "kid", "typ", "iss", "aud", "exp", "crit", "cnf", "jwk"])
            ] = rng.choice(ODD_VALUES)
        return changed
    if isinstance(value, list) and value:
        changed_list = list(value)
        changed_list[rng.randrange(len(value))] = rng.choice(ODD_VALUES)
        return changed_list
    return rng.choice(ODD_VALUES)


def dumps(value: Any, rng: random.Random) -> bytes:
    """JSON text, sometimes with a duplicated member or deep nesting spliced in."""
    text = json.dumps(value)
    roll = rng.random()
    if roll < 0.1 and text.startswith("{") and len(text) > 2:
        first = text[1:].split(",", 1)[0].rstrip("}")  # duplicate the first member
        text = "{" + first + "," + text[1:]
    elif roll < 0.15:
        depth = rng.choice([50, 900, 5000])
        text = "[" * depth + "]" * depth
    return text.encode("utf-8", "surrogatepass")


def mutate_text(text: str, rng: random.Random) -> str:
    """Byte-level and segment-level damage to a compact JWS or any text."""
    if not text:
        return rng.choice(["", ".", "..", "a"])
    roll = rng.randrange(8)
    i = rng.randrange(len(text))
    if roll == 0:
        return text[:i] + rng.choice("A_-.=+/ ~\t,\x00é") + text[i + 1 :]
    if roll == 1:
        j = min(len(text), i + rng.randrange(1, 64))
        return text[:i] + text[j:]
    if roll == 2:
        return text[:i] + text[i : i + rng.randrange(1, 64)] * rng.randrange(1, 4) + text[i:]
    parts = text.split(".")
    if roll == 3 and len(parts) > 1:
        rng.shuffle(parts)
        return ".".join(parts)
    if roll in (4, 5) and len(parts) >= 2:
        k = rng.randrange(min(2, len(parts)))
        try:
            decoded = json.loads(unb64(parts[k]))
        except (ValueError, UnicodeDecodeError, RecursionError):
            return text[::-1]
        parts[k] = b64(dumps(mutate_json(decoded, rng), rng))
        return ".".join(parts)
    if roll == 6:
        return text + "." + b64(rng.randbytes(rng.randrange(0, 80)))
    return text[: rng.randrange(len(text))]


def mutate_header(header: str, rng: random.Random) -> list[str]:
    """An Authorization header (sometimes several) around a mutated token."""
    scheme, _, token = header.partition(" ")
    for _ in range(rng.randrange(1, 4)):
        token = mutate_text(token, rng)
    roll = rng.randrange(10)
    if roll == 0:
        scheme = rng.choice(["bearer", "BEARER", "Basic", "DPoP", "", "Bearer,"])
    elif roll == 1:
        return [f"{scheme} {token}", f"{scheme} {token}"]
    elif roll == 2:
        return [f"{scheme}{rng.choice(['  ', chr(9), ', ', ''])}{token}"]
    return [f"{scheme} {token}"]


# -- the targets -------------------------------------------------------------------------------


@dataclass
class Report:
    inputs: int = 0
    seconds: float = 0.0
    outcomes: Counter[str] = field(default_factory=Counter)
    crashes: list[str] = field(default_factory=list)
    disagreements: list[str] = field(default_factory=list)
    slowest: float = 0.0

    def merge(self, other: Report) -> None:
        self.inputs += other.inputs
        self.outcomes.update(other.outcomes)
        self.crashes.extend(other.crashes)
        self.disagreements.extend(other.disagreements)
        self.slowest = max(self.slowest, other.slowest)


def outcome(result: Any) -> tuple[Any, ...]:
    if isinstance(result, AccessToken):
        return ("ok", result.sub)
    if isinstance(result, AuthError):
        return ("refused", result.status_code, result.reason.value)
    return ("none",)


class Targets:
    """Servers and adapters built once; each input runs through all that apply."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.issuers = [
            LocalIssuer("https://issuer.test/oidc", audience=AUDIENCE, alg=alg, clock=clock)
            for alg in ("ES384", "RS256", "EdDSA", "ES256")
        ]
        issuer = self.issuers[0]
        self.servers = [i.resource_server(AUDIENCE) for i in self.issuers]
        self.dpop_server = issuer.resource_server(AUDIENCE, dpop="allowed")
        self.requirement = Requirement(scopes=("read",))
        read = [Rule("/read", scopes=["read"])]  # what self.requirement is, as a path rule
        self.asgi = bg_asgi.BearerAuthMiddleware(
            self._asgi_app, server=issuer.resource_server(), rules=read
        )
        self.wsgi = bg_wsgi.BearerAuthMiddleware(
            self._wsgi_app, server=issuer.resource_server(), rules=read
        )
        self.key = DPoPKey.generate("ES256")
        self.bound = issuer.mint("read", sub="bound", claims={"cnf": {"jkt": self.key.jkt}})
        self.seeds_headers = [f"Bearer {i.mint('read write', sub='seed')}" for i in self.issuers]
        self.seed_jwks = json.dumps(issuer.jwks())
        self.seed_mcp = json.dumps(
            [
                {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "x"}},
                {"jsonrpc": "2.0", "method": "notifications/initialized"},
            ]
        )
        for server in (*self.servers, self.dpop_server):  # keys in memory before any timing
            server.warm_up()
        self.asgi.server.warm_up()
        self.wsgi.server.warm_up()

    @staticmethod
    async def _asgi_app(scope: Any, receive: Any, send: Any) -> None:
        token = scope.get("auth")
        body = json.dumps({"sub": token.sub if token else None}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    def _wsgi_app(environ: Any, start_response: Any) -> list[bytes]:
        token = environ.get(bg_wsgi.ENVIRON_KEY)
        start_response("200 OK", [])
        return [json.dumps({"sub": token.sub if token else None}).encode()]

    # -- one input each ------------------------------------------------------------------------

    def signed(self, rng: random.Random) -> list[str]:
        """A token whose header or claims were mutated and then signed again with the real
        key: the checks after the signature (claims, typ, crit, audience...) get the input."""
        index = rng.choice((0, 2, 3))  # ES384, EdDSA, ES256: cheap to sign
        issuer, server = self.issuers[index], self.servers[index]
        h, p, _ = self.seeds_headers[index].partition(" ")[2].split(".")
        header, claims = json.loads(unb64(h)), json.loads(unb64(p))
        if rng.random() < 0.3:
            header = mutate_json(header, rng)
        else:
            for _ in range(rng.randrange(1, 3)):
                claims = mutate_json(claims, rng)
        signing_input = f"{b64(dumps(header, rng))}.{b64(dumps(claims, rng))}"
        key = issuer.current_key
        algorithm = _ALGORITHMS[key.alg]
        signature = algorithm.sign(signing_input.encode(), key.private_key)
        values = [f"Bearer {signing_input}.{b64(signature)}"]
        return self._compare(server, values, rng)

    def header(self, rng: random.Random) -> list[str]:
        """A mutated header through the sync and async faces and both middleware."""
        values = mutate_header(rng.choice(self.seeds_headers), rng)
        return self._compare(rng.choice(self.servers), values, rng)

    def _compare(self, server: ResourceServer, values: list[str], rng: random.Random) -> list[str]:
        sync = self._authorize(server, values)
        asynchronous = self.loop.run_until_complete(self._authorize_async(server, values))
        problems = []
        if outcome(sync) != outcome(asynchronous):
            problems.append(f"sync {outcome(sync)} != async {outcome(asynchronous)}: {values!r}")
        if server is self.servers[0] and rng.random() < 0.25:
            expected = sync.status_code if isinstance(sync, AuthError) else 200
            asgi_status = self._asgi_status(values)
            wsgi_status = self._wsgi_status(values)
            if {asgi_status, wsgi_status} != {expected} and not _latin1_gap(values):
                problems.append(f"core {expected} asgi {asgi_status} wsgi {wsgi_status}")
        self.label = outcome(sync)[::2] if isinstance(sync, AccessToken) else outcome(sync)
        return problems

    def _authorize(self, server: ResourceServer, values: list[str]) -> Any:
        try:
            return server.authorize(RequestView("GET", values, url=URL), self.requirement)
        except AuthError as exc:
            return exc

    async def _authorize_async(self, server: ResourceServer, values: list[str]) -> Any:
        try:
            return await server.authorize_async(
                RequestView("GET", values, url=URL), self.requirement
            )
        except AuthError as exc:
            return exc

    def _asgi_status(self, values: list[str]) -> int:
        headers = [(b"authorization", v.encode("latin-1", "replace")) for v in values]
        scope = {
            "type": "http",
            "method": "GET",
            "path": "/read",
            "raw_path": b"/read",
            "root_path": "",
            "query_string": b"",
            "scheme": "https",
            "server": ("api.test", 443),
            "headers": headers,
        }
        sent: list[Any] = []

        async def receive() -> Any:
            return {"type": "http.request", "body": b""}

        async def send(message: Any) -> None:
            sent.append(message)

        self.loop.run_until_complete(self.asgi(scope, receive, send))
        return int(sent[0]["status"])

    def _wsgi_status(self, values: list[str]) -> int:
        environ = {
            "REQUEST_METHOD": "GET",
            "PATH_INFO": "/read",
            "SCRIPT_NAME": "",
            "SERVER_NAME": "api.test",
            "SERVER_PORT": "443",
            "wsgi.url_scheme": "https",
            "HTTP_AUTHORIZATION": ", ".join(
                v.encode("latin-1", "replace").decode("latin-1") for v in values
            ),
        }
        statuses: list[str] = []
        self.wsgi(environ, lambda status, headers, exc_info=None: statuses.append(status))
        return int(statuses[0].split()[0])

    def jwks(self, rng: random.Random) -> list[str]:
        text = self.seed_jwks
        try:
            document = json.loads(text)
            data = dumps(mutate_json(document, rng), rng) if rng.random() < 0.7 else None
        except ValueError:
            data = None
        if data is None:
            data = mutate_text(text, rng).encode("utf-8", "surrogatepass")
        try:
            keys = KeySet.from_jwks(data)
            self.label = ("jwks", len(keys))
        except JWKSError:
            self.label = ("jwks", "refused")
        return []

    def dpop(self, rng: random.Random) -> list[str]:
        proof = self.key.proof("GET", URL, access_token=self.bound, iat=NOW)
        for _ in range(rng.randrange(1, 3)):
            proof = mutate_text(proof, rng)
        view = RequestView("GET", [f"DPoP {self.bound}"], url=URL, dpop=[proof])
        try:
            result: Any = self.dpop_server.authorize(view, self.requirement)
        except AuthError as exc:
            result = exc
        self.label = ("dpop", *outcome(result)[1:])
        return []

    def mcp(self, rng: random.Random) -> list[str]:
        body = self.seed_mcp
        try:
            data = dumps(mutate_json(json.loads(body), rng), rng)
        except ValueError:
            data = body.encode()
        if rng.random() < 0.3:
            data = mutate_text(data.decode("utf-8", "surrogatepass"), rng).encode(
                "utf-8", "surrogatepass"
            )
        headers = [(b"mcp-method", b"tools/call")] if rng.random() < 0.3 else []
        try:
            check_headers(headers, parse_calls(data))
            self.label = ("mcp", "passed")
        except Rejected as exc:
            self.label = ("mcp", exc.code)
        return []


def _latin1_gap(values: list[str]) -> bool:
    """A header a real server could not carry (non-latin-1): the middleware see it mangled."""
    return any(not all(ord(c) < 256 for c in v) for v in values)


def run(inputs: int, seed: int, targets: Targets | None = None) -> Report:
    """``inputs`` mutated inputs from ``seed``: every crash and disagreement, and the
    outcome histogram."""
    targets = targets or Targets()
    rng = random.Random(seed)
    kinds: list[tuple[str, Callable[[random.Random], list[str]]]] = [
        ("header", targets.header),
        ("header", targets.header),
        ("signed", targets.signed),
        ("jwks", targets.jwks),
        ("dpop", targets.dpop),
        ("mcp", targets.mcp),
    ]
    report = Report()
    started = time.perf_counter()
    for n in range(inputs):
        kind, target = kinds[n % len(kinds)]
        state = rng.getstate()
        begun = time.perf_counter()
        try:
            problems = target(rng)
        except Exception:
            report.crashes.append(
                f"{kind} (seed {seed}, input {n}): {traceback.format_exc(limit=6)}"
            )
            rng.setstate(state)
            rng.random()
            continue
        took = time.perf_counter() - begun
        report.slowest = max(report.slowest, took)
        if took > SLOW:
            report.crashes.append(f"{kind} (seed {seed}, input {n}) took {took:.2f} s")
        report.disagreements.extend(problems)
        report.outcomes[" ".join(str(x) for x in targets.label)] += 1
    report.inputs = inputs
    report.seconds = time.perf_counter() - started
    return report
