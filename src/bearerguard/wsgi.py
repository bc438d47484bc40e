"""A WSGI middleware: deny by default, path/method scope rules, the same model as ``asgi.py``.

It returns the wrapped app's response iterable itself (never wrapped or buffered), so streamed
bodies and ``close()`` pass through untouched.

WSGI cannot show several ``Authorization`` headers: servers join them into one value with
``","`` or ``", "``. A bearer value with a comma is taken for that (token68 has none) and
answered 400 "several authorization headers", as in ASGI. Some servers (Apache mod_wsgi) drop the
header unless told to pass it on (``WSGIPassAuthorization On``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from .errors import AuthError
from .metadata import respond
from .request import RequestView
from .rules import Rule, RuleSet
from .server import ResourceServer

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = [
    "ENVIRON_KEY",
    "BearerAuthMiddleware",
    "error_response_parts",
    "metadata_response",
    "request_path",
    "request_view",
]

#: Where the verified ``AccessToken`` goes in the WSGI environ (``None`` on public paths and
#: on optional ones without bearer credentials).
ENVIRON_KEY = "bearerguard.token"


def request_path(environ: WSGIEnvironment) -> str:
    """``PATH_INFO`` as the app routes on it: PEP 3333 latin-1 text decoded back to UTF-8."""
    raw: str = environ.get("PATH_INFO") or "/"
    try:
        return raw.encode("latin-1").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a server that already decoded it
        return raw


# RFC 3986 host (a name, IPv4, or a bracketed IPv6) and an optional port: anything else in a
# Host header ("h/path?", "h#") would rewrite the URL a DPoP proof is compared with.
_HOST = re.compile(r"(?:[A-Za-z0-9\-._~]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")


def request_url(environ: WSGIEnvironment) -> str:
    """The request's URL (without the query string): ``Host`` when it is a host[:port],
    else ``SERVER_NAME`` and ``SERVER_PORT`` as PEP 3333 reconstructs it."""
    scheme = str(environ.get("wsgi.url_scheme", "http"))
    host = environ.get("HTTP_HOST")
    if not isinstance(host, str) or not _HOST.fullmatch(host):
        host = str(environ.get("SERVER_NAME", "localhost"))
        port = str(environ.get("SERVER_PORT", ""))
        if port and port != {"https": "443", "http": "80"}.get(scheme):
            host = f"{host}:{port}"
    path = str(environ.get("SCRIPT_NAME", "")) + str(environ.get("PATH_INFO", ""))
    return f"{scheme}://{host}{quote(path.encode('latin-1'), safe='/;=,~!$&()*+:@-._')}"


def request_view(environ: WSGIEnvironment) -> RequestView:
    """What a WSGI request carries for ``ResourceServer.authorize``."""
    header = environ.get("HTTP_AUTHORIZATION")
    dpop = environ.get("HTTP_DPOP")  # a server joins several with ", ": refused as such
    return RequestView(
        str(environ.get("REQUEST_METHOD", "GET")).upper(),
        [] if header is None else [header],
        url=lambda: request_url(environ),
        upstream=environ.get(ENVIRON_KEY),
        dpop=[] if dpop is None else [dpop],
    )


def metadata_response(
    server: ResourceServer, environ: WSGIEnvironment, start_response: StartResponse
) -> Iterable[bytes]:
    """Answer the RFC 9728 document (GET/HEAD), its CORS preflight, or 405."""
    metadata = server.metadata()
    assert metadata is not None
    status, headers, body = respond(str(environ.get("REQUEST_METHOD", "GET")), metadata)
    start_response(f"{status} {HTTPStatus(status).phrase}", headers)
    return [body]


def error_response_parts(exc: AuthError) -> tuple[str, list[tuple[str, str]], bytes]:
    """Status line, headers and body of the response for ``exc``."""
    body = exc.to_json().encode()
    headers = [*exc.response_headers().items(), ("Content-Length", str(len(body)))]
    status = f"{exc.status_code} {HTTPStatus(exc.status_code).phrase}"
    return status, headers, body


def _with_headers(start_response: StartResponse, extra: dict[str, str]) -> StartResponse:
    """``start_response``, adding ``extra`` to the response's headers (a fresh DPoP-Nonce)."""

    def starting(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        return start_response(status, [*headers, *extra.items()], exc_info)

    return starting


class BearerAuthMiddleware:
    """Require a valid bearer token on every request, unless its path is public.

    ``app.wsgi_app = BearerAuthMiddleware(app.wsgi_app, server=rs, public=["/health"],
    rules=[Rule("/products", methods=["POST"], scopes="write:products")])``. Paths are matched
    against ``PATH_INFO`` (the path below the mount point). The verified ``AccessToken`` goes to
    ``environ["bearerguard.token"]``; a rejected request never reaches the app.
    """

    def __init__(
        self,
        app: WSGIApplication,
        server: ResourceServer,
        *,
        public: Iterable[str] = (),
        rules: Iterable[Rule] = (),
    ) -> None:
        server.check_face("sync")
        self.app = app
        self.server = server
        self.rules = RuleSet(rules, public)
        server.check_requirements(rule.requirement for rule in self.rules.rules)
        server.declare_scopes(s for rule in self.rules.rules for s in rule.requirement.scopes)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = request_path(environ)
        if path == self.server.metadata_path:  # the RFC 9728 document: always public
            return metadata_response(self.server, environ, start_response)
        view = request_view(environ)
        try:
            requirement = self.rules.requirement(view.method, path)
            token = self.server.authorize(view, requirement)
        except AuthError as exc:
            status, headers, body = error_response_parts(self.server.with_realm(exc))
            start_response(status, headers)
            return [body]
        environ[ENVIRON_KEY] = token
        if view.reply:
            return self.app(environ, _with_headers(start_response, view.reply))
        return self.app(environ, start_response)
