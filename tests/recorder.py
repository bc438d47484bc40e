"""An observer that records what a ResourceServer reports, for assertions."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from bearerguard import AccessToken, Reason
from bearerguard.observe import FetchResult, Result


@dataclass(frozen=True)
class Event:
    result: str
    reason: str | None
    sub: str | None
    cached: bool | None
    duration: float | None


@dataclass(frozen=True)
class Fetch:
    issuer: str
    result: str
    duration: float


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.fetches: list[Fetch] = []
        self._lock = threading.Lock()

    def on_authentication(
        self,
        result: Result,
        reason: Reason | None,
        token: AccessToken | None,
        cached: bool | None,
        duration: float | None,
    ) -> None:
        assert isinstance(result, Result)
        assert reason is None or isinstance(reason, Reason)
        assert (token is not None) == (result is Result.SUCCESS)
        assert (duration is not None) == (cached is False)
        sub = token.sub if token is not None else None
        with self._lock:
            self.events.append(
                Event(result.value, None if reason is None else reason.value, sub, cached, duration)
            )

    def on_key_fetch(self, issuer: str, result: FetchResult, duration: float) -> None:
        assert isinstance(result, FetchResult)
        assert duration >= 0
        with self._lock:
            self.fetches.append(Fetch(issuer, result.value, duration))

    def pairs(self) -> list[tuple[str, str | None]]:
        return [(e.result, e.reason) for e in self.events]
