"""A fast mutation fuzzer: valid inputs, mutated, fed to every face and adapter in process.

Seeds are real: tokens signed by real keys (ES384, RS256, EdDSA, ES256), a JWKS document, DPoP
proofs for a bound token, MCP JSON-RPC bodies. Each input is one seed mutated one to three
times (bytes, base64url segments, JSON members: duplicates, types, huge numbers, deep nesting,
unicode; header spellings and counts). The oracle:

- only the documented outcomes: an ``AccessToken`` or an ``AuthError`` (``JWKSError`` for a
  JWKS, ``Rejected`` for an MCP body); any other exception is a crash;
- the sync face and the async face agree on every header (the same status and reason; on
  success the same subject); on a quarter of the headers for one server, so do the ASGI and
  WSGI middleware, the Django middleware (sync and async) and a DRF view with
  ``BearerAuthentication`` and ``HasScopes`` (the same status; on success the same subject).
  A header no real server could carry (not latin-1) reaches the adapters mangled: they then
  agree with one another only;
- no input takes longer than ``SLOW`` seconds.

Django is configured here only where nothing else did (``bench/mutfuzz.py``'s workers); in a
pytest process ``tests/test_django.py`` may own the settings, and the fuzz's own
``BEARERGUARD`` (a ready ``SERVER``) is then only overridden while it runs.

``run(n, seed)`` returns a ``Report``; ``tests/test_mutfuzz.py`` runs a short slice and
``bench/mutfuzz.py`` millions across processes (``make fuzz``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
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
    # "<adapter> <status>" -> inputs: what the adapters (ASGI, WSGI, Django, DRF) answered
    adapters: Counter[str] = field(default_factory=Counter)

    def merge(self, other: Report) -> None:
        self.inputs += other.inputs
        self.outcomes.update(other.outcomes)
        self.adapters.update(other.adapters)
        self.crashes.extend(other.crashes)
        self.disagreements.extend(other.disagreements)
        self.slowest = max(self.slowest, other.slowest)


def outcome(result: Any) -> tuple[Any, ...]:
    if isinstance(result, AccessToken):
        return ("ok", result.sub)
    if isinstance(result, AuthError):
        return ("refused", result.status_code, result.reason.value)
    return ("none",)


# An adapter's answer: the status, and the subject its app saw on success.
Answer = tuple[int, Any]


def answer_of(result: Any) -> Answer:
    """What every adapter must answer where the core gave ``result``."""
    if isinstance(result, AuthError):
        return result.status_code, None
    return 200, result.sub if isinstance(result, AccessToken) else None


def django_ready() -> None:
    """Django set up for the in-process adapters: configured here only where nothing else did
    (``tests/test_django.py`` may own the settings of a pytest process)."""
    import django
    from django.apps import apps
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            SECRET_KEY="mutfuzz",
            ALLOWED_HOSTS=["api.test"],
            INSTALLED_APPS=[],
            DATABASES={},
            USE_TZ=True,
        )
    if not apps.ready:
        django.setup()


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
        self._django_adapters(issuer.resource_server(), read)
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
        self.django_server.warm_up()
        self.label: tuple[Any, ...] = ()
        self.last: Any = None  # the input being tried: a crash report shows it
        self.answers: dict[str, Answer] = {}  # the last input's, per adapter

    def _django_adapters(self, server: ResourceServer, read: list[Rule]) -> None:
        """The Django middleware (both faces) and a DRF view, all on ``server``."""
        django_ready()
        from django.core.handlers.wsgi import WSGIRequest
        from django.http import HttpRequest, HttpResponse
        from rest_framework.renderers import JSONRenderer
        from rest_framework.request import Request
        from rest_framework.response import Response
        from rest_framework.views import APIView

        from bearerguard.django.drf import BearerAuthentication, HasScopes, exception_handler
        from bearerguard.django.middleware import BearerGuardMiddleware

        self.django_server = server
        self.request_class = WSGIRequest
        # BEARERGUARD is read when the middleware is built, and by DRF's classes per request;
        # UNAUTHENTICATED_USER None: DRF needs no django.contrib.auth.
        self.django_config: dict[str, Any] = {
            "BEARERGUARD": {"SERVER": server, "RULES": read},
            "REST_FRAMEWORK": {"UNAUTHENTICATED_USER": None},
            "ALLOWED_HOSTS": ["api.test"],
        }

        def respond(request: HttpRequest) -> HttpResponse:
            return HttpResponse(json.dumps({"sub": request.auth.sub}))

        async def respond_async(request: HttpRequest) -> HttpResponse:
            return respond(request)

        class Read(APIView):
            authentication_classes = (BearerAuthentication,)
            permission_classes = (HasScopes.of("read"),)
            renderer_classes = (JSONRenderer,)

            def get(self, request: Request) -> Response:
                return Response({"sub": request.auth.sub})

            def get_exception_handler(self) -> Callable[..., Any]:
                return exception_handler

        with self.django_settings():
            self.django = BearerGuardMiddleware(respond)
            self.django_async = BearerGuardMiddleware(respond_async)
        self.drf = Read.as_view()

    def django_settings(self) -> contextlib.AbstractContextManager[object]:
        """The fuzz's ``BEARERGUARD`` (and what DRF needs) in force: ``run`` holds it for a
        whole slice; a single call outside ``run`` takes it for itself."""
        from django.conf import settings
        from django.test import override_settings

        if getattr(settings, "BEARERGUARD", None) is self.django_config["BEARERGUARD"]:
            return contextlib.nullcontext()
        overridden: contextlib.AbstractContextManager[object] = override_settings(
            **self.django_config
        )
        return overridden

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
        values = self.last = [f"Bearer {signing_input}.{b64(signature)}"]
        return self._compare(server, values, rng)

    def header(self, rng: random.Random) -> list[str]:
        """A mutated header through the sync and async faces (and sometimes every adapter)."""
        values = self.last = mutate_header(rng.choice(self.seeds_headers), rng)
        return self._compare(rng.choice(self.servers), values, rng)

    def _compare(self, server: ResourceServer, values: list[str], rng: random.Random) -> list[str]:
        sync = self._authorize(server, values)
        asynchronous = self.loop.run_until_complete(self._authorize_async(server, values))
        problems = []
        if outcome(sync) != outcome(asynchronous):
            problems.append(f"sync {outcome(sync)} != async {outcome(asynchronous)}: {values!r}")
        self.answers = {}
        if server is self.servers[0] and rng.random() < 0.25:
            expected = answer_of(sync)
            self.answers = self.adapters(values)
            found = set(self.answers.values())
            # Mangled on the way in, a non-latin-1 header is compared among the adapters only.
            if found != {expected} and (len(found) > 1 or not _latin1_gap(values)):
                problems.append(f"core {expected} adapters {self.answers}: {values!r}")
        self.label = outcome(sync)[::2] if isinstance(sync, AccessToken) else outcome(sync)
        return problems

    def adapters(self, values: list[str]) -> dict[str, Answer]:
        """What every adapter answers to these Authorization headers, for ``/read``."""
        with self.django_settings():
            return {
                "asgi": self._asgi_answer(values),
                "wsgi": self._wsgi_answer(values),
                "django": self._django_answer(values),
                "django-async": self._django_answer(values, asynchronous=True),
                "drf": self._drf_answer(values),
            }

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

    def _asgi_answer(self, values: list[str]) -> Answer:
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
        status = int(sent[0]["status"])
        return status, json.loads(sent[1]["body"])["sub"] if status == 200 else None

    def _wsgi_answer(self, values: list[str]) -> Answer:
        statuses: list[str] = []
        body = self.wsgi(
            _environ(values), lambda status, headers, exc_info=None: statuses.append(status)
        )
        status = int(statuses[0].split()[0])
        return status, json.loads(b"".join(body))["sub"] if status == 200 else None

    def _django_answer(self, values: list[str], asynchronous: bool = False) -> Answer:
        request = self.request_class(_environ(values))
        if asynchronous:
            response = self.loop.run_until_complete(self.django_async(request))
        else:
            response = self.django(request)
        status = response.status_code
        return status, json.loads(response.content)["sub"] if status == 200 else None

    def _drf_answer(self, values: list[str]) -> Answer:
        response = self.drf(self.request_class(_environ(values)))
        status = response.status_code
        return status, response.data["sub"] if status == 200 else None

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
            self.last = data
            keys = KeySet.from_jwks(data)
            self.label = ("jwks", len(keys))
        except JWKSError:
            self.label = ("jwks", "refused")
        return []

    def dpop(self, rng: random.Random) -> list[str]:
        proof = self.key.proof("GET", URL, access_token=self.bound, iat=NOW)
        for _ in range(rng.randrange(1, 3)):
            proof = mutate_text(proof, rng)
        self.last = proof
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
            self.last = (headers, data)
            check_headers(headers, parse_calls(data))
            self.label = ("mcp", "passed")
        except Rejected as exc:
            self.label = ("mcp", exc.code)
        return []


def _environ(values: list[str]) -> dict[str, Any]:
    """A WSGI environ for ``GET https://api.test/read``: repeated headers joined with ", ", as a
    WSGI server joins them, and what is not latin-1 replaced (PEP 3333 strings)."""
    return {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/read",
        "SCRIPT_NAME": "",
        "SERVER_NAME": "api.test",
        "SERVER_PORT": "443",
        "wsgi.url_scheme": "https",
        "wsgi.input": io.BytesIO(),
        "HTTP_AUTHORIZATION": ", ".join(
            v.encode("latin-1", "replace").decode("latin-1") for v in values
        ),
    }


def _latin1_gap(values: list[str]) -> bool:
    """A header a real server could not carry (non-latin-1): the adapters see it mangled."""
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
    with targets.django_settings():  # the fuzz's BEARERGUARD, for the Django adapters
        for n in range(inputs):
            kind, target = kinds[n % len(kinds)]
            state = rng.getstate()
            targets.last = None
            begun = time.perf_counter()
            try:
                problems = target(rng)
            except Exception:
                report.crashes.append(
                    f"{kind} (seed {seed}, input {n}) {targets.last!r:.2000}: "
                    f"{traceback.format_exc(limit=-8)}"
                )
                rng.setstate(state)
                rng.random()
                continue
            took = time.perf_counter() - begun
            report.slowest = max(report.slowest, took)
            if took > SLOW:
                report.crashes.append(
                    f"{kind} (seed {seed}, input {n}) took {took:.2f} s: {targets.last!r:.2000}"
                )
            report.disagreements.extend(f"{kind} (seed {seed}, input {n}): {p}" for p in problems)
            report.outcomes[" ".join(str(x) for x in targets.label)] += 1
            for adapter, (status, _) in targets.answers.items():
                report.adapters[f"{adapter} {status}"] += 1
            targets.answers = {}
    report.inputs = inputs
    report.seconds = time.perf_counter() - started
    return report
