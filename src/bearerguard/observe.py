"""Observers: how metrics (Prometheus, OpenTelemetry, your own) see what the server decides.

``ResourceServer(observer=...)`` takes any object with the two methods of ``Observer``. The
server calls it once per decision and once per key fetch; with no observer nothing is
called, so the hot path costs what it always did. Observers run inline on the request path:
keep them cheap, and never let them block. One that raises is logged once and ignored, so
metrics can never turn an answer into a 500.

Ready ones: ``bearerguard.prometheus.PrometheusObserver`` (``bearerguard[prometheus]``) and
``bearerguard.otel.OpenTelemetryObserver`` (``bearerguard[otel]``).
"""

from __future__ import annotations

import logging
from enum import Enum
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from .errors import Reason

if TYPE_CHECKING:
    from .token import AccessToken

__all__ = ["FetchResult", "Observer", "Result", "result_of"]

log = logging.getLogger("bearerguard")


class Result(str, Enum):
    """How one authentication ended (the ``result`` label)."""

    SUCCESS = "success"
    FAILURE = "failure"  # refused: the reason says why
    NONE = "none"  # no bearer credentials (refused, or let through on an optional route)
    UNAVAILABLE = "unavailable"  # no usable keys, or no replay store: 503

    def __str__(self) -> str:
        return self.value


class FetchResult(str, Enum):
    """How one fetch of an issuer's keys ended."""

    SUCCESS = "success"
    NOT_MODIFIED = "not_modified"  # 304: the cached keys are still the current ones
    FAILURE = "failure"

    def __str__(self) -> str:
        return self.value


def result_of(reason: Reason) -> Result:
    """The result a refusal for ``reason`` counts as."""
    if reason is Reason.MISSING_TOKEN:
        return Result.NONE
    if reason is Reason.ISSUER_UNAVAILABLE or reason is Reason.REPLAY_STORE_UNAVAILABLE:
        return Result.UNAVAILABLE
    return Result.FAILURE


@runtime_checkable
class Observer(Protocol):
    """What a ``ResourceServer`` reports. Both methods are called inline: be quick."""

    def on_authentication(
        self,
        result: Result,
        reason: Reason | None,
        token: AccessToken | None,
        cached: bool | None,
        duration: float | None,
    ) -> None:
        """One request decided (or one ``authenticate``/``verify_token`` call).

        ``reason``: why it was refused (None on success, and for an optional route reached
        without credentials). ``token``: the verified token on success, else None.
        ``cached``: True when the verified-token cache answered, False when the token had to
        be verified (a cache miss; ``duration`` is then how long that took, in seconds,
        key fetches included), None when there was nothing to look up (no credentials, or a
        token an outer guard had verified).
        """

    def on_key_fetch(self, issuer: str, result: FetchResult, duration: float) -> None:
        """One fetch of ``issuer``'s keys (discovery included) ended; ``duration`` in s."""


class Reporter:
    """Calls an observer, never letting it break a request: the first failure is logged
    (with its traceback), later ones are counted silently."""

    __slots__ = ("_on_authentication", "failures", "observer")

    def __init__(self, observer: Observer) -> None:
        self.observer = observer
        self._on_authentication = observer.on_authentication  # bound once: the hot path
        self.failures = 0

    def authentication(
        self,
        result: Result,
        reason: Reason | None,
        token: AccessToken | None,
        cached: bool | None,
        duration: float | None,
    ) -> None:
        try:
            self._on_authentication(result, reason, token, cached, duration)
        except Exception:
            self._failed()

    def key_fetch(self, issuer: str, result: FetchResult, duration: float) -> None:
        try:
            self.observer.on_key_fetch(issuer, result, duration)
        except Exception:
            self._failed()

    def _failed(self) -> None:
        self.failures += 1
        if self.failures == 1:
            log.exception(
                "bearerguard: the observer %r failed; its failures are ignored from now on",
                type(self.observer).__name__,
            )
