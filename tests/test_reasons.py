"""Every refusal carries a stable Reason, and the README's table says what the code does."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from bearerguard import AuthError, Reason, ResourceServer
from bearerguard.claims import claim_equals
from bearerguard.dpop import DPoPKey
from bearerguard.errors import ReplayStoreUnavailable
from bearerguard.request import RequestView
from bearerguard.rules import Requirement, Rule, RuleSet
from bearerguard.testing import LocalIssuer, SigningKey

README = Path(__file__).parents[1] / "README.md"
AUDIENCE = "https://api.test"
NOW = 1_800_000_000.0


def clock() -> float:
    return NOW


ISSUER = LocalIssuer(audience=AUDIENCE, clock=clock)


def refused(
    header: str | None,
    requirement: Requirement | None = None,
    server: ResourceServer | None = None,
) -> AuthError:
    server = server or ISSUER.resource_server()
    view = RequestView("GET", [] if header is None else [header])
    with pytest.raises(AuthError) as info:
        server.authorize(view, requirement or Requirement())
    return info.value


def refused_path(path: str) -> AuthError:
    rules = RuleSet([Rule("/admin", scopes="admin")])
    with pytest.raises(AuthError) as info:
        rules.requirement("GET", path)
    return info.value


URL = "https://api.test/x"
KEY = DPoPKey.generate("ES256")
OTHER_KEY = DPoPKey.generate("ES256")


def bound() -> str:
    return ISSUER.mint(claims={"cnf": {"jkt": KEY.jkt}})


class Unreachable:
    """A replay store whose backend is down (as RedisReplayStore says it)."""

    def add(self, key: str, ttl: float) -> bool:
        raise ReplayStoreUnavailable()

    async def add_async(self, key: str, ttl: float) -> bool:
        raise ReplayStoreUnavailable()


def dpop_refused(
    *, proof: Callable[[str], str] | None = None, nonce: bool = False, store: Any = None
) -> AuthError:
    server = ISSUER.resource_server(dpop="required", dpop_nonce=nonce, dpop_replay_store=store)
    token = bound()
    made = proof(token) if proof else KEY.proof("GET", URL, access_token=token, iat=NOW)
    view = RequestView("GET", [f"DPoP {token}"], url=URL, dpop=[made])
    with pytest.raises(AuthError) as info:
        server.authorize(view, Requirement())
    return info.value


def dpop_replayed() -> AuthError:
    server = ISSUER.resource_server(dpop="required")
    token = bound()
    made = KEY.proof("GET", URL, access_token=token, iat=NOW)
    server.authorize(RequestView("GET", [f"DPoP {token}"], url=URL, dpop=[made]), Requirement())
    view = RequestView("GET", [f"DPoP {token}"], url=URL, dpop=[made])
    with pytest.raises(AuthError) as info:
        server.authorize(view, Requirement())
    return info.value


def bearer(token: str) -> str:
    return f"Bearer {token}"


def down() -> ResourceServer:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    return ResourceServer(ISSUER.issuer, AUDIENCE, transport=httpx.MockTransport(refuse))


# One request per reason (two for claim_rule: the server's and the route's).
SCENARIOS: dict[str, list[Callable[[], AuthError]]] = {
    "missing_token": [lambda: refused(None), lambda: refused("Basic abc")],
    "malformed_header": [lambda: refused("Bearer"), lambda: refused("Bearer a b")],
    "malformed_request": [lambda: refused_path("/admin\n"), lambda: refused_path("/a\x00b")],
    "token_too_large": [lambda: refused(bearer("a" * 9000))],
    "malformed_token": [lambda: refused(bearer("a.b.c")), lambda: refused(bearer("opaque"))],
    "unsupported_alg": [
        lambda: refused(bearer(ISSUER.mint()), server=ISSUER.resource_server(algorithms=["ES256"]))
    ],
    "wrong_typ": [lambda: refused(bearer(ISSUER.mint(header={"typ": "JWT"})))],
    "unknown_kid": [lambda: refused(bearer(ISSUER.mint(key=SigningKey.generate("ES384"))))],
    "bad_signature": [lambda: refused(bearer(ISSUER.tampered(ISSUER.mint("read"))))],
    "issuer_mismatch": [lambda: refused(bearer(ISSUER.mint(iss="https://evil.test/oidc")))],
    "audience_mismatch": [lambda: refused(bearer(ISSUER.mint(audience="https://other.api")))],
    "expired": [lambda: refused(bearer(ISSUER.expired()))],
    "not_yet_valid": [lambda: refused(bearer(ISSUER.mint(nbf=int(NOW) + 3600)))],
    "missing_claim": [lambda: refused(bearer(ISSUER.mint(claims={"aud": None})))],
    "claim_rule": [
        lambda: refused(
            bearer(ISSUER.mint(tenant="other")),
            server=ISSUER.resource_server(claim_rules=[claim_equals("tenant", "acme")]),
        ),
        lambda: refused(
            bearer(ISSUER.mint(tenant="other")),
            Requirement(claims=(claim_equals("tenant", "acme"),)),
        ),
    ],
    "insufficient_scope": [
        lambda: refused(bearer(ISSUER.mint("read")), Requirement(scopes=("write",)))
    ],
    "issuer_unavailable": [lambda: refused(bearer(ISSUER.mint()), server=down())],
    "invalid_dpop_proof": [lambda: dpop_refused(proof=lambda token: "not-a-jwt")],
    "dpop_replay": [lambda: dpop_replayed()],
    "use_dpop_nonce": [lambda: dpop_refused(nonce=True)],
    "dpop_binding": [
        lambda: refused(bearer(bound()), server=ISSUER.resource_server(dpop="allowed")),
        lambda: dpop_refused(
            proof=lambda token: OTHER_KEY.proof("GET", URL, access_token=token, iat=NOW)
        ),
    ],
    "replay_store_unavailable": [lambda: dpop_refused(store=Unreachable())],
}


def readme_rows() -> dict[str, tuple[list[int], list[str | None]]]:
    """reason -> (statuses, errors) from the README's table."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("### Reasons") :]
    rows = {}
    for line in section.splitlines()[1:]:
        if line.startswith("## "):
            break
        found = re.match(r"\| `(\w+)` \| ([\d /]+) \| (.+?) \| .+ \|$", line)
        if found:
            statuses = [int(s) for s in found.group(2).split("/")]
            errors = [
                None if e.strip() == "(none)" else e.strip().strip("`")
                for e in found.group(3).split("/")
            ]
            rows[found.group(1)] = (statuses, errors)
    return rows


def test_the_readme_lists_every_reason_once() -> None:
    assert sorted(readme_rows()) == sorted(r.value for r in Reason)
    assert sorted(SCENARIOS) == sorted(r.value for r in Reason)


@pytest.mark.parametrize("reason", [r.value for r in Reason])
def test_each_reason_is_what_the_readme_says(reason: str) -> None:
    statuses, errors = readme_rows()[reason]
    for i, scenario in enumerate(SCENARIOS[reason]):
        error = scenario()
        assert error.reason is Reason(reason), (error.reason, error.description)
        column = min(i, len(statuses) - 1)
        assert error.status_code == statuses[column]
        assert error.error == errors[min(i, len(errors) - 1)]
        assert str(error.reason) == reason  # a plain string for logs and metric labels


def test_reasons_never_reach_the_response() -> None:
    error = refused(bearer(ISSUER.expired()))
    assert "expired" not in error.to_json().replace("token expired", "")
    assert "reason" not in error.to_json()
