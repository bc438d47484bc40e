"""The ``bearerguard`` command: ``dev-issuer``, ``token`` and ``verify``.

Expected failures (bad options, an unreachable issuer, a bad config file) end with a one-line
message and a non-zero status, never a traceback: 1 when the work failed (or the token is
invalid), 2 for usage and configuration errors.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from .client import TokenRequestError, fetch_token
from .errors import AuthError, ConfigurationError, InvalidToken, IssuerUnavailable
from .server import ResourceServer
from .token import AccessToken
from .verify import (
    SUPPORTED_ALGORITHMS,
    ParsedToken,
    VerifyOptions,
    check_claims,
    check_header,
    check_issuer,
    check_signature,
    parse,
)

if TYPE_CHECKING:
    from .devissuer import DevIssuer

__all__ = ["main"]

EXAMPLE_CONFIG = Path("examples/issuer.toml")
DEFAULT_KEYS = Path(".bearerguard/dev-issuer-keys.json")
SECRET_ENV = "BEARERGUARD_CLIENT_SECRET"  # noqa: S105 - the variable name, not a secret


def _fail(message: str, status: int = 1) -> int:
    print(f"bearerguard: {message}", file=sys.stderr)
    return status


def _port(value: str) -> int:
    if not value.isdigit() or int(value) > 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port number (0-65535)")
    return int(value)


def _scopes(values: Sequence[str]) -> tuple[str, ...]:
    """``--scope a b --scope "c d"`` -> (a, b, c, d)."""
    return tuple(dict.fromkeys(s for value in values for s in value.split()))


# -- dev-issuer -----------------------------------------------------------------------------------


def _dev_issuer(args: argparse.Namespace) -> int:
    from .devissuer import DevIssuer, KeyStore, load_config
    from .devissuer.app import bind, issuer_url

    config_path = args.config or (EXAMPLE_CONFIG if EXAMPLE_CONFIG.is_file() else None)
    config = load_config(config_path)
    try:
        sock = bind(args.host, args.port, insecure_public=args.insecure_public)
    except OSError as exc:
        return _fail(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}")
    with sock:
        keys = KeyStore(args.keys or DEFAULT_KEYS, alg=args.alg or "ES384")
        if args.alg and keys.current.alg != args.alg:
            print(
                f"note: the key file holds {keys.current.alg} keys; --alg applies to new key files "
                f"(use `bearerguard dev-issuer rotate-key --alg {args.alg}`)",
                file=sys.stderr,
            )
        url = args.issuer or issuer_url(args.host, sock.getsockname()[1])
        issuer = DevIssuer(config, issuer=url, keys=keys)
        _banner(issuer, str(config_path or "built-in default (same as examples/issuer.toml)"))
        if args.insecure_public:
            print(
                f"WARNING: listening on {args.host} (--insecure-public): anyone who can reach "
                "this port can mint tokens with the config's secrets.",
                flush=True,
            )
        try:
            started = issuer.run(sock)
        except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after its graceful shutdown
            started = True
    print("dev issuer stopped", flush=True)
    return 0 if started else 1


def _banner(issuer: DevIssuer, config_label: str) -> None:
    config, key = issuer.config, issuer.keys.current
    lines = [
        "bearerguard dev issuer -- FOR DEVELOPMENT ONLY: its app secrets sit in the config file",
        "and its signing keys in a plain file. Never use it, its secrets or its tokens for real.",
        "",
        f"  issuer          {issuer.issuer}",
        f"  discovery       {issuer.issuer}/.well-known/openid-configuration",
        f"  token endpoint  {issuer.token_endpoint}",
        f"  JWKS            {issuer.jwks_uri}",
        f"  config          {config_label}",
        f"  signing keys    {issuer.keys.path} (current {key.alg}, kid {key.kid};"
        f" {len(issuer.keys.keys)} published)",
        "",
        "  resources:",
    ]
    for resource in config.resources:
        default = " (default)" if resource.indicator == config.default_resource else ""
        lines.append(
            f"    {resource.indicator}{default}  scopes: {' '.join(resource.scopes) or '-'};"
            f" token TTL {resource.ttl} s"
        )
    lines.append("  apps (App ID = client_id; secrets are in the config file):")
    width = max((len(app.id) for app in config.apps), default=0)
    for app in config.apps:
        grants = [
            f"{r.indicator}: {' '.join(s for s in r.scopes if s in config.granted_scopes(app, r))}"
            for r in config.resources
            if config.granted_scopes(app, r)
        ]
        lines.append(f"    {app.id:<{width}}  {'; '.join(grants) or 'no permissions'}")
    lines += [
        "",
        "Get a token: bearerguard token --issuer " + issuer.issuer + " --client-id <App ID>"
        " --resource <indicator> --scope <scopes> (secret in $" + SECRET_ENV + ")",
        "Press Ctrl-C to stop.",
    ]
    print("\n".join(lines), flush=True)


def _rotate_key(args: argparse.Namespace) -> int:
    from .devissuer import KeyStore

    path = Path(args.keys or DEFAULT_KEYS)
    existed = path.exists()
    store = KeyStore(path, alg=args.alg or "ES384")
    if existed:
        key = store.rotate(args.alg)
        print(f"new current signing key in {path}: {key.alg}, kid {key.kid}")
    else:
        key = store.current
        print(f"created {path} with a signing key: {key.alg}, kid {key.kid}")
    print("published keys, oldest first: " + ", ".join(k.kid for k in store.keys))
    print("A running dev issuer serves the new key from its next request on.")
    return 0


# -- token ----------------------------------------------------------------------------------------


def _token(args: argparse.Namespace) -> int:
    secret = args.client_secret or os.environ.get(SECRET_ENV)
    if not secret:
        return _fail(f"no client secret: pass --client-secret or set {SECRET_ENV}", 2)
    try:
        response = fetch_token(
            client_id=args.client_id,
            client_secret=secret,
            issuer=args.issuer,
            token_endpoint=args.token_endpoint,
            resource=args.resource,
            scope=_scopes(args.scope) or None,
            timeout=args.timeout,
        )
    except TokenRequestError as exc:
        if exc.error == "request_failed":
            return _fail(f"cannot reach the token endpoint: {exc.description}")
        return _fail(f"token request failed: {exc}")
    if args.json:
        print(json.dumps(response, indent=2))
    else:
        print(response["access_token"])
    requested, granted = _scopes(args.scope), _granted(response)
    missing = [] if granted is None else [s for s in requested if s not in granted]
    if missing:
        kept = " ".join(s for s in requested if s not in missing) or "none of them"
        print(
            f"bearerguard: warning: the issuer granted fewer scopes than requested: missing "
            f"{' '.join(missing)} (granted: {kept}). Issuers like Logto grant only what the "
            "app's roles hold, without an error.",
            file=sys.stderr,
        )
    return 0


def _granted(response: dict[str, Any]) -> frozenset[str] | None:
    """The scopes a token response grants, by its ``scope`` and the token's own ``scope`` claim.

    A scope counts only if neither says otherwise: a JWT without a ``scope`` claim grants none
    (Logto leaves the claim out when nothing was granted). None: cannot tell (an opaque token
    and no ``scope`` in the response, which RFC 6749 5.1 reads as "what was asked").
    """
    granted: frozenset[str] | None = None
    scope = response.get("scope")
    if isinstance(scope, str):
        granted = frozenset(scope.split())
    try:
        claims = parse(str(response.get("access_token", ""))).payload
    except InvalidToken:  # opaque: only the response can tell
        return granted
    claim = claims.get("scope")
    held = frozenset(claim.split()) if isinstance(claim, str) else frozenset()
    return held if granted is None else granted & held


# -- verify ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One line of ``verify``'s report. ``ok`` None: not checked."""

    name: str
    ok: bool | None
    detail: str

    def line(self) -> str:
        mark = {True: "PASS", False: "FAIL", None: "SKIP"}[self.ok]
        return f"  {mark}  {self.name:<12} {self.detail}"


def _ago(ts: Any, now: float) -> str:
    if isinstance(ts, bool) or not isinstance(ts, (int, float)):
        return repr(ts)
    try:
        when = datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return repr(ts)
    delta = int(ts - now)
    span = abs(delta)
    human = f"{span // 3600}h{span % 3600 // 60:02d}m{span % 60:02d}s" if span >= 60 else f"{span}s"
    return f"{when} ({'in ' + human if delta >= 0 else human + ' ago'})"


def _probe(
    name: str,
    claims: dict[str, Any],
    options: VerifyOptions,
    now: float,
    passed: Callable[[AccessToken], str],
    failed: Callable[[str], str],
) -> tuple[Check, AccessToken | None]:
    """Run the library's claims rules on ``claims`` (whose other claims are known good)."""
    try:
        access = check_claims(claims, options, now)
    except InvalidToken as exc:
        return Check(name, False, failed(exc.description)), None
    return Check(name, True, passed(access)), access


def _signature(server: ResourceServer, parsed: ParsedToken, alg: Any) -> Check:
    """Check the signature with the keys of the issuer the token names, as ``server`` would."""
    kid = parsed.header.get("kid")
    if not isinstance(alg, str) or alg not in SUPPORTED_ALGORITHMS:
        return Check("signature", None, "not checked: the token names no usable algorithm")
    if kid is not None and not isinstance(kid, str):
        return Check("signature", None, "not checked: kid is not a string")
    # iss picks the key source, exactly as ResourceServer._prepare does: a token naming none
    # of the configured issuers is an issuer mismatch, and no issuer's keys are fetched for it.
    try:
        iss = check_issuer(parsed.payload, server.options)
    except InvalidToken as exc:
        return Check("signature", None, f"not checked: {exc.description}")
    source = server._sources[iss]
    try:
        key = source.get_key(kid)
    except IssuerUnavailable:
        reason = source.cache.last_error or "the issuer is unavailable"
        return Check("signature", False, f"cannot get the issuer's signing keys: {reason}")
    except InvalidToken as exc:
        held = source.cache.keys.keys if source.cache.keys is not None else ()
        kids = ", ".join(str(k.kid) for k in held) or "none"
        return Check("signature", False, f"{exc.description} (kid {kid}); the JWKS has: {kids}")
    try:
        check_signature(parsed.signature, parsed.signing_input, alg, key)
    except InvalidToken as exc:
        return Check("signature", False, f"{exc.description} (kid {kid}, {alg})")
    return Check("signature", True, f"kid {kid} is in the issuer's JWKS; {alg} signature valid")


def inspect_token(
    server: ResourceServer, token: str, required: Sequence[str], now: float
) -> tuple[list[Check], ParsedToken | None]:
    """Every rule ``server`` applies, one ``Check`` each, on the library's own functions.

    Each claims rule runs ``check_claims`` on a copy of the payload whose other claims are
    replaced by known-good values, so one failure does not hide the others.
    """
    options = server.options
    try:
        parsed = parse(token)
    except InvalidToken as exc:
        return [Check("format", False, exc.description)], None
    checks = [Check("format", True, "three base64url segments; JSON header and payload")]
    header, payload = parsed.header, parsed.payload

    alg = header.get("alg")
    try:
        check_header({"alg": alg}, replace(options, require_typ=False))
        checks.append(Check("alg", True, f"{alg} is allowed"))
    except InvalidToken as exc:
        allowed = ", ".join(sorted(options.algorithms))
        checks.append(Check("alg", False, f"{exc.description}: {alg!r} (allowed: {allowed})"))
    typ_probe = {"alg": min(options.algorithms)}
    if "typ" in header:
        typ_probe["typ"] = header["typ"]
    strict = "required: at+jwt" if options.require_typ else "not required (--no-strict)"
    try:
        check_header(typ_probe, options)
        checks.append(Check("typ", True, f"{header.get('typ')!r}; {strict}"))
    except InvalidToken as exc:
        checks.append(Check("typ", False, f"{exc.description}: {header.get('typ')!r}"))
    if all(c.ok for c in checks):
        try:
            check_header(header, options)
        except InvalidToken as exc:
            checks.append(Check("header", False, exc.description))

    checks.append(_signature(server, parsed, alg))

    issuers = ", ".join(sorted(options.issuers))
    try:
        check_issuer(payload, options)
        checks.append(Check("iss", True, str(payload["iss"])))
    except InvalidToken as exc:
        detail = f"{exc.description}: token has {payload.get('iss')!r}, expected {issuers}"
        checks.append(Check("iss", False, detail))

    relaxed = replace(options, required_claims=())
    good: dict[str, Any] = {
        "iss": min(options.issuers),
        "aud": min(options.audiences),
        "exp": now + 3600,
    }
    audiences = ", ".join(sorted(options.audiences))
    aud = {k: v for k, v in good.items() if k != "aud"}
    if "aud" in payload:
        aud["aud"] = payload["aud"]
    check, _ = _probe(
        "aud",
        aud,
        relaxed,
        now,
        lambda t: f"{', '.join(t.audience)} (expected {audiences})",
        lambda why: f"{why}: token has {payload.get('aud')!r}, expected {audiences}",
    )
    checks.append(check)

    dates: dict[str, Any] = {k: payload[k] for k in ("exp", "nbf", "iat") if k in payload}
    described = ", ".join(f"{k} {_ago(v, now)}" for k, v in dates.items()) or "no dates"
    leeway = f"leeway {options.leeway:g}s"
    check, _ = _probe(
        "exp/nbf/iat",
        {"iss": good["iss"], "aud": good["aud"], **dates},
        relaxed,
        now,
        lambda t: f"{described}; {leeway}",
        lambda why: f"{why}: {described}; {leeway}",
    )
    checks.append(check)

    rest = {**payload, **good}
    rest.pop("nbf", None)
    if "iat" in rest:
        rest["iat"] = now
    names = ", ".join(options.required_claims)
    check, access = _probe(
        "claims",
        rest,
        options,
        now,
        lambda t: f"present: {names}" if names else "none required (--no-strict)",
        lambda why: why,
    )
    checks.append(check)

    if access is None:
        checks.append(Check("scopes", None, "not checked: the claims are not usable"))
    else:
        held = " ".join(sorted(access.scopes)) or "none"
        missing = [s for s in required if s not in access.scopes]
        if missing:
            detail = f"missing {' '.join(missing)}; token has: {held}"
            checks.append(Check("scopes", False, detail))
        else:
            needed = " ".join(required) or "none"
            checks.append(Check("scopes", True, f"required: {needed}; token has: {held}"))
    return checks, parsed


def _read_token(value: str) -> str:
    token = (sys.stdin.read() if value == "-" else value).strip()
    return re.sub(r"^bearer(?:\s+|$)", "", token, flags=re.IGNORECASE)


def _verify(args: argparse.Namespace) -> int:
    token = _read_token(args.token)
    if not token:
        return _fail("no token given (pass it, or - to read it from stdin)", 2)
    server = ResourceServer(
        args.issuer,
        args.audience,
        jwks_uri=args.jwks_uri,
        require_typ=args.strict,
        leeway=args.leeway,
        fetch_timeout=args.timeout,
        token_cache_size=0,
    )
    logger = logging.getLogger("bearerguard")
    if not logger.handlers:  # the report says why keys could not be fetched
        logger.addHandler(logging.NullHandler())
    required = _scopes(args.scope)
    checks, parsed = inspect_token(server, token, required, time.time())
    # The verdict is the library's own, exactly as an API using ResourceServer decides.
    verdict: str | None = None
    try:
        server.check_scopes(server.verify_token(token), required)
    except AuthError as exc:
        verdict = exc.description
        if all(c.ok is not False for c in checks):
            checks.append(Check("verdict", False, verdict))

    mode = "RFC 9068 strict" if args.strict else "not strict"
    print(f"Checks (issuer {', '.join(args.issuer)}; audience {', '.join(args.audience)}; {mode}):")
    print("\n".join(c.line() for c in checks))
    if parsed is not None:
        print("Header:")
        print(json.dumps(parsed.header, indent=2))
        print("Claims:")
        print(json.dumps(parsed.payload, indent=2))
    print("Result: VALID" if verdict is None else f"Result: INVALID ({verdict})")
    return 0 if verdict is None else 1


# -- the parser -----------------------------------------------------------------------------------


def _key_options(parser: argparse.ArgumentParser, *, suppress: bool = False) -> None:
    from .devissuer.keystore import ALGORITHMS

    default: Any = argparse.SUPPRESS if suppress else None
    parser.add_argument(
        "--keys",
        metavar="FILE",
        default=default,
        help=f"signing key file (default: {DEFAULT_KEYS})",
    )
    parser.add_argument(
        "--alg",
        choices=ALGORITHMS,
        default=default,
        help="algorithm of new keys (default: ES384, as Logto)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bearerguard",
        description="Tools for APIs protected by OAuth 2.0 JWT access tokens (RFC 9068).",
    )
    parser.add_argument("--version", action="version", version=f"bearerguard {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    dev = commands.add_parser(
        "dev-issuer",
        help="run a Logto-shaped development issuer on loopback",
        description="Run the development issuer (discovery, JWKS, client_credentials token "
        "endpoint). For development only.",
    )
    dev.add_argument(
        "--config",
        metavar="FILE",
        help=f"TOML config (default: {EXAMPLE_CONFIG} if present, else the built-in default)",
    )
    dev.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    dev.add_argument("--port", type=_port, default=3001, help="port (default: %(default)s; 0: any)")
    dev.add_argument("--issuer", metavar="URL", help="issuer URL (default: http://HOST:PORT/oidc)")
    _key_options(dev)
    dev.add_argument(
        "--insecure-public",
        action="store_true",
        help="allow a non-loopback address: anyone reaching it can mint tokens",
    )
    dev.set_defaults(func=_dev_issuer)
    actions = dev.add_subparsers(dest="action", metavar="ACTION")
    rotate = actions.add_parser(
        "rotate-key",
        help="add a new current signing key, keeping the previous one published",
    )
    _key_options(rotate, suppress=True)
    rotate.set_defaults(func=_rotate_key)

    token = commands.add_parser(
        "token",
        help="request an access token (client credentials) and print it",
        description=f"Request a token with HTTP Basic client authentication and print the "
        f"access token alone (TOKEN=$(bearerguard token ...)), or the whole token response "
        f"with --json. The secret comes from --client-secret or ${SECRET_ENV} (preferred: the "
        "command line is visible to other local users). A warning on stderr names any "
        "requested scope the issuer did not grant.",
    )
    where = token.add_mutually_exclusive_group(required=True)
    where.add_argument("--issuer", metavar="URL", help="find the token endpoint by discovery")
    where.add_argument("--token-endpoint", metavar="URL")
    token.add_argument("--client-id", required=True, metavar="ID", help="the App ID")
    token.add_argument("--client-secret", metavar="SECRET", help=f"(default: ${SECRET_ENV})")
    token.add_argument("--resource", required=True, metavar="URI", help="API resource indicator")
    token.add_argument("--scope", nargs="+", action="extend", default=[], metavar="SCOPE")
    token.add_argument(
        "--json",
        action="store_true",
        help="print the whole token response (access_token, expires_in, token_type, scope)",
    )
    # The bare token used to need this flag; it stays so scripts that pass it keep working.
    token.add_argument(
        "--access-token", dest="json", action="store_false", default=False, help=argparse.SUPPRESS
    )
    token.add_argument("--timeout", type=float, default=10.0, help=argparse.SUPPRESS)
    token.set_defaults(func=_token)

    verify = commands.add_parser(
        "verify",
        help="verify an access token check by check, as a protected API would",
        description="Verify TOKEN with exactly the library's rules and print each check. "
        "Exit status 0 only when the token is valid. The token itself is never printed.",
    )
    verify.add_argument("token", metavar="TOKEN", help="the access token, or - to read stdin")
    verify.add_argument("--issuer", required=True, action="append", metavar="URL")
    verify.add_argument("--audience", required=True, action="append", metavar="URI")
    verify.add_argument(
        "--scope", nargs="+", action="extend", default=[], metavar="SCOPE", help="required scopes"
    )
    verify.add_argument("--jwks-uri", metavar="URL", help="skip discovery and use this JWKS")
    verify.add_argument(
        "--strict",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="RFC 9068: typ at+jwt and sub, client_id, iat, jti required (default: on)",
    )
    verify.add_argument("--leeway", type=float, default=30.0, help="clock skew, seconds")
    verify.add_argument("--timeout", type=float, default=5.0, help=argparse.SUPPRESS)
    verify.set_defaults(func=_verify)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        status: int = args.func(args)
    except ConfigurationError as exc:
        return _fail(str(exc), 2)
    except KeyboardInterrupt:
        return 130
    return status
