"""The Django adapter and DRF, in process: the parity matrix's rows through the middleware,
the function decorator and DRF (each compared with the ASGI middleware's answer), the async
path, the mixin, DRF's own permission classes, and manage.py check on a bad configuration."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import django
import pytest
from django.conf import settings

if not settings.configured:  # Django's settings are per process: this module owns them here
    settings.configure(
        DEBUG=False,
        SECRET_KEY="tests",
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF="djangoviews",
        MIDDLEWARE=["bearerguard.django.middleware.BearerGuardMiddleware"],
        INSTALLED_APPS=["rest_framework", "bearerguard.django"],
        DATABASES={},
        USE_TZ=True,
        BEARERGUARD={"ISSUER": "https://issuer.test/oidc", "AUDIENCE": "https://api.test"},
        REST_FRAMEWORK={
            "DEFAULT_AUTHENTICATION_CLASSES": ["bearerguard.django.drf.BearerAuthentication"],
            "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
            "UNAUTHENTICATED_USER": None,
            "EXCEPTION_HANDLER": "bearerguard.django.drf.exception_handler",
        },
    )
    django.setup()

import json

import anyio
from django.test import AsyncClient, Client, override_settings
from procs import interpreter
from test_parity import (
    MIDDLEWARE_RULES,
    ORG_ROWS,
    ROWS,
    Row,
    check,
    make_server,
    send,
)

from bearerguard import ResourceServer
from bearerguard.testing import LocalIssuer

ROOT = Path(__file__).parents[1]
NOW = 1_800_000_000.0
AUDIENCE = "https://api.test"


def clock() -> float:
    return NOW


@pytest.fixture
def issuer() -> LocalIssuer:
    return LocalIssuer(audience=AUDIENCE, clock=clock)


def answer(response: Any) -> dict[str, Any]:
    """The parity matrix's view of a Django response."""
    status = response.status_code
    return {
        "status": status,
        "www-authenticate": response.headers.get("WWW-Authenticate"),
        "retry-after": response.headers.get("Retry-After"),
        "content-type": response.headers.get("Content-Type"),
        "cache-control": response.headers.get("Cache-Control"),
        "body": json.loads(response.content),
        "error-body": response.content.decode() if status >= 400 else None,
    }


def django_send(
    server: ResourceServer, path: str, headers: list[tuple[str, str]], **config: Any
) -> dict[str, Any]:
    meta: dict[str, str] = {}
    for name, value in headers:  # a WSGI server joins repeated headers with ", "
        key = "HTTP_" + name.upper().replace("-", "_")
        meta[key] = f"{meta[key]}, {value}" if key in meta else value
    with override_settings(BEARERGUARD={"SERVER": server, **config}):
        return answer(Client().get(path, **meta))


SAME = ("status", "www-authenticate", "retry-after", "body")


def compare(row: Row, issuer: LocalIssuer, prefix: str, **config: Any) -> None:
    headers = row.headers(issuer)
    reference = send("asgi", make_server_app(issuer, row), row.path, headers)
    got = django_send(make_server(issuer, row.server), prefix + row.path, headers, **config)
    assert {k: got[k] for k in SAME} == {k: reference[k] for k in SAME}
    check(got, row.expect, row.path)


def make_server_app(issuer: LocalIssuer, row: Row) -> Any:
    from test_parity import BUILDERS

    return BUILDERS["asgi"](make_server(issuer, row.server))


@pytest.mark.parametrize("row", ROWS, ids=[row.spec for row in ROWS])
def test_the_middleware_answers_as_the_asgi_middleware(row: Row, issuer: LocalIssuer) -> None:
    compare(row, issuer, "", RULES=MIDDLEWARE_RULES)


@pytest.mark.parametrize("row", ROWS, ids=[row.spec for row in ROWS])
def test_the_decorator_answers_as_the_asgi_middleware(row: Row, issuer: LocalIssuer) -> None:
    compare(row, issuer, "/fn", PROTECT_ALL=False)


@pytest.mark.parametrize("row", ROWS, ids=[row.spec for row in ROWS])
def test_drf_answers_as_the_asgi_middleware(row: Row, issuer: LocalIssuer) -> None:
    compare(row, issuer, "/drf", PROTECT_ALL=False)


@pytest.mark.parametrize("row", ORG_ROWS, ids=[row.spec for row in ORG_ROWS])
@pytest.mark.parametrize("prefix", ["/fn", "/drf"])
def test_path_claim_rules_see_the_views_url_arguments(
    row: Row, prefix: str, issuer: LocalIssuer
) -> None:
    got = django_send(
        make_server(issuer, row.server), prefix + row.path, row.headers(issuer), PROTECT_ALL=False
    )
    check(got, row.expect, row.path)


def test_async_views_go_through_the_async_face(issuer: LocalIssuer) -> None:
    server = make_server(issuer)
    read = issuer.mint("read", sub="ada")

    async def run() -> list[tuple[int, Any]]:
        with override_settings(BEARERGUARD={"SERVER": server, "RULES": MIDDLEWARE_RULES}):
            client = AsyncClient()
            results = []
            for path, token in (("/async/read", read), ("/fn/async", read), ("/read", None)):
                headers = {"Authorization": f"Bearer {token}"} if token else {}
                response = await client.get(path, headers=headers)
                results.append((response.status_code, json.loads(response.content)))
            return results

    results = anyio.run(run)
    assert results[0] == (200, {"sub": "ada", "scopes": ["read"], "anonymous": False})
    assert results[1] == (200, {"sub": "ada", "scopes": ["read"], "anonymous": False})
    assert results[2][0] == 401


def test_the_mixin_and_request_user(issuer: LocalIssuer) -> None:
    server = make_server(issuer)
    with override_settings(BEARERGUARD={"SERVER": server, "PROTECT_ALL": False}):
        client = Client()
        ok = client.get("/cbv/read", HTTP_AUTHORIZATION=f"Bearer {issuer.mint('read', sub='bo')}")
        assert ok.status_code == 200
        assert ok.json()["sub"] == "bo"
        refused = client.get("/cbv/read", HTTP_AUTHORIZATION=f"Bearer {issuer.mint('write')}")
        assert refused.status_code == 403
        assert 'scope="read"' in refused.headers["WWW-Authenticate"]


def test_drf_is_authenticated_answers_401_with_the_bearer_challenge(issuer: LocalIssuer) -> None:
    server = make_server(issuer)
    with override_settings(BEARERGUARD={"SERVER": server, "PROTECT_ALL": False}):
        client = Client()
        bare = client.get("/drf/authenticated")
        assert bare.status_code == 401  # not DRF's 403: authenticate_header gives a challenge
        assert bare.headers["WWW-Authenticate"].startswith(f'Bearer realm="{AUDIENCE}"')
        token = issuer.mint(sub="cy")
        ok = client.get("/drf/authenticated", HTTP_AUTHORIZATION=f"Bearer {token}")
        assert ok.json()["sub"] == "cy"


def test_drf_scopes_by_method(issuer: LocalIssuer) -> None:
    server = make_server(issuer)
    read, write = issuer.mint("read"), issuer.mint("write")
    with override_settings(BEARERGUARD={"SERVER": server, "PROTECT_ALL": False}):
        client = Client()

        def call(method: str, token: str) -> Any:
            return getattr(client, method)("/drf/by-method", HTTP_AUTHORIZATION=f"Bearer {token}")

        assert call("get", read).status_code == 200
        assert call("head", read).status_code == 200
        assert call("post", write).status_code == 201
        refused = call("post", read)
        assert refused.status_code == 403
        assert refused.json()["error"] == "insufficient_scope"
        assert 'scope="write"' in refused.headers["WWW-Authenticate"]
        assert call("get", write).status_code == 403


def test_the_middleware_serves_the_metadata_document(issuer: LocalIssuer) -> None:
    server = make_server(issuer)
    with override_settings(BEARERGUARD={"SERVER": server}):
        response = Client().get("/.well-known/oauth-protected-resource")
    assert response.status_code == 200
    assert response.json()["resource"] == AUDIENCE
    assert response.headers["Access-Control-Allow-Origin"] == "*"


def manage_check(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "AUTH_ISSUER": "http://127.0.0.1:3001/oidc", **env}
    return subprocess.run(
        [interpreter(), "manage.py", "check"],
        cwd=ROOT / "examples" / "django_app",
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"AUTH_ISSUER": "ftp://issuer.example"}, "issuer must be an https:// URL"),
        ({"AUTH_ISSUER": "http://issuer.example/oidc"}, "http:// only on loopback"),
        ({"AUTH_AUDIENCE": ""}, "AUDIENCE"),
        ({"AUTH_DPOP": "sometimes"}, "dpop must be"),
    ],
)
def test_manage_py_check_reports_a_bad_configuration(
    tmp_path: Path, env: dict[str, str], says: str
) -> None:
    result = manage_check(tmp_path, **env)
    assert result.returncode != 0
    assert "bearerguard.E001" in result.stderr
    assert says in result.stderr


def test_manage_py_check_passes_the_examples_configuration(tmp_path: Path) -> None:
    result = manage_check(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


def test_the_readmes_django_views_work(issuer: LocalIssuer) -> None:
    import re

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "test_django" in b]
    namespace: dict[str, Any] = {"__name__": "readme_django"}
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102
    import types

    from django.urls import path

    server = make_server(issuer)
    urls = types.ModuleType("readme_urls")
    urls.urlpatterns = [  # type: ignore[attr-defined]
        path("catalogue", namespace["catalogue"]),
        path("products", namespace["Products"].as_view()),
        path("whoami", namespace["WhoAmI"].as_view()),
    ]
    read = {"HTTP_AUTHORIZATION": f"Bearer {issuer.mint('read:products', client_id='svc')}"}
    with override_settings(ROOT_URLCONF=urls, BEARERGUARD={"SERVER": server, "PROTECT_ALL": False}):
        client = Client()
        assert client.get("/catalogue", **read).json() == {"client": "svc"}
        assert client.get("/products", **read).json() == []
        assert client.post("/products", **read).status_code == 403
        assert client.get("/whoami", **read).json()["sub"] == "svc"
        assert client.get("/catalogue").status_code == 401
