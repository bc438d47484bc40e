"""The token endpoint's decisions (RFC 6749 section 4.4, RFC 8707), with no HTTP framework code.

``token_request`` turns the raw request parts into a ``Grant`` or raises ``OAuthError``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote_plus

from ..bearer import split_scheme
from .config import App, IssuerConfig, Resource

__all__ = ["Grant", "OAuthError", "token_request"]

MAX_FIELDS = 32
FORM = "application/x-www-form-urlencoded"


class OAuthError(Exception):
    """An RFC 6749 section 5.2 error response."""

    def __init__(self, error: str, description: str, status_code: int = 400) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status_code = status_code

    def to_dict(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


def _invalid_client(description: str = "client authentication failed") -> OAuthError:
    return OAuthError("invalid_client", description, 401)


@dataclass(frozen=True)
class Grant:
    """What a successful request is granted: the app, the resource, the narrowed scopes."""

    app: App
    resource: Resource
    scopes: tuple[str, ...]


def parse_form(content_type: str | None, body: bytes) -> dict[str, str]:
    """The form parameters; empty ones count as omitted (RFC 6749 section 3.1), none may repeat."""
    if (content_type or "").split(";", 1)[0].strip().lower() != FORM:
        raise OAuthError("invalid_request", f"the request body must be {FORM}")
    try:
        pairs = parse_qsl(
            body.decode("utf-8"),
            keep_blank_values=True,
            encoding="utf-8",
            errors="strict",
            max_num_fields=MAX_FIELDS,
        )
    except ValueError:  # also UnicodeDecodeError
        raise OAuthError("invalid_request", "the request body is not valid form data") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        if not value:
            continue
        if name in form:
            if name == "resource":
                raise OAuthError("invalid_target", "only one resource may be requested")
            raise OAuthError("invalid_request", f"parameter {name!r} is included more than once")
        form[name] = value
    return form


def client_credentials(authorization: str | None, form: Mapping[str, str]) -> tuple[str, str]:
    """(client_id, client_secret) from HTTP Basic or from the body, never both."""
    if authorization is None:
        client_id, secret = form.get("client_id"), form.get("client_secret")
        if client_id is None or secret is None:
            raise _invalid_client(
                "client authentication required: HTTP Basic (client_secret_basic) or "
                "client_id and client_secret in the body (client_secret_post)"
            )
        return client_id, secret
    try:
        scheme, credentials = split_scheme(authorization.strip())
    except ValueError:
        raise _invalid_client("malformed Authorization header") from None
    if scheme.lower() != "basic":
        raise _invalid_client("unsupported client authentication method: use HTTP Basic")
    try:
        user, sep, password = base64.b64decode(credentials, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise _invalid_client("malformed Basic credentials") from None
    if not sep:
        raise _invalid_client("malformed Basic credentials")
    if "client_secret" in form:
        raise OAuthError(
            "invalid_request", "use one client authentication method: HTTP Basic or the body"
        )
    # RFC 6749 section 2.3.1: id and secret are form-urlencoded before Basic encoding.
    client_id, secret = unquote_plus(user), unquote_plus(password)
    if form.get("client_id", client_id) != client_id:
        raise OAuthError("invalid_request", "client_id in the body differs from the Basic one")
    return client_id, secret


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


def authenticate(config: IssuerConfig, client_id: str, secret: str) -> App:
    """The app whose secret matches, compared in constant time; else invalid_client."""
    app = config.app(client_id)
    expected = app.secret if app is not None else "\x00unknown client"
    # Equal-length digests: the comparison time says nothing about the secret's length either.
    if not hmac.compare_digest(_digest(secret), _digest(expected)) or app is None:
        raise _invalid_client()
    return app


def grant(config: IssuerConfig, app: App, form: Mapping[str, str]) -> Grant:
    """The resource (or the default one) and the requested scopes the app's roles grant."""
    indicator = form.get("resource") or config.default_resource
    if indicator is None:
        raise OAuthError("invalid_target", "resource is required (RFC 8707)")
    resource = config.resource(indicator)
    if resource is None:
        raise OAuthError("invalid_target", "unknown resource")
    # As Logto: ask for anything, get what the roles grant, without an error.
    allowed = config.granted_scopes(app, resource)
    requested = dict.fromkeys(form.get("scope", "").split(" "))
    return Grant(app, resource, tuple(s for s in requested if s and s in allowed))


def token_request(
    config: IssuerConfig, *, authorization: str | None, content_type: str | None, body: bytes
) -> Grant:
    """Decide a client_credentials token request from its raw parts."""
    form = parse_form(content_type, body)
    grant_type = form.get("grant_type")
    if grant_type is None:
        raise OAuthError("invalid_request", "grant_type is required")
    if grant_type != "client_credentials":
        raise OAuthError("unsupported_grant_type", "only client_credentials is supported")
    client_id, secret = client_credentials(authorization, form)
    return grant(config, authenticate(config, client_id, secret), form)
