"""The whole machine-to-machine flow, offline: dev issuer -> token -> the three shopping APIs
(FastAPI, Flask, Django) and the shopping MCP server.

    make demo     # walk the flow against every API, print a transcript, stop everything
    make serve    # start the issuer and every API and leave them running (Ctrl-C stops them)

Exits non-zero if any step answers differently from what the contract says.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
PYTHON = str(ROOT / ".venv/bin/python") if (ROOT / ".venv/bin/python").exists() else sys.executable
CONFIG = ROOT / "examples/issuer.toml"
RESOURCE = "https://shopping.api"
BOLD, GREEN, RED, DIM, RESET = (
    ("\033[1m", "\033[32m", "\033[31m", "\033[2m", "\033[0m") if sys.stdout.isatty() else ("",) * 5
)


class StepFailed(Exception):
    pass


def port(preferred: int) -> int:
    """``preferred`` when it is free on 127.0.0.1, else any free port."""
    for candidate in (preferred, 0):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise RuntimeError("no free port")


@contextmanager
def process(name: str, cmd: list[str], ready_url: str, env: dict[str, str]) -> Iterator[None]:
    """Start ``cmd``, wait until ``ready_url`` answers, and always stop it afterwards."""
    log = open(ROOT / f".bearerguard/{name}.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)  # noqa: S603
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(ready_url, timeout=1)
                break
            except httpx.HTTPError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    tail = (ROOT / f".bearerguard/{name}.log").read_text()[-2000:]
                    raise StepFailed(f"{name} did not start:\n{tail}") from None
                time.sleep(0.2)
        print(f"{DIM}started {name} (pid {proc.pid}): {' '.join(cmd[2:])}{RESET}")
        yield
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def apps() -> dict[str, dict[str, Any]]:
    from bearerguard.devissuer import load_config

    return {a.id: {"id": a.id, "secret": a.secret} for a in load_config(CONFIG).apps}


def short(token: str) -> str:
    return token[:24] + "..." + token[-8:]


class Walk:
    """Prints each request and its answer; raises StepFailed when the status is unexpected."""

    def __init__(self) -> None:
        self.http = httpx.Client(timeout=20)
        self.steps = 0

    def check(self, title: str, response: httpx.Response, expected: int, show: Any = None) -> Any:
        self.steps += 1
        ok = response.status_code == expected
        mark = f"{GREEN}ok{RESET}" if ok else f"{RED}FAILED{RESET}"
        req = response.request
        print(f"\n{BOLD}{self.steps}. {title}{RESET}  [{mark}]")
        print(f"   {req.method} {req.url}")
        for name in ("authorization",):
            if name in req.headers:
                value = req.headers[name]
                scheme, _, cred = value.partition(" ")
                print(f"   Authorization: {scheme} {short(cred) if len(cred) > 40 else cred}")
        if req.content:
            print(f"   body: {req.content.decode()}")
        print(f"   -> {response.status_code} {response.reason_phrase}")
        if "www-authenticate" in response.headers:
            print(f"   WWW-Authenticate: {response.headers['www-authenticate']}")
        body: Any = None
        if response.content:
            try:
                body = response.json()
            except ValueError:
                body = response.text
        if show is not None or body is not None:
            text = json.dumps(show if show is not None else body)
            print(f"   {text if len(text) < 300 else text[:300] + '...'}")
        if not ok:
            raise StepFailed(f"step {self.steps} ({title}): expected {expected}")
        return body

    def note(self, title: str, lines: list[str]) -> None:
        """A step made through a client library (the MCP SDK), shown by what it returned."""
        self.steps += 1
        print(f"\n{BOLD}{self.steps}. {title}{RESET}  [{GREEN}ok{RESET}]")
        for line in lines:
            print(f"   {line if len(line) < 300 else line[:300] + '...'}")

    def mcp(self, issuer: str, registry: dict[str, dict[str, Any]], url: str) -> None:
        """An M2M service calling the MCP server with the official MCP SDK's client, its
        tokens from bearerguard's ClientCredentialsAuth (an httpx2 auth, as the SDK uses)."""
        import httpx2
        from mcp import Client
        from mcp.client.streamable_http import streamable_http_client

        from bearerguard.client import ClientCredentialsAuth

        print(f"\n{BOLD}== the shopping MCP server at {url} (official MCP SDK) =={RESET}")
        metadata = url.replace("/mcp", "/.well-known/oauth-protected-resource/mcp")
        self.check("its RFC 9728 metadata", self.http.get(metadata), 200)
        listing = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
        accept = {"Accept": "application/json, text/event-stream"}
        self.check("no token at all", self.http.post(url, json=listing, headers=accept), 401)

        def auth(app: dict[str, Any]) -> ClientCredentialsAuth:
            return ClientCredentialsAuth(
                issuer=issuer,
                client_id=app["id"],
                client_secret=app["secret"],
                resource=url,  # the MCP server's own URL is its resource indicator
                scope="read:products write:products",  # narrowed to what the app may have
            )

        async def session(app: dict[str, Any], work: Any) -> Any:
            async with (
                httpx2.AsyncClient(auth=auth(app), timeout=20) as http,
                Client(streamable_http_client(url, http_client=http)) as client,
            ):
                return await work(client)

        async def browse(client: Any) -> tuple[list[str], Any]:
            tools = [tool.name for tool in (await client.list_tools()).tools]
            products = (await client.call_tool("list_products", {})).structured_content
            return tools, products

        reader = registry["stats-service"]
        tools, products = asyncio.run(session(reader, browse))
        self.note("stats-service lists the tools", [", ".join(tools)])
        self.note("stats-service calls list_products", [json.dumps(products)])
        call = {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {"name": "add_product", "arguments": {"name": "Sneaky", "price": 1}},
        }
        with httpx2.Client(auth=auth(reader), timeout=20) as service:
            refused = service.post(url, json=call, headers=accept)
        self.check(
            "stats-service (read only) calls add_product",
            httpx.Response(
                refused.status_code,
                headers=list(refused.headers.multi_items()),
                content=refused.content,
                request=httpx.Request("POST", url, json=call),
            ),
            403,
        )

        async def add(client: Any) -> Any:
            added = await client.call_tool("add_product", {"name": "Demo mug", "price": 9.5})
            product = added.structured_content
            deleted = await client.call_tool("delete_product", {"id": product["id"]})
            return product, deleted.structured_content

        product, deleted = asyncio.run(session(registry["shopping-admin"], add))
        self.note("shopping-admin calls add_product", [json.dumps(product)])
        self.note("shopping-admin calls delete_product", [json.dumps(deleted)])

    def token(self, issuer: str, app: dict[str, Any], scope: str) -> dict[str, Any]:
        basic = base64.b64encode(f"{app['id']}:{app['secret']}".encode()).decode()
        response = self.http.post(
            issuer + "/token",
            headers={"Authorization": f"Basic {basic}"},
            data={"grant_type": "client_credentials", "resource": RESOURCE, "scope": scope},
        )
        body = response.json() if response.status_code == 200 else None
        shown = dict(body, access_token=short(body["access_token"])) if body else None
        self.check(f"{app['id']} asks for a token ({scope})", response, 200, show=shown)
        assert body is not None
        return body

    def api(self, name: str, url: str, admin: str, reader: str, reader_scope: str) -> None:
        print(f"\n{BOLD}== {name} at {url} =={RESET}")
        bearer = {"Authorization": f"Bearer {admin}"}
        self.check(
            "list products with the admin token",
            self.http.get(url + "/products", headers=bearer),
            200,
        )
        created = self.check(
            "create a product (write:products)",
            self.http.post(
                url + "/products", headers=bearer, json={"name": "Demo mug", "price": 9.5}
            ),
            201,
        )
        self.check(
            "read it back",
            self.http.get(f"{url}/products/{created['id']}", headers=bearer),
            200,
        )
        self.check(
            "delete it", self.http.delete(f"{url}/products/{created['id']}", headers=bearer), 204
        )
        print(f"\n   {DIM}stats-service was granted only: {reader_scope!r}{RESET}")
        self.check(
            "stats-service (read only) tries to create a product",
            self.http.post(
                url + "/products",
                headers={"Authorization": f"Bearer {reader}"},
                json={"name": "Sneaky", "price": 1},
            ),
            403,
        )
        self.check("no token at all", self.http.get(url + "/products"), 401)
        head, payload, sig = admin.split(".")
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        claims["scope"] = "read:products write:products admin"
        forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
        self.check(
            "a tampered token (scope widened, signature kept)",
            self.http.get(
                url + "/products", headers={"Authorization": f"Bearer {head}.{forged}.{sig}"}
            ),
            401,
        )
        self.check("who am I?", self.http.get(url + "/whoami", headers=bearer), 200)

    def client(self, issuer: str, app: dict[str, Any], url: str) -> None:
        """What a real M2M service does: an httpx client with ClientCredentialsAuth."""
        from bearerguard.client import ClientCredentialsAuth

        print(f"\n{BOLD}== an M2M service using bearerguard.client.ClientCredentialsAuth =={RESET}")
        auth = ClientCredentialsAuth(
            issuer=issuer,
            client_id=app["id"],
            client_secret=app["secret"],
            resource=RESOURCE,
            scope="read:products",
        )
        with httpx.Client(auth=auth, timeout=20) as service:
            for i in range(3):
                self.check(
                    f"call {i + 1} (token fetched once, then reused)",
                    service.get(url + "/products"),
                    200,
                )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--serve", action="store_true", help="leave everything running")
    args = parser.parse_args()
    (ROOT / ".bearerguard").mkdir(exist_ok=True)
    issuer_port, fastapi_port, flask_port = port(3001), port(8001), port(8002)
    mcp_port, django_port = port(8003), port(8004)
    issuer = f"http://127.0.0.1:{issuer_port}/oidc"
    env = {**os.environ, "AUTH_ISSUER": issuer, "AUTH_AUDIENCE": RESOURCE}
    fastapi_url, flask_url = f"http://127.0.0.1:{fastapi_port}", f"http://127.0.0.1:{flask_port}"
    mcp_url = f"http://127.0.0.1:{mcp_port}/mcp"
    django_url = f"http://127.0.0.1:{django_port}"
    # The MCP server's indicator is its URL: the issuer must know the port it really got.
    config = ROOT / ".bearerguard/issuer.toml"
    config.write_text(CONFIG.read_text().replace("http://127.0.0.1:8003/mcp", mcp_url))
    # Ctrl-C or a kill: unwind through the finally blocks so every child is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with ExitStack() as stack:
        try:
            stack.enter_context(
                process(
                    "dev-issuer",
                    [
                        PYTHON,
                        "-m",
                        "bearerguard",
                        "dev-issuer",
                        "--config",
                        str(config),
                        "--port",
                        str(issuer_port),
                    ],
                    issuer + "/.well-known/openid-configuration",
                    env,
                )
            )
            stack.enter_context(
                process(
                    "fastapi-app",
                    [
                        PYTHON,
                        "-m",
                        "uvicorn",
                        "--app-dir",
                        "examples/fastapi_app",
                        "main:app",
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(fastapi_port),
                    ],
                    fastapi_url + "/health",
                    env,
                )
            )
            stack.enter_context(
                process(
                    "flask-app",
                    [
                        PYTHON,
                        "-m",
                        "gunicorn",
                        "-c",
                        "examples/flask_app/gunicorn.conf.py",
                        "--chdir",
                        "examples/flask_app",
                        "-b",
                        f"127.0.0.1:{flask_port}",
                        "main:app",
                    ],
                    flask_url + "/health",
                    env,
                )
            )
            stack.enter_context(
                process(
                    "django-app",
                    [
                        PYTHON,
                        "-m",
                        "gunicorn",
                        "--chdir",
                        "examples/django_app",
                        "-b",
                        f"127.0.0.1:{django_port}",
                        "shop.wsgi:application",
                    ],
                    django_url + "/health",
                    env,
                )
            )
            stack.enter_context(
                process(
                    "mcp-server",
                    [
                        PYTHON,
                        "-m",
                        "uvicorn",
                        "--app-dir",
                        "examples/mcp_server",
                        "main:app",
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(mcp_port),
                    ],
                    mcp_url.removesuffix("/mcp") + "/health",
                    {**env, "AUTH_AUDIENCE": mcp_url},
                )
            )
            if args.serve:
                return serve(issuer, fastapi_url, flask_url, django_url, mcp_url)
            walk = Walk()
            registry = apps()
            print(f"\n{BOLD}== the dev issuer at {issuer} (Logto-shaped) =={RESET}")
            walk.check(
                "discovery", walk.http.get(issuer + "/.well-known/openid-configuration"), 200
            )
            admin = walk.token(issuer, registry["shopping-admin"], "read:products write:products")
            reader = walk.token(issuer, registry["stats-service"], "read:products write:products")
            for name, url in (
                ("FastAPI (uvicorn)", fastapi_url),
                ("Flask (gunicorn)", flask_url),
                ("Django REST framework (gunicorn)", django_url),
            ):
                walk.api(
                    name,
                    url,
                    admin["access_token"],
                    reader["access_token"],
                    reader.get("scope", ""),
                )
            walk.client(issuer, registry["stats-service"], fastapi_url)
            walk.mcp(issuer, registry, mcp_url)
        except StepFailed as exc:
            print(f"\n{RED}demo failed: {exc}{RESET}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("\ninterrupted; stopping everything")
            return 130
    print(
        f"\n{GREEN}{BOLD}demo complete: {walk.steps} steps answered as expected; "
        f"all processes stopped.{RESET}"
    )
    return 0


def serve(issuer: str, fastapi_url: str, flask_url: str, django_url: str, mcp_url: str) -> int:
    secret = apps()["shopping-admin"]["secret"]
    print(
        f"""
{BOLD}Running (Ctrl-C stops everything):{RESET}
  dev issuer   {issuer}
  FastAPI API  {fastapi_url}   (Swagger UI: {fastapi_url}/docs)
  Flask API    {flask_url}
  Django API   {django_url}
  MCP server   {mcp_url}   (resource indicator: this URL)

Try it:
  TOKEN=$(curl -s -u shopping-admin:{secret} \\
      -d grant_type=client_credentials -d resource=https://shopping.api \\
      -d scope='read:products write:products' {issuer}/token \\
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
  curl -i {fastapi_url}/products -H "Authorization: Bearer $TOKEN"
  curl -i {flask_url}/whoami -H "Authorization: Bearer $TOKEN"
  curl -i {django_url}/products -H "Authorization: Bearer $TOKEN"
  curl -i {fastapi_url}/products          # 401: no token
  curl -i {mcp_url.replace("/mcp", "/.well-known/oauth-protected-resource/mcp")}
""",
        flush=True,
    )
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("\nstopping")
    return 0


if __name__ == "__main__":
    sys.exit(main())
