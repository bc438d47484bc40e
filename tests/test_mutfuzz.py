"""A short slice of the mutation fuzzer (``make fuzz`` runs a million inputs): every outcome
documented, the sync and async faces and every adapter (ASGI, WSGI, the Django middleware's
two faces, DRF) agreeing, no input slow."""

from __future__ import annotations

import mutfuzz
import pytest


@pytest.fixture(scope="module")
def targets() -> mutfuzz.Targets:
    return mutfuzz.Targets()


def test_a_slice_of_mutated_inputs_has_only_documented_outcomes(
    targets: mutfuzz.Targets,
) -> None:
    report = mutfuzz.run(40_000, seed=2026, targets=targets)
    assert report.crashes == []
    assert report.disagreements == []
    assert report.slowest < mutfuzz.SLOW
    # The slice reaches every family of checks, not only the first one a token meets.
    seen = {
        label.split()[0] if not label.startswith("refused") else label for label in report.outcomes
    }
    for expected in (
        "ok",
        "jwks",
        "dpop",
        "mcp",
        "refused 401 malformed_token",
        "refused 400 malformed_header",
        "refused 401 missing_claim",
        "refused 401 wrong_typ",
        "refused 403 insufficient_scope",
        "refused 401 audience_mismatch",
        "refused 401 expired",
    ):
        assert expected in seen, (expected, report.outcomes.most_common())
    # ... and every adapter answered the same inputs, with successes and refusals of each kind.
    for adapter in ("asgi", "wsgi", "django", "django-async", "drf"):
        for status in (200, 400, 401):
            assert report.adapters[f"{adapter} {status}"] > 0, (adapter, report.adapters)


def test_the_adapters_answer_known_headers_as_the_core(targets: mutfuzz.Targets) -> None:
    """The differential check's ground: a DPoP-less Bearer request for ``/read`` (scope
    ``read``) answered alike by the core and every adapter, the subject included."""
    issuer = targets.issuers[0]
    token = issuer.mint("read", sub="ada")
    cases = {
        "valid": ([f"Bearer {token}"], (200, "ada")),
        "no header": ([], (401, None)),
        "not a token": (["Bearer x"], (401, None)),
        "too few scopes": ([f"Bearer {issuer.mint('write')}"], (403, None)),
        "two tokens": (["Bearer a b"], (400, None)),
        "repeated header": ([f"Bearer {token}"] * 2, (400, None)),
        "other scheme": (["Basic YTpi"], (401, None)),
    }
    for name, (values, expected) in cases.items():
        assert mutfuzz.answer_of(targets._authorize(targets.servers[0], values)) == expected
        answers = targets.adapters(values)
        assert set(answers) == {"asgi", "wsgi", "django", "django-async", "drf"}
        assert set(answers.values()) == {expected}, (name, answers)


def test_the_fuzz_leaves_djangos_settings_as_it_found_them(targets: mutfuzz.Targets) -> None:
    """Its BEARERGUARD is in force only while it runs: tests/test_django.py's (when it
    configured this process) is there before and after."""
    from django.conf import settings

    before = getattr(settings, "BEARERGUARD", None)
    mutfuzz.run(60, seed=3, targets=targets)
    targets.adapters(["Bearer x"])
    assert getattr(settings, "BEARERGUARD", None) is before
    assert before is not targets.django_config["BEARERGUARD"]
