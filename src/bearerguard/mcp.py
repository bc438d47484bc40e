"""Protect an MCP server (Model Context Protocol, streamable HTTP) with access tokens.

The MCP authorization spec makes an MCP server an OAuth resource server: RFC 9728 metadata
naming its authorization server, tokens whose audience is the server's own URL (RFC 8707),
401 for a bad token, and 403 ``insufficient_scope`` naming every scope the operation needs,
so a client can step up. ``MCPGuard`` does all of it around any ASGI MCP app (the official
SDK's ``MCPServer.streamable_http_app()``, FastMCP's ``http_app()``)::

    server = ResourceServer(ISSUER, "https://mcp.example.com/mcp")  # audience = the MCP URL
    app = MCPGuard(
        mcp.streamable_http_app(stateless_http=True),
        server=server,
        tools={"add_product": "write:products", "list_products": "read:products"},
    )

Per-tool (and per-prompt, per-resource, per-method) scopes are decided from the JSON-RPC
body, read once (at most ``max_body`` bytes) and replayed untouched to the app; responses,
streamed ones included, pass through unbuffered. ``Mcp-Method``/``Mcp-Name`` headers, when
sent, must agree with the body (else 400). A batch needs what each of its calls needs.

``MCPTokenVerifier`` is the same verification for apps that keep the SDK's own auth.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import anyio

from .asgi import (
    ASGIApp,
    BearerAuthMiddleware,
    Message,
    Receive,
    Scope,
    Send,
    request_view,
    route_path,
    send_error,
)
from .errors import AuthError, ConfigurationError
from .rules import Requirement, Rule, merge_slashes
from .server import ResourceServer
from .token import AccessToken

if TYPE_CHECKING:
    from mcp.server.auth.provider import AccessToken as SDKAccessToken

__all__ = [
    "MAX_BODY",
    "MCPGuard",
    "MCPTokenVerifier",
    "current_token",
]

#: The largest JSON-RPC body the guard reads (1 MiB): larger requests are refused with 413.
MAX_BODY = 1 << 20

# JSON-RPC error codes the guard answers with (JSON-RPC 2.0; MCP's HeaderMismatch).
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
INVALID_PARAMS = -32602
HEADER_MISMATCH = -32020

#: Methods whose target is named in the body, and where: what ``Mcp-Name`` mirrors.
NAMED = {
    "tools/call": ("tools", "name"),
    "prompts/get": ("prompts", "name"),
    "resources/read": ("resources", "uri"),
    "resources/subscribe": ("resources", "uri"),
    "resources/unsubscribe": ("resources", "uri"),
}
_BASE64_VALUE = re.compile(r"=\?base64\?([A-Za-z0-9+/=]*)\?=")

Scopes = str | Sequence[str]


class Rejected(Exception):
    """A body the guard refuses before the app sees it: HTTP status and JSON-RPC error."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def body(self) -> bytes:
        error = {"code": self.code, "message": self.message}
        return json.dumps({"jsonrpc": "2.0", "id": None, "error": error}).encode()


@dataclass(frozen=True)
class Call:
    """One JSON-RPC message of a request body, as far as authorization looks at it."""

    method: str | None  # None: a response to the server (no method)
    name: str | None  # the tool or prompt name, or the resource URI (see NAMED)
    kind: str | None = None  # "tools", "prompts" or "resources": what name names
    mirrored: bool = False  # Mcp-Name mirrors name (NAMED methods)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two "name" members would be read one way here and perhaps another by the app.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise Rejected(400, PARSE_ERROR, f"duplicate member {key[:40]!r} in the JSON body")
        result[key] = value
    return result


def parse_calls(body: bytes) -> list[Call]:
    """The calls of a JSON-RPC body (one message or a batch); ``Rejected`` if malformed."""
    try:
        document = json.loads(body, object_pairs_hook=_no_duplicates)
    except Rejected:
        raise
    except (ValueError, RecursionError):
        raise Rejected(400, PARSE_ERROR, "the body is not valid JSON") from None
    messages = document if isinstance(document, list) else [document]
    if not messages:
        raise Rejected(400, INVALID_REQUEST, "an empty batch")
    calls = []
    for message in messages:
        if not isinstance(message, dict):
            raise Rejected(400, INVALID_REQUEST, "a JSON-RPC message must be an object")
        method = message.get("method")
        if method is None:
            if "result" in message or "error" in message:
                calls.append(Call(None, None))  # the client answering a server request
                continue
            raise Rejected(400, INVALID_REQUEST, "a JSON-RPC request needs a method")
        if not isinstance(method, str):
            raise Rejected(400, INVALID_REQUEST, "the method must be a string")
        params = message.get("params")
        if method in NAMED:
            kind, member = NAMED[method]
            name = params.get(member) if isinstance(params, dict) else None
            if not isinstance(name, str):
                raise Rejected(400, INVALID_PARAMS, f"{method} needs params.{member} (a string)")
            calls.append(Call(method, name, kind, mirrored=True))
        elif method == "completion/complete":
            # Completions run a prompt's or a resource template's handler: they need what
            # that prompt or resource needs.
            calls.append(_completion(params))
        else:
            calls.append(Call(method, None))
    return calls


def _completion(params: Any) -> Call:
    ref = params.get("ref") if isinstance(params, dict) else None
    kinds = {"ref/prompt": ("prompts", "name"), "ref/resource": ("resources", "uri")}
    kind = ref.get("type") if isinstance(ref, dict) else None
    found = kinds.get(kind) if isinstance(kind, str) else None
    name = ref.get(found[1]) if found is not None and isinstance(ref, dict) else None
    if found is None or not isinstance(name, str):
        raise Rejected(400, INVALID_PARAMS, "completion/complete needs a prompt or resource ref")
    return Call("completion/complete", name, found[0])


def header_value(raw: str) -> str:
    """An ``Mcp-Name`` value as sent: plain, or ``=?base64?...?=`` for what is not ASCII."""
    match = _BASE64_VALUE.fullmatch(raw.strip())
    if match is None:
        return raw.strip()
    try:
        return base64.b64decode(match.group(1), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise Rejected(400, HEADER_MISMATCH, "Mcp-Name is not valid base64 UTF-8") from None


def check_headers(headers: Iterable[tuple[bytes, bytes]], calls: list[Call]) -> None:
    """``Mcp-Method`` and ``Mcp-Name``, when sent, must say what the body says."""
    methods, names = [], []
    for key, value in headers:
        key = key.lower()
        if key == b"mcp-method":
            methods.append(value.decode("latin-1").strip())
        elif key == b"mcp-name":
            names.append(header_value(value.decode("latin-1")))
    if len(methods) > 1 or len(names) > 1:
        raise Rejected(400, HEADER_MISMATCH, "several Mcp-Method or Mcp-Name headers")
    requests = [c for c in calls if c.method is not None]
    if methods and any(c.method != methods[0] for c in requests):
        raise Rejected(400, HEADER_MISMATCH, "the Mcp-Method header does not match the body")
    if names and any(not c.mirrored or c.name != names[0] for c in requests):
        raise Rejected(400, HEADER_MISMATCH, "the Mcp-Name header does not match the body")


def _scopes(value: Scopes, what: str) -> tuple[str, ...]:
    scopes = tuple(value.split()) if isinstance(value, str) else tuple(value)
    if not all(isinstance(s, str) and s and " " not in s for s in scopes):
        raise ConfigurationError(f"{what}: scopes are strings without spaces")
    return scopes


class Policy:
    """Which scopes each MCP operation needs: by tool, prompt, resource URI (exact, or a
    prefix ending in ``*``) and JSON-RPC method. Unlisted operations need only the
    endpoint's own requirement (a valid token)."""

    def __init__(
        self,
        *,
        tools: Mapping[str, Scopes] | None = None,
        prompts: Mapping[str, Scopes] | None = None,
        resources: Mapping[str, Scopes] | None = None,
        methods: Mapping[str, Scopes] | None = None,
    ) -> None:
        self.named: dict[str, dict[str, Requirement]] = {}
        self.prefixes: list[tuple[str, Requirement]] = []
        for kind, table in (("tools", tools), ("prompts", prompts), ("resources", resources)):
            entries: dict[str, Requirement] = {}
            for name, scopes in (table or {}).items():
                need = Requirement(scopes=_scopes(scopes, f"{kind}[{name!r}]"))
                if kind == "resources" and name.endswith("*"):
                    self.prefixes.append((name[:-1], need))
                else:
                    entries[name] = need
            self.named[kind] = entries
        self.methods = {
            m: Requirement(scopes=_scopes(s, f"methods[{m!r}]")) for m, s in (methods or {}).items()
        }

    def scopes(self) -> list[str]:
        """Every scope named, for ``scopes_supported``."""
        needs = [*self.methods.values(), *(n for _, n in self.prefixes)]
        for table in self.named.values():
            needs.extend(table.values())
        return [s for need in needs for s in need.scopes]

    def requirement(self, base: Requirement, calls: Iterable[Call]) -> Requirement:
        """``base`` and what each call adds."""
        need = base
        for call in calls:
            if call.method is None:
                continue
            extra = self.methods.get(call.method)
            if extra is not None:
                need = need.needing(extra)
            if call.name is None or call.kind is None:
                continue
            if call.kind != "resources":
                extra = self.named[call.kind].get(call.name)
                if extra is not None:
                    need = need.needing(extra)
                continue
            # A resource URI is matched as sent and percent-decoded (the SDK decodes
            # template variables: "shop://p/%73ecret" reads "shop://p/secret"): whatever
            # any spelling needs, the call needs.
            for uri in _spellings_of(call.name):
                extra = self.named["resources"].get(uri)
                if extra is not None:
                    need = need.needing(extra)
                for prefix, prefixed in self.prefixes:
                    if uri.startswith(prefix):
                        need = need.needing(prefixed)
        return need


def _spellings_of(uri: str) -> list[str]:
    """``uri`` as sent, then decoded until nothing changes (a few rounds at most)."""
    spellings = [uri]
    for _ in range(4):
        decoded = unquote(spellings[-1])
        if decoded == spellings[-1]:
            break
        spellings.append(decoded)
    return spellings


def _endpoint_path(path: str) -> str:
    """A path as routers treat it: merged slashes, no trailing slash."""
    return merge_slashes(path).rstrip("/") or "/"


class MCPGuard(BearerAuthMiddleware):
    """An ASGI guard for an MCP server: a valid token for every request (but ``public``
    paths and the RFC 9728 document), and per-operation scopes for JSON-RPC calls.

    ``endpoint``: the MCP endpoint's path (``/mcp``, the SDK's default). ``scopes``: what
    every MCP request needs. ``tools``, ``prompts``, ``resources`` (URI, or prefix ending in
    ``*``) and ``methods`` map to scopes (a space-separated string or a list) the operation
    needs as well. The token is at ``scope["auth"]`` (``request.auth``) for the app, and
    ``current_token(ctx)`` finds it from an SDK tool's context. The body is read within
    ``body_timeout`` seconds (408 after) and up to ``max_body`` bytes (413 past it).
    """

    def __init__(
        self,
        app: ASGIApp,
        server: ResourceServer,
        *,
        endpoint: str = "/mcp",
        scopes: Scopes = (),
        tools: Mapping[str, Scopes] | None = None,
        prompts: Mapping[str, Scopes] | None = None,
        resources: Mapping[str, Scopes] | None = None,
        methods: Mapping[str, Scopes] | None = None,
        public: Iterable[str] = (),
        rules: Iterable[Rule] = (),
        max_body: int = MAX_BODY,
        body_timeout: float = 30.0,
    ) -> None:
        if not isinstance(endpoint, str) or not endpoint.startswith("/"):
            raise ConfigurationError(f"endpoint must be a path starting with '/': {endpoint!r}")
        if isinstance(max_body, bool) or not 1024 <= max_body <= 64 << 20:
            raise ConfigurationError("max_body must be between 1024 and 67108864 bytes")
        if isinstance(body_timeout, bool) or not 0 < body_timeout <= 3600:
            raise ConfigurationError("body_timeout must be > 0 and at most 3600 seconds")
        base = _scopes(scopes, "scopes")
        endpoint_rules = [Rule(endpoint.rstrip("/") or "/", scopes=base)] if base else []
        super().__init__(app, server, public=public, rules=[*endpoint_rules, *rules])
        self.endpoint = _endpoint_path(endpoint)
        self.policy = Policy(tools=tools, prompts=prompts, resources=resources, methods=methods)
        self.max_body = max_body
        self.body_timeout = float(body_timeout)
        server.declare_scopes(self.policy.scopes())

    async def forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        requirement: Requirement,
        token: AccessToken | None,
    ) -> None:
        if (
            scope["type"] != "http"
            or scope.get("method", "").upper() != "POST"
            or (
                _endpoint_path(scope["path"]) != self.endpoint
                and _endpoint_path(route_path(scope)) != self.endpoint
            )
        ):
            await self.app(scope, receive, send)
            return
        try:
            try:
                with anyio.fail_after(self.body_timeout):  # a body trickled in holds nobody
                    body = await self._read(scope, receive)
            except TimeoutError:
                raise Rejected(408, INVALID_REQUEST, "the request body took too long") from None
            if body is None:
                return  # the client went away
            calls = parse_calls(body)
            check_headers(scope["headers"], calls)
        except Rejected as exc:
            await _send_rejection(exc, send)
            return
        need = self.policy.requirement(requirement, calls)
        if need is not requirement:
            # The token verified above is reused; this settles the calls' scopes (a public
            # endpoint's calls that need scopes need a token), and a refusal carries all of
            # them in one challenge (scope=...) with realm and metadata.
            view = request_view(scope)  # the token verified above is reused (upstream)
            try:
                await self.server.authorize_async(view, need)
            except AuthError as exc:
                await send_error(exc, scope, send)
                return
        await self.app(scope, _replay(body, receive), send)

    async def _read(self, scope: Scope, receive: Receive) -> bytes | None:
        """The whole body, at most ``max_body`` bytes; None if the client disconnected."""
        for key, value in scope["headers"]:
            key = key.lower()
            if key == b"content-encoding" and value.strip().lower() not in (b"", b"identity"):
                raise Rejected(415, INVALID_REQUEST, "compressed request bodies are not accepted")
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    raise Rejected(400, INVALID_REQUEST, "bad Content-Length") from None
                if declared > self.max_body:
                    raise Rejected(413, INVALID_REQUEST, "the request body is too large")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise Rejected(413, INVALID_REQUEST, "the request body is too large")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """``receive`` for the app: the body read, then whatever comes next (a disconnect)."""
    pending = True

    async def replay() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _send_rejection(exc: Rejected, send: Send) -> None:
    body = exc.body()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def current_token(context: Any) -> AccessToken:
    """The verified token of the request an MCP tool runs for, from the SDK's ``Context``
    (``ctx: Context`` in a tool's signature) or a Starlette ``Request``.

    Raises RuntimeError when the request carries none (not behind ``MCPGuard``).
    """
    request = getattr(getattr(context, "request_context", None), "request", context)
    scope = getattr(request, "scope", None)
    token = scope.get("auth") if isinstance(scope, dict) else None
    if not isinstance(token, AccessToken):
        raise RuntimeError("no verified access token: is the app behind MCPGuard?")
    return token


def _plain(value: Any) -> Any:
    """Claims as plain dicts and lists (ours are frozen), for the SDK's pydantic model."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class MCPTokenVerifier:
    """The MCP SDK's ``TokenVerifier`` protocol, backed by a ``ResourceServer``: for apps
    that keep the SDK's own auth middleware (``MCPServer(token_verifier=..., auth=...)``).

    Returns the SDK's ``AccessToken`` (``client_id``, ``scopes``, ``expires_at``,
    ``subject``, ``claims``, and ``resource``: the configured audience the token holds), or
    None for any token the server refuses (the SDK answers 401).
    """

    def __init__(self, server: ResourceServer) -> None:
        server.check_face("async")
        self.server = server

    async def verify_token(self, token: str) -> SDKAccessToken | None:
        from mcp.server.auth.provider import AccessToken as SDKAccessToken

        access: SDKAccessToken | None = await self._verify(token, SDKAccessToken)
        return access

    def for_fastmcp(self, *, base_url: str | None = None) -> Any:
        """This verifier in FastMCP's token-verifier slot: ``FastMCP(auth=...)`` takes an
        instance of its own ``TokenVerifier`` class, so this returns one that asks us.

        FastMCP's own middleware then answers (a missing scope is a 401 there, and per-tool
        checks are JSON-RPC errors): for spec-correct step-up challenges, put ``MCPGuard``
        around ``mcp.http_app()`` instead.
        """
        from fastmcp.server.auth import AccessToken as FastMCPAccessToken
        from fastmcp.server.auth import TokenVerifier as FastMCPTokenVerifier

        verify = self._verify

        class Verifier(FastMCPTokenVerifier):
            async def verify_token(self, token: str) -> Any:
                return await verify(token, FastMCPAccessToken)

        return Verifier(base_url=base_url)

    async def _verify(self, token: str, kind: Any) -> Any:
        try:
            access = await self.server.verify_token_async(token)
        except AuthError:
            return None
        resource = next((a for a in self.server.audiences if a in access.audience), None)
        return kind(
            token=token,
            client_id=access.client_id or access.sub or "",
            scopes=sorted(access.scopes),
            expires_at=int(access.expires_at),
            subject=access.sub,
            claims=_plain(access.claims),
            resource=resource,
        )
