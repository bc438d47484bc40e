"""How MCP servers answer tokens: bearerguard's MCPGuard next to the MCP SDK's own auth and
FastMCP's JWTVerifier, the same tokens sent to each, in process. Prints the README's table.

    .venv/bin/python bench/mcp_auth.py

Needs the dev extras (mcp, fastmcp). Every token comes from one ES384 LocalIssuer whose keys
are served on 127.0.0.1; the MCP servers run in process behind httpx2.ASGITransport.
"""

from __future__ import annotations

import asyncio
import contextlib
import warnings
from collections.abc import AsyncIterator
from typing import Any

import httpx2

from bearerguard.mcp import MCPGuard, MCPTokenVerifier
from bearerguard.testing import LocalIssuer

URL = "http://127.0.0.1:9/mcp"
READ, WRITE = "read:products", "write:products"
ACCEPT = {"Accept": "application/json, text/event-stream"}


def tool_call(name: str) -> dict[str, Any]:
    params = {"name": name, "arguments": {}}
    return {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}


async def answer(app: Any, token: str | None, body: dict[str, Any]) -> str:
    headers = dict(ACCEPT)
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app)) as http:
        response = await http.post(URL, json=body, headers=headers)
    challenge = response.headers.get("www-authenticate", "")
    scope = "scope=" in challenge
    error = challenge.split('error="')[1].split('"')[0] if 'error="' in challenge else ""
    shown = f"{response.status_code}"
    if error:
        shown += f" {error}"
    if response.status_code == 403:  # can the client step up? only if told the scopes
        shown += ", scope=" if scope else ", no scope="
    if response.status_code == 200 and '"isError":true' in response.text.replace(" ", ""):
        shown += " (tool error)"
    return shown


def servers(issuer: LocalIssuer, issuer_url: str) -> dict[str, tuple[Any, Any]]:
    """name -> (ASGI app, its lifespan context): add_product needs write:products in each."""
    from fastmcp import FastMCP
    from fastmcp.server.auth import require_scopes
    from fastmcp.server.auth.providers.jwt import JWTVerifier
    from mcp.server.auth.settings import AuthSettings
    from mcp.server.mcpserver import MCPServer
    from mcp.server.transport_security import TransportSecuritySettings

    open_host = TransportSecuritySettings(enable_dns_rebinding_protection=False)
    built: dict[str, tuple[Any, Any]] = {}

    plain = MCPServer("plain")

    @plain.tool()
    def add_product() -> str:
        return "added"

    guarded_app = plain.streamable_http_app(
        stateless_http=True, json_response=True, transport_security=open_host
    )
    guarded = MCPGuard(
        guarded_app,
        server=issuer.resource_server(URL, transport=None),
        tools={"add_product": WRITE},
    )
    built["bearerguard MCPGuard"] = (guarded, plain.session_manager.run())

    sdk = MCPServer(
        "sdk",
        token_verifier=MCPTokenVerifier(issuer.resource_server(URL, transport=None)),
        auth=AuthSettings(
            issuer_url=issuer_url,  # type: ignore[arg-type]
            resource_server_url=URL,  # type: ignore[arg-type]
            required_scopes=[WRITE],  # per server only: no per-tool scopes
            validate_token_resource=True,
        ),
    )
    sdk.tool(name="add_product")(lambda: "added")
    built["MCP SDK auth (bearerguard's verifier)"] = (
        sdk.streamable_http_app(
            stateless_http=True, json_response=True, transport_security=open_host
        ),
        sdk.session_manager.run(),
    )

    for name, algorithm in (("FastMCP JWTVerifier", None), ("FastMCP JWTVerifier ES384", "ES384")):
        kwargs = {"algorithm": algorithm} if algorithm else {}
        verifier = JWTVerifier(
            jwks_uri=issuer_url + "/jwks", issuer=issuer_url, audience=URL, **kwargs
        )
        fast = FastMCP(name, auth=verifier)

        @fast.tool(name="add_product", auth=require_scopes(WRITE))  # its per-tool check
        def add_fast() -> str:
            return "added"

        app = fast.http_app(stateless_http=True, json_response=True, host_origin_protection=False)
        built[name] = (app, app.router.lifespan_context(app))
    return built


async def table(issuer: LocalIssuer, issuer_url: str) -> list[str]:
    cases = [
        ("no token", None),
        ("read-only token calls add_product", issuer.mint(READ)),
        ("read/write token calls add_product", issuer.mint(f"{READ} {WRITE}")),
        ("`typ: JWT` (not an access token)", issuer.mint(WRITE, header={"typ": "JWT"})),
        ("no `exp`", issuer.mint(WRITE, claims={"exp": None})),
        ("token for another audience", issuer.mint(WRITE, audience="https://shopping.api")),
    ]
    built = servers(issuer, issuer_url)
    rows = ["| request | " + " | ".join(built) + " |", "|---|" + "---|" * len(built)]
    results: dict[str, list[str]] = {}
    for name, (app, lifespan) in built.items():
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(_as_async(lifespan))
            results[name] = [await answer(app, t, tool_call("add_product")) for _, t in cases]
    for i, (label, _) in enumerate(cases):
        rows.append(f"| {label} | " + " | ".join(results[n][i] for n in built) + " |")
    return rows


@contextlib.asynccontextmanager
async def _as_async(context: Any) -> AsyncIterator[None]:
    async with context:
        yield


def main() -> None:
    warnings.filterwarnings("ignore")
    issuer = LocalIssuer(audience=URL)  # ES384, RFC 9068 at+jwt tokens
    with issuer.serve() as issuer_url:
        for row in asyncio.run(table(issuer, issuer_url)):
            print(row)


if __name__ == "__main__":
    main()
