"""A short slice of the mutation fuzzer (``make fuzz`` runs a million inputs): every outcome
documented, the sync and async faces and both middleware agreeing, no input slow."""

from __future__ import annotations

import mutfuzz


def test_a_slice_of_mutated_inputs_has_only_documented_outcomes() -> None:
    report = mutfuzz.run(40_000, seed=2026)
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
