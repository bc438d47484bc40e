"""An injected clock for tests: it only moves when a test says so."""

from __future__ import annotations

START = 1_700_000_000.0


class FakeClock:
    """A wall clock that only moves when a test says so."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
