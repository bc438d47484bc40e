"""RFC 9728 OAuth 2.0 Protected Resource Metadata: the document and where it lives. Pure.

A client that gets a 401 from the API finds ``resource_metadata="<url>"`` in the challenge,
fetches that document, and learns which authorization servers issue tokens for this resource
and which scopes it knows.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = ["WELL_KNOWN", "ResourceMetadata", "metadata_url", "respond"]

WELL_KNOWN = "/.well-known/oauth-protected-resource"

#: Headers of the document's responses: anyone may read it (browsers included), and it
#: changes rarely.
DOCUMENT_HEADERS = (
    ("content-type", "application/json"),
    ("access-control-allow-origin", "*"),
    ("cache-control", "public, max-age=3600"),
)
PREFLIGHT_HEADERS = (
    ("access-control-allow-origin", "*"),
    ("access-control-allow-methods", "GET, HEAD, OPTIONS"),
    ("access-control-allow-headers", "*"),
    ("access-control-max-age", "86400"),
)


def metadata_url(resource: str) -> str:
    """The document's URL for ``resource`` (RFC 9728 section 3.1): the well-known path goes
    between the host and the resource's path, a terminating slash removed first.

    ``https://shopping.api`` -> ``https://shopping.api/.well-known/oauth-protected-resource``;
    ``https://api.example.com/v1/mcp`` -> ``.../.well-known/oauth-protected-resource/v1/mcp``.
    """
    parts = urlsplit(resource)
    path = parts.path.rstrip("/")
    return urlunsplit((parts.scheme, parts.netloc, WELL_KNOWN + path, parts.query, ""))


@dataclass(frozen=True)
class ResourceMetadata:
    """The members RFC 9728 section 2 defines that bearerguard knows; empty ones are left
    out of the document (section 3.2)."""

    resource: str
    authorization_servers: tuple[str, ...]
    scopes_supported: tuple[str, ...] = ()
    bearer_methods_supported: tuple[str, ...] = ("header",)
    resource_name: str | None = None
    resource_documentation: str | None = None
    resource_policy_uri: str | None = None
    resource_tos_uri: str | None = None
    dpop_signing_alg_values_supported: tuple[str, ...] = ()  # RFC 9728: when DPoP is on
    dpop_bound_access_tokens_required: bool = False

    @property
    def url(self) -> str:
        return metadata_url(self.resource)

    def document(self) -> dict[str, Any]:
        members: dict[str, Any] = {
            "resource": self.resource,
            "authorization_servers": list(self.authorization_servers),
            "scopes_supported": list(self.scopes_supported),
            "bearer_methods_supported": list(self.bearer_methods_supported),
            "resource_name": self.resource_name,
            "resource_documentation": self.resource_documentation,
            "resource_policy_uri": self.resource_policy_uri,
            "resource_tos_uri": self.resource_tos_uri,
            "dpop_signing_alg_values_supported": list(self.dpop_signing_alg_values_supported),
            "dpop_bound_access_tokens_required": self.dpop_bound_access_tokens_required,
        }
        return {name: value for name, value in members.items() if value}


def respond(method: str, metadata: ResourceMetadata) -> tuple[int, list[tuple[str, str]], bytes]:
    """Status, headers and body answering ``method`` at the document's path."""
    method = method.upper()
    if method == "OPTIONS":
        return 204, list(PREFLIGHT_HEADERS), b""
    if method not in ("GET", "HEAD"):
        body = b'{"error": "method_not_allowed"}'
        headers = [("content-type", "application/json"), ("allow", "GET, HEAD, OPTIONS")]
        return 405, [*headers, ("content-length", str(len(body)))], body
    body = json.dumps(metadata.document()).encode()
    headers = [*DOCUMENT_HEADERS, ("content-length", str(len(body)))]
    return 200, headers, b"" if method == "HEAD" else body


def scopes_in_order(groups: Iterable[Iterable[str]]) -> tuple[str, ...]:
    """Every scope of ``groups``, each once, in the order first seen."""
    return tuple(dict.fromkeys(scope for group in groups for scope in group))
