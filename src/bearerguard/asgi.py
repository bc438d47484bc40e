"""A pure ASGI middleware: deny by default, path rules, websocket handshakes checked too.

It never wraps ``receive``/``send`` on the way through, so streaming bodies pass untouched.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from starlette.authentication import BaseUser, UnauthenticatedUser
from starlette.datastructures import URL

from .claims import NO_PARAMS
from .errors import AuthError, InvalidRequest
from .metadata import respond
from .request import RequestView
from .rules import Requirement, Rule, RuleSet
from .server import ResourceServer
from .token import AccessToken

__all__ = [
    "BearerAuthMiddleware",
    "TokenUser",
    "authorization_header",
    "authorization_values",
    "request_view",
    "route_path",
    "send_metadata",
    "store",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class TokenUser(BaseUser):
    """``request.user`` for a verified token; ``.token`` is the ``AccessToken``."""

    __slots__ = ("token",)

    def __init__(self, token: AccessToken) -> None:
        self.token = token

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def display_name(self) -> str:
        return self.token.sub or self.token.client_id or ""

    @property
    def identity(self) -> str:
        return self.display_name


ANONYMOUS = UnauthenticatedUser()


def authorization_values(headers: Iterable[tuple[bytes, bytes]]) -> list[str]:
    """Every Authorization header value of an ASGI scope, in order."""
    return [
        value.decode("latin-1")
        for name, value in headers
        if name == b"authorization" or (len(name) == 13 and name.lower() == b"authorization")
    ]


def authorization_header(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The one Authorization header of an ASGI scope; several are an InvalidRequest."""
    values = authorization_values(headers)
    if len(values) > 1:
        raise InvalidRequest("several authorization headers")
    return values[0] if values else None


class _ScopeURL:
    """The request URL, worked out only if asked for (most requests never are)."""

    __slots__ = ("scope",)

    def __init__(self, scope: Scope) -> None:
        self.scope = scope

    def __call__(self) -> str:
        return str(URL(scope=self.scope))


def dpop_values(headers: Iterable[tuple[bytes, bytes]]) -> list[str]:
    """Every DPoP header value of an ASGI scope (RFC 9449), in order."""
    return [value.decode("latin-1") for name, value in headers if name.lower() == b"dpop"]


def request_view(scope: Scope) -> RequestView:
    """What an HTTP or websocket scope carries for ``ResourceServer.authorize``."""
    headers = scope["headers"]
    return RequestView(
        scope.get("method", "GET") if scope["type"] == "http" else "GET",
        authorization_values(headers),
        url=_ScopeURL(scope),
        path_params=scope.get("path_params") or NO_PARAMS,
        upstream=scope.get("auth"),
        dpop=dpop_values(headers),
    )


def with_headers(send: Send, extra: dict[str, str]) -> Send:
    """``send``, adding ``extra`` to the response's headers (a fresh DPoP-Nonce)."""
    raw = [
        (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in extra.items()
    ]

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), *raw]}
        await send(message)

    return sending


def store(scope: Scope, token: AccessToken | None) -> None:
    """Put the outcome where Starlette looks: ``request.auth`` and ``request.user``."""
    scope["auth"] = token
    scope["user"] = ANONYMOUS if token is None else TokenUser(token)


def route_path(scope: Scope) -> str:
    """The path the app's router matches: ``scope["path"]`` without the ``root_path``.

    Starlette (and FastAPI's ``root_path``, ``Mount``, ``uvicorn --root-path``) keep the
    full path in ``path`` and route on what follows ``root_path``; rules must be decided on
    that same text, or a prefix would make every rule miss. The bare mount point (``""``)
    is redirected to ``/`` by routers, so it is decided as ``/``.
    """
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        rest = path[len(root) :]
        if not rest:
            return "/"
        if rest[0] == "/":
            return rest
    return path


def _spellings(scope: Scope) -> tuple[str, ...]:
    """``route_path(scope)``, then the path a router that strips ``root_path`` as a plain
    prefix (Quart) would act on when the rest does not start with "/": ``/apiadmin``
    below ``/api`` is ``admin`` there, which Werkzeug routes as ``/admin``."""
    routed = route_path(scope)
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        rest = path[len(root) :]
        if rest and rest[0] != "/":
            return routed, rest
    return (routed,)


def _is_metadata_path(scope: Scope, path: str | None) -> bool:
    if path is None:
        return False
    return scope["path"] == path or (bool(scope.get("root_path")) and route_path(scope) == path)


async def send_metadata(server: ResourceServer, scope: Scope, send: Send) -> None:
    """Answer the RFC 9728 document (GET/HEAD), its CORS preflight, or 405."""
    metadata = server.metadata(scope.get("app"))
    assert metadata is not None
    status, headers, body = respond(scope.get("method", "GET"), metadata)
    raw = [(name.encode(), value.encode()) for name, value in headers]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def error_response_parts(exc: AuthError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Status, raw headers and body of the response for ``exc``."""
    body = exc.to_json().encode()
    headers = [(k.lower().encode(), v.encode("latin-1")) for k, v in exc.response_headers().items()]
    headers.append((b"content-length", b"%d" % len(body)))
    return exc.status_code, headers, body


async def send_error(exc: AuthError, scope: Scope, send: Send) -> None:
    """Answer ``exc`` on an HTTP or websocket scope."""
    status, headers, body = error_response_parts(exc)
    if scope["type"] == "websocket":
        if "websocket.http.response" not in scope.get("extensions", {}):
            # Without the denial-response extension all a server can say is "closed".
            await send({"type": "websocket.close", "code": 1008, "reason": exc.description})
            return
        prefix = "websocket.http.response"
    else:
        prefix = "http.response"
    await send({"type": prefix + ".start", "status": status, "headers": headers})
    await send({"type": prefix + ".body", "body": body})


class BearerAuthMiddleware:
    """Require a valid bearer token on every HTTP and websocket request, unless public
    (or optional, for requests without bearer credentials: see ``Rule``).

    ``BearerAuthMiddleware(app, server=rs, public=["/health"], rules=[Rule(...)])``. Paths
    are matched as the app's router sees them (below ``root_path``; see ``route_path``). The
    verified ``AccessToken`` goes to ``scope["auth"]`` (Starlette's ``request.auth``) and a
    ``TokenUser`` to ``scope["user"]``. Lifespan and other scopes pass straight through.
    """

    def __init__(
        self,
        app: ASGIApp,
        server: ResourceServer,
        *,
        public: Iterable[str] = (),
        rules: Iterable[Rule] = (),
    ) -> None:
        server.check_face("async")
        self.app = app
        self.server = server
        self.rules = RuleSet(rules, public)
        server.check_requirements(rule.requirement for rule in self.rules.rules)
        server.declare_scopes(s for rule in self.rules.rules for s in rule.requirement.scopes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            await self.app(scope, receive, send)
            return
        if kind == "http" and _is_metadata_path(scope, self.server.metadata_path):
            await send_metadata(self.server, scope, send)  # public, even under deny-by-default
            return
        view = request_view(scope)
        try:
            requirement = self.rules.requirement(view.method, *_spellings(scope))
            token = await self.server.authorize_async(view, requirement)
        except AuthError as exc:
            await send_error(self.server.with_realm(exc), scope, send)
            return
        store(scope, token)
        if view.reply:
            send = with_headers(send, view.reply)
        await self.forward(scope, receive, send, requirement, token)

    async def forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        requirement: Requirement,
        token: AccessToken | None,
    ) -> None:
        """Hand an authorized request to the app (a subclass may look further first: the
        MCP guard reads the JSON-RPC body)."""
        await self.app(scope, receive, send)
