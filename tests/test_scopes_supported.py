"""RFC 9728 ``scopes_supported``: the scopes configured, declared by the app's rules, and found
by scope sources in the app serving the document."""

from __future__ import annotations

from typing import Any

import httpx

from bearerguard import ResourceServer


def never_called(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"describing the resource made a request to {request.url}")


def server(**kwargs: Any) -> ResourceServer:
    return ResourceServer(
        "https://issuer.test/oidc",
        "https://api.test",
        transport=httpx.MockTransport(never_called),
        **kwargs,
    )


def supported(rs: ResourceServer, app: object = None) -> tuple[str, ...]:
    document = rs.metadata(app)
    assert document is not None
    return document.scopes_supported


def test_only_scope_names_are_declared() -> None:
    rs = server(scopes_supported=["read"])
    not_names: list[Any] = ["", "read write", None, 7, ("write",)]
    rs.declare_scopes([*not_names, "write", "read"])
    assert supported(rs) == ("read", "write")


def test_scope_sources_are_asked_only_with_the_app_serving_the_document() -> None:
    rs = server()
    app = object()
    asked: list[object] = []

    def routes(found_in: object) -> list[str]:
        asked.append(found_in)
        return ["orders:read"]

    rs.add_scope_source("routes", routes)
    assert supported(rs) == ()  # no app known: no source is asked
    assert asked == []
    assert supported(rs, app) == ("orders:read",)
    assert asked == [app]
