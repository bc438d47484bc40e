"""A Flask extension: ``@guard.require("read:products")`` beside the route, or deny by default.

::

    app.config.update(BEARERGUARD_ISSUER="https://tenant.logto.app/oidc",
                      BEARERGUARD_AUDIENCE="https://shopping.api")
    guard = BearerGuard(app)

    @app.get("/products")
    @guard.require("read:products")
    def products(): return [...]   # current_token() / flask.g.access_token hold the token

Verification is synchronous (keys are fetched with a blocking ``httpx.Client`` when needed) and
the extension keeps no per-request state of its own, so threaded servers are fine.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar, cast

from flask import (
    Flask,
    Response,
    after_this_request,
    current_app,
    g,
    has_request_context,
    request,
)

from .claims import NO_PARAMS, ClaimRule
from .errors import AuthError, ConfigurationError
from .metadata import respond
from .request import RequestView
from .rules import Requirement, Rule, RuleSet
from .server import ResourceServer
from .token import AccessToken
from .wsgi import ENVIRON_KEY

__all__ = [
    "BearerGuard",
    "current_token",
    "current_token_or_none",
    "error_response",
    "server_from_config",
]

F = TypeVar("F", bound=Callable[..., Any])

EXTENSION_KEY = "bearerguard"
CONFIG_PREFIX = "BEARERGUARD_"
# ResourceServer keyword arguments readable from app.config as BEARERGUARD_<NAME>.
_CONFIG_OPTIONS = (
    "jwks_uri",
    "algorithms",
    "leeway",
    "require_typ",
    "scope_claims",
    "required_claims",
    "claim_rules",
    "realm",
    "resource",
    "resource_metadata",
    "scopes_supported",
    "resource_name",
    "resource_documentation",
    "resource_policy_uri",
    "resource_tos_uri",
    "dpop",
    "dpop_algorithms",
    "dpop_max_age",
    "dpop_max_future",
    "dpop_nonce",
    "dpop_nonce_secret",
    "dpop_replay_store",
    "max_token_length",
    "token_cache_size",
    "token_cache_ttl",
    "jwks_ttl",
    "jwks_min_ttl",
    "jwks_max_ttl",
    "refetch_cooldown",
    "refresh_retry",
    "outage_retry_max",
    "max_stale",
    "fetch_timeout",
    "http_client",
    "transport",
    "observer",
)


def server_from_config(config: Mapping[str, Any]) -> ResourceServer:
    """Build a ``ResourceServer`` from ``BEARERGUARD_*`` settings.

    Required: ``BEARERGUARD_ISSUER`` and ``BEARERGUARD_AUDIENCE`` (a string or a list of
    strings). Optional, each the ``ResourceServer`` argument of the same name:
    ``BEARERGUARD_JWKS_URI``, ``_ALGORITHMS``, ``_LEEWAY``, ``_REQUIRE_TYP`` (set it for Logto:
    RFC 9068 ``at+jwt`` tokens), ``_SCOPE_CLAIMS``, ``_REQUIRED_CLAIMS``, ``_CLAIM_RULES``,
    ``_REALM``, the RFC 9728 ``_RESOURCE``, ``_RESOURCE_METADATA``, ``_SCOPES_SUPPORTED``,
    ``_RESOURCE_NAME``, ``_RESOURCE_DOCUMENTATION``, ``_RESOURCE_POLICY_URI``,
    ``_RESOURCE_TOS_URI``, DPoP's ``_DPOP``, ``_DPOP_ALGORITHMS``, ``_DPOP_MAX_AGE``,
    ``_DPOP_MAX_FUTURE``, ``_DPOP_NONCE``, ``_DPOP_NONCE_SECRET``, ``_DPOP_REPLAY_STORE``,
    ``_MAX_TOKEN_LENGTH``, ``_TOKEN_CACHE_SIZE``, ``_TOKEN_CACHE_TTL``,
    ``_JWKS_TTL``, ``_JWKS_MIN_TTL``, ``_JWKS_MAX_TTL``, ``_REFETCH_COOLDOWN``,
    ``_REFRESH_RETRY``, ``_OUTAGE_RETRY_MAX``, ``_MAX_STALE``, ``_FETCH_TIMEOUT``,
    ``_HTTP_CLIENT`` (an ``httpx.Client``), ``_TRANSPORT`` (an httpx transport) and
    ``_OBSERVER`` (metrics: see ``bearerguard.observe``). An unknown ``BEARERGUARD_*`` key is
    a ``ConfigurationError`` (a typo would otherwise silently weaken the configuration).
    """
    known = {CONFIG_PREFIX + name.upper() for name in ("issuer", "audience", *_CONFIG_OPTIONS)}
    unknown = sorted(k for k in config if k.startswith(CONFIG_PREFIX) and k not in known)
    if unknown:
        raise ConfigurationError(f"unknown bearerguard settings: {', '.join(unknown)}")
    missing = [k for k in ("ISSUER", "AUDIENCE") if config.get(CONFIG_PREFIX + k) is None]
    if missing:
        names = " and ".join(CONFIG_PREFIX + k for k in missing)
        raise ConfigurationError(f"set {names} in app.config, or pass server= to BearerGuard")
    kwargs = {
        name: config[CONFIG_PREFIX + name.upper()]
        for name in _CONFIG_OPTIONS
        if config.get(CONFIG_PREFIX + name.upper()) is not None
    }
    return ResourceServer(
        config[CONFIG_PREFIX + "ISSUER"], config[CONFIG_PREFIX + "AUDIENCE"], **kwargs
    )


def _add_headers(response: Response, headers: dict[str, str]) -> Response:
    response.headers.update(headers)
    return response


def error_response(exc: AuthError) -> Response:
    """The Flask response for ``exc``: status, WWW-Authenticate, Retry-After, JSON body."""
    response: Response = current_app.response_class(
        exc.to_json(), status=exc.status_code, headers=exc.response_headers()
    )
    return response


def current_token_or_none() -> AccessToken | None:
    """The verified ``AccessToken`` of the current request, or None where no token was
    needed (a public path, an optional route without bearer credentials)."""
    if not has_request_context():
        raise RuntimeError("current_token_or_none() needs a request context")
    token = request.environ.get(ENVIRON_KEY)
    return token if isinstance(token, AccessToken) else None


def current_token() -> AccessToken:
    """The verified ``AccessToken`` of the current request.

    Raises ``RuntimeError`` outside a request, or in a request no bearerguard check accepted.
    """
    if not has_request_context():
        raise RuntimeError("current_token() needs a request context")
    token = request.environ.get(ENVIRON_KEY)
    if not isinstance(token, AccessToken):
        raise RuntimeError("no verified access token: this request is not protected by bearerguard")
    return token


class BearerGuard:
    """Bearer-token protection for a Flask app (``init_app`` pattern).

    ``guard = BearerGuard(app)`` reads ``BEARERGUARD_*`` settings from ``app.config`` (see
    ``server_from_config``); ``BearerGuard(app, server=rs)`` uses a ready ``ResourceServer``.
    The server is built once per app and kept in ``app.extensions["bearerguard"]``.

    - ``@guard.require("read:products")``: a valid token holding the scopes (all of them;
      ``any_of=True``: one is enough); ``@guard.require()``: any valid token. Works on view
      functions, blueprint views, ``MethodView`` methods and in a view class's ``decorators``.
    - ``protect_all=True``: deny by default. Every request needs a valid token unless its
      endpoint (``"health"``, ``"bp.status"``) or path (``"/health"``, ``"/static/*"``) is in
      ``public``; ``rules`` add path/method scopes as in the middleware. Unknown URLs need a
      token too (401 before 404).

    The token is in ``flask.g.access_token`` and ``current_token()``. Errors are answered with
    bearerguard's JSON responses; an ``AuthError`` raised in a view (e.g. by
    ``require_scopes(current_token(), ...)``) is rendered the same way.
    """

    def __init__(
        self,
        app: Flask | None = None,
        server: ResourceServer | None = None,
        *,
        protect_all: bool = False,
        public: Iterable[str] = (),
        rules: Iterable[Rule] = (),
    ) -> None:
        self._server = server
        self.protect_all = protect_all
        public = [public] if isinstance(public, str) else list(public)
        rules = list(rules)
        if (public or rules) and not protect_all:
            raise ConfigurationError("public= and rules= apply only with protect_all=True")
        self.public_endpoints = frozenset(
            [METADATA_ENDPOINT, *(p for p in public if not p.startswith("/"))]
        )
        self.rules = RuleSet(rules, [p for p in public if p.startswith("/")])
        self._scopes: dict[str, None] = dict.fromkeys(
            s for rule in self.rules.rules for s in rule.requirement.scopes
        )
        self._servers: list[ResourceServer] = []  # of the apps this guard is attached to
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Attach to ``app``: build (or reuse) its server, register the error handler."""
        if EXTENSION_KEY not in app.extensions:
            server = self._server or server_from_config(app.config)
            server.check_face("sync")  # Flask verifies in its worker threads
            app.extensions[EXTENSION_KEY] = server
            app.register_error_handler(AuthError, _handle_auth_error)
            if server.metadata_path is not None and METADATA_ENDPOINT not in app.view_functions:
                app.add_url_rule(
                    server.metadata_path,
                    endpoint=METADATA_ENDPOINT,
                    view_func=_metadata,
                    methods=["GET", "HEAD", "OPTIONS"],
                    provide_automatic_options=False,
                )
        server = app.extensions[EXTENSION_KEY]
        server.check_requirements(rule.requirement for rule in self.rules.rules)
        server.declare_scopes(self._scopes)
        self._servers.append(server)
        if self.protect_all:
            app.before_request(self._protect)

    @property
    def server(self) -> ResourceServer:
        """The server of this guard, or of the current app."""
        if self._server is not None:
            return self._server
        server = current_app.extensions.get(EXTENSION_KEY)
        if not isinstance(server, ResourceServer):
            raise RuntimeError("BearerGuard.init_app(app) was not called for this app")
        return server

    def require(
        self,
        *scopes: str,
        any_of: bool = False,
        optional: bool = False,
        claims: Iterable[ClaimRule] = (),
    ) -> Callable[[F], F]:
        """A view decorator: a valid token with ``scopes`` (all, or one with ``any_of``).

        ``@guard.require("a b")`` is ``@guard.require("a", "b")``. ``optional=True``: a
        request without bearer credentials runs the view with no token
        (``current_token_or_none()`` is None); ``claims=[...]``: claim rules
        (``bearerguard.claims``), whose path parameters are the view's arguments. A denied
        request gets bearerguard's error response instead of the view.
        """
        required = tuple(s for scope in scopes for s in scope.split())
        requirement = Requirement(
            scopes=required, any_of=any_of, optional=optional, claims=tuple(claims)
        )
        self._scopes.update(dict.fromkeys(required))
        for server in self._servers:  # scopes_supported of the RFC 9728 document
            server.declare_scopes(required)

        def decorate(view: F) -> F:
            if inspect.iscoroutinefunction(view):

                @functools.wraps(view)
                async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                    denied = self._authorize(requirement)
                    if denied is not None:
                        return denied
                    return await view(*args, **kwargs)

                return cast(F, async_wrapper)

            @functools.wraps(view)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                denied = self._authorize(requirement)
                if denied is not None:
                    return denied
                return view(*args, **kwargs)

            return cast(F, wrapper)

        return decorate

    def authorize(
        self,
        scopes: str | Iterable[str] = (),
        *,
        any_of: bool = False,
        optional: bool = False,
        claims: Iterable[ClaimRule] = (),
    ) -> Response | None:
        """Check the current request: ``None`` when it may proceed, else the error response.

        A token already verified for this request by the same server (``protect_all``, the
        WSGI middleware) is reused, so only the scopes and claim rules are checked again.
        """
        required = tuple(scopes.split()) if isinstance(scopes, str) else tuple(scopes)
        requirement = Requirement(
            scopes=required, any_of=any_of, optional=optional, claims=tuple(claims)
        )
        return self._authorize(requirement)

    def _authorize(self, requirement: Requirement) -> Response | None:
        server = self.server
        view = RequestView(
            request.method,
            request.headers.getlist("Authorization"),
            url=lambda: request.url,
            path_params=request.view_args or NO_PARAMS,
            upstream=request.environ.get(ENVIRON_KEY),
            dpop=request.headers.getlist("DPoP"),
        )
        try:
            token = server.authorize(view, requirement)
        except AuthError as exc:
            return error_response(exc)
        request.environ[ENVIRON_KEY] = token
        if view.reply:  # a fresh DPoP-Nonce, on this request's response
            reply = view.reply
            after_this_request(lambda response: _add_headers(response, reply))
        g.access_token = token
        return None

    def _protect(self) -> Response | None:
        # The endpoint is what Werkzeug routed to; the path rules also see the spellings it
        # merges (doubled slashes) and redirects (trailing slash), see rules.py.
        requirement = self.rules.requirement(request.method, request.path)
        # The metadata route is public for every method (Flask answers 405 after this hook),
        # but only where no other view matched that path: any other view needs a token.
        metadata = request.endpoint == METADATA_ENDPOINT or (
            request.url_rule is None and request.path == self.server.metadata_path
        )
        if requirement.public or metadata or request.endpoint in self.public_endpoints:
            g.access_token = None
            return None
        return self._authorize(requirement)


METADATA_ENDPOINT = "bearerguard_metadata"


def _metadata() -> Response:
    """The RFC 9728 document (GET/HEAD), its CORS preflight, or 405; always public."""
    server = current_app.extensions[EXTENSION_KEY]
    # HEAD is answered as GET: Werkzeug drops the body and keeps GET's Content-Length.
    method = "GET" if request.method == "HEAD" else request.method
    status, headers, body = respond(method, server.metadata())
    response: Response = current_app.response_class(body, status=status, headers=headers)
    return response


def _handle_auth_error(exc: AuthError) -> Response:
    server = current_app.extensions.get(EXTENSION_KEY)
    if isinstance(server, ResourceServer):
        server.with_realm(exc)
    return error_response(exc)
