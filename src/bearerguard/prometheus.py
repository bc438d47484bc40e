"""Prometheus metrics for a ResourceServer (``pip install 'bearerguard[prometheus]'``).

    from bearerguard.prometheus import PrometheusObserver

    server = ResourceServer(issuer, audience, observer=PrometheusObserver())

Metrics (all in the registry given, prometheus-client's global one by default):

- ``bearerguard_authentications_total{result, reason}``: ``result`` is ``success``,
  ``failure``, ``none`` (no credentials) or ``unavailable`` (no keys: 503); ``reason`` is the
  ``Reason`` of a refusal, empty otherwise.
- ``bearerguard_token_cache_total{result}``: ``hit`` or ``miss`` (a token verified now).
- ``bearerguard_verification_duration_seconds``: a histogram of cache misses only.
- ``bearerguard_jwks_fetches_total{issuer, result}``: ``success``, ``not_modified``, ``failure``.
- ``bearerguard_jwks_last_success_timestamp_seconds{issuer}``: when keys were last fetched
  (or confirmed unchanged); alert when ``time() - it`` grows past your JWKS TTL.

Under gunicorn (or any pre-fork server) set ``PROMETHEUS_MULTIPROC_DIR`` to an empty directory
before the server starts, and serve ``exposition()``: every worker's counts add up, whichever
worker answers the scrape. The timestamp is kept per worker and the scrape shows the latest.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

from .errors import Reason
from .observe import FetchResult, Result, result_of

if TYPE_CHECKING:
    from .token import AccessToken

__all__ = ["DURATION_BUCKETS", "PrometheusObserver", "exposition"]

#: Verification of a token not yet cached takes tens of microseconds, a key fetch
#: milliseconds to seconds: buckets from 100 us to 10 s.
DURATION_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class _Families:
    """The metric families of one registry: a registry refuses a name twice, so every
    observer on it (one per ResourceServer, or per app built in a test) shares these."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.authentications = Counter(
            "bearerguard_authentications",
            "Requests bearerguard decided, by result and refusal reason.",
            ["result", "reason"],
            registry=registry,
        )
        self.token_cache = Counter(
            "bearerguard_token_cache",
            "Verified-token cache lookups: hit, or miss (the token was verified).",
            ["result"],
            registry=registry,
        )
        self.duration = Histogram(
            "bearerguard_verification_duration_seconds",
            "Time to verify a token that was not cached, key fetches included.",
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.fetches = Counter(
            "bearerguard_jwks_fetches",
            "Fetches of an issuer's signing keys, by result.",
            ["issuer", "result"],
            registry=registry,
        )
        self.last_success = Gauge(
            "bearerguard_jwks_last_success_timestamp_seconds",
            "When an issuer's signing keys were last fetched or confirmed unchanged.",
            ["issuer"],
            registry=registry,
            multiprocess_mode="max",
        )


_shared: weakref.WeakKeyDictionary[CollectorRegistry, _Families] = weakref.WeakKeyDictionary()
_shared_lock = threading.Lock()


def _families(registry: CollectorRegistry | None) -> _Families:
    if registry is None:
        return _Families(None)  # unregistered: collect them yourself
    with _shared_lock:
        families = _shared.get(registry)
        if families is None:
            families = _shared[registry] = _Families(registry)
        return families


class PrometheusObserver:
    """Counts what a ResourceServer decides into Prometheus metrics (see the module doc).

    Every label set is created up front (each refusal reason starts at 0, so rates and
    alerts work before the first one happens); a request then costs a few increments.
    """

    def __init__(self, registry: CollectorRegistry | None = REGISTRY) -> None:
        families = self._families = _families(registry)
        auth = families.authentications
        self._outcomes: dict[tuple[Result, Reason | None], Any] = {
            (Result.SUCCESS, None): auth.labels("success", ""),
            (Result.NONE, None): auth.labels("none", ""),
        }
        for reason in Reason:
            result = result_of(reason)
            self._outcomes[(result, reason)] = auth.labels(result.value, reason.value)
        self._success = self._outcomes[(Result.SUCCESS, None)]
        self._hit = families.token_cache.labels("hit")
        self._miss = families.token_cache.labels("miss")
        self._duration = families.duration
        self._fetches: dict[tuple[str, FetchResult], Any] = {}

    def on_authentication(
        self,
        result: Result,
        reason: Reason | None,
        token: AccessToken | None,
        cached: bool | None,
        duration: float | None,
    ) -> None:
        if cached and result is Result.SUCCESS:  # the hot path: a token seen before
            self._success.inc()
            self._hit.inc()
            return
        counter = self._outcomes.get((result, reason))
        if counter is None:  # not a pair the server reports; counted all the same
            counter = self._families.authentications.labels(
                result.value, "" if reason is None else reason.value
            )
        counter.inc()
        if cached:  # a cached token, refused for the route's scopes
            self._hit.inc()
        elif cached is False:
            self._miss.inc()
            if duration is not None:
                self._duration.observe(duration)

    def on_key_fetch(self, issuer: str, result: FetchResult, duration: float) -> None:
        counter = self._fetches.get((issuer, result))
        if counter is None:
            counter = self._fetches[(issuer, result)] = self._families.fetches.labels(
                issuer, result.value
            )
        counter.inc()
        if result is not FetchResult.FAILURE:
            self._families.last_success.labels(issuer).set_to_current_time()


def exposition(registry: CollectorRegistry | None = None) -> tuple[bytes, str]:
    """(body, content type) for a ``/metrics`` response: ``registry``'s metrics; by default
    the global registry's, or, with ``PROMETHEUS_MULTIPROC_DIR`` set, every worker's."""
    if registry is None:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        else:
            registry = REGISTRY
    return generate_latest(registry), CONTENT_TYPE_LATEST
