"""bearerguard.mcp: the guard in-process (hostile bodies, replay, streaming), then the example
MCP server under uvicorn with the real MCP SDK client, and the SDK's own auth with our verifier."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import httpx2
import pytest
from clocks import FakeClock
from mcp import Client
from mcp.client.auth.extensions.client_credentials import ClientCredentialsOAuthProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.server.mcpserver import Context
from procs import free_port, interpreter, serving

from bearerguard.client import ClientCredentialsAuth
from bearerguard.devissuer import DevIssuer, parse_config
from bearerguard.mcp import MCPGuard, MCPTokenVerifier, current_token
from bearerguard.testing import LocalIssuer

ROOT = Path(__file__).parents[1]
MCP_URL = "https://mcp.test/mcp"
READ, WRITE = "read:products", "write:products"
JSON_AND_SSE = {"Accept": "application/json, text/event-stream"}


# -- the guard in-process, around an app that echoes what it received -----------------------


class Echo:
    """An ASGI app answering with the body it read (in three chunks) and the token it saw."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.bodies.append(body)
        token = scope.get("auth")
        sub = token.sub if token is not None else None
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for part in (b"echo:", body, json.dumps({"sub": sub}).encode()):
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


@pytest.fixture
def issuer() -> LocalIssuer:
    return LocalIssuer("https://issuer.test/oidc", audience=MCP_URL)


@pytest.fixture
def echo() -> Echo:
    return Echo()


def guarded(issuer: LocalIssuer, echo: Echo, **kwargs: Any) -> MCPGuard:
    kwargs.setdefault(
        "tools", {"list_products": READ, "add_product": WRITE, "report": [READ, "audit"]}
    )
    kwargs.setdefault("public", ["/health"])
    return MCPGuard(echo, server=issuer.resource_server(MCP_URL), **kwargs)


async def post(
    app: Any,
    body: bytes | Any,
    token: str | None,
    path: str = "/mcp",
    headers: dict[str, str] | list[tuple[str, str]] | None = None,
    method: str = "POST",
    root_path: str = "",
) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    extra = list(headers.items()) if isinstance(headers, dict) else headers or []
    sent = [*JSON_AND_SSE.items(), *extra]  # a list: a header sent twice stays twice
    if token is not None:
        sent.append(("Authorization", f"Bearer {token}"))
    transport = httpx.ASGITransport(app=app, root_path=root_path)
    url = httpx.URL("https://mcp.test").copy_with(raw_path=path.encode())  # "//mcp" as is
    async with httpx.AsyncClient(transport=transport) as client:
        return await client.request(method, url, content=content, headers=sent)


def call(tool: str, request_id: int = 1, **arguments: Any) -> dict[str, Any]:
    params = {"name": tool, "arguments": arguments}
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}


def rpc_error(response: httpx.Response) -> int:
    body = response.json()
    assert body["jsonrpc"] == "2.0"
    assert body["id"] is None
    return int(body["error"]["code"])


def challenge(response: httpx.Response) -> str:
    return response.headers["www-authenticate"]


def rpc_message(response: httpx.Response) -> str:
    rpc_error(response)
    return str(response.json()["error"]["message"])


def http_scope(headers: list[tuple[bytes, bytes]], path: str = "/mcp") -> dict[str, Any]:
    """An ASGI scope for a POST, with exactly these headers (which httpx would not send)."""
    return {
        "type": "http",
        "method": "POST",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers,
    }


@pytest.mark.anyio
async def test_a_call_the_token_holds_the_scopes_for_reaches_the_app_byte_for_byte(
    issuer: LocalIssuer, echo: Echo
) -> None:
    app = guarded(issuer, echo)
    body = json.dumps(call("list_products"), indent=3).encode() + b"\n"
    response = await post(app, body, issuer.mint(READ, sub="svc"))
    assert response.status_code == 200
    assert response.content == b"echo:" + body + b'{"sub": "svc"}'
    assert echo.bodies == [body]


@pytest.mark.anyio
async def test_a_tool_the_token_lacks_scopes_for_is_a_403_naming_all_it_needs(
    issuer: LocalIssuer, echo: Echo
) -> None:
    app = guarded(issuer, echo)
    response = await post(app, call("add_product", name="x", price=1), issuer.mint(READ))
    assert response.status_code == 403
    assert challenge(response) == (
        f'Bearer realm="{MCP_URL}", error="insufficient_scope", error_description="token '
        f'lacks the scopes: {WRITE}", scope="{WRITE}", '
        'resource_metadata="https://mcp.test/.well-known/oauth-protected-resource/mcp"'
    )
    response = await post(app, call("report"), issuer.mint(READ))
    assert response.status_code == 403
    assert f'scope="{READ} audit"' in challenge(response)  # every scope at once
    assert echo.bodies == []


@pytest.mark.anyio
async def test_no_token_or_one_for_another_audience_is_401_before_the_body_is_read(
    issuer: LocalIssuer, echo: Echo
) -> None:
    app = guarded(issuer, echo)
    response = await post(app, call("list_products"), None)
    assert response.status_code == 401
    assert challenge(response) == (
        f'Bearer realm="{MCP_URL}", '
        'resource_metadata="https://mcp.test/.well-known/oauth-protected-resource/mcp"'
    )
    shopping = issuer.mint(READ, audience="https://shopping.api")
    response = await post(app, call("list_products"), shopping)
    assert response.status_code == 401
    assert 'error="invalid_token"' in challenge(response)
    assert echo.bodies == []


@pytest.mark.anyio
async def test_a_batch_needs_what_every_call_in_it_needs(issuer: LocalIssuer, echo: Echo) -> None:
    app = guarded(issuer, echo)
    batch = [call("list_products", 1), call("add_product", 2, name="x", price=1)]
    response = await post(app, batch, issuer.mint(READ))
    assert response.status_code == 403
    assert f'scope="{READ} {WRITE}"' in challenge(response)
    response = await post(app, batch, issuer.mint(f"{READ} {WRITE}"))
    assert response.status_code == 200
    assert len(echo.bodies) == 1


@pytest.mark.anyio
async def test_unlisted_tools_and_other_methods_need_only_a_valid_token(
    issuer: LocalIssuer, echo: Echo
) -> None:
    app = guarded(issuer, echo)
    token = issuer.mint()
    for body in (
        call("no_such_tool"),  # the app answers it (an unknown tool), the guard lets it by
        {"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 7, "result": {}},  # the client answering the server
    ):
        assert (await post(app, body, token)).status_code == 200
    assert len(echo.bodies) == 4


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, -32700),
        (b"[" * 100_000 + b"]" * 100_000, 400, -32700),  # nesting deeper than the parser goes
        (b"[]", 400, -32600),
        (b"[1, 2]", 400, -32600),
        (b'"tools/call"', 400, -32600),
        (b'{"jsonrpc": "2.0", "id": 1}', 400, -32600),
        (b'{"jsonrpc": "2.0", "id": 1, "method": 5}', 400, -32600),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {}}', 400, -32602),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": ["x"]}', 400, -32602),
        (
            b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": ["add"]}}',
            400,
            -32602,
        ),
        (
            b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call",'
            b' "params": {"name": "list_products", "name": "add_product"}}',
            400,
            -32700,
        ),
        (b'{"jsonrpc": "2.0", "id": 1, "method": "resources/read", "params": {}}', 400, -32602),
    ],
)
async def test_bodies_the_guard_cannot_read_safely_are_refused(
    issuer: LocalIssuer, echo: Echo, body: bytes, status: int, code: int
) -> None:
    response = await post(guarded(issuer, echo), body, issuer.mint(f"{READ} {WRITE}"))
    assert response.status_code == status
    assert rpc_error(response) == code
    assert echo.bodies == []


@pytest.mark.anyio
async def test_a_body_over_the_limit_is_413_whether_declared_or_streamed(
    issuer: LocalIssuer, echo: Echo
) -> None:
    app = guarded(issuer, echo)
    token = issuer.mint(READ)
    big = json.dumps(call("list_products", padding="x" * (1 << 20))).encode()
    response = await post(app, big, token)  # Content-Length says so: refused before reading
    assert response.status_code == 413
    assert rpc_error(response) == -32600

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while read
        for _ in range(40):
            yield b" " * 32768
        yield json.dumps(call("list_products")).encode()

    headers = {**JSON_AND_SSE, "Authorization": f"Bearer {token}"}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="https://mcp.test") as client:
        response = await client.post("/mcp", content=chunks(), headers=headers)
    assert response.status_code == 413
    small = await post(guarded(issuer, echo, max_body=4096), b" " * 5000, token)
    assert small.status_code == 413
    assert echo.bodies == []


@pytest.mark.anyio
async def test_compressed_bodies_are_refused(issuer: LocalIssuer, echo: Echo) -> None:
    response = await post(
        guarded(issuer, echo),
        b"\x1f\x8b...",
        issuer.mint(WRITE),
        headers={"Content-Encoding": "gzip"},
    )
    assert response.status_code == 415
    assert echo.bodies == []


@pytest.mark.anyio
async def test_mcp_method_and_name_headers_must_agree_with_the_body(
    issuer: LocalIssuer, echo: Echo
) -> None:
    app = guarded(issuer, echo)
    token = issuer.mint(f"{READ} {WRITE}")
    body = call("add_product", name="x", price=1)
    mismatches = [
        {"Mcp-Method": "tools/list"},
        {"Mcp-Name": "list_products"},
        {"Mcp-Method": "tools/call", "Mcp-Name": "list_products"},
        {"Mcp-Name": "=?base64?bGlzdF9wcm9kdWN0cw==?="},  # base64 of list_products
        {"Mcp-Name": "=?base64?not base64!?="},
    ]
    for headers in mismatches:
        response = await post(app, body, token, headers=headers)
        assert response.status_code == 400, headers
        assert rpc_error(response) == -32020
    encoded = base64.b64encode(b"add_product").decode()
    for headers in (
        {"Mcp-Method": "tools/call", "Mcp-Name": "add_product"},
        {"Mcp-Method": "tools/call", "Mcp-Name": f"=?base64?{encoded}?="},
    ):
        assert (await post(app, body, token, headers=headers)).status_code == 200
    assert len(echo.bodies) == 2


@pytest.mark.anyio
async def test_other_spellings_of_the_endpoint_are_checked_too(
    issuer: LocalIssuer, echo: Echo
) -> None:
    app = guarded(issuer, echo)
    token = issuer.mint(READ)
    body = call("add_product", name="x", price=1)
    for path in ("/mcp/", "//mcp", "/mcp//"):
        assert (await post(app, body, token, path=path)).status_code == 403, path
    assert (await post(app, body, token, method="post")).status_code == 403
    assert echo.bodies == []


@pytest.mark.anyio
async def test_public_routes_prompts_resources_and_methods(issuer: LocalIssuer, echo: Echo) -> None:
    app = guarded(
        issuer,
        echo,
        tools={},
        prompts={"summary": "reports"},
        resources={"shop://orders/*": "orders", "shop://catalogue": READ},
        methods={"resources/list": READ},
    )
    token = issuer.mint(READ)
    assert (await post(app, b"", None, path="/health", method="GET")).status_code == 200

    def rpc(method: str, **params: Any) -> dict[str, Any]:
        return {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}

    refused = [
        (rpc("prompts/get", name="summary"), "reports"),
        (rpc("resources/read", uri="shop://orders/17"), "orders"),
        (rpc("resources/subscribe", uri="shop://orders/"), "orders"),
    ]
    for body, scope in refused:
        response = await post(app, body, token)
        assert response.status_code == 403
        assert f'scope="{scope}"' in challenge(response)
    for body in (rpc("resources/read", uri="shop://catalogue"), rpc("resources/list")):
        assert (await post(app, body, token)).status_code == 200
    assert (await post(app, rpc("resources/list"), issuer.mint())).status_code == 403
    # Every scope named is in the RFC 9728 document.
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="https://mcp.test"
    ) as client:
        document = (await client.get("/.well-known/oauth-protected-resource/mcp")).json()
    assert document["resource"] == MCP_URL
    assert set(document["scopes_supported"]) == {"reports", "orders", READ}


@pytest.mark.anyio
async def test_an_endpoint_made_public_still_needs_a_token_for_a_call_with_scopes(
    issuer: LocalIssuer, echo: Echo
) -> None:
    app = guarded(issuer, echo, public=["/mcp"])
    assert (await post(app, call("whatever"), None)).status_code == 200
    response = await post(app, call("add_product"), None)
    assert response.status_code == 401
    assert f'scope="{WRITE}"' in challenge(response)


@pytest.mark.anyio
async def test_a_control_character_after_the_endpoint_is_400_not_a_way_around_the_body_check(
    issuer: LocalIssuer, echo: Echo
) -> None:
    # Starlette routes "/mcp\n" (from %0A) to "/mcp": its route regexes end in "$".
    app = guarded(issuer, echo)
    for path in ("/mcp%0A", "/mcp%0D", "/mcp%00", "/%0Amcp"):
        response = await post(app, call("add_product", name="x", price=1), issuer.mint(), path)
        assert response.status_code == 400, path
        assert 'error="invalid_request"' in challenge(response)
    assert echo.bodies == []


@pytest.mark.anyio
async def test_resource_uris_are_matched_percent_decoded_too(
    issuer: LocalIssuer, echo: Echo
) -> None:
    app = guarded(
        issuer, echo, resources={"shop://products/secret": "admin", "file:///private/*": "admin"}
    )
    token = issuer.mint(READ)
    for uri in (
        "shop://products/%73ecret",
        "shop://products/%2573ecret",  # decoded twice
        "file:///%70rivate/x",
        "file:///private%2Fx",
    ):
        body = {"jsonrpc": "2.0", "id": 1, "method": "resources/read", "params": {"uri": uri}}
        response = await post(app, body, token)
        assert response.status_code == 403, uri
        assert 'scope="admin"' in challenge(response)
    assert echo.bodies == []


@pytest.mark.anyio
async def test_completions_need_what_their_prompt_or_resource_needs(
    issuer: LocalIssuer, echo: Echo
) -> None:
    app = guarded(issuer, echo, prompts={"summary": "reports"}, resources={"db://*": "dba"})
    token = issuer.mint(READ)

    def complete(ref: Any) -> dict[str, Any]:
        params = {"ref": ref, "argument": {"name": "topic", "value": ""}}
        return {"jsonrpc": "2.0", "id": 1, "method": "completion/complete", "params": params}

    response = await post(app, complete({"type": "ref/prompt", "name": "summary"}), token)
    assert response.status_code == 403
    assert 'scope="reports"' in challenge(response)
    response = await post(app, complete({"type": "ref/resource", "uri": "db://x/{t}"}), token)
    assert response.status_code == 403
    assert 'scope="dba"' in challenge(response)
    for ref in ({"type": "ref/tool", "name": "x"}, {"type": "ref/prompt"}, "summary", None):
        response = await post(app, complete(ref), token)
        assert response.status_code == 400
        assert rpc_error(response) == -32602
    ok = await post(app, complete({"type": "ref/prompt", "name": "other"}), token)
    assert ok.status_code == 200
    # Mcp-Name mirrors tools/call, prompts/get and resources/*, nothing else.
    listing = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    response = await post(app, listing, token, headers={"Mcp-Name": "summary"})
    assert response.status_code == 400


@pytest.mark.anyio
async def test_a_body_that_never_finishes_is_408(issuer: LocalIssuer, echo: Echo) -> None:
    app = guarded(issuer, echo, body_timeout=0.2)
    token = issuer.mint(READ)
    stalled = asyncio.Event()  # never set: the client stops sending mid-body
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if not sent:
            sent.append({})
            return {"type": "http.request", "body": b'{"jsonrpc":', "more_body": True}
        await stalled.wait()
        raise AssertionError("unreachable")

    answers: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        answers.append(message)

    await app(http_scope([(b"authorization", f"Bearer {token}".encode())]), receive, send)
    assert answers[0]["status"] == 408
    assert json.loads(answers[1]["body"])["error"]["code"] == -32600
    assert echo.bodies == []


def test_bad_configuration_is_refused(issuer: LocalIssuer, echo: Echo) -> None:
    server = issuer.resource_server(MCP_URL)
    with pytest.raises(ValueError, match="endpoint"):
        MCPGuard(echo, server=server, endpoint="mcp")
    with pytest.raises(ValueError, match="max_body"):
        MCPGuard(echo, server=server, max_body=10)
    with pytest.raises(ValueError, match="scopes"):
        MCPGuard(echo, server=server, tools={"x": ["a b"]})
    with pytest.raises(ValueError, match="body_timeout"):
        MCPGuard(echo, server=server, body_timeout=0)


# -- the limits to the byte and the second, and the refusals word for word ---------------------


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop on an injected clock: its timers (``anyio.fail_after``) fire when the
    test moves the clock, never on their own."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock

    def time(self) -> float:
        return self.clock()


def stalled_for(app: MCPGuard, token: str, clock: FakeClock, seconds: float) -> list[int]:
    """The statuses answered while a client sends half a body, then nothing for ``seconds``."""
    statuses: list[int] = []

    async def main() -> None:
        stalled = anyio.Event()  # set when the guard waits for the rest of the body
        started = False

        async def receive() -> dict[str, Any]:
            nonlocal started
            if not started:
                started = True
                return {"type": "http.request", "body": b'{"jsonrpc":', "more_body": True}
            stalled.set()
            await anyio.Event().wait()  # never set: the client sends nothing more
            raise AssertionError("unreachable")

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        scope = http_scope([(b"authorization", f"Bearer {token}".encode())])
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(app, scope, receive, send)
            await stalled.wait()
            clock.advance(seconds)
            for _ in range(50):  # the timer's turn comes within a few loop iterations
                await anyio.lowlevel.checkpoint()
            tasks.cancel_scope.cancel()  # still waiting: the client goes away

    anyio.run(main, backend_options={"loop_factory": lambda: VirtualTimeLoop(clock)})
    return statuses


def test_a_body_is_waited_for_30_seconds_by_default_then_408(
    issuer: LocalIssuer, echo: Echo, fake_clock: FakeClock
) -> None:
    app = guarded(issuer, echo)
    token = issuer.mint(READ)
    assert stalled_for(app, token, fake_clock, 29.9) == []
    assert stalled_for(app, token, fake_clock, 30.1) == [408]
    assert echo.bodies == []


@pytest.mark.anyio
async def test_the_default_limit_is_one_mebibyte_to_the_byte(
    issuer: LocalIssuer, echo: Echo
) -> None:
    app = guarded(issuer, echo)
    token = issuer.mint(READ)
    message = json.dumps(call("list_products")).encode()
    exact = message + b" " * ((1 << 20) - len(message))  # trailing spaces: still one message
    assert (await post(app, exact, token)).status_code == 200
    response = await post(app, exact + b" ", token)
    assert response.status_code == 413
    assert rpc_message(response) == "the request body is too large"
    assert echo.bodies == [exact]


@pytest.mark.anyio
async def test_max_body_is_the_largest_body_taken_declared_or_streamed(
    issuer: LocalIssuer, echo: Echo
) -> None:
    app = guarded(issuer, echo, max_body=1024)
    token = issuer.mint(READ)
    message = json.dumps(call("list_products")).encode()
    exact = message + b" " * (1024 - len(message))
    assert (await post(app, exact, token)).status_code == 200  # with Content-Length: 1024
    assert (await post(app, exact + b" ", token)).status_code == 413

    async def streamed(body: bytes) -> httpx.Response:  # no Content-Length: counted as read
        async def chunks() -> AsyncIterator[bytes]:
            yield body[:500]
            yield body[500:]

        headers = {**JSON_AND_SSE, "Authorization": f"Bearer {token}"}
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="https://mcp.test") as client:
            return await client.post("/mcp", content=chunks(), headers=headers)

    assert (await streamed(exact)).status_code == 200
    assert (await streamed(exact + b" ")).status_code == 413
    assert echo.bodies == [exact, exact]


@pytest.mark.anyio
async def test_a_declared_oversized_body_is_refused_before_any_of_it_is_read(
    issuer: LocalIssuer, echo: Echo
) -> None:
    app = guarded(issuer, echo, max_body=1024)
    token = issuer.mint(READ)
    reads: list[int] = []

    async def receive() -> dict[str, Any]:
        reads.append(1)
        return {"type": "http.request", "body": b" " * 1025, "more_body": False}

    answers: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        answers.append(message)

    headers = [(b"authorization", f"Bearer {token}".encode()), (b"content-length", b"1025")]
    await app(http_scope(headers), receive, send)
    assert answers[0]["status"] == 413
    assert json.loads(answers[1]["body"])["error"]["message"] == "the request body is too large"
    assert reads == []  # the client is not made to upload what will be refused


@pytest.mark.anyio
async def test_a_content_length_that_is_not_a_number_is_400(
    issuer: LocalIssuer, echo: Echo
) -> None:
    app = guarded(issuer, echo)
    token = issuer.mint(READ)
    body = json.dumps(call("list_products")).encode()

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    answers: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        answers.append(message)

    headers = [(b"authorization", f"Bearer {token}".encode()), (b"content-length", b"12abc")]
    await app(http_scope(headers), receive, send)
    assert answers[0]["status"] == 400
    error = json.loads(answers[1]["body"])["error"]
    assert error == {"code": -32600, "message": "bad Content-Length"}
    assert echo.bodies == []


def test_max_body_and_body_timeout_take_their_documented_bounds(
    issuer: LocalIssuer, echo: Echo
) -> None:
    server = issuer.resource_server(MCP_URL)
    for max_body in (1024, 64 << 20):
        assert MCPGuard(echo, server=server, max_body=max_body).max_body == max_body
    for max_body in (1023, (64 << 20) + 1):
        with pytest.raises(ValueError, match="max_body must be between 1024 and 67108864"):
            MCPGuard(echo, server=server, max_body=max_body)
    assert MCPGuard(echo, server=server, body_timeout=3600).body_timeout == 3600
    for timeout in (3600.001, 3601):
        with pytest.raises(ValueError, match="body_timeout must be > 0 and at most 3600"):
            MCPGuard(echo, server=server, body_timeout=timeout)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"jsonrpc": "2.0", "id": 1}', "a JSON-RPC request needs a method"),
        (b'{"jsonrpc": "2.0", "id": 1, "method": null}', "a JSON-RPC request needs a method"),
        (b'{"jsonrpc": "2.0", "id": 1, "method": 5}', "the method must be a string"),
        (
            b'{"jsonrpc": "2.0", "id": 1, "method": "tools/list", "'
            + b"k" * 50
            + b'": 1, "'
            + b"k" * 50
            + b'": 2}',
            f"duplicate member {'k' * 40!r} in the JSON body",  # named, cut to 40 characters
        ),
    ],
)
async def test_a_refused_body_is_told_what_is_wrong_with_it(
    issuer: LocalIssuer, echo: Echo, body: bytes, message: str
) -> None:
    response = await post(guarded(issuer, echo), body, issuer.mint(READ))
    assert response.status_code == 400
    assert rpc_message(response) == message
    assert echo.bodies == []


@pytest.mark.anyio
async def test_an_mcp_name_in_broken_base64_is_400_saying_so(
    issuer: LocalIssuer, echo: Echo
) -> None:
    app = guarded(issuer, echo)
    body = call("add_product", name="x", price=1)
    # add_product in base64 without its padding, then the byte 0xff (not UTF-8)
    for value in ("=?base64?YWRkX3Byb2R1Y3Q?=", "=?base64?/w==?="):
        response = await post(app, body, issuer.mint(WRITE), headers={"Mcp-Name": value})
        assert response.status_code == 400, value
        assert rpc_error(response) == -32020
        assert rpc_message(response) == "Mcp-Name is not valid base64 UTF-8"
    assert echo.bodies == []


@pytest.mark.anyio
async def test_an_mcp_header_sent_twice_is_400_even_when_both_agree_with_the_body(
    issuer: LocalIssuer, echo: Echo
) -> None:
    app = guarded(issuer, echo)
    body = call("add_product", name="x", price=1)
    token = issuer.mint(WRITE)
    once = [("Mcp-Method", "tools/call"), ("Mcp-Name", "add_product")]
    assert (await post(app, body, token, headers=once)).status_code == 200
    for twice in (
        [("Mcp-Method", "tools/call"), ("Mcp-Method", "tools/call")],
        [("Mcp-Name", "add_product"), ("Mcp-Name", "add_product")],
    ):
        response = await post(app, body, token, headers=twice)
        assert response.status_code == 400, twice
        assert rpc_error(response) == -32020
        assert rpc_message(response) == "several Mcp-Method or Mcp-Name headers"
    assert len(echo.bodies) == 1


@pytest.mark.anyio
async def test_only_resources_take_a_prefix_and_only_before_their_star(
    issuer: LocalIssuer, echo: Echo
) -> None:
    app = guarded(
        issuer,
        echo,
        tools={"admin*": "admin"},  # a tool's name is exact, a star included
        resources={"shop://orders/*": "orders", "shop://catalogue": "catalogue"},
    )
    token = issuer.mint(READ)

    def read(uri: str) -> dict[str, Any]:
        return {"jsonrpc": "2.0", "id": 1, "method": "resources/read", "params": {"uri": uri}}

    for body, scope in (
        (call("admin*"), "admin"),
        (read("shop://orders/17"), "orders"),
        (read("shop://catalogue"), "catalogue"),
    ):
        response = await post(app, body, token)
        assert response.status_code == 403, body
        assert f'scope="{scope}"' in challenge(response)
    for body in (
        call("admin"),
        call("admin_tool"),
        read("shop://orders"),  # the prefix is "shop://orders/", slash included
        read("shop://orders_archive"),
        read("shop://catalogue2"),  # an exact URI is not a prefix
    ):
        assert (await post(app, body, token)).status_code == 200, body
    assert len(echo.bodies) == 5


@pytest.mark.anyio
async def test_a_resource_uri_is_decoded_four_times_at_most(
    issuer: LocalIssuer, echo: Echo
) -> None:
    app = guarded(issuer, echo, resources={"shop://products/secret": "admin"})
    token = issuer.mint(READ)

    def read(uri: str) -> dict[str, Any]:
        return {"jsonrpc": "2.0", "id": 1, "method": "resources/read", "params": {"uri": uri}}

    four = "shop://products/%25252573ecret"  # "s" percent-encoded four times over
    response = await post(app, read(four), token)
    assert response.status_code == 403
    assert 'scope="admin"' in challenge(response)
    # Once more is left as it is: an app decoding it once (as the SDK does) does not read
    # "secret" either, and the guard's work per URI stays bounded.
    five = four.replace("%", "%25", 1)
    assert (await post(app, read(five), token)).status_code == 200
    assert echo.bodies == [json.dumps(read(five)).encode()]


@pytest.mark.anyio
async def test_posts_to_other_routes_reach_the_app_without_a_body_check(
    issuer: LocalIssuer, echo: Echo
) -> None:
    app = guarded(issuer, echo)
    token = issuer.mint(READ)
    for path in ("/other", "/mcp/tools", "/"):
        response = await post(app, b"not json", token, path=path)
        assert response.status_code == 200, path
    assert echo.bodies == [b"not json"] * 3
    response = await post(app, b"not json", token)
    assert response.status_code == 400
    assert rpc_error(response) == -32700


@pytest.mark.anyio
async def test_the_endpoint_below_a_root_path_is_checked_too(
    issuer: LocalIssuer, echo: Echo
) -> None:
    # Mounted at /api (Starlette's Mount, uvicorn --root-path): the path is /api/mcp, the
    # route /mcp.
    app = guarded(issuer, echo)
    body = call("add_product", name="x", price=1)
    response = await post(app, body, issuer.mint(READ), path="/api/mcp", root_path="/api")
    assert response.status_code == 403
    assert f'scope="{WRITE}"' in challenge(response)
    response = await post(app, b"not json", issuer.mint(READ), path="/api/mcp", root_path="/api")
    assert response.status_code == 400
    assert echo.bodies == []


@pytest.mark.anyio
async def test_scopes_are_needed_by_every_request_to_the_endpoint(
    issuer: LocalIssuer, echo: Echo
) -> None:
    app = guarded(issuer, echo, scopes="mcp")
    listing = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    for path in ("/mcp", "/mcp/"):
        response = await post(app, listing, issuer.mint(READ), path=path)
        assert response.status_code == 403, path
        assert 'scope="mcp"' in challenge(response)
    response = await post(app, call("add_product", name="x", price=1), issuer.mint("mcp"))
    assert response.status_code == 403
    assert f'scope="mcp {WRITE}"' in challenge(response)  # both at once
    assert (await post(app, listing, issuer.mint("mcp"))).status_code == 200
    root = MCPGuard(echo, server=issuer.resource_server(MCP_URL), endpoint="/", scopes="mcp")
    response = await post(root, listing, issuer.mint(READ), path="/")
    assert response.status_code == 403
    assert 'scope="mcp"' in challenge(response)
    assert len(echo.bodies) == 1


@pytest.mark.anyio
async def test_a_tool_finds_the_token_the_guard_verified(issuer: LocalIssuer) -> None:
    from mcp.server.mcpserver import MCPServer
    from mcp.server.transport_security import TransportSecuritySettings

    shop = MCPServer("shop")

    @shop.tool()
    def whoami(ctx: Context) -> dict[str, Any]:
        token = current_token(ctx)
        return {"sub": token.sub, "scopes": sorted(token.scopes)}

    asgi = shop.streamable_http_app(
        stateless_http=True,
        json_response=True,
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )
    app = MCPGuard(asgi, server=issuer.resource_server(MCP_URL))

    async def whoami_through(app: Any) -> Any:
        transport = httpx2.ASGITransport(app=app)
        headers = {"Authorization": f"Bearer {issuer.mint(READ, sub='svc')}"}
        async with (
            httpx2.AsyncClient(transport=transport, headers=headers) as http,
            Client(streamable_http_client(MCP_URL, http_client=http)) as client,
        ):
            return await client.call_tool("whoami", {})

    async with shop.session_manager.run():
        guarded_result = await whoami_through(app)
        bare_result = await whoami_through(asgi)  # the same server without the guard
    assert guarded_result.structured_content == {"sub": "svc", "scopes": [READ]}
    assert bare_result.is_error  # the SDK hides why: current_token raised (see below)


def test_current_token_refuses_a_request_the_guard_did_not_verify() -> None:
    from starlette.requests import Request

    with pytest.raises(RuntimeError, match="is the app behind MCPGuard"):
        current_token(Request(http_scope([])))
    with pytest.raises(RuntimeError, match="is the app behind MCPGuard"):
        current_token(Request({**http_scope([]), "auth": "a token string"}))
    with pytest.raises(RuntimeError, match="is the app behind MCPGuard"):
        current_token(object())


# -- the verifier for the SDK's own auth -------------------------------------------------------


@pytest.mark.anyio
async def test_the_token_verifier_returns_the_sdks_access_token(issuer: LocalIssuer) -> None:
    server = issuer.resource_server(["https://other.test", MCP_URL])
    verifier = MCPTokenVerifier(server)
    token = issuer.mint(f"{READ} {WRITE}", sub="svc", claims={"tenant": {"id": "acme"}})
    access = await verifier.verify_token(token)
    assert access is not None
    assert access.token == token
    assert access.client_id == "test-client"
    assert access.subject == "svc"
    assert access.scopes == [READ, WRITE]
    assert access.resource == MCP_URL  # the configured audience the token holds
    assert access.expires_at == int(issuer.clock()) + 3600
    assert access.claims is not None
    assert access.claims["tenant"] == {"id": "acme"}
    assert await verifier.verify_token(issuer.tampered(token)) is None
    assert await verifier.verify_token(issuer.mint(audience="https://shopping.api")) is None
    assert await verifier.verify_token("not a token") is None


@pytest.mark.anyio
@pytest.mark.parametrize("alg", ["ES384", "ES256", "RS256", "PS256", "EdDSA"])
async def test_the_token_verifier_needs_no_algorithm_setting(alg: str) -> None:
    issuer = LocalIssuer("https://issuer.test/oidc", audience=MCP_URL, alg=alg)
    verifier = MCPTokenVerifier(issuer.resource_server(MCP_URL))
    assert await verifier.verify_token(issuer.mint(READ)) is not None


# -- the example MCP server, under uvicorn, with the real MCP client --------------------------


@contextlib.contextmanager
def running_mcp_example(issuer_url: str, port: int, log: Path) -> Iterator[str]:
    """examples/mcp_server under uvicorn as the README runs it; yields the MCP endpoint URL."""
    url = f"http://127.0.0.1:{port}/mcp"
    env = {**os.environ, "AUTH_ISSUER": issuer_url, "AUTH_AUDIENCE": url}
    command = [interpreter(), "-m", "uvicorn", "--app-dir", "examples/mcp_server", "main:app"]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    with serving(command, env, f"http://127.0.0.1:{port}/health", log, "the MCP example"):
        yield url


@pytest.fixture(scope="module")
def shop_mcp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalIssuer, str]]:
    port = free_port()
    issuer = LocalIssuer(audience=f"http://127.0.0.1:{port}/mcp")
    log = tmp_path_factory.mktemp("mcp") / "server.log"
    with issuer.serve() as issuer_url, running_mcp_example(issuer_url, port, log) as url:
        yield issuer, url


async def with_client(url: str, token: str, work: Any) -> Any:
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        return await work(client)


def test_the_example_serves_its_metadata_and_health(shop_mcp: tuple[LocalIssuer, str]) -> None:
    issuer, url = shop_mcp
    base = url.removesuffix("/mcp")
    assert httpx.get(base + "/health").json() == {"status": "ok"}
    response = httpx.get(base + "/.well-known/oauth-protected-resource/mcp")
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "*"
    assert response.json() == {
        "resource": url,
        "authorization_servers": [issuer.issuer],
        "scopes_supported": [READ, WRITE],
        "bearer_methods_supported": ["header"],
    }


def test_the_example_refuses_no_token_and_tokens_for_the_shopping_api(
    shop_mcp: tuple[LocalIssuer, str],
) -> None:
    issuer, url = shop_mcp
    metadata = url.replace("/mcp", "/.well-known/oauth-protected-resource/mcp")
    listing = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    response = httpx.post(url, json=listing, headers=JSON_AND_SSE)
    assert response.status_code == 401
    assert challenge(response) == f'Bearer realm="{url}", resource_metadata="{metadata}"'
    replayed = issuer.mint(f"{READ} {WRITE}", audience="https://shopping.api")
    response = httpx.post(
        url, json=listing, headers={**JSON_AND_SSE, "Authorization": f"Bearer {replayed}"}
    )
    assert response.status_code == 401
    assert 'error="invalid_token"' in challenge(response)


def test_a_read_only_token_lists_every_tool_reads_and_is_refused_add_product(
    shop_mcp: tuple[LocalIssuer, str],
) -> None:
    issuer, url = shop_mcp
    token = issuer.mint(READ, sub="stats-service", claims={"client_id": "stats-service"})

    async def work(client: Client) -> Any:
        tools = [t.name for t in (await client.list_tools()).tools]
        listed = (await client.call_tool("list_products", {})).structured_content
        one = (await client.call_tool("get_product", {"id": 1})).structured_content
        me = (await client.call_tool("whoami", {})).structured_content
        return tools, listed, one, me

    tools, listed, one, me = asyncio.run(with_client(url, token, work))
    assert tools == ["list_products", "get_product", "add_product", "delete_product", "whoami"]
    assert listed is not None
    names = [p["name"] for p in listed["result"]]
    assert names[:2] == ["Espresso beans", "Milk frother"]
    assert one == {"id": 1, "name": "Espresso beans", "price": 14.5}
    assert me == {"sub": "stats-service", "client_id": "stats-service", "scopes": [READ]}
    # add_product: HTTP 403 with the step-up challenge (the SDK client does not show
    # statuses, so this is asked over plain HTTP).
    metadata = url.replace("/mcp", "/.well-known/oauth-protected-resource/mcp")
    response = httpx.post(
        url,
        json=call("add_product", name="Kettle", price=45),
        headers={**JSON_AND_SSE, "Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 403
    assert challenge(response) == (
        f'Bearer realm="{url}", error="insufficient_scope", error_description="token lacks '
        f'the scopes: {WRITE}", scope="{WRITE}", resource_metadata="{metadata}"'
    )


def test_a_read_write_token_adds_and_deletes_a_product(shop_mcp: tuple[LocalIssuer, str]) -> None:
    issuer, url = shop_mcp
    token = issuer.mint(f"{READ} {WRITE}")

    async def work(client: Client) -> Any:
        added = await client.call_tool("add_product", {"name": "Kettle", "price": 45})
        assert added.structured_content is not None
        product = added.structured_content
        fetched = await client.call_tool("get_product", {"id": product["id"]})
        deleted = await client.call_tool("delete_product", {"id": product["id"]})
        gone = await client.call_tool("get_product", {"id": product["id"]})
        return product, fetched.structured_content, deleted.structured_content, gone.is_error

    product, fetched, deleted, gone = asyncio.run(with_client(url, token, work))
    assert product["name"] == "Kettle"
    assert product["price"] == 45
    assert fetched == product
    assert deleted == {"deleted": product["id"]}
    assert gone is True


# -- the SDK's own client-credentials flow against the dev issuer, no bearerguard client code -


class Memory:
    """The SDK's TokenStorage protocol, in memory."""

    def __init__(self) -> None:
        self.tokens: Any = None
        self.client: Any = None

    async def get_tokens(self) -> Any:
        return self.tokens

    async def set_tokens(self, tokens: Any) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> Any:
        return self.client

    async def set_client_info(self, client_info: Any) -> None:
        self.client = client_info


def test_the_sdks_client_credentials_provider_discovers_everything_from_the_401(
    tmp_path: Path,
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    config = (
        (ROOT / "examples" / "issuer.toml")
        .read_text()
        .replace("127.0.0.1:8003", f"127.0.0.1:{port}")
    )
    dev = DevIssuer(parse_config(config))
    with dev.serve() as issuer_url, running_mcp_example(issuer_url, port, tmp_path / "log"):

        async def run(client_id: str, secret: str) -> Any:
            auth = ClientCredentialsOAuthProvider(
                url, Memory(), client_id, secret, issuer=issuer_url
            )
            async with (
                httpx2.AsyncClient(auth=auth) as http,
                Client(streamable_http_client(url, http_client=http)) as client,
            ):
                me = await client.call_tool("whoami", {})
                return me.structured_content

        me = asyncio.run(run("shopping-admin", "dev-only-shopping-admin-secret"))

        async def ours() -> Any:  # bearerguard's ClientCredentialsAuth on the SDK's client
            auth = ClientCredentialsAuth(
                issuer=issuer_url,
                client_id="stats-service",
                client_secret="dev-only-stats-service-secret",
                resource=url,
                scope=[READ, WRITE],  # narrowed to what the app's roles grant
            )
            async with (
                httpx2.AsyncClient(auth=auth) as http,
                Client(streamable_http_client(url, http_client=http)) as client,
            ):
                return (await client.call_tool("whoami", {})).structured_content

        stats = asyncio.run(ours())
    assert stats == {"sub": "stats-service", "client_id": "stats-service", "scopes": [READ]}
    assert me == {
        "sub": "shopping-admin",
        "client_id": "shopping-admin",
        "scopes": [READ, WRITE],
    }


@pytest.mark.anyio
async def test_the_sdks_own_auth_with_our_verifier(issuer: LocalIssuer) -> None:
    from mcp.server.auth.middleware.auth_context import get_access_token
    from mcp.server.auth.settings import AuthSettings
    from mcp.server.mcpserver import MCPServer
    from mcp.server.transport_security import TransportSecuritySettings

    app = MCPServer(
        "verifier",
        token_verifier=MCPTokenVerifier(issuer.resource_server(MCP_URL)),
        auth=AuthSettings(
            issuer_url=issuer.issuer,  # type: ignore[arg-type]
            resource_server_url=MCP_URL,  # type: ignore[arg-type]
            required_scopes=[READ],
            validate_token_resource=True,  # our AccessToken.resource is the audience matched
        ),
    )

    @app.tool()
    def me() -> dict[str, Any]:
        access = get_access_token()
        assert access is not None
        return {"client_id": access.client_id, "scopes": access.scopes, "aud": access.resource}

    asgi = app.streamable_http_app(
        stateless_http=True,
        json_response=True,
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )

    async def as_client(token: str) -> Any:
        transport = httpx2.ASGITransport(app=asgi)
        headers = {"Authorization": f"Bearer {token}"}
        async with (
            httpx2.AsyncClient(transport=transport, headers=headers) as http,
            Client(streamable_http_client(MCP_URL, http_client=http)) as client,
        ):
            return (await client.call_tool("me", {})).structured_content

    async with app.session_manager.run():
        assert await as_client(issuer.mint(READ)) == {
            "client_id": "test-client",
            "scopes": [READ],
            "aud": MCP_URL,
        }
        transport = httpx2.ASGITransport(app=asgi)
        async with httpx2.AsyncClient(transport=transport) as http:
            bad = issuer.tampered(issuer.mint(READ))
            response = await http.post(
                MCP_URL,
                json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                headers={**JSON_AND_SSE, "Authorization": f"Bearer {bad}"},
            )
    assert response.status_code == 401


# -- FastMCP (a test-only dependency) -------------------------------------------------------------


def fastmcp_shop() -> Any:
    from fastmcp import FastMCP

    shop = FastMCP("shop")

    @shop.tool
    def list_products() -> list[str]:
        return ["Espresso beans"]

    @shop.tool
    def add_product(name: str) -> str:
        return name

    return shop


async def fastmcp_call(asgi: Any, token: str, tool: str, **arguments: Any) -> Any:
    transport = httpx2.ASGITransport(app=asgi)
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        httpx2.AsyncClient(transport=transport, headers=headers) as http,
        Client(streamable_http_client(MCP_URL, http_client=http)) as client,
    ):
        return (await client.call_tool(tool, arguments)).structured_content


@pytest.mark.anyio
async def test_fastmcp_takes_our_verifier_in_its_slot(issuer: LocalIssuer) -> None:
    from fastmcp import FastMCP

    verifier = MCPTokenVerifier(issuer.resource_server(MCP_URL)).for_fastmcp()
    shop = FastMCP("shop", auth=verifier)

    @shop.tool
    def whoami() -> dict[str, Any]:
        from fastmcp.server.dependencies import get_access_token

        access = get_access_token()
        assert access is not None
        return {"client_id": access.client_id, "tenant": access.claims.get("tenant")}

    asgi = shop.http_app(stateless_http=True, json_response=True, host_origin_protection=False)
    async with asgi.router.lifespan_context(asgi):
        me = await fastmcp_call(asgi, issuer.mint(READ, tenant="acme"), "whoami")
        assert me == {"client_id": "test-client", "tenant": "acme"}
        transport = httpx2.ASGITransport(app=asgi)
        async with httpx2.AsyncClient(transport=transport) as http:
            forged = issuer.tampered(issuer.mint(READ))
            response = await http.post(
                MCP_URL,
                json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                headers={**JSON_AND_SSE, "Authorization": f"Bearer {forged}"},
            )
    assert response.status_code == 401


@pytest.mark.anyio
async def test_mcp_guard_around_fastmcp_gives_step_up_challenges(issuer: LocalIssuer) -> None:
    asgi = fastmcp_shop().http_app(
        stateless_http=True, json_response=True, host_origin_protection=False
    )
    app = MCPGuard(
        asgi,
        server=issuer.resource_server(MCP_URL),
        tools={"list_products": READ, "add_product": WRITE},
    )
    async with asgi.router.lifespan_context(asgi):
        assert await fastmcp_call(app, issuer.mint(READ), "list_products") == {
            "result": ["Espresso beans"]
        }
        response = await post(app, call("add_product", name="x"), issuer.mint(READ))
        assert response.status_code == 403
        assert f'scope="{WRITE}"' in challenge(response)
        added = await fastmcp_call(app, issuer.mint(f"{READ} {WRITE}"), "add_product", name="x")
        assert added == {"result": "x"}
