"""OpenTelemetry metrics for a ResourceServer (``pip install 'bearerguard[otel]'``).

Needs only ``opentelemetry-api``: the app brings the SDK and its exporters. Without an SDK
configured every instrument is a no-op.

    from bearerguard.otel import OpenTelemetryObserver

    server = ResourceServer(issuer, audience, observer=OpenTelemetryObserver())

Instruments (meter ``bearerguard``), with attributes ``bearerguard.result``,
``bearerguard.reason`` and ``bearerguard.issuer`` as the Prometheus observer's labels:

- ``bearerguard.authentications`` (counter): result, and reason for a refusal;
- ``bearerguard.token_cache.lookups`` (counter): result ``hit`` or ``miss``;
- ``bearerguard.verification.duration`` (histogram, ``s``): cache misses only;
- ``bearerguard.jwks.fetches`` (counter): issuer and result (``success``, ``not_modified``,
  ``failure``);
- ``bearerguard.jwks.last_success`` (gauge, ``s``): when an issuer's keys were last fetched or
  confirmed unchanged, as a Unix time.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from opentelemetry import metrics

from .errors import Reason
from .observe import FetchResult, Result, result_of

if TYPE_CHECKING:
    from .token import AccessToken

__all__ = ["OpenTelemetryObserver"]

_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
_Attributes = dict[str, str]


class OpenTelemetryObserver:
    """Records what a ResourceServer decides with OpenTelemetry instruments (see the module
    doc). ``meter_provider``: the provider to use, the global one by default."""

    def __init__(self, meter_provider: metrics.MeterProvider | None = None) -> None:
        from . import __version__

        meter = metrics.get_meter("bearerguard", __version__, meter_provider=meter_provider)
        self._authentications = meter.create_counter(
            "bearerguard.authentications",
            unit="{authentication}",
            description="Requests bearerguard decided, by result and refusal reason.",
        )
        self._lookups = meter.create_counter(
            "bearerguard.token_cache.lookups",
            unit="{lookup}",
            description="Verified-token cache lookups: hit, or miss (the token was verified).",
        )
        self._duration = meter.create_histogram(
            "bearerguard.verification.duration",
            unit="s",
            description="Time to verify a token that was not cached, key fetches included.",
            explicit_bucket_boundaries_advisory=_BUCKETS,
        )
        self._fetches = meter.create_counter(
            "bearerguard.jwks.fetches",
            unit="{fetch}",
            description="Fetches of an issuer's signing keys, by result.",
        )
        self._last_success = meter.create_gauge(
            "bearerguard.jwks.last_success",
            unit="s",
            description="When an issuer's signing keys were last fetched or confirmed unchanged.",
        )
        # Attribute sets built once: a request passes a ready dict.
        self._outcomes: dict[tuple[Result, Reason | None], _Attributes] = {
            (Result.SUCCESS, None): {"bearerguard.result": "success"},
            (Result.NONE, None): {"bearerguard.result": "none"},
        }
        for reason in Reason:
            self._outcomes[(result_of(reason), reason)] = {
                "bearerguard.result": result_of(reason).value,
                "bearerguard.reason": reason.value,
            }
        self._success = self._outcomes[(Result.SUCCESS, None)]
        self._hit: _Attributes = {"bearerguard.result": "hit"}
        self._miss: _Attributes = {"bearerguard.result": "miss"}

    def on_authentication(
        self,
        result: Result,
        reason: Reason | None,
        token: AccessToken | None,
        cached: bool | None,
        duration: float | None,
    ) -> None:
        attributes = self._outcomes.get((result, reason))
        if attributes is None:
            attributes = {"bearerguard.result": result.value}
            if reason is not None:
                attributes["bearerguard.reason"] = reason.value
        self._authentications.add(1, attributes)
        if cached:
            self._lookups.add(1, self._hit)
        elif cached is False:
            self._lookups.add(1, self._miss)
            if duration is not None:
                self._duration.record(duration)

    def on_key_fetch(self, issuer: str, result: FetchResult, duration: float) -> None:
        self._fetches.add(1, {"bearerguard.issuer": issuer, "bearerguard.result": result.value})
        if result is not FetchResult.FAILURE:
            self._last_success.set(time.time(), {"bearerguard.issuer": issuer})
