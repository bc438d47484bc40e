"""The ``bearerguard`` command line: in-process through ``main()``, and once as a subprocess."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
from procs import free_port

from bearerguard.cli import main
from bearerguard.devissuer import DevIssuer, KeyStore, load_config
from bearerguard.testing import LocalIssuer

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "issuer.toml"
SHOP = "https://shopping.api"
STATS = ("stats-service", "dev-only-stats-service-secret")
ADMIN = ("shopping-admin", "dev-only-shopping-admin-secret")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return status, out, err


def line(out: str, mark: str, check: str) -> str:
    """The report line ``<mark>  <check> ...``; fails when there is none."""
    found = re.search(rf"^  {mark}  {re.escape(check)} +(.*)$", out, re.MULTILINE)
    assert found, f"no {mark} line for {check!r} in:\n{out}"
    return found.group(1)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevIssuer]:
    """One dev issuer on a loopback port for the whole module, stopped at its end."""
    keys = KeyStore(tmp_path_factory.mktemp("keys") / "keys.json")
    issuer = DevIssuer(load_config(EXAMPLE), keys=keys)
    with issuer.serve():
        yield issuer


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BEARERGUARD_CLIENT_SECRET", STATS[1])


def mint(issuer: DevIssuer, app: str = "stats-service", **kwargs: object) -> str:
    return str(issuer.issue(app, **kwargs)["access_token"])  # type: ignore[arg-type]


def verify_args(issuer: DevIssuer, token: str, *extra: str) -> list[str]:
    return ["verify", token, "--issuer", issuer.issuer, "--audience", SHOP, *extra]


# -- token ----------------------------------------------------------------------------------------


def token_args(issuer: DevIssuer, app: str, *scopes: str) -> list[str]:
    args = ["token", "--issuer", issuer.issuer, "--client-id", app, "--resource", SHOP]
    return [*args, "--scope", *scopes] if scopes else args


def claims_of(token: str) -> dict[str, object]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


def test_token_prints_the_bare_access_token_by_default(
    served: DevIssuer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What ``TOKEN=$(bearerguard token ...)`` needs: the JWT and a newline, nothing else."""
    monkeypatch.setenv("BEARERGUARD_CLIENT_SECRET", ADMIN[1])
    args = token_args(served, ADMIN[0], "read:products", "write:products")
    status, out, err = run(capsys, *args)
    assert status == 0, err
    assert err == ""  # every requested scope granted: no warning
    token = out.removesuffix("\n")
    assert re.fullmatch(r"[\w-]+\.[\w-]+\.[\w-]+", token), out
    assert claims_of(token)["scope"] == "read:products write:products"


@pytest.mark.usefixtures("secret_env")
def test_token_json_prints_the_token_response(
    served: DevIssuer, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = run(capsys, *token_args(served, STATS[0], "read:products"), "--json")
    assert status == 0
    response = json.loads(out)
    assert response["token_type"] == "Bearer"
    assert response["expires_in"] == 3600
    assert response["scope"] == "read:products"
    assert claims_of(response["access_token"])["aud"] == SHOP


@pytest.mark.usefixtures("secret_env")
@pytest.mark.parametrize("as_json", [False, True])
def test_token_warns_when_the_issuer_grants_fewer_scopes(
    served: DevIssuer, capsys: pytest.CaptureFixture[str], as_json: bool
) -> None:
    """stats-service holds only shopping-reader: write:products is dropped without an error."""
    args = token_args(served, STATS[0], "read:products", "write:products")
    status, out, err = run(capsys, *args, *(["--json"] if as_json else []))
    assert status == 0  # a token was issued: the warning does not fail the command
    token = json.loads(out)["access_token"] if as_json else out.strip()
    assert claims_of(token)["scope"] == "read:products"  # narrowed to the app's role
    assert err.startswith("bearerguard: warning: the issuer granted fewer scopes than requested")
    assert "missing write:products (granted: read:products)" in err
    assert err.count("\n") == 1
    assert token not in err
    assert token.split(".")[2] not in err  # not even the signature


@pytest.mark.usefixtures("secret_env")
def test_token_warns_when_no_requested_scope_is_granted(
    served: DevIssuer, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing granted: Logto leaves ``scope`` out of the token and of the response."""
    status, out, err = run(capsys, *token_args(served, STATS[0], "write:products"), "--json")
    assert status == 0
    response = json.loads(out)
    assert "scope" not in response
    assert "scope" not in claims_of(response["access_token"])
    assert "missing write:products (granted: none of them)" in err


@pytest.mark.usefixtures("secret_env")
@pytest.mark.parametrize(
    ("response", "warning"),
    [
        # An opaque token: only the response's scope can tell.
        ({"access_token": "opaque-token-value", "scope": "read:products"}, "write:products"),
        # Opaque and no scope in the response: RFC 6749 5.1 reads that as "what was asked".
        ({"access_token": "opaque-token-value"}, None),
        # A JWT whose response lists a scope its claim lacks: the claim is what APIs enforce.
        ({"access_token": "JWT", "scope": "read:products write:products"}, "write:products"),
    ],
)
def test_token_warning_reads_the_response_and_the_claim(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    response: dict[str, str],
    warning: str | None,
) -> None:
    issuer = LocalIssuer("https://tenant.logto.app/oidc", audience=SHOP)
    if response["access_token"] == "JWT":
        response = {**response, "access_token": issuer.mint("read:products")}
    monkeypatch.setattr("bearerguard.cli.fetch_token", lambda **_: dict(response))
    args = ["token", "--issuer", "https://tenant.logto.app/oidc", "--client-id", "a"]
    status, out, err = run(
        capsys, *args, "--resource", SHOP, "--scope", "read:products", "write:products"
    )
    assert status == 0
    assert out == response["access_token"] + "\n"
    if warning is None:
        assert err == ""
    else:
        assert f"missing {warning} (granted: read:products)" in err
        assert response["access_token"] not in err


def test_token_with_secret_option_and_token_endpoint(
    served: DevIssuer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BEARERGUARD_CLIENT_SECRET", raising=False)
    status, out, _ = run(
        capsys,
        "token",
        "--token-endpoint",
        served.token_endpoint,
        "--client-id",
        ADMIN[0],
        "--client-secret",
        ADMIN[1],
        "--resource",
        SHOP,
        "--json",
    )
    assert status == 0
    assert "scope" not in json.loads(out)  # none asked for


def test_token_without_secret(
    served: DevIssuer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BEARERGUARD_CLIENT_SECRET", raising=False)
    args = ["token", "--issuer", served.issuer, "--client-id", "x", "--resource", SHOP]
    status, out, err = run(capsys, *args)
    assert status == 2
    assert out == ""
    assert "BEARERGUARD_CLIENT_SECRET" in err


@pytest.mark.parametrize(
    ("client_id", "secret", "resource", "message"),
    [
        (STATS[0], "wrong", SHOP, "invalid_client: client authentication failed (HTTP 401)"),
        (STATS[0], STATS[1], "https://unknown.api", "invalid_target"),
    ],
)
def test_token_refused(
    served: DevIssuer,
    capsys: pytest.CaptureFixture[str],
    client_id: str,
    secret: str,
    resource: str,
    message: str,
) -> None:
    status, out, err = run(
        capsys,
        "token",
        "--issuer",
        served.issuer,
        "--client-id",
        client_id,
        "--client-secret",
        secret,
        "--resource",
        resource,
    )
    assert status == 1
    assert out == ""
    assert err.startswith("bearerguard: token request failed: ")
    assert message in err


@pytest.mark.usefixtures("secret_env")
def test_token_unreachable_issuer(capsys: pytest.CaptureFixture[str]) -> None:
    issuer = f"http://127.0.0.1:{free_port()}/oidc"
    args = ["token", "--issuer", issuer, "--client-id", "a", "--resource", SHOP, "--timeout", "2"]
    status, _, err = run(capsys, *args)
    assert status == 1
    assert "cannot reach the token endpoint" in err


@pytest.mark.usefixtures("secret_env")
def test_token_refuses_plain_http_off_loopback(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["token", "--issuer", "http://auth.example/oidc", "--client-id", "a", "--resource", SHOP]
    status, _, err = run(capsys, *args)
    assert status == 2
    assert "https://" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["token", "--issuer", "https://x", "--resource", SHOP], "--client-id"),
        (["token", "--client-id", "a", "--resource", SHOP], "--issuer --token-endpoint"),
        (["verify", "t", "--issuer", "https://x"], "--audience"),
        (["dev-issuer", "--alg", "HS256"], "invalid choice"),
        (["dev-issuer", "--port", "70000"], "not a port number"),
        (["dev-issuer", "--port", "http"], "'http' is not a port number"),
        ([], "COMMAND"),
    ],
)
def test_missing_or_bad_options(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


# -- verify ---------------------------------------------------------------------------------------


def test_verify_valid_token(served: DevIssuer, capsys: pytest.CaptureFixture[str]) -> None:
    token = mint(served, resource=SHOP, scope="read:products")
    status, out, _ = run(capsys, *verify_args(served, token, "--scope", "read:products"))
    assert status == 0
    for check in ("format", "alg", "typ", "signature", "iss", "aud", "exp/nbf/iat", "claims"):
        line(out, "PASS", check)
    assert served.keys.current.kid in line(out, "PASS", "signature")
    assert line(out, "PASS", "scopes") == "required: read:products; token has: read:products"
    assert "FAIL" not in out
    assert out.rstrip().endswith("Result: VALID")
    assert '"client_id": "stats-service"' in out  # the decoded claims
    assert '"typ": "at+jwt"' in out  # the decoded header
    assert token not in out
    assert token.split(".")[2] not in out  # not even the signature


def test_verify_expired_token(served: DevIssuer, capsys: pytest.CaptureFixture[str]) -> None:
    past = DevIssuer(issuer=served.issuer, keys=served.keys, clock=lambda: time.time() - 7200)
    token = mint(past, resource=SHOP)
    status, out, _ = run(capsys, *verify_args(served, token))
    assert status == 1
    assert line(out, "FAIL", "exp/nbf/iat").startswith("token expired: exp ")
    assert "ago" in line(out, "FAIL", "exp/nbf/iat")
    line(out, "PASS", "signature")
    line(out, "PASS", "aud")
    assert "Result: INVALID (token expired)" in out
    assert token not in out


def test_verify_wrong_audience(served: DevIssuer, capsys: pytest.CaptureFixture[str]) -> None:
    token = mint(served, "management-client", resource="https://default.logto.app/api")
    status, out, _ = run(capsys, *verify_args(served, token))
    assert status == 1
    assert line(out, "FAIL", "aud") == (
        "audience mismatch: token has 'https://default.logto.app/api', expected " + SHOP
    )
    line(out, "PASS", "signature")
    line(out, "PASS", "exp/nbf/iat")
    assert "Result: INVALID (audience mismatch)" in out


def test_verify_tampered_token(served: DevIssuer, capsys: pytest.CaptureFixture[str]) -> None:
    token = LocalIssuer.tampered(mint(served, resource=SHOP, scope="read:products"))
    status, out, _ = run(capsys, *verify_args(served, token, "--scope", "admin"))
    assert status == 1
    assert line(out, "FAIL", "signature").startswith("signature verification failed")
    line(out, "PASS", "aud")
    line(out, "PASS", "scopes")  # the forged scope is there, but the signature is not
    assert "Result: INVALID (signature verification failed)" in out


def test_verify_missing_scope(served: DevIssuer, capsys: pytest.CaptureFixture[str]) -> None:
    token = mint(served, resource=SHOP, scope="read:products")
    status, out, _ = run(capsys, *verify_args(served, token, "--scope", "write:products"))
    assert status == 1
    assert line(out, "FAIL", "scopes") == "missing write:products; token has: read:products"
    assert "Result: INVALID (token lacks the scopes: write:products)" in out


def test_verify_reads_stdin(
    served: DevIssuer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    token = mint(served, resource=SHOP)
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"Bearer {token}\n"))
    status, out, _ = run(capsys, *verify_args(served, "-"))
    assert status == 0
    assert token not in out


def test_verify_strict_requires_at_jwt(
    served: DevIssuer, capsys: pytest.CaptureFixture[str]
) -> None:
    key = served.keys.current
    claims = {"sub": "a", "client_id": "a", "iss": served.issuer, "aud": SHOP}
    now = int(time.time())
    claims |= {"iat": now, "exp": now + 600, "jti": "x"}
    token = jwt.encode(claims, key.private_key, algorithm=key.alg, headers={"kid": key.kid})
    status, out, _ = run(capsys, *verify_args(served, token))
    assert status == 1
    assert line(out, "FAIL", "typ") == "token type must be at+jwt: 'JWT'"
    status, out, _ = run(capsys, *verify_args(served, token, "--no-strict"))
    assert status == 0
    assert "not required" in line(out, "PASS", "typ")


def test_verify_reports_missing_claims(
    served: DevIssuer, capsys: pytest.CaptureFixture[str]
) -> None:
    key = served.keys.current
    now = int(time.time())
    claims = {"iss": served.issuer, "aud": SHOP, "exp": now + 600, "client_id": "a"}
    headers = {"kid": key.kid, "typ": "at+jwt"}
    token = jwt.encode(claims, key.private_key, algorithm=key.alg, headers=headers)
    status, out, _ = run(capsys, *verify_args(served, token))
    assert status == 1
    assert line(out, "FAIL", "claims") == "sub claim missing"
    line(out, "SKIP", "scopes")


@pytest.mark.parametrize("token", ["not-a-token", "a.b.c", "Bearer"])
def test_verify_malformed_token(
    served: DevIssuer, capsys: pytest.CaptureFixture[str], token: str
) -> None:
    status, out, err = run(capsys, *verify_args(served, token))
    if token == "Bearer":
        assert status == 2
        assert "no token given" in err
        return
    assert status == 1
    line(out, "FAIL", "format")
    assert "Result: INVALID" in out


def test_verify_unknown_kid_and_unreachable_issuer(
    served: DevIssuer, capsys: pytest.CaptureFixture[str]
) -> None:
    stranger = DevIssuer(issuer=served.issuer)  # same issuer URL, other keys
    token = mint(stranger, resource=SHOP)
    status, out, _ = run(capsys, *verify_args(served, token))
    assert status == 1
    detail = line(out, "FAIL", "signature")
    assert detail.startswith("unknown signing key")
    assert served.keys.current.kid in detail  # what the JWKS does hold

    gone = f"http://127.0.0.1:{free_port()}/oidc"
    token = mint(DevIssuer(issuer=gone), resource=SHOP)  # an issuer nothing serves
    status, out, _ = run(capsys, "verify", token, "--issuer", gone, "--audience", SHOP)
    assert status == 1
    assert "cannot get the issuer's signing keys" in line(out, "FAIL", "signature")
    line(out, "PASS", "iss")


def test_verify_picks_the_keys_by_the_tokens_iss(
    served: DevIssuer, capsys: pytest.CaptureFixture[str]
) -> None:
    other = DevIssuer(load_config(EXAMPLE))  # a second issuer with its own signing key
    with other.serve():
        assert other.keys.current.kid != served.keys.current.kid
        theirs = mint(other, resource=SHOP, scope="read:products")
        ours = mint(served, resource=SHOP, scope="read:products")
        both = ["--issuer", served.issuer, "--issuer", other.issuer, "--audience", SHOP]
        for token, issuer in ((theirs, other), (ours, served)):
            status, out, _ = run(capsys, "verify", token, *both)
            assert status == 0, out
            assert issuer.keys.current.kid in line(out, "PASS", "signature")
            assert "FAIL" not in out
            assert out.rstrip().endswith("Result: VALID")

        # Only the first issuer trusted: the second's token is an issuer mismatch, and no
        # key source is consulted for an iss that names none of the configured issuers.
        status, out, _ = run(capsys, *verify_args(served, theirs))
        assert status == 1
        mismatch = f"issuer mismatch: token has {other.issuer!r}, expected {served.issuer}"
        assert line(out, "FAIL", "iss") == mismatch
        assert line(out, "SKIP", "signature") == "not checked: issuer mismatch"
        assert "Result: INVALID (issuer mismatch)" in out


def test_verify_with_jwks_uri(served: DevIssuer, capsys: pytest.CaptureFixture[str]) -> None:
    token = mint(served, resource=SHOP)
    args = verify_args(served, token, "--jwks-uri", served.jwks_uri)
    assert run(capsys, *args)[0] == 0


def test_verify_bad_issuer_url(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run(capsys, "verify", "a.b.c", "--issuer", "http://x/oidc", "--audience", SHOP)
    assert status == 2
    assert "issuer must be an https:// URL" in err


# -- dev-issuer -----------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "203.0.113.5"])
def test_dev_issuer_refuses_public_address(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, host: str
) -> None:
    status, _, err = run(capsys, "dev-issuer", "--host", host, "--keys", str(tmp_path / "k"))
    assert status == 2
    assert "refusing to listen" in err
    assert "--insecure-public" in err
    assert not (tmp_path / "k").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "cannot read the config file"), ("[[apps]]\nid = 3", "apps[0]: id must be")],
)
def test_dev_issuer_bad_config(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, content: str | None, message: str
) -> None:
    config = tmp_path / "issuer.toml"
    if content is not None:
        config.write_text(content)
    status, _, err = run(capsys, "dev-issuer", "--config", str(config), "--port", "0")
    assert status == 2
    assert err.startswith(f"bearerguard: {config}: ")
    assert message in err


def test_dev_issuer_port_in_use(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        status, _, err = run(capsys, "dev-issuer", "--port", port, "--keys", str(tmp_path / "k"))
    assert status == 1
    assert f"cannot listen on 127.0.0.1:{port}" in err


def test_rotate_key(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    keys = tmp_path / "dev" / "keys.json"
    status, out, _ = run(capsys, "dev-issuer", "rotate-key", "--keys", str(keys))
    assert status == 0
    assert out.startswith(f"created {keys} with a signing key: ES384, kid ")
    first = KeyStore(keys).current.kid
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600

    status, out, _ = run(capsys, "dev-issuer", "--keys", str(keys), "rotate-key", "--alg", "RS256")
    assert status == 0
    store = KeyStore(keys)
    assert store.current.alg == "RS256"
    assert [k.kid for k in store.keys] == [first, store.current.kid]
    assert f"kid {store.current.kid}" in out
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert all(command in out for command in ("dev-issuer", "token", "verify"))


# -- as a subprocess ------------------------------------------------------------------------------


def test_python_m_bearerguard_end_to_end(tmp_path: Path) -> None:
    """``python -m bearerguard dev-issuer`` on a free port; ``token`` and ``verify`` against it."""
    command = [sys.executable, "-m", "bearerguard"]
    env = {**os.environ, "BEARERGUARD_CLIENT_SECRET": ADMIN[1], "PYTHONUNBUFFERED": "1"}
    issuer = subprocess.Popen(
        [*command, "dev-issuer", "--port", "0"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        banner = []
        assert issuer.stdout is not None
        for text in issuer.stdout:
            banner.append(text)
            if text.startswith("Press Ctrl-C"):
                break
        banner_text = "".join(banner)
        assert "FOR DEVELOPMENT ONLY" in banner_text
        assert "built-in default" in banner_text  # no examples/issuer.toml in this cwd
        assert "stats-service" in banner_text
        assert "dev-only" not in banner_text  # secrets are not printed
        found = re.search(r"^  issuer +(http://127\.0\.0\.1:\d+/oidc)$", banner_text, re.M)
        assert found, banner_text
        url = found.group(1)
        keys = tmp_path / ".bearerguard" / "dev-issuer-keys.json"
        assert stat.S_IMODE(keys.stat().st_mode) == 0o600

        got = subprocess.run(
            [
                *command,
                "token",
                "--issuer",
                url,
                "--client-id",
                ADMIN[0],
                "--resource",
                SHOP,
                "--scope",
                "write:products",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert got.returncode == 0, got.stderr
        assert got.stderr == ""  # write:products is the admin's: no scope warning
        token = got.stdout.strip()  # the bare token, as TOKEN=$(bearerguard token ...) reads it

        checked = subprocess.run(
            [
                *command,
                "verify",
                "-",
                "--issuer",
                url,
                "--audience",
                SHOP,
                "--scope",
                "write:products",
            ],
            input=token,
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "Result: VALID" in checked.stdout
        assert token not in checked.stdout
    finally:
        issuer.send_signal(signal.SIGINT)
        try:
            _, errors = issuer.communicate(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover - only if shutdown hangs
            issuer.kill()
            issuer.communicate()
            raise
    assert issuer.returncode == 0, errors
    assert "Traceback" not in errors


def test_token_still_accepts_access_token_flag(
    served: DevIssuer, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--access-token`` asked for the bare token before it became the default: still works."""
    status, out, _ = run(
        capsys,
        "token",
        "--access-token",
        "--issuer",
        served.issuer,
        "--client-id",
        ADMIN[0],
        "--client-secret",
        ADMIN[1],
        "--resource",
        SHOP,
    )
    assert status == 0
    token = out.strip()
    assert "\n" not in token
    assert not token.startswith("{")
    assert jwt.decode(token, options={"verify_signature": False})["sub"] == ADMIN[0]
