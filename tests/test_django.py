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
from django.core import checks
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
from bearerguard.django import server_from_settings
from bearerguard.dpop import DPoPKey
from bearerguard.rules import Rule
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


# -- the BEARERGUARD setting, checked at start-up ------------------------------------------------


def start_up_errors() -> list[str]:
    """What ``manage.py check`` reports of ``BEARERGUARD`` under the current settings."""
    return [m.msg for m in checks.run_checks() if m.id == "bearerguard.E001"]


GOOD = {"ISSUER": "https://issuer.test/oidc", "AUDIENCE": AUDIENCE}


@pytest.mark.parametrize(
    ("config", "says"),
    [
        (["https://issuer.test/oidc", AUDIENCE], "BEARERGUARD must be a dict"),
        ({**GOOD, "LEEWAYY": 5}, "unknown BEARERGUARD keys: LEEWAYY"),
        ({"ISSUER": "https://issuer.test/oidc"}, "BEARERGUARD needs AUDIENCE"),
        ({"ISSUER": "https://issuer.test/oidc", "AUDIENCE": ""}, "BEARERGUARD needs AUDIENCE"),
        ({}, "BEARERGUARD needs ISSUER and AUDIENCE"),
        ({"SERVER": "https://issuer.test/oidc"}, "BEARERGUARD['SERVER'] must be a ResourceServer"),
        ({**GOOD, "PUBLIC": "/health"}, "BEARERGUARD['PUBLIC'] is a list of path patterns"),
        ({**GOOD, "PUBLIC": ["/health", 7]}, "BEARERGUARD['PUBLIC'] is a list of path patterns"),
        ({**GOOD, "RULES": ["/read"]}, "BEARERGUARD['RULES'] is a list of bearerguard.rules.Rule"),
        ({**GOOD, "PROTECT_ALL": "yes"}, "BEARERGUARD['PROTECT_ALL'] is True or False"),
    ],
)
def test_a_bad_setting_is_reported_at_start_up(config: Any, says: str) -> None:
    with override_settings(BEARERGUARD=config):
        assert start_up_errors() == [f"BEARERGUARD: {says}"]


def test_a_ready_server_takes_no_server_arguments(issuer: LocalIssuer) -> None:
    config = {"SERVER": make_server(issuer), "LEEWAY": 5, "ISSUER": issuer.issuer}
    with override_settings(BEARERGUARD=config):
        assert start_up_errors() == ["BEARERGUARD: BEARERGUARD with SERVER takes no ISSUER, LEEWAY"]


def test_a_site_without_the_setting_is_told_to_set_it() -> None:
    with override_settings():
        del settings.BEARERGUARD
        assert start_up_errors() == [
            "BEARERGUARD: set BEARERGUARD in settings.py (see bearerguard.django)"
        ]


def test_a_good_setting_passes_the_check_with_server_arguments_uppercased() -> None:
    config = {**GOOD, "LEEWAY": 5, "REQUIRE_TYP": True, "PUBLIC": ["/health"]}
    with override_settings(BEARERGUARD=config):
        assert start_up_errors() == []
    server = server_from_settings(config)
    assert server.options.leeway == 5
    assert server.options.require_typ


def test_the_setting_builds_one_server_whose_keys_are_fetched_once() -> None:
    """ISSUER and AUDIENCE (not SERVER): every request uses the one server the setting built,
    so the issuer's keys are fetched once, not per request."""
    real_time = LocalIssuer(audience=AUDIENCE)  # the settings take no clock
    config = {**GOOD, "TRANSPORT": real_time.transport(), "PROTECT_ALL": False}
    with override_settings(BEARERGUARD=config):
        client = Client()
        for sub in ("ada", "bo", "cy"):
            token = real_time.mint("read", sub=sub)
            assert client.get("/fn/read", HTTP_AUTHORIZATION=f"Bearer {token}").status_code == 200
    assert real_time.requests.count("/oidc/jwks") == 1


# -- what the views see of the request ---------------------------------------------------------


def test_request_user_is_the_tokens_subject(issuer: LocalIssuer) -> None:
    token = issuer.mint(sub="ada", client_id="svc")
    with override_settings(BEARERGUARD={"SERVER": make_server(issuer), "PROTECT_ALL": False}):
        client = Client()
        holder = client.get("/fn/user", HTTP_AUTHORIZATION=f"Bearer {token}").json()
        nobody = client.get("/fn/user").json()
    assert holder == {
        "authenticated": True,
        "anonymous": False,
        "username": "ada",
        "get_username": "ada",
        "str": "ada",
        "pk": "ada",
        "perms": [False, False, False],  # its scopes are its permissions, not Django's
    }
    assert nobody == {
        "authenticated": False,
        "anonymous": True,
        "username": "",
        "get_username": "",  # Django's AnonymousUser answers it too: never a 500
        "str": "AnonymousUser",
        "pk": None,
        "perms": [False, False, False],
    }


def test_current_token_is_the_verified_token_and_refuses_an_unprotected_view(
    issuer: LocalIssuer,
) -> None:
    token = issuer.mint(sub="ada")
    with override_settings(BEARERGUARD={"SERVER": make_server(issuer), "PROTECT_ALL": False}):
        client = Client()
        ok = client.get("/fn/holder", HTTP_AUTHORIZATION=f"Bearer {token}")
        assert ok.json() == {"sub": "ada"}
        with pytest.raises(RuntimeError) as caught:
            client.get("/holder", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert str(caught.value) == (
        "no verified access token: this view is not protected by bearerguard"
    )


def test_the_middleware_applies_a_rule_to_its_method_only(issuer: LocalIssuer) -> None:
    rules = [Rule("/read", methods=["POST"], scopes=["write"])]
    read, write = issuer.mint("read"), issuer.mint("write")
    with override_settings(BEARERGUARD={"SERVER": make_server(issuer), "RULES": rules}):
        client = Client()
        assert client.get("/read", HTTP_AUTHORIZATION=f"Bearer {read}").status_code == 200
        refused = client.post("/read", HTTP_AUTHORIZATION=f"Bearer {read}")
        assert refused.status_code == 403
        assert refused.json()["error"] == "insufficient_scope"
        assert 'scope="write"' in refused.headers["WWW-Authenticate"]
        assert client.post("/read", HTTP_AUTHORIZATION=f"Bearer {write}").status_code == 200


def test_a_dpop_bound_token_with_its_proof_is_accepted(issuer: LocalIssuer) -> None:
    key = DPoPKey.generate("ES256")
    token = issuer.mint("read", sub="ada", claims={"cnf": {"jkt": key.jkt}})
    server = make_server(issuer, dpop="allowed")
    with override_settings(BEARERGUARD={"SERVER": server, "PROTECT_ALL": False}):
        client = Client()

        def call(**meta: str) -> Any:
            return client.get("/fn/read", HTTP_AUTHORIZATION=f"DPoP {token}", **meta)

        proof = key.proof("GET", "http://testserver/fn/read", access_token=token, iat=NOW)
        ok = call(HTTP_DPOP=proof)
        assert ok.status_code == 200
        assert ok.json()["sub"] == "ada"
        unproven = call()
        assert unproven.status_code == 401
        assert unproven.json()["error"] == "invalid_dpop_proof"


def test_an_async_view_sees_its_url_arguments(issuer: LocalIssuer) -> None:
    path = "/fn/async/orgs/acme/reports"
    ours = issuer.mint("read", sub="ada", organization_id="acme")
    theirs = issuer.mint("read", sub="ada", organization_id="globex")
    with override_settings(BEARERGUARD={"SERVER": make_server(issuer), "PROTECT_ALL": False}):
        client = Client()
        assert client.get(path, HTTP_AUTHORIZATION=f"Bearer {ours}").json()["sub"] == "ada"
        refused = client.get(path, HTTP_AUTHORIZATION=f"Bearer {theirs}")
        assert refused.status_code == 403
        assert "organization_id must match the path's org" in refused.json()["error_description"]


def test_the_metadata_document_answers_get_head_and_options_only(issuer: LocalIssuer) -> None:
    path = "/.well-known/oauth-protected-resource"
    with override_settings(BEARERGUARD={"SERVER": make_server(issuer)}):
        client = Client()
        posted = client.post(path)
        assert posted.status_code == 405
        assert posted.headers["Allow"] == "GET, HEAD, OPTIONS"
        head = client.head(path)
        assert (head.status_code, head.content) == (200, b"")
        assert client.options(path).status_code == 204
