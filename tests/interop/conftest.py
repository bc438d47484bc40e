"""Fixtures for the interop tests: oidc-provider (Logto's OIDC engine) as a real issuer.

``issuer.mjs`` runs node-oidc-provider configured as Logto does. The fixtures install it
(``npm ci`` into ``tests/interop/node_modules``, kept between runs and ignored by git), start it
on a free loopback port with keys generated here, and stop every process they started.

Without ``node``/``npm`` the tests that need the issuer are skipped, except under CI
(``CI=true``), where that is a failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from bearerguard.testing import thumbprint

HERE = Path(__file__).parent
ROOT = Path(__file__).parents[2]
_VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
PYTHON = str(_VENV_PYTHON) if _VENV_PYTHON.exists() else sys.executable

RESOURCE = "https://shopping.api"
SCOPES = "read:products write:products"
MIN_NODE = (20, 19)
NPM_TIMEOUT = 300.0
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0


@dataclass(frozen=True)
class App:
    """An M2M app registered in issuer.mjs; ``granted`` is what its M2M roles allow."""

    client_id: str
    client_secret: str
    granted: str


# Mirrors GRANTED and the clients in issuer.mjs.
ADMIN = App("shop-admin", "shop-admin-secret", "read:products write:products")
READER = App("shop-reader", "shop-reader-secret", "read:products")
# Restricted by oidc-provider's client `scope` metadata: errors instead of narrowing.
STRICT_READER = App("shop-reader-strict", "shop-reader-strict-secret", "read:products")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "interop: runs against a real issuer (oidc-provider on node); needs node"
    )


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def unavailable(reason: str) -> None:
    """Skip locally, fail under CI: CI must run the interop tests."""
    if in_ci():
        pytest.fail(f"{reason} (CI is set, so the interop tests must run)", pytrace=False)
    pytest.skip(reason)


# -- keys ---------------------------------------------------------------------------------------


def new_key(alg: str = "ES384") -> dict[str, Any]:
    """A private JWK for issuer.mjs (no kid: oidc-provider sets the RFC 7638 thumbprint)."""
    if alg == "RS256":
        jwk = json.loads(RSAAlgorithm.to_jwk(rsa.generate_private_key(65537, 2048)))
    else:
        curves = {"ES256": ec.SECP256R1(), "ES384": ec.SECP384R1(), "ES512": ec.SECP521R1()}
        jwk = json.loads(ECAlgorithm.to_jwk(ec.generate_private_key(curves[alg])))
    # PyJWT marks private RSA JWKs key_ops ["sign"], and oidc-provider would publish that in
    # the JWKS, where it forbids verification (RFC 7517 section 4.3). Logto's JWKs have none.
    jwk.pop("key_ops", None)
    return jwk  # type: ignore[no-any-return]


def kid_of(jwk: dict[str, Any]) -> str:
    return thumbprint(jwk)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def stop_process(proc: subprocess.Popen[Any]) -> None:
    """Terminate, then kill if it will not go."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_TIMEOUT)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


# -- node and the issuer ------------------------------------------------------------------------


def _installed() -> bool:
    """node_modules holds exactly what package-lock.json pins (npm's hidden lockfile says)."""
    try:
        wanted = json.loads((HERE / "package-lock.json").read_text())["packages"]
        have = json.loads((HERE / "node_modules" / ".package-lock.json").read_text())["packages"]
    except (OSError, ValueError, KeyError):
        return False
    return all(
        have.get(name, {}).get("version") == entry.get("version")
        for name, entry in wanted.items()
        if name
    )


@pytest.fixture(scope="session")
def node() -> str:
    """The node executable, with oidc-provider installed by ``npm ci`` if needed."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        unavailable(f"interop tests need Node.js {MIN_NODE[0]}.{MIN_NODE[1]}+ and npm on PATH")
    assert node is not None
    assert npm is not None
    version = subprocess.run(
        [node, "--version"], capture_output=True, text=True, timeout=30, check=False
    ).stdout.strip()
    try:
        found = tuple(int(p) for p in version.lstrip("v").split(".")[:2])
    except ValueError:
        found = (0, 0)
    if found < MIN_NODE:
        unavailable(f"interop tests need Node.js {MIN_NODE[0]}.{MIN_NODE[1]}+, found {version!r}")
    if not _installed():
        try:
            done = subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund"],
                cwd=HERE,
                capture_output=True,
                text=True,
                timeout=NPM_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"npm ci in {HERE} took over {NPM_TIMEOUT:.0f} s", pytrace=False)
        if done.returncode != 0 or not _installed():
            pytest.fail(f"npm ci in {HERE} failed:\n{done.stderr[-3000:]}", pytrace=False)
    return node


class IssuerProcess:
    """issuer.mjs as a subprocess: one URL for its lifetime, restartable with new keys."""

    resource = RESOURCE
    scopes = SCOPES
    admin = ADMIN
    reader = READER
    strict_reader = STRICT_READER

    def __init__(self, node: str, workdir: Path, keys: Sequence[dict[str, Any]]) -> None:
        self.node = node
        self.workdir = workdir
        self.keys = list(keys)
        self.port = 0  # the first start picks a free port; restarts keep it (and the issuer)
        self.issuer = ""
        self.proc: subprocess.Popen[str] | None = None
        self._starts = 0
        self.dpop = False  # oidc-provider's DPoP feature (issuer.mjs --dpop)

    # The endpoints, as Logto lays them out.
    @property
    def token_endpoint(self) -> str:
        return self.issuer + "/token"

    @property
    def jwks_uri(self) -> str:
        return self.issuer + "/jwks"

    @property
    def kids(self) -> list[str]:
        return [kid_of(k) for k in self.keys]

    def start(self) -> None:
        assert self.proc is None, "already running"
        self._starts += 1
        keys_file = self.workdir / f"keys-{self._starts}.json"
        keys_file.write_text(json.dumps({"keys": self.keys}))
        keys_file.chmod(0o600)
        log = self.workdir / f"issuer-{self._starts}.log"
        with log.open("w") as stderr:
            self.proc = subprocess.Popen(
                [
                    self.node,
                    "issuer.mjs",
                    "--port",
                    str(self.port),
                    "--keys",
                    str(keys_file),
                    *(["--dpop"] if self.dpop else []),
                ],
                cwd=HERE,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
            )
        lines: queue.Queue[str] = queue.Queue()
        stdout = self.proc.stdout
        assert stdout is not None
        threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
        try:
            line = lines.get(timeout=READY_TIMEOUT)
        except queue.Empty:
            line = ""
        if not line.startswith("READY "):
            self.stop()
            pytest.fail(
                f"issuer.mjs did not get ready within {READY_TIMEOUT:.0f} s "
                f"(stdout {line!r}):\n{log.read_text()[-3000:]}",
                pytrace=False,
            )
        issuer = line.split()[1]
        assert not self.issuer or issuer == self.issuer, "a restart must keep the issuer"
        self.issuer = issuer
        self.port = httpx.URL(issuer).port or 0

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def restart(self, keys: Sequence[dict[str, Any]] | None = None) -> None:
        """Stop and start again on the same port; ``keys[0]`` becomes the current signer."""
        self.stop()
        if keys is not None:
            self.keys = list(keys)
        self.start()

    def token_response(
        self,
        app: App = ADMIN,
        scope: str | None = SCOPES,
        resource: str | None = RESOURCE,
    ) -> httpx.Response:
        """A raw client_credentials request (Basic auth, form body), outside bearerguard."""
        form = {"grant_type": "client_credentials"}
        if resource is not None:
            form["resource"] = resource
        if scope is not None:
            form["scope"] = scope
        return httpx.post(
            self.token_endpoint,
            data=form,
            auth=(app.client_id, app.client_secret),
            timeout=10,
        )

    def token(self, app: App = ADMIN, scope: str | None = SCOPES) -> str:
        response = self.token_response(app, scope)
        assert response.status_code == 200, response.text
        return str(response.json()["access_token"])


@pytest.fixture(scope="session")
def start_issuer(
    node: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., IssuerProcess]]:
    """``start_issuer(keys)`` -> a running IssuerProcess; all are stopped at the end."""
    started: list[IssuerProcess] = []

    def start(keys: Sequence[dict[str, Any]] | None = None, *, dpop: bool = False) -> IssuerProcess:
        process = IssuerProcess(
            node, tmp_path_factory.mktemp("issuer"), keys if keys else [new_key("ES384")]
        )
        process.dpop = dpop
        started.append(process)
        process.start()
        return process

    try:
        yield start
    finally:
        for process in started:
            process.stop()


@pytest.fixture(scope="session")
def issuer(start_issuer: Callable[..., IssuerProcess]) -> IssuerProcess:
    """The shared issuer: ES384, one key. Tests that restart it use their own (start_issuer)."""
    return start_issuer([new_key("ES384")])


@pytest.fixture(scope="session")
def make_key() -> Callable[[str], dict[str, Any]]:
    """``make_key("ES384" | "RS256" | ...)`` -> a private JWK to hand to ``start_issuer``."""
    return new_key


@pytest.fixture(scope="session")
def python_exe() -> str:
    """The project's interpreter (.venv/bin/python), else the one running pytest."""
    return PYTHON


# -- the example apps under their real servers -----------------------------------------------------


@contextlib.contextmanager
def serve(argv: Sequence[str], port: int, env: dict[str, str], log: Path) -> Iterator[str]:
    """Run a server; yield its base URL once /health answers 200; stop it afterwards."""
    base = f"http://127.0.0.1:{port}"
    with log.open("w") as out:
        proc = subprocess.Popen(
            list(argv),
            cwd=ROOT,
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"{argv[2:4]} exited early:\n{log.read_text()[-3000:]}", pytrace=False)
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(base + "/health", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"{argv[2:4]} not ready:\n{log.read_text()[-3000:]}", pytrace=False)
            time.sleep(0.1)
        yield base
    finally:
        stop_process(proc)


@pytest.fixture(scope="session")
def serve_app() -> Callable[..., contextlib.AbstractContextManager[str]]:
    """``with serve_app(argv, port, env, log) as base_url: ...`` (stopped on exit)."""
    return serve


@pytest.fixture(name="free_port", scope="session")
def free_port_fixture() -> Callable[[], int]:
    """``free_port()`` -> a loopback port free right now."""
    return free_port
