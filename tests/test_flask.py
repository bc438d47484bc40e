"""The Flask extension through its public behaviour, with Flask's test client."""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import httpx
import pytest
from flask import Blueprint, Flask, Response, g
from flask.testing import FlaskClient
from flask.views import MethodView
from recorder import Recorder
from werkzeug.serving import make_server
from werkzeug.test import TestResponse

from bearerguard import ConfigurationError, ResourceServer, require_scopes
from bearerguard.claims import claim_equals
from bearerguard.flask import BearerGuard, current_token
from bearerguard.rules import Rule
from bearerguard.testing import LocalIssuer
from bearerguard.wsgi import BearerAuthMiddleware

NOW = 1_800_000_000.0
AUDIENCE = "https://api.test"


def clock() -> float:
    return NOW


@pytest.fixture
def issuer() -> LocalIssuer:
    return LocalIssuer(audience=AUDIENCE, clock=clock)


@pytest.fixture
def server(issuer: LocalIssuer) -> ResourceServer:
    return issuer.resource_server()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_error(
    response: TestResponse,
    status: int,
    error: str | None,
    scope: str | None = None,
    realm: str = AUDIENCE,
) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith(f'Bearer realm="{realm}"')
    if error is None:
        assert "error=" not in challenge
    else:
        assert f'error="{error}"' in challenge
    if scope is not None:
        assert f'scope="{scope}"' in challenge
    assert response.mimetype == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    body: dict[str, Any] = json.loads(response.get_data())
    assert {"error", "error_description"} <= set(body)
    if error is not None:
        assert body["error"] == error
    return body


def whoami() -> dict[str, Any]:
    token = current_token()
    return {"sub": token.sub, "scopes": sorted(token.scopes), "same": g.access_token is token}


def scoped_app(server: ResourceServer) -> Flask:
    app = Flask(__name__)
    guard = BearerGuard(app, server)
    for path, view in (
        ("/read", guard.require("read")(whoami)),
        ("/write", guard.require("write")(whoami)),
        ("/both", guard.require("read", "write")(whoami)),
        ("/both-str", guard.require("read write")(whoami)),
        ("/either", guard.require("read", "write", any_of=True)(whoami)),
        ("/any", guard.require()(whoami)),
    ):
        app.add_url_rule(path, path.strip("/"), view, methods=["GET", "POST"])

    @app.get("/open")
    def open_view() -> str:
        try:
            current_token()
        except RuntimeError:
            return "no token"
        return "token"  # pragma: no cover

    return app


@pytest.fixture
def client(server: ResourceServer) -> FlaskClient:
    return scoped_app(server).test_client()


# -- the decorator -----------------------------------------------------------------------------


def test_scopes_all_of_any_of_and_none(client: FlaskClient, issuer: LocalIssuer) -> None:
    read, write, both, plain = (
        issuer.mint("read"),
        issuer.mint("write"),
        issuer.mint("read write"),
        issuer.mint(),
    )
    expected = {
        "/read": {read, both},
        "/write": {write, both},
        "/both": {both},
        "/both-str": {both},
        "/either": {read, write, both},
        "/any": {read, write, both, plain},
    }
    for path, allowed in expected.items():
        for token in (read, write, both, plain):
            response = client.get(path, headers=bearer(token))
            if token in allowed:
                assert response.status_code == 200, (path, response.get_data())
                assert response.json is not None
                assert response.json["same"] is True
            else:
                assert_error(response, 403, "insufficient_scope")
    assert_error(client.get("/both", headers=bearer(read)), 403, "insufficient_scope", "read write")
    body = assert_error(
        client.get("/either", headers=bearer(plain)), 403, "insufficient_scope", "read write"
    )
    assert body["scope"] == "read write"


def test_missing_token_is_401_without_error(client: FlaskClient) -> None:
    for path in ("/read", "/write", "/any"):
        body = assert_error(client.get(path), 401, None)
        assert body["error"] == "invalid_request"
        assert_error(client.get(path, headers={"Authorization": "Basic dXNlcjpwYXNz"}), 401, None)


@pytest.mark.parametrize("header", ["Bearer", "Bearer a b", "Bearer a!b", "Bearer a,b"])
def test_malformed_header_is_400(client: FlaskClient, header: str) -> None:
    assert_error(client.post("/write", headers={"Authorization": header}), 400, "invalid_request")


def test_invalid_tokens_are_401_also_on_write_routes(
    client: FlaskClient, issuer: LocalIssuer
) -> None:
    for token in (
        issuer.tampered(issuer.mint("write")),
        issuer.expired("write"),
        issuer.mint("write", audience="https://other.api"),
        issuer.mint("write", header={"typ": "JWT"}),
        "abc.def.ghi",
    ):
        assert_error(client.post("/write", headers=bearer(token)), 401, "invalid_token")


def test_several_authorization_headers_are_400(client: FlaskClient, issuer: LocalIssuer) -> None:
    token = issuer.mint("read")
    response = client.get("/read", headers=[("Authorization", f"Bearer {token}")] * 2)
    assert_error(response, 400, "invalid_request")
    joined = {"Authorization": f"Bearer {token},Bearer {token}"}  # as gunicorn joins them
    assert_error(client.get("/read", headers=joined), 400, "invalid_request")


def test_token_in_g_and_current_token(client: FlaskClient, issuer: LocalIssuer) -> None:
    response = client.get("/any", headers=bearer(issuer.mint("read", sub="alice")))
    assert response.json == {"sub": "alice", "scopes": ["read"], "same": True}
    # an unprotected view has no token, even right after a protected request
    assert client.get("/open").get_data() == b"no token"


def test_current_token_outside_a_request() -> None:
    with pytest.raises(RuntimeError, match="request context"):
        current_token()
    app = Flask(__name__)
    with app.test_request_context("/"), pytest.raises(RuntimeError, match="not protected"):
        current_token()


def test_issuer_unavailable_is_503(issuer: LocalIssuer) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    client = scoped_app(issuer.resource_server(transport=httpx.MockTransport(refuse))).test_client()
    response = client.get("/read", headers=bearer(issuer.mint("read")))
    body = assert_error(response, 503, None)
    assert body["error"] == "temporarily_unavailable"
    assert int(response.headers["Retry-After"]) >= 1


def test_auth_error_raised_in_a_view_is_rendered(
    server: ResourceServer, issuer: LocalIssuer
) -> None:
    app = Flask(__name__)
    guard = BearerGuard(app, server)

    @app.get("/admin")
    @guard.require()
    def admin() -> str:
        require_scopes(current_token(), "admin")
        return "ok"

    client = app.test_client()
    assert_error(
        client.get("/admin", headers=bearer(issuer.mint("read"))), 403, "insufficient_scope"
    )
    assert client.get("/admin", headers=bearer(issuer.mint("admin"))).get_data() == b"ok"


def test_async_view(server: ResourceServer, issuer: LocalIssuer) -> None:
    app = Flask(__name__)
    guard = BearerGuard(app, server)

    @guard.require("read")
    async def view() -> dict[str, Any]:
        return whoami()

    assert inspect.iscoroutinefunction(view)  # Flask runs it as an async view
    with app.test_request_context("/", headers=bearer(issuer.mint("read", sub="a"))):
        assert asyncio.run(view()) == {"sub": "a", "scopes": ["read"], "same": True}
    with app.test_request_context("/"):
        denied = asyncio.run(view())
        assert isinstance(denied, Response)
        assert denied.status_code == 401
    if importlib.util.find_spec("asgiref") is not None:  # through Flask itself
        app.add_url_rule("/async", "async", view)
        client = app.test_client()
        assert client.get("/async", headers=bearer(issuer.mint("read"))).status_code == 200
        assert_error(client.get("/async"), 401, None)


# -- blueprints and class-based views ---------------------------------------------------------


def test_blueprint_views(server: ResourceServer, issuer: LocalIssuer) -> None:
    guard = BearerGuard(server=server)
    bp = Blueprint("shop", __name__, url_prefix="/shop")

    @bp.get("/items")
    @guard.require("read")
    def items() -> dict[str, Any]:
        return whoami()

    app = Flask(__name__)
    app.register_blueprint(bp)
    guard.init_app(app)
    assert app.extensions["bearerguard"] is server
    client = app.test_client()
    assert client.get("/shop/items", headers=bearer(issuer.mint("read", sub="b"))).json == {
        "sub": "b",
        "scopes": ["read"],
        "same": True,
    }
    assert_error(
        client.get("/shop/items", headers=bearer(issuer.mint())), 403, "insufficient_scope"
    )
    assert_error(client.get("/shop/items"), 401, None)


def test_method_views(server: ResourceServer, issuer: LocalIssuer) -> None:
    guard = BearerGuard(server=server)

    class Items(MethodView):
        decorators: ClassVar[list[Callable[..., Any]]] = [guard.require()]  # a valid token

        def get(self) -> dict[str, Any]:
            return whoami()

        @guard.require("write")  # and this one: the write scope too
        def post(self) -> tuple[dict[str, Any], int]:
            return whoami(), 201

    class Item(MethodView):
        @guard.require("read")
        def get(self, item_id: int) -> dict[str, Any]:
            return {"id": item_id, **whoami()}

    app = Flask(__name__)
    guard.init_app(app)
    app.add_url_rule("/items", view_func=Items.as_view("items"))
    app.add_url_rule("/items/<int:item_id>", view_func=Item.as_view("item"))
    client = app.test_client()
    read, write = issuer.mint("read"), issuer.mint("write")

    assert_error(client.get("/items"), 401, None)
    assert client.get("/items", headers=bearer(read)).status_code == 200
    assert_error(client.post("/items", headers=bearer(read)), 403, "insufficient_scope", "write")
    assert client.post("/items", headers=bearer(write)).status_code == 201
    assert client.get("/items/7", headers=bearer(read)).json["id"] == 7  # type: ignore[index]
    assert_error(client.get("/items/7", headers=bearer(write)), 403, "insufficient_scope", "read")
    assert_error(
        client.get("/items/7", headers=bearer(issuer.tampered(read))), 401, "invalid_token"
    )


# -- configuration ----------------------------------------------------------------------------


@pytest.fixture
def live_issuer() -> LocalIssuer:
    """An issuer on the wall clock: servers built from app.config use the wall clock too."""
    return LocalIssuer(audience=AUDIENCE)


def config_app(issuer: LocalIssuer, **config: Any) -> Flask:
    app = Flask(__name__)
    app.config.update(
        BEARERGUARD_ISSUER=issuer.issuer,
        BEARERGUARD_AUDIENCE=issuer.audience,
        BEARERGUARD_TRANSPORT=issuer.transport(),
    )
    app.config.update(config)
    return app


def test_settings_from_app_config(live_issuer: LocalIssuer) -> None:
    app = config_app(
        live_issuer,
        BEARERGUARD_AUDIENCE=["https://other.api", AUDIENCE],
        BEARERGUARD_REQUIRE_TYP=True,
        BEARERGUARD_LEEWAY=5,
        BEARERGUARD_REALM="shop",
        BEARERGUARD_TOKEN_CACHE_SIZE=0,
    )
    guard = BearerGuard(app)
    server = app.extensions["bearerguard"]
    assert isinstance(server, ResourceServer)
    assert server.audiences == ("https://other.api", AUDIENCE)
    assert server.options.require_typ is True
    assert server.options.leeway == 5
    assert server.realm == "shop"

    @app.get("/x")
    @guard.require("read")
    def view() -> dict[str, Any]:
        return whoami()

    client = app.test_client()
    assert client.get("/x", headers=bearer(live_issuer.mint("read"))).status_code == 200
    token = live_issuer.mint("read", audience="https://other.api")
    assert client.get("/x", headers=bearer(token)).status_code == 200
    untyped = live_issuer.mint("read", header={"typ": "JWT"})
    assert_error(client.get("/x", headers=bearer(untyped)), 401, "invalid_token", realm="shop")
    # built once per app: the same server on every request, and init_app again reuses it
    BearerGuard(app)
    assert app.extensions["bearerguard"] is server


def test_metadata_claim_rules_and_observer_settings_from_app_config(
    live_issuer: LocalIssuer,
) -> None:
    seen = Recorder()
    app = config_app(
        live_issuer,
        BEARERGUARD_RESOURCE="https://shop.example/api",
        BEARERGUARD_SCOPES_SUPPORTED=["read", "write"],
        BEARERGUARD_RESOURCE_NAME="Shop",
        BEARERGUARD_CLAIM_RULES=[claim_equals("tenant", "acme")],
        BEARERGUARD_OBSERVER=seen,
    )
    guard = BearerGuard(app)

    @app.get("/x")
    @guard.require()
    def view() -> dict[str, Any]:
        return whoami()

    client = app.test_client()
    document = client.get("/.well-known/oauth-protected-resource/api").json
    assert document == {
        "resource": "https://shop.example/api",
        "authorization_servers": [live_issuer.issuer],
        "scopes_supported": ["read", "write"],
        "bearer_methods_supported": ["header"],
        "resource_name": "Shop",
    }
    assert client.get("/x", headers=bearer(live_issuer.mint(tenant="acme"))).status_code == 200
    response = client.get("/x", headers=bearer(live_issuer.mint(tenant="evil")))
    assert_error(response, 401, "invalid_token")
    assert seen.pairs() == [("success", None), ("failure", "claim_rule")]
    switched_off = config_app(live_issuer, BEARERGUARD_RESOURCE_METADATA=False)
    BearerGuard(switched_off, protect_all=True)
    challenge = switched_off.test_client().get("/x").headers["WWW-Authenticate"]
    assert "resource_metadata" not in challenge


def test_require_typ_defaults_as_the_server_does(live_issuer: LocalIssuer) -> None:
    app = config_app(live_issuer)
    BearerGuard(app)
    assert app.extensions["bearerguard"].options.require_typ is False


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"BEARERGUARD_ISSUER": None}, "BEARERGUARD_ISSUER"),
        ({"BEARERGUARD_AUDIENCE": None}, "BEARERGUARD_AUDIENCE"),
        ({"BEARERGUARD_AUDIENCES": "x"}, "unknown bearerguard settings: BEARERGUARD_AUDIENCES"),
        ({"BEARERGUARD_ISSUER": "http://issuer.example/oidc"}, "https"),
        ({"BEARERGUARD_ALGORITHMS": ["HS256"]}, "unsupported algorithms"),
    ],
)
def test_bad_settings_fail_at_init(
    live_issuer: LocalIssuer, config: dict[str, Any], message: str
) -> None:
    app = config_app(live_issuer, **config)
    with pytest.raises(ConfigurationError, match=message):
        BearerGuard(app)


def test_app_factory_one_guard_two_apps(live_issuer: LocalIssuer) -> None:
    guard = BearerGuard()

    def create_app(audience: str) -> Flask:
        app = config_app(live_issuer, BEARERGUARD_AUDIENCE=audience)
        guard.init_app(app)

        @app.get("/x")
        @guard.require("read")
        def view() -> dict[str, Any]:
            return whoami()

        return app

    a, b = create_app(AUDIENCE).test_client(), create_app("https::b.api").test_client()
    token = live_issuer.mint("read")
    assert a.get("/x", headers=bearer(token)).status_code == 200
    assert_error(b.get("/x", headers=bearer(token)), 401, "invalid_token", realm="https::b.api")


def test_require_without_init_app_is_a_clear_error(server: ResourceServer) -> None:
    guard = BearerGuard()
    app = Flask(__name__)
    app.testing = True

    @app.get("/x")
    @guard.require()
    def view() -> str:  # pragma: no cover
        return "never"

    with pytest.raises(RuntimeError, match="init_app"):
        app.test_client().get("/x")


# -- deny by default ----------------------------------------------------------------------------


@pytest.fixture
def protected(server: ResourceServer) -> Flask:
    app = Flask(__name__)
    admin = Blueprint("admin", __name__, url_prefix="/admin")
    guard = BearerGuard(
        app,
        server,
        protect_all=True,
        public=["health", "admin.status", "/docs/*"],
        rules=[
            Rule("/admin/*", scopes=["admin"]),
            Rule("/reports", scopes="read audit", any_of=True),
        ],
    )
    server.observer = app.config["seen"] = Recorder()  # one event per token looked up

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"token": g.access_token}

    @app.get("/docs/<path:page>")
    def docs(page: str) -> str:
        return page

    @app.get("/whoami")
    def me() -> dict[str, Any]:
        return whoami()

    @app.get("/reports")
    def reports() -> str:
        return "reports"

    @app.post("/products")
    @guard.require("write")
    def create() -> tuple[dict[str, Any], int]:
        return whoami(), 201

    @admin.get("/status")
    def status() -> str:
        return "up"

    @admin.get("/users")
    def users() -> str:
        return "users"

    app.register_blueprint(admin)
    return app


def test_protect_all_denies_by_default(protected: Flask, issuer: LocalIssuer) -> None:
    client = protected.test_client()
    for path in ("/whoami", "/reports", "/no/such/route", "/", "/admin/users"):
        assert_error(client.get(path), 401, None)
    assert_error(client.post("/products"), 401, None)
    token = issuer.mint()
    # unknown URLs: 401 without a token, the app's own 404 with one
    assert client.get("/no/such/route", headers=bearer(token)).status_code == 404
    assert client.get("/whoami", headers=bearer(token)).status_code == 200


def test_protect_all_public_endpoints_and_paths(protected: Flask) -> None:
    client = protected.test_client()
    for headers in ({}, bearer("bogus"), {"Authorization": "Bearer a b"}):
        assert client.get("/health", headers=headers).json == {"token": None}
        assert client.get("/admin/status", headers=headers).get_data() == b"up"
        assert client.get("/docs/intro", headers=headers).get_data() == b"intro"
    assert protected.config["seen"].events == []


def test_protect_all_rules_and_decorator(protected: Flask, issuer: LocalIssuer) -> None:
    client = protected.test_client()
    read, write, admin = issuer.mint("read"), issuer.mint("write"), issuer.mint("admin")
    assert client.get("/reports", headers=bearer(read)).status_code == 200
    assert client.get("/reports", headers=bearer(issuer.mint("audit"))).status_code == 200
    assert_error(client.get("/reports", headers=bearer(write)), 403, "insufficient_scope")
    assert client.get("/admin/users", headers=bearer(admin)).get_data() == b"users"
    assert_error(
        client.get("/admin/users", headers=bearer(read)), 403, "insufficient_scope", "admin"
    )
    assert_error(client.post("/products", headers=bearer(read)), 403, "insufficient_scope", "write")
    seen: Recorder = protected.config["seen"]
    seen.events.clear()
    response = client.post("/products", headers=bearer(write))
    assert response.status_code == 201
    # one lookup: the decorator reuses the token checked before_request
    assert [(e.result, e.cached) for e in seen.events] == [("success", True)]
    assert_error(
        client.post("/products", headers=bearer(issuer.tampered(write))), 401, "invalid_token"
    )


def test_behind_the_wsgi_middleware(server: ResourceServer, issuer: LocalIssuer) -> None:
    app = Flask(__name__)
    guard = BearerGuard(app, server)

    @app.get("/whoami")
    def me() -> dict[str, Any]:
        token = current_token()  # verified by the middleware
        return {"sub": token.sub}

    @app.get("/write")
    @guard.require("write")
    def write() -> str:
        return "written"

    app.wsgi_app = BearerAuthMiddleware(app.wsgi_app, server)  # type: ignore[method-assign]
    client = app.test_client()
    assert client.get("/whoami", headers=bearer(issuer.mint(sub="m"))).json == {"sub": "m"}
    assert_error(client.get("/whoami"), 401, None)
    assert_error(
        client.get("/write", headers=bearer(issuer.mint("read"))), 403, "insufficient_scope"
    )
    assert client.get("/write", headers=bearer(issuer.mint("write"))).get_data() == b"written"


def test_a_token_the_middleware_verified_for_another_api_is_verified_again(
    server: ResourceServer, issuer: LocalIssuer
) -> None:
    """The WSGI middleware guards another API (audience); the guard's server is this one."""
    app = Flask(__name__)
    guard = BearerGuard(app, server)

    @app.get("/read")
    @guard.require("read")
    def read() -> str:
        return "read"

    other = issuer.resource_server("https://other.api")
    app.wsgi_app = BearerAuthMiddleware(app.wsgi_app, other)  # type: ignore[method-assign]
    client = app.test_client()
    foreign = issuer.mint("read", audience="https://other.api")
    response = client.get("/read", headers=bearer(foreign))
    assert_error(response, 401, "invalid_token")
    assert "audience mismatch" in response.json["error_description"]  # type: ignore[index]
    both = issuer.mint("read", audience=["https://other.api", AUDIENCE])
    assert client.get("/read", headers=bearer(both)).get_data() == b"read"


# -- under a threaded server ----------------------------------------------------------------------


@pytest.fixture
def served_issuer() -> Iterator[LocalIssuer]:
    issuer = LocalIssuer(audience=AUDIENCE)
    with issuer.serve():
        yield issuer


def test_threaded_server_concurrent_verification(served_issuer: LocalIssuer) -> None:
    """16 threads at once, each with its own token, on a cold key cache: each gets its answer."""
    app = Flask(__name__)
    app.config.update(
        BEARERGUARD_ISSUER=served_issuer.issuer,
        BEARERGUARD_AUDIENCE=AUDIENCE,
        BEARERGUARD_REQUIRE_TYP=True,
    )
    guard = BearerGuard(app, protect_all=True, public=["/health"])

    @app.get("/read")
    @guard.require("read")
    def read() -> dict[str, Any]:
        return whoami()

    http = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{http.server_port}"
    n = 16
    barrier = threading.Barrier(n)
    results: dict[int, list[tuple[int, Any]]] = {}
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        scopes = "read" if i % 2 == 0 else "other"
        token = served_issuer.mint(scopes, sub=f"user-{i}")
        try:
            with httpx.Client(base_url=base, trust_env=False, timeout=10) as client:
                barrier.wait(timeout=10)
                answers = []
                for _ in range(3):
                    response = client.get("/read", headers=bearer(token))
                    answers.append((response.status_code, response.json()))
                results[i] = answers
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    try:
        workers = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(30)
    finally:
        http.shutdown()
        http.server_close()
        thread.join(5)
    assert errors == []
    assert len(results) == n
    for i, answers in results.items():
        for status, body in answers:
            if i % 2 == 0:
                assert status == 200
                assert body == {"sub": f"user-{i}", "scopes": ["read"], "same": True}
            else:
                assert status == 403
                assert body["error"] == "insufficient_scope"


def test_public_and_rules_need_protect_all(server: ResourceServer) -> None:
    with pytest.raises(ConfigurationError, match="protect_all"):
        BearerGuard(Flask(__name__), server, public=["/health"])
    with pytest.raises(ConfigurationError, match="protect_all"):
        BearerGuard(server=server, rules=[Rule("/x", scopes="a")])


def test_authorize_in_a_view(server: ResourceServer, issuer: LocalIssuer) -> None:
    app = Flask(__name__)
    guard = BearerGuard(app, server)

    @app.get("/items")
    def items() -> Any:
        return guard.authorize("read audit", any_of=True) or whoami()

    client = app.test_client()
    assert client.get("/items", headers=bearer(issuer.mint("audit"))).status_code == 200
    response = client.get("/items", headers=bearer(issuer.mint("write")))
    assert_error(response, 403, "insufficient_scope", "read audit")
