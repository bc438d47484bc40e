"""The two ready observers: Prometheus (prometheus-client) and OpenTelemetry (the SDK's
in-memory reader), driven by a real ResourceServer."""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from bearerguard import AuthError, Reason, ResourceServer
from bearerguard.otel import OpenTelemetryObserver
from bearerguard.prometheus import PrometheusObserver, exposition
from bearerguard.request import RequestView
from bearerguard.rules import Requirement

if TYPE_CHECKING:
    from conftest import FakeClock, StubIssuer

ISSUER = "https://issuer.test/oidc"


def bearer(token: str) -> str:
    return f"Bearer {token}"


def traffic(server: ResourceServer, issuer: StubIssuer, clock: FakeClock) -> None:
    """An outage with nothing cached (503), then 3 successes (1 verified, 2 cached), a 403 on
    a cached token, no token, a forged one."""
    read = issuer.mint("read")
    needs_read = Requirement(scopes=("read",))
    issuer.down = True
    with pytest.raises(AuthError):
        server.authenticate(bearer(read))
    issuer.down = False
    clock.advance(10)  # past the outage back-off: the next request fetches again
    for headers, requirement in (
        ([bearer(read)], needs_read),
        ([bearer(read)], needs_read),
        ([bearer(read)], needs_read),
        ([bearer(read)], Requirement(scopes=("write",))),
        ([], needs_read),
        ([bearer(issuer.tampered(read))], needs_read),
        ([], Requirement(public=True)),
    ):
        with contextlib.suppress(AuthError):
            server.authorize(RequestView("GET", headers), requirement)


# -- Prometheus -----------------------------------------------------------------------------------


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_prometheus_counts_results_reasons_cache_and_fetches(
    stub_issuer: StubIssuer, fake_clock: FakeClock
) -> None:
    registry = CollectorRegistry()
    server = stub_issuer.resource_server(observer=PrometheusObserver(registry))
    before = time.time()
    traffic(server, stub_issuer, fake_clock)
    auth = "bearerguard_authentications_total"
    assert sample(registry, auth, result="success", reason="") == 3
    assert sample(registry, auth, result="failure", reason="insufficient_scope") == 1
    assert sample(registry, auth, result="none", reason="missing_token") == 1
    assert sample(registry, auth, result="failure", reason="bad_signature") == 1
    assert sample(registry, auth, result="unavailable", reason="issuer_unavailable") == 1
    # Every reason exists from the start, at 0: rates and alerts work before the first one.
    for reason in (Reason.EXPIRED, Reason.WRONG_TYP, Reason.UNKNOWN_KID):
        assert sample(registry, auth, result="failure", reason=reason.value) == 0
    # Hits: the 2nd and 3rd read and the 403; misses: the 503, the first read, the forgery.
    assert sample(registry, "bearerguard_token_cache_total", result="hit") == 3
    assert sample(registry, "bearerguard_token_cache_total", result="miss") == 3
    assert sample(registry, "bearerguard_verification_duration_seconds_count") == 3
    assert (sample(registry, "bearerguard_verification_duration_seconds_sum") or 0) > 0
    fetches = "bearerguard_jwks_fetches_total"
    assert sample(registry, fetches, issuer=ISSUER, result="success") == 1
    assert sample(registry, fetches, issuer=ISSUER, result="failure") == 1
    stamp = sample(registry, "bearerguard_jwks_last_success_timestamp_seconds", issuer=ISSUER)
    assert stamp is not None
    assert before <= stamp <= time.time()


def test_prometheus_observers_on_one_registry_share_its_metrics(stub_issuer: StubIssuer) -> None:
    # Two servers in one app (or one app built twice, in tests) must not collide on names.
    registry = CollectorRegistry()
    first = stub_issuer.resource_server(observer=PrometheusObserver(registry))
    second = stub_issuer.resource_server(observer=PrometheusObserver(registry))
    token = stub_issuer.mint()
    first.authenticate(bearer(token))
    second.authenticate(bearer(token))
    second.authenticate(bearer(token))
    assert sample(registry, "bearerguard_authentications_total", result="success", reason="") == 3
    assert sample(registry, "bearerguard_token_cache_total", result="hit") == 1


def test_prometheus_exposition_is_the_text_format(stub_issuer: StubIssuer) -> None:
    registry = CollectorRegistry()
    server = stub_issuer.resource_server(observer=PrometheusObserver(registry))
    server.authenticate(bearer(stub_issuer.mint()))
    body, content_type = exposition(registry)
    assert content_type.startswith("text/plain; version=")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert families["bearerguard_authentications"].type == "counter"
    assert families["bearerguard_verification_duration_seconds"].type == "histogram"
    assert families["bearerguard_jwks_last_success_timestamp_seconds"].type == "gauge"
    assert stub_issuer.mint()[:20] not in body.decode()  # no token, no claim in any label


# -- OpenTelemetry --------------------------------------------------------------------------------


def points(reader: InMemoryMetricReader) -> dict[str, tuple[str, list[Any]]]:
    """{instrument name: (unit, data points)} from the reader."""
    found: dict[str, tuple[str, list[Any]]] = {}
    data = reader.get_metrics_data()
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            assert scope.scope.name == "bearerguard"
            for metric in scope.metrics:
                found[metric.name] = (metric.unit or "", list(metric.data.data_points))
    return found


def by_attributes(data: list[Any]) -> dict[tuple[tuple[str, Any], ...], Any]:
    return {tuple(sorted(p.attributes.items())): p for p in data}


def test_opentelemetry_records_the_same_measurements(
    stub_issuer: StubIssuer, fake_clock: FakeClock
) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    server = stub_issuer.resource_server(observer=OpenTelemetryObserver(provider))
    before = time.time()
    traffic(server, stub_issuer, fake_clock)
    found = points(reader)

    _, auth = found["bearerguard.authentications"]
    counts = {k: p.value for k, p in by_attributes(auth).items()}
    result, reason = "bearerguard.result", "bearerguard.reason"
    assert counts == {
        ((result, "success"),): 3,
        ((reason, "insufficient_scope"), (result, "failure")): 1,
        ((reason, "missing_token"), (result, "none")): 1,
        ((reason, "bad_signature"), (result, "failure")): 1,
        ((reason, "issuer_unavailable"), (result, "unavailable")): 1,
    }
    _, lookups = found["bearerguard.token_cache.lookups"]
    assert {k: p.value for k, p in by_attributes(lookups).items()} == {
        ((result, "hit"),): 3,
        ((result, "miss"),): 3,
    }
    unit, durations = found["bearerguard.verification.duration"]
    assert unit == "s"
    assert durations[0].count == 3
    assert durations[0].explicit_bounds[0] == 0.0001  # microsecond-scale buckets, not ms
    _, fetches = found["bearerguard.jwks.fetches"]
    issuer = "bearerguard.issuer"
    assert {k: p.value for k, p in by_attributes(fetches).items()} == {
        ((issuer, ISSUER), (result, "success")): 1,
        ((issuer, ISSUER), (result, "failure")): 1,
    }
    unit, stamps = found["bearerguard.jwks.last_success"]
    assert unit == "s"
    assert before <= stamps[0].value <= time.time()
    provider.shutdown()


def test_opentelemetry_without_an_sdk_is_a_no_op(stub_issuer: StubIssuer) -> None:
    # The API alone (no provider configured by the app): every instrument does nothing.
    from opentelemetry.metrics import NoOpMeterProvider

    server = stub_issuer.resource_server(observer=OpenTelemetryObserver(NoOpMeterProvider()))
    assert server.authenticate(bearer(stub_issuer.mint("read"))).scopes == {"read"}
