"""ResourceServer: one frozen configuration, the key sources and the verified-token cache."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from time import perf_counter
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

from .bearer import credentials, scheme_of, undecodable
from .claims import ClaimRule
from .clients import ASYNC_CLIENTS, ASYNC_TRANSPORTS, SYNC_CLIENTS, SYNC_TRANSPORTS
from .dpop import DEFAULT_DPOP_ALGORITHMS, DPoPMode, DPoPSettings, check_proof
from .errors import (
    AuthError,
    ConfigurationError,
    InsufficientScope,
    InvalidDPoPProof,
    InvalidToken,
    Reason,
)
from .fetch import KeySource, WarmUpError, check_url
from .keys import CachePolicy, KeyCache, VerificationKey
from .metadata import ResourceMetadata, metadata_url, scopes_in_order
from .observe import Observer, Reporter, Result, result_of
from .request import Anonymous, RequestView, begin, settle
from .rules import AUTHENTICATED, Requirement
from .token import AccessToken
from .verify import (
    DEFAULT_ALGORITHMS,
    RFC9068_REQUIRED,
    SUPPORTED_ALGORITHMS,
    VerifyOptions,
    check_claims,
    check_header,
    check_issuer,
    check_signature,
    segment_bytes,
    segment_json,
    split,
)

if TYPE_CHECKING:
    from .clients import AsyncClient, SyncClient, Transport
    from .replay import ReplayStore

__all__ = ["ResourceServer"]

log = logging.getLogger("bearerguard")


@dataclass(slots=True)
class _Pending:
    """A token ``_start`` could not decide: what ``_finish`` needs, and whose key to ask."""

    cache_key: str | None
    payload: dict[str, Any]
    signing_input: bytes
    signature: bytes
    alg: str
    kid: str | None
    source: KeySource


_URL_SAFE = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+")  # RFC 3986 characters


def _plain_url(url: str, what: str) -> str:
    """A URL that goes into challenges and documents as written: no userinfo, no fragment,
    nothing a challenge would have to mangle (non-ASCII, quotes: percent-encode them)."""
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        raise ConfigurationError(f"{what} must not carry credentials")
    if parts.fragment or "#" in url or not _URL_SAFE.fullmatch(url):
        raise ConfigurationError(
            f"{what} must be a plain URL (no fragment; percent-encode anything else): {url!r}"
        )
    return url


def _strings(value: str | Iterable[str], what: str) -> tuple[str, ...]:
    items = (value,) if isinstance(value, str) else tuple(value)
    if not items or not all(isinstance(v, str) and v.strip() for v in items):
        raise ConfigurationError(f"{what} must be a non-empty string or list of non-empty strings")
    return items


def _positive(value: float, what: str, *, zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ConfigurationError(f"{what} must be a number")
    if value < 0 or (value == 0 and not zero):
        raise ConfigurationError(f"{what} must be {'>= 0' if zero else '> 0'}")
    return float(value)


class ResourceServer:
    """Verifies bearer access tokens for one API (one or more audiences) from trusted issuers.

    ``authenticate()`` is for sync code (blocking I/O only when keys must be fetched);
    ``authenticate_async()`` is its twin for the event loop. Both return an ``AccessToken`` or
    raise an ``AuthError`` that renders itself as an HTTP response.
    """

    def __init__(
        self,
        issuer: str | Sequence[str],
        audience: str | Sequence[str],
        *,
        jwks_uri: str | None = None,
        algorithms: Iterable[str] = DEFAULT_ALGORITHMS,
        leeway: float = 30.0,
        require_typ: bool = False,
        scope_claims: str | Sequence[str] = ("scope",),
        required_claims: Sequence[str] = (),
        claim_rules: Sequence[ClaimRule] = (),
        realm: str | None = None,
        resource: str | None = None,
        resource_metadata: bool | str = True,
        scopes_supported: Iterable[str] = (),
        resource_name: str | None = None,
        resource_documentation: str | None = None,
        resource_policy_uri: str | None = None,
        resource_tos_uri: str | None = None,
        dpop: str | DPoPMode = "off",
        dpop_algorithms: Iterable[str] = DEFAULT_DPOP_ALGORITHMS,
        dpop_max_age: float = 60.0,
        dpop_max_future: float = 5.0,
        dpop_nonce: bool = False,
        dpop_nonce_secret: bytes | str | None = None,
        dpop_replay_store: ReplayStore | None = None,
        dpop_origins: Iterable[str] = (),
        max_token_length: int = 8192,
        token_cache_size: int = 4096,
        token_cache_ttl: float = 300.0,
        jwks_ttl: float = 600.0,
        jwks_min_ttl: float = 60.0,
        jwks_max_ttl: float = 86400.0,
        refetch_cooldown: float = 5.0,
        max_stale: float = 3600.0,
        refresh_retry: float = 30.0,
        outage_retry_max: float = 5.0,
        fetch_timeout: float = 5.0,
        http_client: SyncClient | AsyncClient | None = None,
        async_http_client: AsyncClient | None = None,
        transport: Transport | None = None,
        observer: Observer | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        issuers = _strings(issuer, "issuer")
        for iss in issuers:
            check_url(iss, "issuer")
        if jwks_uri is not None:
            check_url(jwks_uri, "jwks_uri")
        algs = frozenset(_strings(algorithms, "algorithms"))
        if algs - SUPPORTED_ALGORITHMS:
            raise ConfigurationError(
                f"unsupported algorithms {sorted(algs - SUPPORTED_ALGORITHMS)}; choose from "
                f"{sorted(SUPPORTED_ALGORITHMS)} (none and HS* are never accepted)"
            )
        required = tuple(required_claims) + (RFC9068_REQUIRED if require_typ else ())
        self.options = VerifyOptions(
            issuers=frozenset(issuers),
            audiences=frozenset(_strings(audience, "audience")),
            algorithms=algs,
            leeway=_positive(leeway, "leeway", zero=True),
            require_typ=bool(require_typ),
            scope_claims=_strings(scope_claims, "scope_claims"),
            required_claims=tuple(dict.fromkeys(required)),
        )
        self.claim_rules = tuple(claim_rules)
        if not all(isinstance(r, ClaimRule) for r in self.claim_rules):
            raise ConfigurationError("claim_rules takes ClaimRule objects (see bearerguard.claims)")
        self.issuers = issuers
        self.audiences = _strings(audience, "audience")
        self.realm = realm if realm is not None else self.audiences[0]
        self._describe_resource(
            resource,
            resource_metadata,
            scopes_supported,
            {
                "resource_name": resource_name,
                "resource_documentation": resource_documentation,
                "resource_policy_uri": resource_policy_uri,
                "resource_tos_uri": resource_tos_uri,
            },
        )
        settings = DPoPSettings.build(
            dpop,
            dpop_algorithms,
            dpop_max_age,
            dpop_max_future,
            dpop_nonce,
            dpop_nonce_secret,
            dpop_replay_store,
            dpop_origins,
        )
        if settings.mode is DPoPMode.OFF and (dpop_nonce or dpop_replay_store is not None):
            raise ConfigurationError(
                "dpop_nonce and dpop_replay_store need dpop='allowed' or 'required'"
            )
        #: The DPoP settings (RFC 9449), or None with DPoP off (Bearer only).
        self.dpop = settings if settings.mode is not DPoPMode.OFF else None
        self._schemes = frozenset({"bearer", "dpop"} if self.dpop else {"bearer"})
        self._accept_bearer = self.dpop is None or self.dpop.mode is DPoPMode.ALLOWED
        if isinstance(max_token_length, bool) or not 512 <= max_token_length <= 1 << 20:
            raise ConfigurationError("max_token_length must be between 512 and 1048576")
        self.max_token_length = max_token_length
        self._clock = clock
        policy = CachePolicy(
            default_ttl=_positive(jwks_ttl, "jwks_ttl"),
            min_ttl=_positive(jwks_min_ttl, "jwks_min_ttl", zero=True),
            max_ttl=_positive(jwks_max_ttl, "jwks_max_ttl"),
            cooldown=_positive(refetch_cooldown, "refetch_cooldown", zero=True),
            max_stale=_positive(max_stale, "max_stale", zero=True),
            refresh_retry=_positive(refresh_retry, "refresh_retry", zero=True),
            outage_retry_max=_positive(outage_retry_max, "outage_retry_max", zero=True),
        )
        if not policy.min_ttl <= policy.default_ttl <= policy.max_ttl:
            raise ConfigurationError("need jwks_min_ttl <= jwks_ttl <= jwks_max_ttl")
        if transport is not None and not isinstance(
            transport, (*SYNC_TRANSPORTS, *ASYNC_TRANSPORTS)
        ):
            raise ConfigurationError(
                "transport must be an httpx (or httpx2) transport, sync or async"
            )
        if http_client is not None and not isinstance(http_client, (*SYNC_CLIENTS, *ASYNC_CLIENTS)):
            raise ConfigurationError(
                "http_client must be an httpx.Client or httpx.AsyncClient (httpx2's too)"
            )
        if async_http_client is not None and not isinstance(async_http_client, ASYNC_CLIENTS):
            raise ConfigurationError("async_http_client must be an httpx or httpx2 AsyncClient")
        sync_client = (
            cast("SyncClient", http_client) if isinstance(http_client, SYNC_CLIENTS) else None
        )
        if isinstance(http_client, ASYNC_CLIENTS):
            async_http_client = async_http_client or cast("AsyncClient", http_client)
        source_args: dict[str, Any] = {
            "timeout": _positive(fetch_timeout, "fetch_timeout"),
            "clock": clock,
            "http_client": sync_client,
            "async_http_client": async_http_client,
            "transport": transport,
        }
        # One key source per issuer, unless one jwks_uri serves them all.
        if jwks_uri is not None:
            shared = KeySource(
                issuer=issuers[0], jwks_uri=jwks_uri, cache=KeyCache(policy), **source_args
            )
            self._sources = dict.fromkeys(issuers, shared)
        else:
            self._sources = {
                iss: KeySource(issuer=iss, jwks_uri=None, cache=KeyCache(policy), **source_args)
                for iss in issuers
            }
        if isinstance(token_cache_size, bool) or token_cache_size < 0:
            raise ConfigurationError("token_cache_size must be >= 0 (0 turns the cache off)")
        # The verified-token cache is a plain dict with FIFO eviction rather than a cachetools
        # TTLCache: a hit must cost well under 2 us, and TTLCache.get alone costs ~4 us here.
        self._token_cache: dict[str, tuple[AccessToken, float]] = {}
        self._token_cache_size = int(token_cache_size)
        self._token_cache_ttl = _positive(token_cache_ttl, "token_cache_ttl")
        self._token_cache_lock = threading.Lock()
        self._headers: dict[str, tuple[str, str | None]] = {}
        self._reporter: Reporter | None = None
        self.observer = observer

    @classmethod
    def logto(
        cls, endpoint: str | Sequence[str], audience: str | Sequence[str], **kwargs: Any
    ) -> ResourceServer:
        """A server for a Logto tenant: issuer ``<endpoint>/oidc``, RFC 9068 strictness on.

        Pass several endpoints for a tenant reached through a custom domain too.
        """
        endpoints = _strings(endpoint, "endpoint")
        for e in endpoints:
            if e.rstrip("/").endswith("/oidc"):
                raise ConfigurationError(
                    f"ResourceServer.logto() takes the tenant endpoint (https://<tenant>.logto.app"
                    f" or your custom domain), not the issuer: {e!r} ends in /oidc. Pass "
                    f"{e.rstrip('/')[: -len('/oidc')]!r}, or ResourceServer({e!r}, ...)"
                )
        kwargs.setdefault("require_typ", True)
        return cls([e.rstrip("/") + "/oidc" for e in endpoints], audience, **kwargs)

    # -- the public faces ---------------------------------------------------------------------

    def authenticate(self, authorization: str | None) -> AccessToken:
        """Verify the ``Authorization`` header value; blocking I/O only to fetch keys."""
        # The hot path: a token verified before costs one dict lookup. Entries are keyed
        # "Bearer <token>", so the usual header is its own key, and only verified tokens are
        # cached: a header that finds an entry is well-formed.
        if authorization is not None:
            hit = self._cached(authorization)
            if hit is not None and hit.jkt is None and self._accept_bearer:
                if self._reporter is not None:
                    self._reporter.authentication(Result.SUCCESS, None, hit, True, None)
                return hit
        begun = perf_counter()
        try:
            token, cached = self._verify_sync(authorization, None)
            self._no_proof(authorization, token)
        except AuthError as exc:
            raise self._refused(self.with_realm(exc), False, begun) from None
        if self._reporter is not None:
            self._succeeded(token, cached, begun)
        return token

    async def authenticate_async(self, authorization: str | None) -> AccessToken:
        """The async twin of ``authenticate``: key fetches never block the event loop."""
        if authorization is not None:
            hit = self._cached(authorization)
            if hit is not None and hit.jkt is None and self._accept_bearer:
                if self._reporter is not None:
                    self._reporter.authentication(Result.SUCCESS, None, hit, True, None)
                return hit
        begun = perf_counter()
        try:
            token, cached = await self._verify_async(authorization, None)
            self._no_proof(authorization, token)
        except AuthError as exc:
            raise self._refused(self.with_realm(exc), False, begun) from None
        if self._reporter is not None:
            self._succeeded(token, cached, begun)
        return token

    def verify_token(self, token: str) -> AccessToken:
        """Verify a raw token (no ``Bearer`` prefix), e.g. from a websocket subprotocol."""
        begun = perf_counter()
        try:
            access, cached = self._verify_sync(None, token)
            self._as_bearer(access)
        except AuthError as exc:
            raise self._refused(self.with_realm(exc), False, begun) from None
        if self._reporter is not None:
            self._succeeded(access, cached, begun)
        return access

    async def verify_token_async(self, token: str) -> AccessToken:
        """The async twin of ``verify_token``."""
        begun = perf_counter()
        try:
            access, cached = await self._verify_async(None, token)
            self._as_bearer(access)
        except AuthError as exc:
            raise self._refused(self.with_realm(exc), False, begun) from None
        if self._reporter is not None:
            self._succeeded(access, cached, begun)
        return access

    def authorize(
        self, view: RequestView, requirement: Requirement = AUTHENTICATED
    ) -> AccessToken | None:
        """The whole step for one request (see ``request.py``): the token to store, or None
        (a public route, or an optional one without bearer credentials); else an AuthError
        carrying every challenge parameter. The observer hears of it once."""
        cached: bool | None = None  # None: nothing looked up (no token, or one reused)
        begun = 0.0
        proof = False
        try:
            found = begin(self, view, requirement)
            if isinstance(found, Anonymous):
                if self._reporter is not None and not requirement.public:
                    self._reporter.authentication(Result.NONE, None, None, None, None)
                return None
            if isinstance(found, AccessToken):
                token = found  # verified (and its proof checked) by an outer guard
                if requirement.dpop and token.jkt is None:
                    self._as_bearer(token, requirement)  # it came as Bearer
            elif found is not None and (hit := self._cached(found)) is not None:
                token, cached = hit, True  # a "Bearer <token>" header: cache keys are
                if hit.jkt is not None or not self._accept_bearer or requirement.dpop:
                    self._as_bearer(hit, requirement)
            else:
                proof = self.dpop is not None and found is not None and scheme_of(found) == "dpop"
                begun, cached = perf_counter(), False
                if proof:
                    raw = self._credentials(found)
                    hit = self._cached("Bearer " + raw)  # DPoP tokens are cached as any
                    token, cached = (
                        (hit, True) if hit is not None else self._verify_sync(found, None)
                    )
                    self._prove_sync(view, raw, token)
                else:
                    token, cached = self._verify_sync(found, None)
                    self._as_bearer(token, requirement)
            token = settle(token, view, requirement)
        except AuthError as exc:
            if proof:
                exc.scheme = "DPoP"
            raise self._refused(self._challenge(exc, requirement), cached, begun) from None
        reporter = self._reporter
        if reporter is not None and cached is not None:  # reused: reported upstream
            duration = None if cached else perf_counter() - begun
            reporter.authentication(Result.SUCCESS, None, token, cached, duration)
        return token

    async def authorize_async(
        self, view: RequestView, requirement: Requirement = AUTHENTICATED
    ) -> AccessToken | None:
        """The async twin of ``authorize``."""
        cached: bool | None = None
        begun = 0.0
        proof = False
        try:
            found = begin(self, view, requirement)
            if isinstance(found, Anonymous):
                if self._reporter is not None and not requirement.public:
                    self._reporter.authentication(Result.NONE, None, None, None, None)
                return None
            if isinstance(found, AccessToken):
                token = found
                if requirement.dpop and token.jkt is None:
                    self._as_bearer(token, requirement)
            elif found is not None and (hit := self._cached(found)) is not None:
                token, cached = hit, True  # a token seen before needs no coroutine
                if hit.jkt is not None or not self._accept_bearer or requirement.dpop:
                    self._as_bearer(hit, requirement)
            else:
                proof = self.dpop is not None and found is not None and scheme_of(found) == "dpop"
                begun, cached = perf_counter(), False
                if proof:
                    raw = self._credentials(found)
                    hit = self._cached("Bearer " + raw)
                    if hit is not None:
                        token, cached = hit, True
                    else:
                        token, cached = await self._verify_async(found, None)
                    await self._prove_async(view, raw, token)
                else:
                    token, cached = await self._verify_async(found, None)
                    self._as_bearer(token, requirement)
            token = settle(token, view, requirement)
        except AuthError as exc:
            if proof:
                exc.scheme = "DPoP"
            raise self._refused(self._challenge(exc, requirement), cached, begun) from None
        reporter = self._reporter
        if reporter is not None and cached is not None:
            duration = None if cached else perf_counter() - begun
            reporter.authentication(Result.SUCCESS, None, token, cached, duration)
        return token

    # -- DPoP (RFC 9449) --------------------------------------------------------------------------

    def _as_bearer(self, token: AccessToken, requirement: Requirement = AUTHENTICATED) -> None:
        """A token sent as Bearer (or raw) must not be DPoP-bound, and Bearer must be taken
        (by the server, and by the route)."""
        if token.jkt is not None:
            raise InvalidToken(
                "a DPoP-bound token must be sent as Authorization: DPoP, with a proof",
                reason=Reason.DPOP_BINDING,
            )
        if not self._accept_bearer or requirement.dpop:
            where = "this route" if self._accept_bearer else "this API"
            raise InvalidToken(
                f"{where} takes DPoP-bound tokens only (Authorization: DPoP)",
                reason=Reason.DPOP_BINDING,
            )

    def _no_proof(self, header: str | None, token: AccessToken) -> None:
        """``authenticate`` has no request to check a proof against: Bearer only."""
        if self.dpop is not None and header is not None and scheme_of(header) == "dpop":
            exc = InvalidDPoPProof(
                "DPoP proofs are checked per request: use authorize() or an adapter"
            )
            raise exc
        self._as_bearer(token)

    def _proof(self, view: RequestView, raw: str, token: AccessToken) -> Any:
        assert self.dpop is not None
        return check_proof(
            view.dpop,
            method=view.method,
            url=view.url,
            raw_token=raw,
            token=token,
            settings=self.dpop,
            now=self._clock(),
            max_length=self.max_token_length,
        )

    def _prove_sync(self, view: RequestView, raw: str, token: AccessToken) -> None:
        check = self._proof(view, raw, token)
        assert self.dpop is not None
        if not self.dpop.replay.add(check.replay_key, check.ttl):
            raise InvalidDPoPProof("the DPoP proof was used before", reason=Reason.DPOP_REPLAY)
        if check.fresh_nonce is not None:
            view.reply = {"DPoP-Nonce": check.fresh_nonce}

    async def _prove_async(self, view: RequestView, raw: str, token: AccessToken) -> None:
        check = self._proof(view, raw, token)
        assert self.dpop is not None
        if not await self.dpop.replay.add_async(check.replay_key, check.ttl):
            raise InvalidDPoPProof("the DPoP proof was used before", reason=Reason.DPOP_REPLAY)
        if check.fresh_nonce is not None:
            view.reply = {"DPoP-Nonce": check.fresh_nonce}

    # -- observation ----------------------------------------------------------------------------

    @property
    def observer(self) -> Observer | None:
        """What this server reports its decisions and key fetches to (see ``observe.py``)."""
        return self._reporter.observer if self._reporter is not None else None

    @observer.setter
    def observer(self, observer: Observer | None) -> None:
        if observer is not None and not isinstance(observer, Observer):
            raise ConfigurationError(
                "observer must have on_authentication() and on_key_fetch() (see "
                "bearerguard.observe.Observer)"
            )
        self._reporter = Reporter(observer) if observer is not None else None
        for source in self.key_sources:
            source.reporter = self._reporter

    def _succeeded(self, token: AccessToken, cached: bool, begun: float) -> None:
        assert self._reporter is not None
        duration = None if cached else perf_counter() - begun
        self._reporter.authentication(Result.SUCCESS, None, token, cached, duration)

    def _refused(self, exc: AuthError, cached: bool | None, begun: float) -> AuthError:
        """``exc``, reported: a miss (with its duration) if a token was being verified."""
        if self._reporter is not None:
            if exc.reason is Reason.MISSING_TOKEN:
                cached = None
            elif begun and cached is not True:
                cached = False
            duration = perf_counter() - begun if cached is False else None
            self._reporter.authentication(result_of(exc.reason), exc.reason, None, cached, duration)
        return exc

    # -- RFC 9728: what this resource says about itself -------------------------------------------

    def _describe_resource(
        self,
        resource: str | None,
        publish: bool | str,
        scopes: Iterable[str],
        extra: dict[str, str | None],
    ) -> None:
        explicit = resource is not None
        self.resource = resource if resource is not None else self.audiences[0]
        if explicit:  # RFC 9728: an https URL (http on loopback) without a fragment
            _plain_url(check_url(self.resource, "resource"), "resource")
            is_url = True
        else:
            try:
                _plain_url(check_url(self.resource, "resource"), "resource")
                is_url = True
            except ConfigurationError:
                is_url = False  # an audience such as "api://x": no metadata URL
        for name, value in extra.items():
            if value is not None and name != "resource_name":
                check_url(value, name)
        self._metadata_extra = extra
        scopes = (scopes,) if isinstance(scopes, str) else tuple(scopes)
        if not all(isinstance(s, str) and s and " " not in s for s in scopes):
            raise ConfigurationError("scopes_supported takes scope names (strings, no spaces)")
        self._declared: dict[str, None] = dict.fromkeys(scopes)
        self._scope_sources: dict[str, Callable[[object], Iterable[str]]] = {}
        if publish is False:
            self.metadata_url: str | None = None
        elif isinstance(publish, str):
            self.metadata_url = _plain_url(
                check_url(publish, "resource_metadata"), "resource_metadata"
            )
        elif publish is True:
            # Derived from the resource when it is a URL; an audience such as "api://x" has
            # no metadata URL, and then challenges simply carry none.
            self.metadata_url = metadata_url(self.resource) if is_url else None
        else:
            raise ConfigurationError("resource_metadata must be True, False or an absolute URL")
        #: The path the document is served at, or None. Only a path with a /.well-known/
        #: segment is served (a gateway may keep its prefix before it): anywhere else it
        #: would hide the app's own route, and the URL is only named in challenges.
        self.metadata_path = None
        if self.metadata_url is not None:
            path = urlsplit(self.metadata_url).path
            if "/.well-known/" in path:
                self.metadata_path = path

    def add_scope_source(self, name: str, source: Callable[[object], Iterable[str]]) -> None:
        """A way to find scopes an app declares in its routes, asked with the app object when
        the document is served (FastAPI's ``Security(auth, scopes=[...])``); one per name."""
        self._scope_sources.setdefault(name, source)

    def declare_scopes(self, scopes: Iterable[str]) -> None:
        """Scopes the app's rules, decorators and dependencies use: ``scopes_supported``."""
        for scope in scopes:
            if isinstance(scope, str) and scope and " " not in scope:
                self._declared.setdefault(scope, None)

    def metadata(self, app: object = None) -> ResourceMetadata | None:
        """The RFC 9728 document's contents, or None when publishing is switched off.

        ``app`` (the ASGI app serving it, when known) lets scope sources find the scopes its
        routes declare.
        """
        if self.metadata_url is None:
            return None
        if app is not None:
            for source in self._scope_sources.values():
                self.declare_scopes(source(app))
        dpop = self.dpop
        return ResourceMetadata(
            resource=self.resource,
            authorization_servers=self.issuers,
            scopes_supported=tuple(self._declared),
            dpop_signing_alg_values_supported=tuple(dpop.algs.split()) if dpop else (),
            dpop_bound_access_tokens_required=dpop is not None and dpop.mode is DPoPMode.REQUIRED,
            **self._metadata_extra,  # type: ignore[arg-type]
        )

    # -- start-up -------------------------------------------------------------------------------

    def warm_up(self) -> None:
        """Fetch every issuer's discovery document and keys now, e.g. at start-up.

        Raises ``WarmUpError`` (naming the URL that failed) when an issuer cannot be reached
        or answers nonsense; the others are still warmed up. Starting anyway is fine:
        requests fetch keys themselves, and answer 503 while no keys can be had.
        """
        errors: list[WarmUpError] = []
        for source in self.key_sources:
            try:
                source.warm_up()
            except WarmUpError as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    async def warm_up_async(self) -> None:
        """The async twin of ``warm_up``, for an ASGI lifespan."""
        errors: list[WarmUpError] = []
        for source in self.key_sources:
            try:
                await source.warm_up_async()
            except WarmUpError as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    def ready(self) -> bool:
        """Usable keys are cached for every issuer (no I/O): for a readiness probe."""
        return all(source.ready() for source in self.key_sources)

    def reuse(self, candidate: object) -> AccessToken | None:
        """``candidate`` if it is an ``AccessToken`` this server verified, else None.

        Adapters store the verified token on the request (``scope["auth"]``, the WSGI
        environ); a guard further in reuses it only when its own server verified it. A token
        verified for another API (another audience or issuer) is verified again.
        """
        if isinstance(candidate, AccessToken) and candidate._server is self:
            return candidate
        return None

    def check_scopes(
        self, token: AccessToken, scopes: str | Iterable[str], *, any_of: bool = False
    ) -> None:
        """``require_scopes`` with this server's challenge parameters (realm, metadata)."""
        required = tuple(scopes.split()) if isinstance(scopes, str) else tuple(scopes)
        if not token.has_scopes(*required, any_of=any_of):
            raise self.with_realm(InsufficientScope(required, any_of=any_of))

    def check_requirements(self, requirements: Iterable[Requirement]) -> None:
        """ConfigurationError for a route this server could never let through: one that
        takes DPoP only, on a server with DPoP off. Adapters call it when they are built."""
        if self.dpop is None and any(r.dpop for r in requirements):
            raise ConfigurationError(
                "a route with dpop=True needs ResourceServer(dpop='allowed' or 'required')"
            )

    def check_face(self, face: str) -> None:
        """Raise ConfigurationError unless keys can be fetched from ``face``.

        ``"sync"`` (``authenticate``, WSGI, Flask, sync endpoints) or ``"async"``
        (``authenticate_async``, ASGI, FastAPI). Adapters call it when they are built, so a
        transport of the wrong kind is a start-up error, not a 503 at the first request.
        """
        if face not in ("sync", "async"):
            raise ValueError(f"face must be 'sync' or 'async', not {face!r}")
        for source in self.key_sources:
            source.check_face(face)
        replay = self.dpop.replay if self.dpop is not None else None
        if (
            replay is not None
            and getattr(replay, "client" if face == "sync" else "async_client", 0) is None
        ):
            raise ConfigurationError(
                f"the DPoP replay store has no {face} Redis client for {face} code: give "
                "RedisReplayStore(client=...) for sync code, async_client=... for async"
            )

    def describe(self) -> str:
        return f"ResourceServer(issuer={list(self.issuers)!r}, audience={list(self.audiences)!r})"

    __repr__ = describe

    # -- the steps, shared by both faces --------------------------------------------------------

    def _challenge(self, exc: AuthError, requirement: Requirement) -> AuthError:
        """Every challenge parameter for a request under ``requirement``: the server's, and
        all of the route's scopes in one challenge (not for a failed claim rule)."""
        if exc.reason is not Reason.CLAIM_RULE:
            scopes = scopes_in_order(group.scopes for group in requirement.groups())
            if scopes:
                exc.scope = scopes
        if log.isEnabledFor(logging.DEBUG):  # never the token: the reason and fixed text
            log.debug("bearerguard: refused (%s): %s", exc.reason, exc.description)
        return self.with_realm(exc)

    def with_realm(self, exc: AuthError) -> AuthError:
        """Fill in this server's challenge parameters (realm, RFC 9728 ``resource_metadata``)
        on an error raised elsewhere (e.g. by require_scopes)."""
        if exc.realm is None:
            exc.realm = self.realm
        if exc.resource_metadata is None:
            exc.resource_metadata = self.metadata_url
        if self.dpop is not None:  # RFC 9449 section 7.1: a challenge per accepted scheme
            exc.schemes = self.dpop.schemes
            exc.dpop_algs = self.dpop.algs
            if exc.scheme not in exc.schemes:
                exc.scheme = exc.schemes[0]
        return exc

    def _verify_sync(self, header: str | None, raw: str | None) -> tuple[AccessToken, bool]:
        """(the token, whether the cache had it) for a header or a raw token; AuthError
        without this server's challenge parameters otherwise."""
        token = self._raw(raw) if raw is not None else self._credentials(header)
        step = self._start(token, header)
        if isinstance(step, _Pending):
            return self._finish(step, step.source.get_key(step.kid)), False
        return step, True

    async def _verify_async(self, header: str | None, raw: str | None) -> tuple[AccessToken, bool]:
        """The async twin of ``_verify_sync``."""
        token = self._raw(raw) if raw is not None else self._credentials(header)
        step = self._start(token, header)
        if isinstance(step, _Pending):
            return self._finish(step, await step.source.get_key_async(step.kid)), False
        return step, True

    def _credentials(self, authorization: str | None) -> str:
        return credentials(authorization, max_length=self.max_token_length, schemes=self._schemes)

    def _raw(self, token: str) -> str:
        if len(token) > self.max_token_length:
            raise InvalidToken("token too large", reason=Reason.TOKEN_TOO_LARGE)
        return token

    def _start(self, token: str, header: str | None) -> AccessToken | _Pending:
        """A cached answer, or everything verification needs but the key."""
        cache_key, hit = self._lookup(token, header)
        if hit is not None:
            return hit
        payload, signing_input, signature, alg, kid, iss = self._prepare(token)
        return _Pending(cache_key, payload, signing_input, signature, alg, kid, self._sources[iss])

    def _lookup(self, token: str, header: str | None) -> tuple[str | None, AccessToken | None]:
        """(the cache key for ``token``, its cached answer); the key is None with the cache off.

        When ``header`` is exactly "Bearer <token>" it is the key itself: it was looked up
        already, and the str keeps its hash, so the insert does not hash 1 KB again. Any other
        spelling ("bearer", extra spaces) or a bare token is looked up under the usual key.
        """
        if not self._token_cache_size:
            return None, None
        if (
            header is not None
            and len(header) == len(token) + 7
            and header.startswith("Bearer ")
            and header.endswith(token)
        ):
            return header, None
        key = "Bearer " + token
        return key, self._cached(key)

    def _cached(self, key: str) -> AccessToken | None:
        # The hit path: one dict lookup and one clock read, no parsing, no lock (dict reads
        # are atomic). ``key`` is "Bearer <token>", whichever face verified the token.
        entry = self._token_cache.get(key)
        if entry is not None and self._clock() < entry[1]:
            return entry[0]
        return None

    def _remember(self, key: str, access: AccessToken, now: float) -> None:
        # An entry never outlives the token (exp + leeway) nor the cache TTL.
        deadline = min(access.expires_at + self.options.leeway, now + self._token_cache_ttl)
        cache = self._token_cache
        with self._token_cache_lock:
            while len(cache) >= self._token_cache_size:
                del cache[next(iter(cache))]  # the oldest entry first (insertion order)
            cache[key] = (access, deadline)

    def _prepare(self, token: str) -> tuple[dict[str, Any], bytes, bytes, str, str | None, str]:
        """Everything that needs no key: (payload, signing input, signature, alg, kid, iss)."""
        try:
            h, p, s = split(token)
            known = self._headers.get(h)
            if known is None:
                known = self._check_header(h)
            payload = segment_json(p, "payload")
            signature = segment_bytes(s)
        except InvalidToken as exc:
            raise undecodable(token, exc) from None
        # iss picks the key source; it is checked against the configured set before any I/O.
        iss = check_issuer(payload, self.options)
        return payload, f"{h}.{p}".encode(), signature, known[0], known[1], iss

    def _check_header(self, segment: str) -> tuple[str, str | None]:
        # Tokens signed by one key share their header segment: it is decoded and checked once
        # and remembered as (alg, kid); the memo is bounded and simply starts over when full.
        header = segment_json(segment, "header")
        known = (check_header(header, self.options), header.get("kid"))
        if len(self._headers) >= 256:
            self._headers.clear()
        self._headers[segment] = known
        return known

    def _finish(self, step: _Pending, key: VerificationKey) -> AccessToken:
        """Signature, claims, this API's claim rules; then the verified-token cache."""
        check_signature(step.signature, step.signing_input, step.alg, key)
        now = self._clock()
        access = check_claims(step.payload, self.options, now, server=self)
        for rule in self.claim_rules:  # before caching: a token failing one is never cached
            if not rule.holds(access):
                raise InvalidToken(
                    f"token fails a claim rule of this API: {rule.description}",
                    reason=Reason.CLAIM_RULE,
                )
        if step.cache_key is not None:
            self._remember(step.cache_key, access, now)
        return access

    @property
    def key_sources(self) -> tuple[KeySource, ...]:
        """The key sources (one per issuer, or one shared), for metrics and tests."""
        return tuple(dict.fromkeys(self._sources.values()))
