"""``make fuzz``: the property tests of tests/test_fuzz.py, run long; prints the inputs tried.

    .venv/bin/python bench/fuzz.py [--examples N] [extra pytest arguments]

Each property runs N examples (hypothesis ``max_examples``; default 2,000, about four minutes;
``make test`` runs 60-300). Every input a property body receives is counted, shrinking
included, and the total is printed last::

    fuzz: 24,000 inputs, 0 failures (240 s)

The exit status is pytest's: non-zero when any property found a counterexample.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests" / "test_fuzz.py"


class Tally:
    """A pytest plugin counting failed tests (xfails are expected, not failures)."""

    def __init__(self) -> None:
        self.failures = 0

    def pytest_runtest_logreport(self, report: Any) -> None:
        if report.failed:
            self.failures += 1


def fuzz_module() -> ModuleType | None:
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if path and Path(path).resolve() == TESTS:
            return module
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=2000, help="examples per property")
    args, pytest_args = parser.parse_known_args()
    os.environ["BEARERGUARD_FUZZ"] = "long"
    os.environ["BEARERGUARD_FUZZ_EXAMPLES"] = str(args.examples)
    os.chdir(ROOT)
    tally = Tally()
    started = time.monotonic()
    code = pytest.main(
        [
            "-q",
            "-p",
            "no:cacheprovider",
            "--timeout=0",  # the per-test timeout of make test is for short runs
            "--hypothesis-show-statistics",
            str(TESTS),
            *pytest_args,
        ],
        plugins=[tally],
    )
    elapsed = time.monotonic() - started
    module = fuzz_module()
    counts: dict[str, int] = dict(getattr(module, "INPUTS", {}))
    print(f"\ninputs per property ({args.examples:,} examples each):")
    for name, count in sorted(counts.items()):
        print(f"  {name:34} {count:>10,}")
    failures = tally.failures if code in (0, 1) else max(tally.failures, 1)
    print(f"fuzz: {sum(counts.values()):,} inputs, {failures} failures ({elapsed:.0f} s)")
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
