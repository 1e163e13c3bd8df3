"""Prometheus metrics of a scoring service (its own registry: several services may live in one process).

Requests by route and status with a latency histogram, errors by kind, requests refused by the per-key limits
by reason, records scored by alias; read from the
service at each scrape: the version each alias serves, model reloads and refused versions, the age of the newest
feature snapshot, capture (written, dropped, failed, queued) and shadow scoring (scored, dropped, errors).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

if TYPE_CHECKING:
    from pipelines.serving.service import Service

LATENCY_BUCKETS = (
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)


class _ServiceState:
    """A collector reading the service's state when scraped."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def collect(self) -> Any:
        service = self.service
        labels = ["alias"]
        version = GaugeMetricFamily(
            "mlops_serve_model_version", "registry version served, by alias", labels=labels
        )
        refused = GaugeMetricFamily(
            "mlops_serve_model_refused_version",
            "version an alias points to that failed verification and is not served (0: none)",
            labels=labels,
        )
        for alias, state in service.slots.state.items():
            served = state.served
            version.add_metric([alias], float(served.version) if served else 0.0)
            refused.add_metric([alias], float(state.refused_version or 0))
        yield version
        yield refused
        yield CounterMetricFamily(
            "mlops_serve_model_reloads", "versions swapped in", value=service.slots.reloads
        )
        yield CounterMetricFamily(
            "mlops_serve_model_reload_failures",
            "versions that failed to load or verify",
            value=service.slots.reload_failures,
        )
        age = service.snapshot_age_seconds()
        if age is not None:
            yield GaugeMetricFamily(
                "mlops_serve_snapshot_age_seconds",
                "seconds since the newest online feature snapshot's prediction time",
                value=age,
            )
        if service.max_snapshot_age_s is not None:
            yield GaugeMetricFamily(
                "mlops_serve_snapshot_max_age_seconds",
                "the snapshot age past which the service is not ready (serving.max_snapshot_age)",
                value=float(service.max_snapshot_age_s),
            )
        yield GaugeMetricFamily(
            "mlops_serve_snapshot_table_version",
            "version of features_online/<usecase> served",
            value=float(service.snapshots.version if service.snapshots.version is not None else -1),
        )
        capture = service.capture
        if capture is not None:
            yield CounterMetricFamily(
                "mlops_serve_capture_written_rows", "rows appended", value=capture.written
            )
            yield CounterMetricFamily(
                "mlops_serve_capture_dropped_rows", "rows dropped: the queue was full", value=capture.dropped
            )
            yield CounterMetricFamily(
                "mlops_serve_capture_failed_rows", "rows lost after two failed commits", value=capture.failed
            )
            yield GaugeMetricFamily("mlops_serve_capture_queued_rows", "rows waiting", value=capture.queued())
            yield CounterMetricFamily(
                "mlops_serve_capture_sampled_out_rows",
                "rows not captured: their request is outside serving.capture.sample",
                value=capture.sampled_out,
            )
        yield CounterMetricFamily(
            "mlops_serve_shadow_scored_rows", "rows scored in shadow", value=service.shadow_scored
        )
        yield CounterMetricFamily(
            "mlops_serve_shadow_dropped_rows",
            "shadow rows dropped: the queue was full",
            value=service.shadow_dropped,
        )
        yield CounterMetricFamily(
            "mlops_serve_shadow_errors", "shadow scorings that failed", value=service.shadow_errors
        )


class ServeMetrics:
    """The service's metrics and their registry."""

    def __init__(self, service: Service) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "mlops_serve_requests",
            "requests by route and status",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "mlops_serve_request_seconds",
            "request latency in the server, by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter(
            "mlops_serve_errors", "refused or failed requests, by kind", ["kind"], registry=self.registry
        )
        self.limited = Counter(
            "mlops_serve_limited_requests",
            "requests refused with 429 by the per-key limits, by reason (rate: the key's token bucket was empty; "
            "in_flight: the key had --max-in-flight requests under way)",
            ["reason"],
            registry=self.registry,
        )
        for reason in ("rate", "in_flight"):  # shown at 0 before the first refusal
            self.limited.labels(reason)
        self.records = Counter(
            "mlops_serve_records",
            "records scored, by the alias that answered",
            ["alias"],
            registry=self.registry,
        )
        self.registry.register(_ServiceState(service))

    def observe(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)
        if status == 413:
            self.errors.labels("too_large").inc()
        elif status >= 500:
            self.errors.labels("server").inc()

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
